"""What a stage says about itself: a failed attempt is shown as failed with its reason and run, and a
provider whose last attempt failed does not make its consumers wait for it."""

import textwrap

import dagster as dg
import pytest

from release_graph.fleet import load_fleet
from release_graph.release.errors import ReleaseStepError
from release_graph.release.promotion import about_to_deploy
from release_graph.release.why import FAILED, stage_status

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


def record(instance, key: list[str], digest: str) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, metadata={"digest": digest}))
    if key[-1] == "image":
        for name in ("unit_tests", "sast"):
            instance.report_runless_asset_event(dg.AssetCheckEvaluation(
                asset_key=dg.AssetKey(key), check_name=name, passed=True, metadata={"digest": digest}))


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
