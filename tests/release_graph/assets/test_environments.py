"""Environments and promotion, for real: images built from commits flow through integration into dev and
staging on their own, after their providers; prod waits for an approval of exactly what staging runs."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from release_graph.assets import retry

PAYMENTS_KEY_VARIABLE = "RG_TEST_PAYMENTS_API_KEY"
ENVIRONMENTS = f"""\
  dev:
    target: docker
    secrets: {{payments: {{PAYMENTS_API_KEY: {{env: {PAYMENTS_KEY_VARIABLE}}}}}}}
  staging:
    target: docker
    secrets: {{payments: {{PAYMENTS_API_KEY: {{env: {PAYMENTS_KEY_VARIABLE}}}}}}}
  prod:
    target: docker
    approval: required
    secrets: {{payments: {{PAYMENTS_API_KEY: {{env: {PAYMENTS_KEY_VARIABLE}}}}}}}
"""
# The integration stage's own key for payments (never an environment's)
TEST_KEY_VARIABLE = "RG_TEST_PAYMENTS_TEST_KEY"
INTEGRATION = f"""\
integration:
  secrets: {{payments: {{PAYMENTS_API_KEY: {{env: {TEST_KEY_VARIABLE}}}}}}}
"""
SERVICES = ["inventory", "payments", "orders"]


def key(*path: str) -> dg.AssetKey:
    return dg.AssetKey(list(path))


def materializations(world, asset: dg.AssetKey) -> int:
    return len(world.instance.fetch_materializations(asset, limit=100).records)


def build_new_commit(world, service: str, **kwargs):
    commit = world.commit(service, **kwargs)
    (request,) = world.tick("git_commits").run_requests
    world.execute(request)
    return commit


@pytest.mark.engine
def test_an_image_whose_health_fails_leaves_the_running_version_serving(release_world_factory):
    # Given inventory running in dev (deployed straight from its image: no integration stage here)
    world = release_world_factory(["inventory"], environments="  dev: {target: docker}", integration=False)
    world.automate()
    for request in world.tick("git_commits").run_requests:
        world.execute(request)
    world.automate()
    target = world.target()
    before = target.running(world.fleet.name, "dev", "inventory")
    assert before is not None and before.running
    # When a commit makes /healthz answer 500
    build_new_commit(world, "inventory", breakage="health")
    runs = world.automate()
    # then the deployment fails with the reason and the container's last log lines
    failure = "\n".join(world.failures(run).get("inventory__dev", "") for _, run in runs)
    assert "500" in failure and "health" in failure.lower()
    # and the previous version still serves
    after = target.running(world.fleet.name, "dev", "inventory")
    assert after.container_id == before.container_id and after.running
    assert world.latest(key("inventory", "dev")).digest == before.digest


@pytest.mark.engine
def test_a_registry_that_is_really_stopped_fails_the_build_naming_it_and_promotes_nothing(
    release_world_factory, throwaway_registry, free_port, tmp_path, monkeypatch
):
    # The step's six attempts, one second apart instead of about three minutes (the waits themselves are
    # proven on the real daemon by tests/stories/test_transient_faults.py)
    monkeypatch.setattr(retry, "FIRST_WAIT_SECONDS", 1)
    monkeypatch.setattr(retry, "LONGEST_WAIT_SECONDS", 1)
    (tmp_path / "registry").mkdir()
    with throwaway_registry(tmp_path / "registry", free_port) as stop_registry:
        world = release_world_factory(["inventory"], environments="  dev: {target: docker}", integration=False,
                                      registry_host=f"127.0.0.1:{free_port}")
        world.automate()
        (request,) = world.tick("git_commits").run_requests
        world.execute(request)
        first = world.latest(key("inventory", "image"))
        assert first is not None and first.digest
        # Given the fleet's registry is stopped, when a new commit is built
        stop_registry()
        world.commit("inventory")
        (request,) = world.tick("git_commits").run_requests
        run = world.execute(request)
        # then the step fails naming the registry it could not reach; nothing new is recorded or promoted
        assert not run.success
        assert f"127.0.0.1:{free_port}" in world.failures(run)["inventory__image"]
        assert "still down after 6 attempts, not the commit's fault" in world.failures(run)["inventory__image"]
        assert world.latest(key("inventory", "image")).digest == first.digest


# --- The shared world ------------------------------------------------------------------------------------------
# Releasing the fleet (3 services built, integration-tested, deployed to dev and staging) takes 75-150 s on a 2-core
# host, so the tests below share ONE released world instead of building one each. They run on one xdist worker, in
# the order of this file (`--dist loadgroup --no-loadscope-reorder`), each from where the previous one left it, so
# each reads the state it starts from instead of assuming the first release, and the order matters: the
# provider-to-prod story needs prod untouched; commits of inventory must come before the one that breaks its
# integration tests (the breakage stays at its head); the stopped staging container comes last.
SHARED_WORLD = pytest.mark.xdist_group("environments-shop")


@pytest.fixture(scope="module")
def payments_key() -> str:
    """payments' key in every environment, and the integration stage's own key: set for the whole module, since
    the shared world deploys payments in any of its tests."""
    with pytest.MonkeyPatch.context() as patch:
        value = "pk-" + os.urandom(12).hex()
        patch.setenv(PAYMENTS_KEY_VARIABLE, value)
        patch.setenv(TEST_KEY_VARIABLE, "test-" + os.urandom(12).hex())
        yield value


@pytest.fixture(scope="module")
def shop(module_release_world_factory, payments_key):
    """inventory, payments and orders released to dev and staging (prod needs an approval): one world for the tests
    of this module marked SHARED_WORLD, built once."""
    world = module_release_world_factory(SERVICES, environments=ENVIRONMENTS, extra_top=INTEGRATION)
    world.automate()  # the automation sensor runs from the start: its first tick only initialises
    for request in world.tick("git_commits").run_requests:
        assert world.execute(request).success
    runs = world.automate()
    failed = {k: v for _, run in runs for k, v in world.failures(run).items()}
    assert not failed, failed
    return world


@pytest.mark.engine
@SHARED_WORLD
def test_a_provider_commit_reaches_staging_alone_and_prod_waits_for_an_approval(shop, payments_key, assert_nowhere):
    world = shop
    # (the shared world's first test: the only one that deploys to prod, which it needs untouched)
    # Given the fleet released: every service runs in dev and staging, nothing in prod
    for service in SERVICES:
        for env in ("dev", "staging"):
            assert world.latest(key(service, env)) is not None, f"{service}/{env}"
        assert world.latest(key(service, "prod")) is None
    orders_deploys = materializations(world, key("orders", "staging"))

    # When a new commit lands on inventory (a provider of orders)
    commit = build_new_commit(world, "inventory")
    runs = world.automate()
    assert all(run.success for _, run in runs), world.failures(runs[-1][1])
    # then the new digest reaches staging on its own, built once and never rebuilt
    image = world.latest(key("inventory", "image"))
    assert image.git_sha == commit.sha
    for stage in ("integration", "dev", "staging"):
        assert world.latest(key("inventory", stage)).digest == image.digest, (stage, [r[0] for r in runs])
    # its consumer is not redeployed and prod does not move
    assert materializations(world, key("orders", "staging")) == orders_deploys
    assert world.latest(key("inventory", "prod")) is None

    # An approval of another digest is refused ...
    refused = world.approve("inventory", "prod", digest="sha256:" + "0" * 64)
    assert not refused.success
    assert "runs " + image.digest in world.failures(refused)["inventory__prod_approval"]
    # ... one of the digest staging runs deploys exactly that digest to prod
    assert world.approve("inventory", "prod").success
    world.automate()
    prod = world.latest(key("inventory", "prod"))
    assert prod.digest == image.digest and prod.value("approved_by") == "release@shop.example"
    running = world.target().running(world.fleet.name, "prod", "inventory")
    assert running.digest == image.digest and running.digest_matches

    # The secret reached payments (its hash is served) and appears nowhere in Dagster's storage
    payments = world.target().running(world.fleet.name, "staging", "payments")
    with urllib.request.urlopen(f"http://{payments.address}:8080/secret-hash", timeout=5) as response:
        assert json.load(response)["sha256"] == hashlib.sha256(payments_key.encode()).hexdigest()
    assert_nowhere(Path(world.instance.root_directory), payments_key)


@pytest.mark.engine
@SHARED_WORLD
def test_when_a_provider_and_its_consumer_change_the_providers_staging_deploy_finishes_first(shop):
    world = shop
    # Given inventory and orders run in staging what they last built (whatever the tests before this one released)
    for service in ("inventory", "orders"):
        assert world.latest(key(service, "staging")).digest == world.latest(key(service, "image")).digest, service
    # When both change at once
    for service in ("inventory", "orders"):
        world.commit(service)
    for request in world.tick("git_commits").run_requests:
        assert world.execute(request).success
    runs = world.automate()
    # Each service's staging deployment is a run of its own, and the provider's finished before the consumer's
    (provider_run,) = [run for keys, run in runs if key("inventory", "staging") in keys]
    (consumer_run,) = [run for keys, run in runs if key("orders", "staging") in keys]
    assert provider_run.run_id != consumer_run.run_id
    assert provider_run.dagster_run.tags["release/service"] == "inventory"

    def step_time(run, step: str, success: bool) -> float:
        return next(e.timestamp for e in world.instance.all_logs(run.run_id) if e.dagster_event and e.step_key == step
                    and (e.dagster_event.is_step_success if success else e.dagster_event.is_step_start))

    assert step_time(provider_run, "inventory__staging", True) <= step_time(consumer_run, "orders__staging", False)
    assert world.latest(key("orders", "staging")).git_sha == world.latest(key("orders", "image")).git_sha


@pytest.mark.engine
@SHARED_WORLD
def test_a_failing_integration_test_stops_the_release_before_dev(shop):
    world = shop
    # (after the shared world's other inventory commits: the breakage stays at inventory's head)
    # Given dev runs inventory's latest image (whatever the tests before this one released)
    deployed = world.latest(key("inventory", "dev")).digest
    assert deployed == world.latest(key("inventory", "image")).digest
    # and a commit whose integration tests fail, built into a new image
    build_new_commit(world, "inventory", breakage="integration-test")
    assert world.latest(key("inventory", "image")).digest != deployed
    world.automate()
    check = world.check_evaluation(key("inventory", "integration"), "integration_tests")
    assert check.passed is False and "test_this_commit_breaks_the_integration_tests" in \
        check.metadata["failing_tests"].value
    # then dev keeps the previous digest, now and on later ticks
    for _ in range(2):
        world.automate()
        assert world.latest(key("inventory", "dev")).digest == deployed


@pytest.mark.engine
@SHARED_WORLD
def test_a_missing_secret_fails_the_deployment_before_anything_stops(shop):
    world = shop
    before = world.target().running(world.fleet.name, "dev", "payments")
    assert before is not None and before.running
    # The key is gone while payments' commit is released, and back for the shared world's next tests
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(PAYMENTS_KEY_VARIABLE)
        world.commit("payments")
        (request,) = world.tick("git_commits").run_requests
        runs = [(request, world.execute(request)), *world.automate()]
    # (the integration stage has its own secret and passes; dev, which the build run may go on to, refuses)
    failure = "\n".join(text for _, run in runs for text in world.failures(run).values())
    assert PAYMENTS_KEY_VARIABLE in failure and "service payments in environment dev" in failure, failure
    assert world.latest(key("payments", "integration")).git_sha == world.latest(key("payments", "image")).git_sha
    after = world.target().running(world.fleet.name, "dev", "payments")
    assert after.container_id == before.container_id and after.running


@pytest.mark.engine
@SHARED_WORLD
def test_stopping_a_staging_container_by_hand_fails_in_sync_at_the_next_observation(shop, docker_client):
    world = shop
    # (the shared world's last test: orders' staging container stays stopped)
    world.tick("environment_drift")
    assert world.check_evaluation(key("orders", "staging"), "in_sync").passed
    running = world.target().running(world.fleet.name, "staging", "orders")
    docker_client.containers.get(running.container_id).stop(timeout=1)
    world.tick("environment_drift")
    evaluation = world.check_evaluation(key("orders", "staging"), "in_sync")
    assert evaluation.passed is False and "exited" in evaluation.metadata["drift"].value
