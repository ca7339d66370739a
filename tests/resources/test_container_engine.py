"""Release stories for the container-engine adapter, against the real engine (DOCKER_HOST) and registries.

Everything created here carries the run id in its name or repository and the label
`release-graph.test-run=<run id>`; images, tags and registry manifests are removed at teardown.

The "registry that is really stopped" is a `docker-registry serve` this test starts on a free port with its
own config and storage, then stops; the shared registry on 127.0.0.1:5000 stays up for everyone else.
Podman treats a registry it has no registries.conf entry for as TLS, and its API service caches that file
(changing it means restarting the service under every other test). Instead `ContainerEngine.push` passes
Podman's `tlsVerify=false` query parameter for loopback registries, so a registry on any loopback port just
works; Docker ignores the parameter and treats loopback registries as insecure by itself.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import docker
import pytest

from release_graph.security.evidence import parse_junit
from resources.containers import (
    ABANDON_GRACE_SECONDS,
    RELEASE_GRAPH_LABEL,
    BuildError,
    ContainerCrashed,
    ContainerEngine,
    ContainerEngineError,
    ContainerTimeout,
    PushError,
)
from resources.registry import Registry, RegistryUnavailable

pytestmark = pytest.mark.engine

TEST_RUN_LABEL = "release-graph.test-run"
SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")


@pytest.fixture
def engine(docker_client) -> ContainerEngine:
    return ContainerEngine()


@pytest.fixture
def created(docker_client):
    """Registry manifests a test pushed, deleted at teardown (errors printed). Its local images go at the
    session's end (tests/conftest.py): removing one while a parallel build reads the cache breaks that build."""
    made: dict[str, list] = {"manifests": []}
    yield made
    registry = Registry()
    for repository, digest in made["manifests"]:
        try:
            registry.delete(repository, digest)
        except Exception as exc:  # noqa: BLE001 - teardown reports, never masks the test's own failure
            print(f"teardown: could not delete {repository}@{digest}: {exc}")


def write_dockerfile(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Dockerfile").write_text(text)
    return folder


def labels_for(run_id: str, **extra: str) -> dict[str, str]:
    return {TEST_RUN_LABEL: run_id, **extra}


def wait_until_running(docker_client, name: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            container = docker_client.containers.get(name)
            if container.status == "running":
                return container
        except docker.errors.NotFound:
            pass
        time.sleep(0.05)
    raise AssertionError(f"container {name} never started running")


def assert_container_gone(docker_client, name: str) -> None:
    assert docker_client.containers.list(all=True, filters={"name": name}) == []


# --- build and push --------------------------------------------------------------------------------------


def test_given_a_commit_with_a_test_stage_when_built_and_pushed_then_the_registry_serves_the_same_digest(
    engine, created, run_id, registry_addr, tmp_path, docker_client
):
    context = write_dockerfile(
        tmp_path / "ctx",
        f"FROM {registry_addr}/base/busybox:latest AS base\n"
        "ARG GREETING=unset\n"
        'RUN echo "$GREETING" > /greeting\n'
        "FROM base AS test\n"
        "RUN echo test-stage > /stage\n"
        "FROM base AS app\n"
        "RUN echo app-stage > /stage\n",
    )
    repository = f"{registry_addr}/{run_id}/engine-build"
    tag = f"{repository}:{'a' * 40}"
    log_lines: list[str] = []
    labels = labels_for(run_id, **{"org.opencontainers.image.revision": "a" * 40})

    built = engine.build(
        context, dockerfile="Dockerfile", tag=tag, target="test", labels=labels,
        buildargs={"GREETING": f"hello-{run_id}"}, on_log=log_lines.append,
    )

    assert built.tag == tag
    assert SHA256.match(built.image_id)
    assert built.size_bytes > 0 and built.seconds > 0
    assert any("RUN echo test-stage" in line for line in log_lines)
    assert not any("app-stage" in line for line in log_lines)  # the build stopped at the target stage
    assert engine.image_labels(tag).items() >= labels.items()
    # The image holds the target stage and the build argument.
    run = engine.run_to_completion(
        tag, command=["cat", "/stage", "/greeting"], labels=labels_for(run_id),
        name=f"{run_id}-inspect-build", timeout_seconds=60,
    )
    assert (run.exit_code, run.logs_tail.split()) == (0, ["test-stage", f"hello-{run_id}"])

    started = time.monotonic()
    pushed: list[str] = []
    digest = engine.push(tag, on_log=pushed.append)
    created["manifests"].append((repository, digest))
    push_seconds = time.monotonic() - started

    assert SHA256.match(digest)
    assert Registry().manifest_digest(repository, "a" * 40) == digest
    assert any(digest in line for line in pushed)
    print(f"measured: build {built.seconds:.2f} s, push {push_seconds:.2f} s, size {built.size_bytes} bytes")


def test_given_a_dockerfile_whose_run_fails_when_built_then_build_error_shows_the_failing_output(
    engine, created, run_id, registry_addr, tmp_path
):
    context = write_dockerfile(
        tmp_path / "ctx",
        f"FROM {registry_addr}/base/busybox:latest\n"
        f"RUN echo 'compiling {run_id}' && echo 'boom: missing module' && exit 3\n",
    )
    tag = f"{registry_addr}/{run_id}/engine-broken:1"

    with pytest.raises(BuildError) as raised:
        engine.build(context, tag=tag, labels=labels_for(run_id), buildargs={}, on_log=None)

    message = str(raised.value)
    assert f"build of {tag} failed" in message
    assert re.search(r"(exit status|non-zero code:) 3", message)  # Podman's words, then Docker's
    assert "boom: missing module" in message  # the failing step's own output, in the log tail
    assert "boom: missing module" in raised.value.log_tail
    assert raised.value.timed_out is False
    assert engine.local_image_exists(tag) is False


def test_given_a_build_that_outlives_its_deadline_when_built_then_build_error_says_it_timed_out(
    docker_client, created, run_id, registry_addr, tmp_path
):
    # On Podman the RUN in progress finishes in the background (the engine only notices the hang-up between
    # steps); no later step runs and nothing is tagged.
    context = write_dockerfile(
        tmp_path / "ctx",
        f"FROM {registry_addr}/base/busybox:latest\nRUN echo 'waiting {run_id}' && sleep 30\nRUN echo never\n",
    )
    tag = f"{registry_addr}/{run_id}/engine-slow:1"
    engine = ContainerEngine(build_timeout_seconds=3)
    started = time.monotonic()

    with pytest.raises(BuildError) as raised:
        engine.build(context, tag=tag, labels=labels_for(run_id), buildargs={}, on_log=None)

    elapsed = time.monotonic() - started
    assert raised.value.timed_out is True, f"{raised.value}\n{raised.value.log_tail}"  # (the engine's words)
    assert "timed out after 3 s" in str(raised.value)
    assert f"waiting {run_id}" in str(raised.value)
    assert 3 <= elapsed < 3 + ABANDON_GRACE_SECONDS + 2
    assert engine.local_image_exists(tag) is False


def test_given_a_build_context_without_the_dockerfile_when_built_then_build_error_names_the_file(
    engine, run_id, registry_addr, tmp_path
):
    (tmp_path / "ctx").mkdir()

    with pytest.raises(BuildError, match=r"no Dockerfile 'docker/Dockerfile.prod' in build context .*ctx"):
        engine.build(tmp_path / "ctx", dockerfile="docker/Dockerfile.prod", tag=f"{registry_addr}/{run_id}/x:1")


def test_given_the_host_build_lock_held_when_an_image_sharing_no_layers_is_built_then_it_does_not_wait(
    engine, created, run_id, registry_addr, tmp_path
):
    import fcntl
    import hashlib
    import tempfile

    base = f"FROM {registry_addr}/base/busybox:latest\n"
    context = write_dockerfile(tmp_path / "ctx", f"{base}RUN echo {run_id} locked\n")
    own_context = write_dockerfile(tmp_path / "own", f"{base}RUN echo {run_id} shares nothing\n")
    lock_path = Path(tempfile.gettempdir()) / (
        "release-graph-build-" + hashlib.sha1(engine._engine_address().encode()).hexdigest()[:12] + ".lock")
    outcome: dict = {}
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a long build of the fleet would hold it
        try:
            # Given a build that waits for the lock and one that shares no layers
            waiting = threading.Thread(target=lambda: outcome.setdefault("locked", engine.build(
                context, tag=f"{registry_addr}/{run_id}/engine-locked:1", labels=labels_for(run_id))), daemon=True)
            waiting.start()
            # When the one that shares no layers is built, then it finishes while the lock is still held
            built = engine.build(own_context, tag=f"{registry_addr}/{run_id}/engine-unlocked:1",
                                 labels=labels_for(run_id), shares_layers=False)
            assert built.image_id and "locked" not in outcome
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    waiting.join(timeout=120)
    assert outcome["locked"].image_id  # and the other one went on once the lock was free


def test_given_a_test_target_the_dockerfile_lacks_when_built_then_build_error_names_the_target(
    engine, created, run_id, registry_addr, tmp_path
):
    context = write_dockerfile(tmp_path / "ctx", f"FROM {registry_addr}/base/busybox:latest AS app\nRUN true\n")
    tag = f"{registry_addr}/{run_id}/engine-no-test-stage:1"

    # Podman: `The target "test" was not found`; Docker: `failed to reach build target test`.
    with pytest.raises(BuildError, match=r'failed: .*(target "test" was not found|build target test)'):
        engine.build(context, tag=tag, target="test", labels=labels_for(run_id))


def test_given_an_engine_address_nothing_listens_on_when_used_then_the_error_names_the_address(tmp_path):
    address = f"unix://{tmp_path}/no-engine.sock"

    with pytest.raises(ContainerEngineError, match=rf"container engine at {re.escape(address)} did not answer"):
        ContainerEngine(docker_host=address).local_image_exists("127.0.0.1:5000/base/busybox:latest")


def test_given_an_image_the_engine_does_not_have_when_pushed_then_push_error_quotes_the_engines_words(
    engine, run_id, registry_addr
):
    tag = f"{registry_addr}/{run_id}/never-built:1"
    refused = rf"refused by the engine \(404\): .*{re.escape(tag)}.*(image not known|does not exist)"
    with pytest.raises(PushError, match=refused):
        engine.push(tag)


def test_given_a_registry_that_is_stopped_after_a_push_when_pushing_again_then_push_error_names_it(
    engine, busybox_as, created, run_id, registry_addr, tmp_path, free_port, throwaway_registry
):
    address = f"127.0.0.1:{free_port}"
    repository = f"{address}/{run_id}/engine-stopped"
    tag = f"{repository}:1"
    busybox_as(repository, "1")

    with throwaway_registry(tmp_path, free_port) as stop:
        digest = engine.push(tag)
        assert Registry().manifest_digest(repository, "1") == digest
        stop()

        with pytest.raises(PushError) as raised:
            engine.push(tag)
        with pytest.raises(RegistryUnavailable) as unavailable:
            Registry().image_exists(repository, "1")

    assert f"push of {tag} to registry {address} failed: registry {address} did not answer" in str(raised.value)
    assert "connection refused" in str(raised.value)
    assert raised.value.registry == address
    assert f"registry {address} did not answer" in str(unavailable.value)


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        ("127.0.0.1:5000/shop/Orders:1", "repository name must be lowercase"),
        ("127.0.0.1:5000/shop/orders", "a push needs a reference with a tag"),
    ],
)
def test_given_a_malformed_reference_when_pushing_then_push_error_says_why(engine, reference, problem):
    with pytest.raises(PushError, match=problem):
        engine.push(reference)


def test_given_a_tag_the_engine_does_not_have_when_pushing_then_push_error_names_it(engine, run_id, registry_addr):
    tag = f"{registry_addr}/{run_id}/never-built:1"

    with pytest.raises(PushError, match=rf"push of {re.escape(tag)} to registry {re.escape(registry_addr)}"):
        engine.push(tag)


# --- running to completion --------------------------------------------------------------------------------

JUNIT_SCRIPT = """
mkdir -p /reports
cat > /reports/junit.xml <<'XML'
<testsuites><testsuite name="unit" tests="2" time="0.5">
<testcase classname="orders.test_api" name="test_create" time="0.2"/>
<testcase classname="orders.test_api" name="test_total" time="0.3"><failure message="assert 3 == 4"/></testcase>
</testsuite></testsuites>
XML
echo "tests ran for $SERVICE_NAME"
exit 1
"""


def test_given_a_test_container_that_writes_junit_when_run_then_the_report_is_copied_out_and_it_is_removed(
    engine, docker_client, run_id, registry_addr
):
    name = f"{run_id}-unit-tests"

    result = engine.run_to_completion(
        f"{registry_addr}/base/busybox:latest",
        command=["sh", "-c", JUNIT_SCRIPT],
        env={"SERVICE_NAME": f"orders-{run_id}"},
        labels=labels_for(run_id, **{"io.release-graph.step": "unit-tests"}),
        name=name,
        timeout_seconds=60,
        copy_out="/reports",
    )

    # A failing test run is a result, not an exception: the report says which test failed.
    assert result.exit_code == 1
    assert f"tests ran for orders-{run_id}" in result.logs_tail
    assert list(result.files) == ["junit.xml"]
    summary = parse_junit(result.files)
    assert (summary.tests, summary.failed, summary.failing) == (2, 1, ["orders.test_api.test_total"])
    assert_container_gone(docker_client, name)


def test_given_a_container_that_writes_no_reports_when_run_then_no_files_come_back(
    engine, docker_client, run_id, registry_addr
):
    name = f"{run_id}-no-reports"

    result = engine.run_to_completion(
        f"{registry_addr}/base/busybox:latest", command=["true"], labels=labels_for(run_id),
        name=name, timeout_seconds=60, copy_out="/reports",
    )

    assert (result.exit_code, result.files) == (0, {})
    assert_container_gone(docker_client, name)


@pytest.mark.parametrize("intervention", ["kill", "remove"])
def test_given_a_test_container_killed_mid_run_when_waited_for_then_container_crashed_not_a_test_failure(
    engine, docker_client, run_id, registry_addr, intervention
):
    name = f"{run_id}-{intervention}-mid-run"
    seen: dict[str, dict] = {}

    def intervene() -> None:
        container = wait_until_running(docker_client, name)
        seen["labels"] = container.labels
        if intervention == "kill":
            container.kill()
        else:
            container.remove(force=True)

    other = threading.Thread(target=intervene)
    other.start()
    try:
        with pytest.raises(ContainerCrashed) as raised:
            engine.run_to_completion(
                f"{registry_addr}/base/busybox:latest",
                command=["sh", "-c", "echo 'running tests'; sleep 60"],
                labels=labels_for(run_id), name=name, timeout_seconds=60, copy_out="/reports",
            )
    finally:
        other.join(30)

    message = str(raised.value)
    expected = "was killed by SIGKILL (exit 137) before it finished" if intervention == "kill" else "was removed"
    assert expected in message and name in message
    assert not isinstance(raised.value, ContainerTimeout)
    assert seen["labels"][RELEASE_GRAPH_LABEL] == "1" and seen["labels"][TEST_RUN_LABEL] == run_id
    assert_container_gone(docker_client, name)


def test_given_a_container_that_hangs_when_its_timeout_passes_then_it_is_killed_and_the_error_says_so(
    engine, docker_client, run_id, registry_addr
):
    name = f"{run_id}-hangs"
    started = time.monotonic()

    with pytest.raises(ContainerTimeout) as raised:
        engine.run_to_completion(
            f"{registry_addr}/base/busybox:latest", command=["sh", "-c", "echo 'stuck on a lock'; sleep 600"],
            labels=labels_for(run_id), name=name, timeout_seconds=2,
        )

    assert "did not finish within 2 s and was killed" in str(raised.value)
    assert "stuck on a lock" in raised.value.logs_tail
    assert time.monotonic() - started < 15
    assert_container_gone(docker_client, name)


def test_given_an_image_the_engine_does_not_have_when_run_then_a_clear_error(engine, run_id, registry_addr):
    image = f"{registry_addr}/{run_id}/not-built:1"

    with pytest.raises(ContainerEngineError, match=re.escape(image)):
        engine.run_to_completion(image, labels=labels_for(run_id), name=f"{run_id}-no-image", timeout_seconds=10)


# --- images, networks, clean-up ---------------------------------------------------------------------------


def test_given_a_local_tag_when_removed_then_it_is_gone_and_removing_again_says_so(
    engine, busybox_as, created, run_id, registry_addr
):
    repository = f"{registry_addr}/{run_id}/engine-remove"
    busybox_as(repository, "1")

    assert engine.local_image_exists(f"{repository}:1") is True
    assert engine.remove_image(f"{repository}:1") is True
    assert engine.local_image_exists(f"{repository}:1") is False
    assert engine.remove_image(f"{repository}:1") is False
    with pytest.raises(ContainerEngineError, match=rf"image {re.escape(repository)}:1 is not in the engine"):
        engine.image_labels(f"{repository}:1")


def test_given_leftovers_with_a_label_when_pruned_then_containers_and_networks_with_it_are_removed(
    engine, docker_client, run_id, registry_addr
):
    prune_label = f"release-graph.prune-test={run_id}"
    labels = labels_for(run_id, **{"release-graph.prune-test": run_id})
    network_name = f"{run_id}-prune-net"
    engine.create_network(network_name, labels=labels)
    docker_client.containers.create(
        f"{registry_addr}/base/busybox:latest", command=["sleep", "60"], name=f"{run_id}-prune-me",
        labels=labels, network=network_name,
    )
    bystander = docker_client.containers.create(
        f"{registry_addr}/base/busybox:latest", command=["true"], name=f"{run_id}-bystander",
        labels=labels_for(run_id),
    )
    try:
        assert docker_client.networks.get(network_name).attrs["Labels"][RELEASE_GRAPH_LABEL] == "1"

        result = engine.prune(prune_label)

        assert (result.containers, result.networks) == ([f"{run_id}-prune-me"], [network_name])
        assert docker_client.networks.list(names=[network_name]) == []
        assert_container_gone(docker_client, f"{run_id}-prune-me")
        assert docker_client.containers.get(bystander.id).name == f"{run_id}-bystander"
    finally:
        bystander.remove(force=True)
    with pytest.raises(ValueError, match="refusing to remove everything"):
        engine.prune("")
