"""Deployment events read back from what the release records, on a real instance: orders is deployed to prod for
the first time, upgraded, redeployed unchanged, rolled back by hand, moved back to a digest that ran before, a
canary is rolled back by its analysis, a deployment fails, the environment is torn down and deployed again.
Every change is exactly one event of the right kind; the redeploy is none, and nothing before `since` is read.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import dagster as dg
import pytest
from dagster._core.test_utils import freeze_time

from release_graph.fleet import load_fleet
from release_graph.release import deployments as D
from release_graph.release import metadata as M
from release_graph.release.errors import ReleaseStepError

FLEET = """\
fleet: shop
registry: 127.0.0.1:5000/shop
services:
  orders: {repo: repos/orders, build: {dockerfile: Dockerfile}}
environments:
  prod: {target: docker}
"""
T0 = float(int(time.time())) - 3600  # an hour ago, on a whole second


def digest(name: str) -> str:
    return "sha256:" + name.encode().hex().ljust(64, "0")


A, B, C = digest("a"), digest("b"), digest("c")


@pytest.fixture
def fleet(tmp_path):
    (tmp_path / "repos" / "orders").mkdir(parents=True)
    (tmp_path / "repos" / "orders" / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "fleet.yaml").write_text(FLEET)
    return load_fleet(tmp_path / "fleet.yaml")


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def image(instance, name: str, committed_at: float) -> None:
    with freeze_time(committed_at + 60):
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=["orders", "image"], metadata={M.DIGEST: name, M.COMMITTED_AT: iso(committed_at),
                                                     M.GIT_SHA: name[7:15]}))


def deploy(instance, at: float, *, metadata=None, failure: str | None = None, canary_of: str | None = None,
           serving: str = "") -> None:
    """A real run of orders/prod at `at` that records what the deploy step records."""
    key = dg.AssetKey(["orders", "prod"])

    @dg.asset(key=key)
    def deployment(context):
        if canary_of:
            context.log_event(dg.AssetObservation(asset_key=key, metadata={
                "event": M.ROLLBACK_EVENT, M.DIGEST: canary_of, "serving": serving,
                M.ROLLED_BACK_BECAUSE: "error rate 0.4 > 0.01"}))
            raise dg.Failure("rolled back: error rate 0.4 > 0.01")
        if failure:
            raise ReleaseStepError(f"service 'orders', environment 'prod': {failure}")
        return dg.MaterializeResult(metadata=metadata)

    job = dg.Definitions(assets=[deployment]).resolve_implicit_global_asset_job_def()
    with freeze_time(at):
        result = job.execute_in_process(instance=instance, raise_on_error=False, tags={"release/service": "orders"})
    assert result.success == (failure is None and canary_of is None)


def torn_down(instance, at: float) -> None:
    with freeze_time(at):
        instance.report_runless_asset_event(dg.AssetObservation(asset_key=["orders", "prod"],
                                                                metadata={"event": M.REMOVED_EVENT}))


def test_every_change_of_what_runs_in_prod_is_one_event_of_its_kind(fleet):
    with dg.instance_for_test() as instance:
        image(instance, A, T0 - 7200)
        image(instance, B, T0 - 1800)
        image(instance, C, T0 + 100)
        deploy(instance, T0 + 10, metadata={M.DIGEST: A, M.CHANGED: True})                        # deployed
        deploy(instance, T0 + 20, metadata={M.DIGEST: B, M.CHANGED: True})                        # upgraded
        deploy(instance, T0 + 30, metadata={M.DIGEST: B, M.CHANGED: False})                       # nothing
        deploy(instance, T0 + 40, metadata={M.DIGEST: A, M.CHANGED: True, M.ROLLED_BACK_FROM: B,
                                            M.ROLLBACK_REASON: "checkout errors"})                  # by hand
        deploy(instance, T0 + 50, metadata={M.DIGEST: B, M.CHANGED: True})                        # upgraded
        deploy(instance, T0 + 60, metadata={M.DIGEST: A, M.CHANGED: True})                        # older: back
        deploy(instance, T0 + 200, canary_of=C, serving=A)                                         # the analysis
        deploy(instance, T0 + 300, failure="new container not healthy")                            # failed
        torn_down(instance, T0 + 400)                                                              # removed
        deploy(instance, T0 + 500, metadata={M.DIGEST: C, M.CHANGED: True})                       # deployed again

        events = D.read_events(instance, fleet, since=T0)
        later = D.read_events(instance, fleet, since=T0 + 250)

    assert [(e.kind, e.digest, e.previous_digest, e.at - T0) for e in events] == [
        (D.DEPLOYED, A, "", 10), (D.UPGRADED, B, A, 20), (D.ROLLED_BACK, A, B, 40), (D.UPGRADED, B, A, 50),
        # the canary's run: its step failed and its rollout went back to A, at one (frozen) instant
        (D.ROLLED_BACK, A, B, 60), (D.FAILED, "", "", 200), (D.ROLLED_BACK, A, C, 200),
        (D.FAILED, "", "", 300), (D.REMOVED, A, "", 400), (D.DEPLOYED, C, "", 500)]
    # what a deployment moving forward took from commit to prod; rollbacks run an old commit again
    assert [e.lead_time_seconds for e in events if e.kind in (D.DEPLOYED, D.UPGRADED)] == [
        7210.0, 1820.0, 1850.0, 400.0]
    assert [e.deployment for e in events] == [True] * 5 + [False] * 4 + [True]  # the canary deployed nothing
    assert events[2].reason == "checkout errors" and events[6].reason == "error rate 0.4 > 0.01"
    assert "rolled back: error rate 0.4 > 0.01" in events[5].reason
    assert "new container not healthy" in events[7].reason
    # each event has its own key, and the same history read again gives the same keys
    assert len({e.key for e in events}) == len(events)
    assert [e.key for e in later] == [e.key for e in events if e.at >= T0 + 250]
    assert [e.kind for e in later] == [D.FAILED, D.REMOVED, D.DEPLOYED]
