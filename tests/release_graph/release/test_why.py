"""What a stage says about itself: a failed attempt is shown as failed with its reason and run, a provider
whose last attempt failed does not make its consumers wait for it, and a stage that runs what its previous
stage holds is up to date even after an e2e run failed because of another service."""

import signal
import textwrap

import dagster as dg
import pytest
from dagster._utils import get_run_crash_explanation

from release_graph.fleet import load_fleet
from release_graph.release.errors import ReleaseStepError
from release_graph.release.promotion import about_to_deploy
from release_graph.release.why import FAILED, RUNNING, UP_TO_DATE, WAITING, stage_status

FLEET = """\
fleet: shop
registry: 127.0.0.1:5000/shop
services:
  orders: {repo: repos/orders, build: {dockerfile: Dockerfile}, depends_on: [inventory]}
  inventory: {repo: repos/inventory, build: {dockerfile: Dockerfile}}
environments:
  dev: {target: docker}
"""


@pytest.fixture
def fleet(tmp_path):
    for name in ("orders", "inventory"):
        (tmp_path / "repos" / name).mkdir(parents=True)
        (tmp_path / "repos" / name / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "fleet.yaml").write_text(textwrap.dedent(FLEET))
    return load_fleet(tmp_path / "fleet.yaml")


def record(instance, key: list[str], digest: str, *, healthy: bool | None = None) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, metadata={"digest": digest}))
    passed = {"unit_tests": True, "sast": True} if key[-1] == "image" else (
        {"healthy": healthy} if healthy is not None else {})
    for name, verdict in passed.items():
        instance.report_runless_asset_event(dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey(key), check_name=name, passed=verdict, metadata={"digest": digest}))


def fail_deploy(instance, service: str, environment: str) -> str:
    @dg.asset(key=[service, environment])
    def deployment():
        raise ReleaseStepError(f"service '{service}', environment '{environment}': new container not healthy")

    job = dg.Definitions(assets=[deployment]).resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(instance=instance, raise_on_error=False, tags={"release/service": service},
                                    asset_selection=[dg.AssetKey([service, environment])])
    assert not result.success
    return result.run_id


def test_a_failed_deployment_says_failed_with_its_reason_and_run(fleet):
    with dg.instance_for_test() as instance:
        record(instance, ["inventory", "image"], "sha256:i1")
        run_id = fail_deploy(instance, "inventory", "dev")
        status = stage_status(instance, fleet, fleet.services["inventory"], "dev")
        assert status.state == FAILED and status.run_id == run_id
        assert "new container not healthy" in status.reason and "Traceback" not in status.reason


def test_a_consumer_does_not_wait_for_a_provider_whose_attempt_failed(fleet):
    with dg.instance_for_test() as instance:
        for service in ("inventory", "orders"):
            record(instance, [service, "image"], f"sha256:{service}1")
            record(instance, [service, "dev"], f"sha256:{service}1")
        # a new inventory image: inventory is about to deploy it, and orders would wait for that
        record(instance, ["inventory", "image"], "sha256:inventory2")
        assert about_to_deploy(instance, fleet, fleet.services["inventory"], fleet.environments["dev"])
        # once that attempt failed, nobody waits for it any more
        fail_deploy(instance, "inventory", "dev")
        assert not about_to_deploy(instance, fleet, fleet.services["inventory"], fleet.environments["dev"])


def test_a_failure_that_dagster_wrapped_shows_its_cause_first(fleet):
    class DeploymentFailed(Exception):
        pass

    @dg.asset(key=["inventory", "integration"])
    def integration():
        raise DeploymentFailed("inventory in it-x: the new container was not healthy: /healthz answered 500")

    with dg.instance_for_test() as instance:
        record(instance, ["inventory", "image"], "sha256:i1")
        job = dg.Definitions(assets=[integration]).resolve_implicit_global_asset_job_def()
        job.execute_in_process(instance=instance, raise_on_error=False, tags={"release/service": "inventory"},
                               asset_selection=[dg.AssetKey(["inventory", "integration"])])
        status = stage_status(instance, fleet, fleet.services["inventory"], "integration")
        assert status.state == FAILED
        assert status.reason == "inventory in it-x: the new container was not healthy: /healthz answered 500"


E2E_FLEET = """\
fleet: shop
registry: 127.0.0.1:5000/shop
e2e: {context: e2e}
services:
  orders: {repo: repos/orders, build: {dockerfile: Dockerfile}, depends_on: [inventory]}
  inventory: {repo: repos/inventory, build: {dockerfile: Dockerfile}}
environments:
  dev: {target: docker}
  staging: {target: docker}
"""


def record_e2e(instance, tested: dict[str, str], passed: bool) -> None:
    fingerprint = "sha256:" + "-".join(sorted(tested.values()))
    instance.report_runless_asset_event(dg.AssetMaterialization(
        asset_key=["fleet", "dev_e2e"], metadata={"digest": fingerprint, "deployed_digests": tested}))
    instance.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(["fleet", "dev_e2e"]), check_name="e2e_tests", passed=passed,
        metadata={"digest": fingerprint}))


def test_after_an_e2e_run_failed_with_a_providers_change_its_consumer_in_staging_is_up_to_date(tmp_path):
    for folder in ("repos/orders", "repos/inventory", "e2e"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "fleet.yaml").write_text(E2E_FLEET)
    fleet = load_fleet(tmp_path / "fleet.yaml")
    with dg.instance_for_test() as instance:
        # Given orders o1 and inventory i1 in dev and in staging, after a passing e2e run in dev
        for service in ("orders", "inventory"):
            record(instance, [service, "image"], f"sha256:{service[0]}1")
            record(instance, [service, "dev"], f"sha256:{service[0]}1", healthy=True)
        record_e2e(instance, {"orders": "sha256:o1", "inventory": "sha256:i1"}, passed=True)
        for service in ("orders", "inventory"):
            record(instance, [service, "staging"], f"sha256:{service[0]}1", healthy=True)
        # When inventory i2 reaches dev and the e2e run in dev fails with it
        record(instance, ["inventory", "image"], "sha256:i2")
        record(instance, ["inventory", "dev"], "sha256:i2", healthy=True)
        record_e2e(instance, {"orders": "sha256:o1", "inventory": "sha256:i2"}, passed=False)
        # then inventory/staging waits, saying why
        inventory = stage_status(instance, fleet, fleet.services["inventory"], "staging")
        assert (inventory.state, inventory.reason) == (
            WAITING, "the end-to-end tests of 'dev' failed with inventory sha256:i2")
        # and orders/staging, which runs what dev holds, waits for nothing: that e2e run is no news about it
        orders = stage_status(instance, fleet, fleet.services["orders"], "staging")
        assert (orders.state, orders.reason) == (UP_TO_DATE, "runs sha256:o1")


def deployment_job(service: str, environment: str):
    @dg.asset(key=[service, environment])
    def deployment():
        return None

    return dg.Definitions(assets=[deployment]).resolve_implicit_global_asset_job_def()


def run_whose_process_was_killed(instance, service: str, environment: str, *, max_retries: str) -> str:
    """A deployment run whose process died under it, recorded as Dagster's code server records it."""
    run = instance.create_run_for_job(deployment_job(service, environment),
                                      asset_selection={dg.AssetKey([service, environment])},
                                      tags={"release/service": service, "dagster/max_retries": max_retries})
    instance.report_engine_event(get_run_crash_explanation(f"Run execution process for {run.run_id}",
                                                           -signal.SIGKILL), run)
    instance.report_run_failed(run)
    return run.run_id


KILLED = "the run's process was killed by SIGKILL before its steps finished (not the commit's fault)"


def dev_deployment_run(instance, tags=None, **options):
    """A started run deploying inventory to dev, as the automation creates one (with a parent's tags: as Dagster's
    run-retry daemon does)."""
    return instance.create_run_for_job(
        deployment_job("inventory", "dev"), asset_selection={dg.AssetKey(["inventory", "dev"])},
        status=dg.DagsterRunStatus.STARTED, tags={"release/service": "inventory", **(tags or {})}, **options)


def test_a_deployment_whose_process_was_killed_says_so_and_waits_for_dagster_to_run_it_again(fleet):
    with dg.instance_for_test(overrides={"run_retries": {"enabled": True}}) as instance:
        record(instance, ["inventory", "image"], "sha256:i1")
        run_id = run_whose_process_was_killed(instance, "inventory", "dev", max_retries="2")
        status = stage_status(instance, fleet, fleet.services["inventory"], "dev")
        # not "out of memory", as Dagster guesses for every SIGKILL, and not the commit's fault
        assert status.state == WAITING and status.run_id == run_id
        assert status.reason == f"waiting for Dagster to run it again: {KILLED}"


def test_a_killed_deployment_that_is_not_run_again_is_failed_with_the_same_cause(fleet):
    with dg.instance_for_test(overrides={"run_retries": {"enabled": True}}) as instance:
        record(instance, ["inventory", "image"], "sha256:i1")
        run_whose_process_was_killed(instance, "inventory", "dev", max_retries="0")
        status = stage_status(instance, fleet, fleet.services["inventory"], "dev")
        assert status.state == FAILED and "killed by SIGKILL" in status.reason and "memory" not in status.reason


def test_dagsters_retry_of_a_killed_deployment_says_what_it_is_running_again_for(fleet):
    with dg.instance_for_test(overrides={"run_retries": {"enabled": True}}) as instance:
        record(instance, ["inventory", "image"], "sha256:i1")
        killed = run_whose_process_was_killed(instance, "inventory", "dev", max_retries="2")
        # the run Dagster launches again (its tags, as the run-retry daemon sets them)
        retry = dev_deployment_run(instance, parent_run_id=killed, root_run_id=killed,
                                   tags={"dagster/parent_run_id": killed, "dagster/retry_number": "1"})
        status = stage_status(instance, fleet, fleet.services["inventory"], "dev")
        assert status.state == RUNNING and status.run_id == retry.run_id
        assert status.reason == f"a run is deploying it now, again after run {killed[:8]}: {KILLED}"


def test_a_deployment_requested_anew_after_a_killed_one_says_what_it_is_running_again_for(fleet):
    with dg.instance_for_test(overrides={"run_retries": {"enabled": True}}) as instance:
        record(instance, ["inventory", "image"], "sha256:i1")
        killed = run_whose_process_was_killed(instance, "inventory", "dev", max_retries="0")
        # the automation requests the stage again: a run of its own, not Dagster's retry (no parent tags)
        again = dev_deployment_run(instance)
        status = stage_status(instance, fleet, fleet.services["inventory"], "dev")
        assert status.state == RUNNING and status.run_id == again.run_id
        assert status.reason == f"a run is deploying it now, again after run {killed[:8]}: {KILLED}"


def test_a_deployment_after_a_successful_one_is_no_second_try(fleet):
    with dg.instance_for_test(overrides={"run_retries": {"enabled": True}}) as instance:
        record(instance, ["inventory", "image"], "sha256:i1")
        run_whose_process_was_killed(instance, "inventory", "dev", max_retries="0")
        record(instance, ["inventory", "dev"], "sha256:i1", healthy=True)  # then a run deployed it
        dev_deployment_run(instance)
        assert stage_status(instance, fleet, fleet.services["inventory"], "dev").reason == "a run is deploying it now"


def test_a_release_run_that_failed_at_its_image_is_no_failure_of_the_stages_it_did_not_reach(fleet):
    with dg.instance_for_test() as instance:
        record(instance, ["inventory", "image"], "sha256:i1")
        record(instance, ["inventory", "dev"], "sha256:i1", healthy=True)

        # Given a new commit's build run, holding its image and its dev deployment, failed building the image
        @dg.asset(key=["inventory", "image"])
        def image():
            raise ReleaseStepError("service 'inventory': the unit tests failed")

        @dg.asset(key=["inventory", "dev"], deps=[image])
        def dev():
            raise AssertionError("never reached")

        job = dg.Definitions(assets=[image, dev]).resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(instance=instance, raise_on_error=False, tags={"release/service": "inventory"},
                                        asset_selection=[image.key, dev.key])
        assert not result.success
        # then dev still runs what it ran and says so: its step never started, the image's did and failed
        status = stage_status(instance, fleet, fleet.services["inventory"], "dev")
        assert status.state == UP_TO_DATE, status
