"""What the release history tells the notification channels: a rollout the analysis rolled back is a
rollback (not a plain failure), a failed blocking check is named with its evidence, a run Dagster will run
again is not news yet, and two failed attempts at one release are one event per channel."""

from __future__ import annotations

import textwrap
import time

import dagster as dg
import pytest

from release_graph.fleet import load_fleet
from release_graph.release import metadata as M
from release_graph.release.errors import ReleaseStepError
from release_graph.release.notifications import FAILED, ROLLED_BACK, failures

SHA = "c0ffee" + "0" * 34
FLEET = """\
fleet: shop
registry: 127.0.0.1:5000/shop
services:
  inventory: {repo: repos/inventory, build: {dockerfile: Dockerfile}}
environments:
  dev: {target: docker}
  prod: {target: docker}
notifications:
  channels:
    audit: {type: webhook, url_env: AUDIT_URL, hmac_key_env: AUDIT_KEY}
"""


@pytest.fixture
def fleet(tmp_path):
    (tmp_path / "repos" / "inventory").mkdir(parents=True)
    (tmp_path / "repos" / "inventory" / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "fleet.yaml").write_text(textwrap.dedent(FLEET))
    return load_fleet(tmp_path / "fleet.yaml")


def run_stage(instance, key: list[str], body, *, tags=None, checks=()) -> dg.ExecuteInProcessResult:
    """A real run of a stand-in for the stage `key` (what its step records), tagged as the deploy step tags it."""
    @dg.asset(key=key, check_specs=[dg.AssetCheckSpec(name, asset=key, blocking=True) for name in checks])
    def stage(context):
        return body(context)

    job = dg.Definitions(assets=[stage]).resolve_implicit_global_asset_job_def()
    return job.execute_in_process(instance=instance, raise_on_error=False,
                                  tags={"release/service": key[0], "release/git_sha": SHA, **(tags or {})})


def test_a_canary_the_analysis_rolled_back_is_told_as_a_rollback(fleet):
    def rolled_back(context):
        context.log_event(dg.AssetObservation(asset_key=["inventory", "prod"], metadata={
            "event": M.ROLLBACK_EVENT, M.DIGEST: "sha256:new", "serving": "sha256:old"}))
        raise dg.Failure("rolled back: the new version's error rate 0.31 is above 0.01")

    with dg.instance_for_test() as instance:
        started = time.time()
        run = run_stage(instance, ["inventory", "prod"], rolled_back)
        (event,) = failures(instance, fleet, since=started - 1)
    assert (event.kind, event.stage, event.environment, event.sha, event.run_id) == (
        ROLLED_BACK, "inventory/prod", "prod", SHA, run.run_id)
    assert event.reason == "rolled back: the new version's error rate 0.31 is above 0.01"


def test_a_failed_blocking_check_is_named_with_its_evidence(fleet):
    def unhealthy(context):
        yield dg.MaterializeResult(metadata={M.DIGEST: "sha256:new"})
        yield dg.AssetCheckResult(check_name="healthy", passed=False, description="GET /healthz answered 500")

    with dg.instance_for_test() as instance:
        started = time.time()
        run_stage(instance, ["inventory", "dev"], unhealthy, checks=["healthy"])
        (event,) = failures(instance, fleet, since=started - 1)
    assert (event.kind, event.stage) == (FAILED, "inventory/dev")
    assert event.reason == "blocking check healthy of inventory/dev did not pass: GET /healthz answered 500"


def test_a_run_dagster_will_run_again_is_not_news_and_one_release_failing_twice_is_one_event(fleet):
    def refused(context):
        raise ReleaseStepError("service 'inventory', environment 'dev': the registry did not answer")

    with dg.instance_for_test() as instance:
        started = time.time()
        run_stage(instance, ["inventory", "dev"], refused, tags={"dagster/will_retry": "true"})
        assert failures(instance, fleet, since=started - 1) == []
        run_stage(instance, ["inventory", "dev"], refused)
        run_stage(instance, ["inventory", "dev"], refused)
        events = failures(instance, fleet, since=started - 1)
    assert len(events) == 2 and {e.key("audit") for e in events} == {f"{SHA}|inventory/dev|failed|audit"}
    assert events[0].reason == "service 'inventory', environment 'dev': the registry did not answer"
