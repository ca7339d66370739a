"""Automation stories on the real graph of a fleet: which stage the automation sensor starts, and which it
does not, after a stage of another service or the same one is recorded. Stages are recorded as runless
events here (what a finished step records), so each story isolates the decision itself."""

from __future__ import annotations

import textwrap
import uuid

import dagster as dg
import pytest

from release_graph.fleet import load_fleet
from release_graph.release import history, promotion
from release_graph.release.promotion import waiting_reason
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

RESOURCE_KEYS = ["git", "engine", "registry", "deploy_targets", "secrets", "release_tracer"]
IMAGE_CHECKS_PASSED = {"unit_tests": True, "sast": True}  # the image's blocking checks


def key(*path: str) -> dg.AssetKey:
    return dg.AssetKey(list(path))


class Story:
    """A fleet's definitions, an instance, and the automation sensor's cursor between ticks."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance, fleet=None):
        self.defs, self.instance, self.cursor, self.fleet = defs, instance, None, fleet

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
        yield Story(defs, instance, fleet)


def approve(story: Story, service: str, digest: str, by: str = "rm@shop.example") -> None:
    """`by` approved `digest` of `service` for prod, as the approval step records it."""
    story.instance.report_runless_asset_event(dg.AssetMaterialization(
        asset_key=key(service, "prod_approval"), metadata={"digest": digest, "approver": by},
        tags={"dagster/data_version": digest}))


def release_to_dev(story: Story, service: str, digest: str) -> None:
    story.record(key(service, "image"), digest, IMAGE_CHECKS_PASSED)
    story.record(key(service, "integration"), digest, {"integration_tests": True})
    story.record(key(service, "dev"), digest, {"healthy": True})


def test_nothing_is_requested_before_anything_was_built(story):
    assert story.tick() == set()
    assert story.tick() == set()


def test_a_new_image_is_integrated_and_deployed_to_the_first_environment_in_one_run(story):
    story.tick()
    # Given a new inventory image whose unit tests passed
    story.record(key("inventory", "image"), "sha256:i1", IMAGE_CHECKS_PASSED)
    # when automation ticks, its integration and its first environment are requested together (one run: the
    # deployment takes what the integration passed, or is skipped when it did not pass)
    assert story.tick() == {key("inventory", "integration"), key("inventory", "dev")}
    assert story.tick() == set()
    # and once that run recorded both, neither is started again
    story.record(key("inventory", "integration"), "sha256:i1", {"integration_tests": True})
    story.record(key("inventory", "dev"), "sha256:i1", {"healthy": True})
    assert story.tick() == {key("fleet", "environments")}
    assert story.tick() == set()


def test_a_deployment_that_failed_in_its_integrations_run_is_not_started_again_by_automation(story):
    story.tick()
    story.record(key("inventory", "image"), "sha256:i1", IMAGE_CHECKS_PASSED)
    assert story.tick() == {key("inventory", "integration"), key("inventory", "dev")}
    # Given the run passed the integration and then failed deploying to dev
    result = finish_a_run(story, key("inventory", "dev"), fails=True, tags={"release/service": "inventory"},
                          also=key("inventory", "integration"))
    assert not result.success
    # then automation does not try dev again on its own: release-graph why says it failed, retry runs it again
    for _ in range(2):
        assert key("inventory", "dev") not in story.tick()


def test_a_providers_deployment_that_failed_in_its_integrations_run_does_not_freeze_its_consumer(story):
    story.tick()
    release_to_dev(story, "orders", "sha256:o1")
    release_to_dev(story, "inventory", "sha256:i1")
    story.tick()
    # Given the provider's new release passed its integration and failed to deploy, in one run
    story.record(key("inventory", "image"), "sha256:i2", IMAGE_CHECKS_PASSED)
    story.tick()
    assert not finish_a_run(story, key("inventory", "dev"), fails=True, tags={"release/service": "inventory"},
                            also=key("inventory", "integration")).success
    # when the consumer gets a new image, it is integrated and deployed beside the provider's previous release
    story.record(key("orders", "image"), "sha256:o2", IMAGE_CHECKS_PASSED)
    assert {key("orders", "integration"), key("orders", "dev")} <= story.tick()


def test_a_consumer_is_not_deployed_in_its_integrations_run_while_its_provider_has_a_release_on_the_way(story):
    story.tick()
    release_to_dev(story, "orders", "sha256:o1")
    release_to_dev(story, "inventory", "sha256:i1")
    story.tick()
    # Given a provider's new image whose integration has not run yet, and a new image of its consumer
    story.record(key("inventory", "image"), "sha256:i2", IMAGE_CHECKS_PASSED)
    story.record(key("orders", "image"), "sha256:o2", IMAGE_CHECKS_PASSED)
    requested = story.tick()
    # then the provider's release runs to dev in one run, the consumer's stops after its integration
    assert {key("inventory", "integration"), key("inventory", "dev"), key("orders", "integration")} <= requested
    assert key("orders", "dev") not in requested


def test_a_providers_new_deployment_does_not_redeploy_its_unchanged_consumer(story):
    story.tick()
    release_to_dev(story, "orders", "sha256:o1")
    release_to_dev(story, "inventory", "sha256:i1")
    story.tick()  # the matrix notices both deployments
    # Given a new inventory release reaching dev
    story.record(key("inventory", "image"), "sha256:i2", IMAGE_CHECKS_PASSED)
    assert story.tick() == {key("inventory", "integration"), key("inventory", "dev")}
    story.record(key("inventory", "integration"), "sha256:i2", {"integration_tests": True})
    story.record(key("inventory", "dev"), "sha256:i2", {"healthy": True})
    # then orders/dev is not requested: only its own trigger starts it
    assert key("orders", "dev") not in story.tick()


def test_a_consumers_first_deployment_waits_for_its_providers_first_deployment(story):
    story.tick()
    for service in ("orders", "inventory"):
        story.record(key(service, "image"), f"sha256:{service}1", IMAGE_CHECKS_PASSED)
    # The provider is integrated and deployed in one run; the consumer, whose provider runs nowhere yet, is
    # only integrated
    assert story.tick() == {key("orders", "integration"), key("inventory", "integration"), key("inventory", "dev")}
    story.record(key("orders", "integration"), "sha256:orders1", {"integration_tests": True})
    # and then waits for its provider's deployment, and says so
    assert key("orders", "dev") not in story.tick()
    assert waiting_reason(story.instance, story.fleet, story.fleet.services["orders"], key("orders", "dev")) == (
        "waiting for inventory/dev (provider) to be deployed first")
    story.record(key("inventory", "integration"), "sha256:inventory1", {"integration_tests": True})
    story.record(key("inventory", "dev"), "sha256:inventory1", {"healthy": True})
    # then the consumer follows on the next tick
    assert key("orders", "dev") in story.tick()


def test_a_provider_and_its_consumer_changing_together_deploy_provider_first(story):
    story.tick()
    release_to_dev(story, "orders", "sha256:o1")
    release_to_dev(story, "inventory", "sha256:i1")
    story.tick()
    for service in ("orders", "inventory"):
        story.record(key(service, "image"), f"sha256:{service}2", IMAGE_CHECKS_PASSED)
    story.tick()
    # Given both integrations passed, and the provider's deployment of its new release still to come
    for service in ("orders", "inventory"):
        story.record(key(service, "integration"), f"sha256:{service}2", {"integration_tests": True})
    # The provider goes first; the consumer waits for the provider's new release
    requested = story.tick()
    assert key("orders", "dev") not in requested
    assert "to deploy its new release first" in waiting_reason(
        story.instance, story.fleet, story.fleet.services["orders"], key("orders", "dev"))
    story.record(key("inventory", "dev"), "sha256:inventory2", {"healthy": True})
    assert key("orders", "dev") in story.tick()


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
    approve(story, "inventory", "sha256:i1")
    assert key("inventory", "prod") in story.tick()
    story.record(key("inventory", "prod"), "sha256:i1", {"healthy": True})
    assert key("inventory", "prod") not in story.tick()
    # and a second approval deploys again
    approve(story, "inventory", "sha256:i1")
    assert key("inventory", "prod") in story.tick()


def test_the_environment_matrix_refreshes_after_the_first_deployment(story):
    story.tick()
    release_to_dev(story, "inventory", "sha256:i1")
    # orders has never been deployed anywhere, yet the matrix already shows inventory in dev
    assert key("fleet", "environments") in story.tick()
    assert key("fleet", "environments") not in story.tick()


def finish_a_run(story: Story, asset: dg.AssetKey, *, fails: bool = False, tags: dict[str, str] | None = None,
                 also: dg.AssetKey | None = None) -> dg.ExecuteInProcessResult:
    """A real run of a stand-in for `asset` alone (or after `also`, recorded with the digest of the story's
    newest image and a passing integration check, as an integration's and its first environment's run),
    finished on the story's instance."""
    assets = []
    if also is not None:
        digest = history.latest(story.instance, key(also.path[0], "image")).digest

        @dg.asset(key=also, check_specs=[dg.AssetCheckSpec("integration_tests", asset=also)])
        def before() -> dg.MaterializeResult:
            return dg.MaterializeResult(metadata={"digest": digest}, data_version=dg.DataVersion(digest),
                                        check_results=[dg.AssetCheckResult(passed=True, metadata={"digest": digest})])
        assets.append(before)

    @dg.asset(key=asset, deps=[also] if also else [])
    def stand_in() -> None:
        if fails:
            raise RuntimeError("refused")

    @dg.asset(key=["bystander"])
    def bystander() -> None:
        """Not selected: so the run's asset selection names `asset` alone, as an automation run's does."""

    job = dg.Definitions(assets=[*assets, stand_in, bystander]).resolve_implicit_global_asset_job_def()
    return job.execute_in_process(instance=story.instance, asset_selection=[*([also] if also else []), asset],
                                  raise_on_error=False, tags=tags)


def test_the_environment_matrix_refreshes_after_any_other_run_finished_and_not_after_its_own(story):
    story.tick()
    release_to_dev(story, "inventory", "sha256:i1")
    assert key("fleet", "environments") in story.tick()
    # Given the matrix recorded by a run of its own: that run is no news, not even when it failed
    assert finish_a_run(story, key("fleet", "environments")).success
    assert key("fleet", "environments") not in story.tick()
    assert not finish_a_run(story, key("fleet", "environments"), fails=True).success
    assert key("fleet", "environments") not in story.tick()
    # When another run finishes without a deployment (an e2e result, an approval), what a stage waits for may
    # have changed: the matrix is refreshed, until its own refresh has started
    assert finish_a_run(story, key("inventory", "prod_approval")).success
    assert key("fleet", "environments") in story.tick()
    assert finish_a_run(story, key("fleet", "environments")).success
    assert key("fleet", "environments") not in story.tick()
    # and so it is after a failed run (a refused deployment records nothing)
    assert not finish_a_run(story, key("inventory", "prod"), fails=True).success
    assert key("fleet", "environments") in story.tick()


def test_a_failed_check_of_an_older_digest_does_not_block_a_newer_release(story):
    story.tick()
    # Given inventory's dev deployment of i1 failed its health check
    release_to_dev(story, "inventory", "sha256:i1")
    story.record(key("inventory", "dev"), "sha256:i1", {"healthy": False})
    story.tick()
    # when i2 passes dev and is approved, prod deploys i2: the evidence judged is i2's, not i1's
    release_to_dev(story, "inventory", "sha256:i2")
    story.tick()
    approve(story, "inventory", "sha256:i2")
    assert key("inventory", "prod") in story.tick()


def test_an_approval_waits_while_the_digest_it_names_has_not_passed_the_previous_environment(story):
    story.tick()
    release_to_dev(story, "inventory", "sha256:i1")
    # Given dev's deployment of i2 recorded, but its health check failed
    story.record(key("inventory", "image"), "sha256:i2", IMAGE_CHECKS_PASSED)
    story.record(key("inventory", "integration"), "sha256:i2", {"integration_tests": True})
    story.record(key("inventory", "dev"), "sha256:i2", {"healthy": False})
    story.tick()
    approve(story, "inventory", "sha256:i2")
    # then prod is not requested, on this tick or later ones
    for _ in range(2):
        assert key("inventory", "prod") not in story.tick()


def test_a_rollback_of_dev_does_not_flow_forward(story):
    story.tick()
    release_to_dev(story, "inventory", "sha256:i1")
    release_to_dev(story, "inventory", "sha256:i2")
    story.tick()
    # Given dev rolled back by hand from i2 to i1
    story.instance.report_runless_asset_event(dg.AssetMaterialization(
        asset_key=key("inventory", "dev"), metadata={"digest": "sha256:i1", "rolled_back_from": "sha256:i2"},
        tags={"dagster/data_version": "sha256:i1"}))
    # when prod is approved for what dev runs now, prod is not deployed: a rollback stays where it was made
    approve(story, "inventory", "sha256:i1")
    for _ in range(2):
        assert key("inventory", "prod") not in story.tick()


def test_each_service_is_automated_by_its_own_sensor_so_its_runs_are_its_own(story):
    sensors = {s.name: s for s in story.defs.sensors if isinstance(s, dg.AutomationConditionSensorDefinition)}
    assert set(sensors) == {"release_automation_orders", "release_automation_inventory", "release_automation_fleet"}
    repository = story.defs.get_repository_def()
    cursors: dict[str, str | None] = dict.fromkeys(sensors)

    def tick() -> list[dg.RunRequest]:
        requests = []
        for name, sensor in sensors.items():
            context = dg.build_sensor_context(instance=story.instance, cursor=cursors[name],
                                              repository_def=repository)
            data = sensor.evaluate_tick(context)
            cursors[name] = data.cursor
            requests += data.run_requests or []
        return requests

    tick()
    # Given new images of a provider and its consumer in the same tick
    for service in ("orders", "inventory"):
        story.record(key(service, "image"), f"sha256:{service}1", IMAGE_CHECKS_PASSED)
    requests = tick()
    # then each service's integration is its own run, tagged with its service from launch
    assert sorted((r.tags["release/service"], tuple(sorted(k.to_user_string() for k in r.asset_selection)))
                  for r in requests) == [("inventory", ("inventory/dev", "inventory/integration")),
                                         ("orders", ("orders/integration",))]


E2E_FLEET = """\
fleet: shop
registry: 127.0.0.1:5000/shop
e2e: {context: e2e}
services:
  inventory:
    repo: repos/inventory
    build: {dockerfile: Dockerfile}
environments:
  dev: {target: docker}
  staging: {target: docker}
"""


@pytest.fixture
def e2e_story(tmp_path):
    for folder in ("repos/inventory", "e2e"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "fleet.yaml").write_text(E2E_FLEET)
    defs = build_definitions(load_fleet(tmp_path / "fleet.yaml"),
                             resources={k: dg.ResourceDefinition.none_resource() for k in RESOURCE_KEYS})
    with dg.instance_for_test() as instance:
        story = Story(defs, instance)
        story.defs_path = tmp_path / "fleet.yaml"
        yield story


def record_e2e(story: Story, tested: dict[str, str], passed: bool) -> None:
    fingerprint = "sha256:" + "-".join(sorted(tested.values()))
    story.instance.report_runless_asset_event(dg.AssetMaterialization(
        asset_key=key("fleet", "dev_e2e"), metadata={"digest": fingerprint, "deployed_digests": tested},
        tags={"dagster/data_version": fingerprint}))
    story.instance.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=key("fleet", "dev_e2e"), check_name="e2e_tests", passed=passed, metadata={"digest": fingerprint}))


def test_staging_takes_a_digest_only_after_the_dev_e2e_run_that_tested_it_passed(e2e_story):
    story = e2e_story
    story.tick()
    story.record(key("inventory", "image"), "sha256:i1", IMAGE_CHECKS_PASSED)
    story.record(key("inventory", "dev"), "sha256:i1", {"healthy": True})
    # Given dev runs i1: the e2e tests are requested, staging is not (nothing tested i1 yet)
    requested = story.tick()
    assert key("fleet", "dev_e2e") in requested and key("inventory", "staging") not in requested
    # when an e2e pass is recorded for another tested set, staging still waits
    record_e2e(story, {"inventory": "sha256:i0"}, passed=True)
    assert key("inventory", "staging") not in story.tick()
    # and a failed e2e with i1 keeps it waiting
    record_e2e(story, {"inventory": "sha256:i1"}, passed=False)
    assert key("inventory", "staging") not in story.tick()
    # then once e2e passes with i1 in its tested set, staging takes i1
    record_e2e(story, {"inventory": "sha256:i1"}, passed=True)
    assert key("inventory", "staging") in story.tick()


def test_dora_is_refreshed_after_a_prod_deployment_and_its_runs_are_no_news_to_the_matrix(story):
    story.tick()
    release_to_dev(story, "inventory", "sha256:i1")
    story.tick()
    # Given inventory's release deployed to prod, DORA's figures are refreshed once
    story.record(key("inventory", "prod"), "sha256:i1", {"healthy": True})
    assert key("fleet", "dora") in story.tick()
    assert key("fleet", "dora") not in story.tick()
    # and a run of DORA (with the matrix, or alone) does not make the matrix refresh again
    assert finish_a_run(story, key("fleet", "environments")).success
    story.tick()
    assert finish_a_run(story, key("fleet", "dora")).success
    assert key("fleet", "environments") not in story.tick()


def test_a_new_commits_build_run_goes_on_to_integration_and_dev_when_nothing_can_change_the_rules(story):
    stages = promotion.stages_in_the_image_run
    orders, inventory = story.fleet.services["orders"], story.fleet.services["inventory"]
    # A fleet's first build of a consumer: its provider has no image to start beside it yet, so its build run
    # stops at the image and automation takes over
    assert stages(story.instance, story.fleet, orders, releasing=()) == []
    # A provider with no providers of its own: built, integrated and deployed to dev in one run
    assert stages(story.instance, story.fleet, inventory, releasing=()) == [
        key("inventory", "integration"), key("inventory", "dev")]
    # Once the provider runs in dev, the consumer's new commit goes all the way to dev in its build run too
    release_to_dev(story, "inventory", "sha256:i1")
    assert stages(story.instance, story.fleet, orders, releasing=()) == [
        key("orders", "integration"), key("orders", "dev")]
    # but not while the same Git tick builds its provider too: the provider's new release deploys first, and
    # the consumer's integration starts beside it (automation takes over after the image)
    assert stages(story.instance, story.fleet, orders, releasing={"inventory"}) == []
    # nor, past its integration, while the provider has a newer release on the way to dev
    story.record(key("inventory", "image"), "sha256:i2", IMAGE_CHECKS_PASSED)
    assert stages(story.instance, story.fleet, orders, releasing=()) == [key("orders", "integration")]


def test_after_a_build_run_that_went_on_to_dev_automation_starts_neither_stage_again(story):
    story.tick()
    # Given inventory's build run recorded its image, its integration and its dev deployment
    release_to_dev(story, "inventory", "sha256:i1")
    # then automation has nothing to start for inventory (only the matrix notices the deployment)
    assert story.tick() == {key("fleet", "environments")}
    assert story.tick() == set()


def test_a_deployment_waits_while_its_environments_e2e_run_tests_what_runs_there(e2e_story):
    story = e2e_story
    story.tick()
    story.record(key("inventory", "image"), "sha256:i1", IMAGE_CHECKS_PASSED)
    story.record(key("inventory", "dev"), "sha256:i1", {"healthy": True})
    story.tick()
    # Given staging's own e2e run is under way (testing what staging runs now)
    testing = dg.DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED,
                            asset_selection=frozenset({key("fleet", "staging_e2e")}))
    story.instance.add_run(testing)
    # when dev's e2e passes with i1, staging does not move under that run: it waits, and says why
    record_e2e(story, {"inventory": "sha256:i1"}, passed=True)
    assert key("inventory", "staging") not in story.tick()
    fleet = load_fleet(story.defs_path)
    assert waiting_reason(story.instance, fleet, fleet.services["inventory"], key("inventory", "staging")) == (
        f"waiting for fleet/staging_e2e to finish (run {testing.run_id[:8]}): it tests what runs in staging")
    # then once that run is over, staging takes i1
    story.instance.delete_run(testing.run_id)
    assert key("inventory", "staging") in story.tick()
