"""Automation stories on the real graph of a fleet: which stage the automation sensor starts, and which it
does not, after a stage of another service or the same one is recorded. Stages are recorded as runless
events here (what a finished step records), so each story isolates the decision itself."""

from __future__ import annotations

import textwrap

import dagster as dg
import pytest

from release_graph.fleet import load_fleet
from release_graph.wiring import build_definitions

FLEET = """\
fleet: shop
registry: 127.0.0.1:5000/shop
services:
  orders:
    repo: repos/orders
    build: {integration_target: integration}
    depends_on: [inventory]
  inventory:
    repo: repos/inventory
    build: {integration_target: integration}
environments:
  dev: {target: docker}
  prod: {target: docker, approval: required}
"""

RESOURCE_KEYS = ["git", "engine", "registry", "deploy_targets", "secrets"]
IMAGE_CHECKS_PASSED = {"unit_tests": True, "sast": True}  # the image's blocking checks


def key(*path: str) -> dg.AssetKey:
    return dg.AssetKey(list(path))


class Story:
    """A fleet's definitions, an instance, and the automation sensor's cursor between ticks."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance):
        self.defs, self.instance, self.cursor = defs, instance, None

    def record(self, asset: dg.AssetKey, digest: str, checks: dict[str, bool] | None = None) -> None:
        self.instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=asset, metadata={"digest": digest}, tags={"dagster/data_version": digest}
        ))
        for name, passed in (checks or {}).items():
            self.instance.report_runless_asset_event(dg.AssetCheckEvaluation(
                asset_key=asset, check_name=name, passed=passed, metadata={"digest": digest}
            ))

    def tick(self) -> set[dg.AssetKey]:
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        return {k for k in self.all_keys() if result.get_num_requested(k)}

    def all_keys(self):
        return self.defs.resolve_asset_graph().get_all_asset_keys()


@pytest.fixture
def story(tmp_path):
    for name in ("orders", "inventory"):
        (tmp_path / "repos" / name).mkdir(parents=True)
        (tmp_path / "repos" / name / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "fleet.yaml").write_text(textwrap.dedent(FLEET))
    fleet = load_fleet(tmp_path / "fleet.yaml")
    defs = build_definitions(fleet, resources={k: dg.ResourceDefinition.none_resource() for k in RESOURCE_KEYS})
    with dg.instance_for_test() as instance:
        yield Story(defs, instance)


def release_to_dev(story: Story, service: str, digest: str) -> None:
    story.record(key(service, "image"), digest, IMAGE_CHECKS_PASSED)
    story.record(key(service, "integration"), digest, {"integration_tests": True})
    story.record(key(service, "dev"), digest, {"healthy": True})


def test_nothing_is_requested_before_anything_was_built(story):
    assert story.tick() == set()
    assert story.tick() == set()


def test_a_new_image_is_integrated_then_deployed_to_the_first_environment(story):
    story.tick()
    # Given a new inventory image whose unit tests passed
    story.record(key("inventory", "image"), "sha256:i1", IMAGE_CHECKS_PASSED)
    # when automation ticks, then only its integration stage starts
    assert story.tick() == {key("inventory", "integration")}
    assert story.tick() == set()
    # and once integration passed, inventory deploys to dev
    story.record(key("inventory", "integration"), "sha256:i1", {"integration_tests": True})
    assert story.tick() == {key("inventory", "dev")}


def test_a_providers_new_deployment_does_not_redeploy_its_unchanged_consumer(story):
    story.tick()
    release_to_dev(story, "orders", "sha256:o1")
    release_to_dev(story, "inventory", "sha256:i1")
    story.tick()  # the matrix notices both deployments
    # Given a new inventory release reaching dev
    story.record(key("inventory", "image"), "sha256:i2", IMAGE_CHECKS_PASSED)
    assert story.tick() == {key("inventory", "integration")}
    story.record(key("inventory", "integration"), "sha256:i2", {"integration_tests": True})
    assert story.tick() == {key("inventory", "dev")}
    story.record(key("inventory", "dev"), "sha256:i2", {"healthy": True})
    # then orders/dev is not requested: only its own trigger starts it
    assert key("orders", "dev") not in story.tick()


def test_a_consumers_first_deployment_goes_with_its_providers_first_deployment(story):
    story.tick()
    for service in ("orders", "inventory"):
        story.record(key(service, "image"), f"sha256:{service}1", IMAGE_CHECKS_PASSED)
    assert story.tick() == {key("orders", "integration"), key("inventory", "integration")}
    for service in ("orders", "inventory"):
        story.record(key(service, "integration"), f"sha256:{service}1", {"integration_tests": True})
    # Both first deployments are requested together; in their one run the provider's step (and its blocking
    # `healthy` evidence) comes first, and a failure there skips the consumer.
    assert story.tick() == {key("inventory", "dev"), key("orders", "dev")}
    assert key("inventory", "dev") in story.defs.resolve_asset_graph().get(key("orders", "dev")).parent_keys


def test_a_provider_and_its_consumer_changing_together_are_requested_in_one_tick(story):
    story.tick()
    release_to_dev(story, "orders", "sha256:o1")
    release_to_dev(story, "inventory", "sha256:i1")
    story.tick()
    for service in ("orders", "inventory"):
        story.record(key(service, "image"), f"sha256:{service}2", IMAGE_CHECKS_PASSED)
    story.tick()
    for service in ("orders", "inventory"):
        story.record(key(service, "integration"), f"sha256:{service}2", {"integration_tests": True})
    # Both deploy in the same tick: Dagster runs them in one run, provider first (inventory/dev is a dep).
    assert {key("inventory", "dev"), key("orders", "dev")} <= story.tick()
    assert key("inventory", "dev") in story.defs.resolve_asset_graph().get(key("orders", "dev")).parent_keys


def test_a_failed_integration_check_stops_the_release_on_every_later_tick(story):
    story.tick()
    story.record(key("inventory", "image"), "sha256:i1", IMAGE_CHECKS_PASSED)
    story.tick()
    # Given integration recorded but its blocking check failed
    story.record(key("inventory", "integration"), "sha256:i1", {"integration_tests": False})
    # then dev is not deployed, not now and not on later ticks
    for _ in range(3):
        assert key("inventory", "dev") not in story.tick()


def test_an_image_whose_unit_tests_failed_is_never_integrated(story):
    story.tick()
    story.record(key("inventory", "image"), "sha256:i1", {"unit_tests": False, "sast": True})
    for _ in range(2):
        assert story.tick() == set()


def test_prod_waits_for_an_approval_and_deploys_once_per_approval(story):
    story.tick()
    release_to_dev(story, "inventory", "sha256:i1")
    # A deployment to dev does not move prod
    assert key("inventory", "prod") not in story.tick()
    # Given an approval, prod is requested once
    story.record(key("inventory", "prod_approval"), "sha256:i1")
    assert key("inventory", "prod") in story.tick()
    story.record(key("inventory", "prod"), "sha256:i1", {"healthy": True})
    assert key("inventory", "prod") not in story.tick()
    # and a second approval deploys again
    story.record(key("inventory", "prod_approval"), "sha256:i1")
    assert key("inventory", "prod") in story.tick()


def test_the_environment_matrix_refreshes_after_the_first_deployment(story):
    story.tick()
    release_to_dev(story, "inventory", "sha256:i1")
    # orders has never been deployed anywhere, yet the matrix already shows inventory in dev
    assert key("fleet", "environments") in story.tick()
    assert key("fleet", "environments") not in story.tick()
