"""DORA's four figures from a scripted release history whose times are known: a fortnight of orders and
inventory releases to prod, with a failed deployment, a rollback by hand and a canary the analysis rolled back.

The same history is told twice: as ProdChange records to the pure function, and as what the release really
records (materializations, observations and failed runs at those times) on a real instance, read back by the
reader, by the `fleet/dora` asset, by a fresh instance on the same storage (the daemon restarted) and by
`release-graph dora`. Every one gives exactly the figures below.
"""

from __future__ import annotations

import json
import textwrap
import time
from datetime import UTC, datetime

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef
from dagster._core.test_utils import freeze_time

from release_graph.cli.main import main as cli
from release_graph.fleet import load_fleet
from release_graph.release import dora
from release_graph.release import metadata as M
from release_graph.release.dora import DEPLOYED, FAILED, ROLLED_BACK, ProdChange
from release_graph.release.errors import ReleaseStepError
from release_graph.release.keys import DORA_KEY
from release_graph.wiring import build_definitions

HOUR, DAY = 3600.0, 86400.0
# Minutes past a whole second: nothing in the history sits on a window's edge however long the test takes.
NOW = float(int(time.time()))

FLEET = """\
fleet: shop
registry: 127.0.0.1:5000/shop
services:
  orders: {repo: repos/orders, build: {dockerfile: Dockerfile}}
  inventory: {repo: repos/inventory, build: {dockerfile: Dockerfile}}
environments:
  dev: {target: docker}
  prod: {target: docker, approval: required}
"""


def digest(name: str) -> str:
    return "sha256:" + name.encode().hex().ljust(64, "0")


# (service, release, commit time, what happened in prod at which time)
D1, D2, D3, D4, D5, I1, I2 = (digest(n) for n in ("o1", "o2", "o3", "o4", "o5", "i1", "i2"))
STORY = [
    # orders: a release 20 days ago (2 h from commit), one 5 days ago (3 h), ...
    ProdChange("orders", NOW - 20 * DAY, DEPLOYED, D1, committed_at=NOW - 20 * DAY - 2 * HOUR),
    ProdChange("orders", NOW - 5 * DAY, DEPLOYED, D2, committed_at=NOW - 5 * DAY - 3 * HOUR),
    # ... a deployment that failed 4 days ago, restored 2 h later by the next release (1 h from its commit) ...
    ProdChange("orders", NOW - 4 * DAY, FAILED),
    ProdChange("orders", NOW - 4 * DAY + 2 * HOUR, DEPLOYED, D4, committed_at=NOW - 4 * DAY + 1 * HOUR),
    # ... a release 3 days ago (5 h from commit) that a release manager rolled back by hand 30 minutes later
    ProdChange("orders", NOW - 3 * DAY, DEPLOYED, D5, committed_at=NOW - 3 * DAY - 5 * HOUR),
    ProdChange("orders", NOW - 3 * DAY + 0.5 * HOUR, DEPLOYED, D4, committed_at=NOW - 4 * DAY + 1 * HOUR,
               rolled_back_from=D5),
    # inventory: a release 2 days ago (1 h from commit), then a canary the analysis rolled back yesterday
    ProdChange("inventory", NOW - 2 * DAY, DEPLOYED, I1, committed_at=NOW - 2 * DAY - 1 * HOUR),
    ProdChange("inventory", NOW - 1 * DAY, ROLLED_BACK),
]

EXPECTED = {
    # service, days: changes, failed, per day, lead time (h), failure rate, time to restore (h)
    ("orders", 7): (5, 2, 5 / 7, 3.0, 2 / 5, 1.25),
    ("orders", 30): (6, 2, 6 / 30, 2.5, 2 / 6, 1.25),
    ("orders", 90): (6, 2, 6 / 90, 2.5, 2 / 6, 1.25),
    ("inventory", 7): (2, 1, 2 / 7, 1.0, 1 / 2, None),  # the canary's failure is not restored yet
    ("inventory", 30): (2, 1, 2 / 30, 1.0, 1 / 2, None),
    ("inventory", 90): (2, 1, 2 / 90, 1.0, 1 / 2, None),
    ("fleet", 7): (7, 3, 7 / 7, 2.0, 3 / 7, 1.25),
    ("fleet", 30): (8, 3, 8 / 30, 2.0, 3 / 8, 1.25),
    ("fleet", 90): (8, 3, 8 / 90, 2.0, 3 / 8, 1.25),
}


def as_expected(figures: dora.Figures) -> tuple:
    def hours(seconds):
        return None if seconds is None else seconds / HOUR

    return (figures.changes, figures.failed_changes, figures.deployments_per_day, hours(figures.lead_time_seconds),
            figures.change_failure_rate, hours(figures.time_to_restore_seconds))


def report_figures(report: dora.Report) -> dict:
    found = {("fleet", days): as_expected(f) for days, f in report.overall.items()}
    for service, by_window in report.services.items():
        found.update({(service, days): as_expected(f) for days, f in by_window.items()})
    return found


def assert_figures(found: dict) -> None:
    assert found.keys() == EXPECTED.keys()
    for key, expected in EXPECTED.items():
        assert found[key] == pytest.approx(expected), key


def test_the_four_figures_of_a_scripted_fortnight_are_exact():
    report = dora.report(STORY, "shop", "prod", ["orders", "inventory"], now=NOW)
    assert_figures(report_figures(report))


def test_a_redeploy_of_what_already_ran_and_a_window_without_changes_measure_nothing():
    quiet = dora.figures([ProdChange("orders", NOW - 40 * DAY, DEPLOYED, D1, committed_at=NOW - 41 * DAY)],
                         now=NOW, days=7)
    assert (quiet.changes, quiet.deployments_per_day, quiet.lead_time_seconds, quiet.change_failure_rate,
            quiet.time_to_restore_seconds) == (0, 0.0, None, None, None)


# --- the same history as the release records it --------------------------------------------------------


@pytest.fixture
def fleet(tmp_path):
    for name in ("orders", "inventory"):
        (tmp_path / "repos" / name).mkdir(parents=True)
        (tmp_path / "repos" / name / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "fleet.yaml").write_text(textwrap.dedent(FLEET))
    return load_fleet(tmp_path / "fleet.yaml")


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def run_prod_step(instance, service: str, at: float, *, metadata=None, failure: str | None = None,
                  rollback_of: str | None = None) -> None:
    """A real run of `<service>/prod` at `at` that records what the deploy step records: a deployment, a
    refusal or failure, or a rollout's `rollback` observation and failure."""
    key = dg.AssetKey([service, "prod"])

    @dg.asset(key=key)
    def deployment(context):
        if rollback_of:
            context.log_event(dg.AssetObservation(asset_key=key, metadata={
                "event": M.ROLLBACK_EVENT, M.DIGEST: rollback_of, M.ROLLED_BACK_BECAUSE: "error rate 0.4 > 0.01"}))
            raise dg.Failure("rolled back: error rate 0.4 > 0.01")
        if failure:
            raise ReleaseStepError(f"service '{service}', environment 'prod': {failure}")
        return dg.MaterializeResult(metadata=metadata)

    job = dg.Definitions(assets=[deployment]).resolve_implicit_global_asset_job_def()
    with freeze_time(at):
        result = job.execute_in_process(instance=instance, raise_on_error=False, tags={"release/service": service})
    assert result.success == (failure is None and rollback_of is None)


def record_story(instance) -> None:
    for change in STORY:
        if change.digest and change.committed_at and not change.rolled_back_from:
            with freeze_time(change.committed_at + 60):  # the image was built a minute after the commit
                instance.report_runless_asset_event(dg.AssetMaterialization(
                    asset_key=[change.service, "image"],
                    metadata={M.DIGEST: change.digest, M.COMMITTED_AT: iso(change.committed_at)}))
        if change.outcome == DEPLOYED:
            run_prod_step(instance, change.service, change.at, metadata={
                M.DIGEST: change.digest, M.CHANGED: True,
                **({M.ROLLED_BACK_FROM: change.rolled_back_from} if change.rolled_back_from else {})})
        elif change.outcome == FAILED:
            run_prod_step(instance, change.service, change.at, failure="new container not healthy")
        else:
            run_prod_step(instance, change.service, change.at, rollback_of=I2)
    # and a redeploy of what already ran there 12 hours ago: no change of production
    run_prod_step(instance, "inventory", NOW - 12 * HOUR, metadata={M.DIGEST: I1, M.CHANGED: False})
    # and a failed deployment to dev 6 hours ago: not production's
    @dg.asset(key=["inventory", "dev"])
    def dev():
        raise ReleaseStepError("service 'inventory', environment 'dev': new container not healthy")

    with freeze_time(NOW - 6 * HOUR):
        dg.Definitions(assets=[dev]).resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, raise_on_error=False, asset_selection=[dg.AssetKey(["inventory", "dev"])])


def test_the_reader_the_asset_a_restarted_instance_and_the_cli_give_the_same_figures(fleet, tmp_path, monkeypatch,
                                                                                    capsys):
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        record_story(instance)
        # the reader
        changes = dora.read_prod_changes(instance, fleet, since=NOW - 90 * DAY)
        assert [(c.service, c.outcome) for c in changes] == [(c.service, c.outcome) for c in STORY]
        assert_figures(report_figures(dora.read_report(instance, fleet, now=NOW)))
        # the fleet/dora asset, materialized by the fleet's own definitions
        defs = build_definitions(fleet, resources={k: dg.ResourceDefinition.none_resource() for k in
                                                   ("git", "engine", "registry", "deploy_targets", "secrets",
                                                    "release_tracer")})
        run = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=[DORA_KEY])
        assert run.success
        metadata = instance.fetch_materializations(DORA_KEY, limit=1).records[0].asset_materialization.metadata
    # numbers the UI plots: the fleet's for every window, each service's for 30 days
    assert metadata["fleet_7d_lead_time_hours"] == dg.MetadataValue.float(2.0)
    assert metadata["fleet_7d_time_to_restore_hours"] == dg.MetadataValue.float(1.25)
    assert metadata["fleet_7d_change_failure_rate"] == dg.MetadataValue.float(round(3 / 7, 4))
    assert metadata["fleet_30d_deployments_per_day"] == dg.MetadataValue.float(round(8 / 30, 4))
    assert metadata["fleet_90d_changes"] == dg.MetadataValue.int(8)
    assert metadata["orders_30d_lead_time_hours"] == dg.MetadataValue.float(2.5)
    assert "inventory_30d_time_to_restore_hours" not in metadata  # nothing restored: no point, not a 0
    assert len(metadata["figures"].records) == 9

    # Given the daemon restarted: a fresh instance on the same storage reads exactly the same figures
    restarted = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    try:
        assert_figures(report_figures(dora.read_report(restarted, fleet, now=NOW)))
    finally:
        restarted.dispose()

    # and so does `release-graph dora --json` on that instance (now is a few seconds later: no edge moves)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    capsys.readouterr()
    assert cli(["dora", "--json", "--fleet", str(fleet.source_file)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["production"] == "prod"
    found = {}
    for name, by_window in [("fleet", printed["fleet_figures"]), *printed["services"].items()]:
        for days, f in by_window.items():
            found[(name, int(days))] = as_expected(dora.Figures(**f))
    assert_figures(found)
    assert cli(["dora", "--days", "7", "--fleet", str(fleet.source_file)]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "DORA of fleet shop in prod"
    assert text.splitlines()[2].split() == ["(fleet)", "7", "7", "1.00", "2.00", "h", "43%", "1.25", "h"]
    assert text.splitlines()[3].split() == ["inventory", "7", "2", "0.29", "1.00", "h", "50%", "-"]


def test_the_cli_refuses_a_window_of_no_days(fleet, capsys):
    assert cli(["dora", "--days", "0", "--fleet", str(fleet.source_file)]) == 2
    assert "--days must be at least 1, got 0" in capsys.readouterr().err
