"""Commit to image, for real: a commit on a demo repo, the Git sensor's tick, the run it requests, the image
in the registry under the SHA with its digest as data version, and the evidence as checks."""

from __future__ import annotations

import functools
import subprocess
import threading
import time

import dagster as dg
import pytest

from release_graph.assets.image import BUILD_PROGRESS_LINE, export_build_context, image_labels
from release_graph.security import evidence

INVENTORY_IMAGE = dg.AssetKey(["inventory", "image"])


def build_first_release(world):
    result = world.tick("git_commits")
    (request,) = result.run_requests
    run = world.execute(request)
    return request, run


@pytest.mark.engine
def test_a_commit_becomes_an_image_tagged_with_its_sha_and_its_tests_pass(release_world_factory):
    world = release_world_factory(["inventory"])
    # Given the inventory repo with one commit, when the sensor ticks for the first time
    request, run = build_first_release(world)
    sha = request.tags["release/git_sha"]
    assert request.run_key == f"inventory:{sha}"
    assert run.success, run.all_events
    # then the image is in the registry under the SHA, and its digest is the asset's data version
    repository = world.fleet.services["inventory"].image_repository(world.fleet)
    digest = world.registry.manifest_digest(repository, sha)
    record = world.latest(INVENTORY_IMAGE)
    assert digest and record.digest == digest
    assert record.value("git_sha") == sha and record.value("built") is True
    assert record.value("author") and record.value("commit_message").startswith("Import inventory")
    event = world.instance.get_latest_materialization_event(INVENTORY_IMAGE)
    assert event.asset_materialization.tags["dagster/data_version"] == digest
    # and the unit tests ran in the container's test stage, their JUnit report parsed
    unit = world.check_evaluation(INVENTORY_IMAGE, "unit_tests")
    assert unit.passed and unit.metadata["failed"].value == 0 and unit.metadata["tests"].value >= 3
    assert unit.metadata["digest"].value == digest
    assert world.check_evaluation(INVENTORY_IMAGE, "sast").passed
    assert world.check_evaluation(INVENTORY_IMAGE, "dockerfile_lint") is not None


@pytest.mark.engine
def test_a_second_build_of_the_same_sha_runs_no_engine_build_and_keeps_the_data_version(
    release_world_factory, engine_builds
):
    builds = engine_builds
    world = release_world_factory(["inventory"])
    request, run = build_first_release(world)
    assert run.success
    first = world.latest(INVENTORY_IMAGE)
    before = len(builds)
    # When someone asks for the same SHA again (the UI, the CLI)
    again = world.materialize([INVENTORY_IMAGE], tags=request.tags)
    assert again.success
    # then no image is built (not even the test stage), and the data version is the same digest
    assert len(builds) == before
    second = world.latest(INVENTORY_IMAGE)
    assert second.digest == first.digest and second.value("built") is False
    assert second.run_id != first.run_id


@pytest.mark.engine
def test_an_image_whose_push_failed_is_pushed_by_the_next_attempt_not_built_again(
    release_world_factory, engine_builds, tmp_path
):
    world = release_world_factory(["inventory"])
    (request,) = world.tick("git_commits").run_requests
    sha = request.tags["release/git_sha"]
    service = world.fleet.services["inventory"]
    reference = f"{service.image_repository(world.fleet)}:{sha}"
    # Given an attempt that built the commit's image and then could not push it (the registry was down)
    engine = world.resources["engine"]
    context_dir = export_build_context(world.resources["git"], service, sha, tmp_path / "export")
    earlier = engine.build(context_dir, tag=reference, target=service.build.target,
                           labels=image_labels(world.fleet, service, sha), buildargs={"GIT_SHA": sha})
    assert world.registry.manifest_digest(service.image_repository(world.fleet), sha) is None
    before = len(engine_builds)
    # When the stage runs again
    run = world.execute(request)
    assert run.success, world.failures(run)
    # then it pushed that image and built nothing (the unit tests' stage is built as always, and so is the
    # integration tests' stage: the build run went on to the integration)
    test_stages = tuple(f"-{target}" for target in (service.build.test_target, service.build.integration_target)
                        if target)
    assert [tag for tag in engine_builds[before:] if not tag.endswith(test_stages)] == []
    record = world.latest(INVENTORY_IMAGE)
    assert record.digest == world.registry.manifest_digest(service.image_repository(world.fleet), sha)
    assert record.value("built") is True and record.value("git_sha") == sha
    assert engine.client().images.get(reference).id == earlier.image_id


@pytest.mark.engine
def test_a_commit_that_breaks_a_unit_test_fails_the_blocking_check_with_the_tests_name(release_world_factory):
    world = release_world_factory(["inventory"])
    build_first_release(world)
    # Given a new commit that breaks a unit test
    commit = world.commit("inventory", breakage="unit-test")
    result = world.tick("git_commits")
    (request,) = result.run_requests
    assert request.tags["release/git_sha"] == commit.sha
    run = world.execute(request)
    # then the image is recorded (Dagster records the asset) but the blocking check failed, naming the test
    assert not run.success
    assert world.latest(INVENTORY_IMAGE).git_sha == commit.sha
    unit = world.check_evaluation(INVENTORY_IMAGE, "unit_tests")
    assert unit.passed is False
    assert unit.metadata["failed"].value >= 1
    assert "test_this_commit_breaks_the_unit_tests" in unit.metadata["failing_tests"].value


@pytest.mark.engine
def test_without_bandit_the_sast_check_errors_instead_of_passing(release_world_factory, monkeypatch, tmp_path):
    world = release_world_factory(["inventory"])
    empty_bin = tmp_path / "no-tools"
    empty_bin.mkdir()
    # Given a host where bandit is not installed
    monkeypatch.setattr(evidence, "run_bandit", functools.partial(evidence.run_bandit, bin_dir=empty_bin))
    request, run = build_first_release(world)
    # then the check could not run: an execution error, never a pass
    assert not run.success
    assert world.check_status(INVENTORY_IMAGE, "sast") is not None  # it was planned ...
    assert world.check_evaluation(INVENTORY_IMAGE, "sast") is None  # ... and never produced a verdict
    failure = world.failures(run)["inventory__image_sast"]
    assert "bandit" in failure and "not installed" in failure.lower() or "missing" in failure.lower()


@pytest.mark.engine
def test_a_killed_test_container_errors_the_unit_test_check(release_world_factory, docker_client):
    world = release_world_factory(["inventory"])
    build_first_release(world)
    # Given a commit whose unit tests take long enough to be interrupted
    slow_test = world.repos / "inventory" / "tests" / "unit" / "test_slow.py"
    slow_test.write_text("import time, unittest\n\n\nclass Slow(unittest.TestCase):\n"
                         "    def test_takes_a_minute(self):\n        time.sleep(60)\n")
    git = ["git", "-C", str(world.repos / "inventory")]
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "slow"],
                   check=True)
    (request,) = world.tick("git_commits").run_requests
    stop = threading.Event()

    def kill_the_test_container():
        while not stop.is_set():
            for container in docker_client.containers.list(filters={"name": f"rg-unit-{world.fleet.name}-inventory-"}):
                container.kill()
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_the_test_container, daemon=True)
    killer.start()
    try:
        run = world.execute(request)
    finally:
        stop.set()
        killer.join(timeout=5)
    # then the check errors (the container crashed), it is not a failed test and never a pass
    assert not run.success
    failure = world.failures(run)["inventory__image_unit_tests"].lower()
    assert "crash" in failure or "killed" in failure or "signal" in failure, failure
    assert world.check_evaluation(INVENTORY_IMAGE, "unit_tests") is None  # no verdict for this commit


@pytest.mark.parametrize("line", [
    "[1/4] STEP 1/5: FROM 127.0.0.1:5000/base/python:bookworm AS base",  # Podman, a multi-stage build
    "STEP 2/5: RUN useradd shop",
    "Step 1/8 : FROM python",  # Docker
    "[4/4] COMMIT 127.0.0.1:5000/shop/inventory:0123abc",
    "Successfully built 333d93a76ab8",
])
def test_build_progress_lines_become_events_in_the_run(line):
    assert BUILD_PROGRESS_LINE.match(line)


@pytest.mark.parametrize("line", ["--> Using cache 2fe5896639657b13", "Copying blob sha256:abc", "ok"])
def test_other_build_output_stays_in_the_steps_stdout(line):
    assert not BUILD_PROGRESS_LINE.match(line)
