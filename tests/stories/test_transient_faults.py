"""Transient faults on the living system: the demo (reduced to inventory) on the real daemon, with a registry
and a Docker-API endpoint of its own, so stopping them touches no other test on this machine.

A release manager's story, scripted: the registry stops while a commit's image is being built and comes
back; the engine's API stops, a commit lands meanwhile, and the API comes back; `dagster dev` itself is
killed with its processes while a dev deployment runs, and started again. Each commit still reaches staging
with no new commit and no manual step, each failure first says what was down, and no image is built twice.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from release_graph import demo
from release_graph.release import history
from release_graph.release.keys import environment_key, image_key
from release_graph.release.tags import SHA_TAG
from release_graph.release.why import BLOCKED, FAILED, RUNNING, WAITING, process_death, stage_status

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("live-transient")]

SERVICE = "inventory"
FIRST_BUILD_SECONDS = 180  # dagster dev starts, the Git sensor's first tick, the run starts
HEAL_SECONDS = 300  # the steps' own backoff rides out about three minutes of outage
OUTAGE_SECONDS = 15  # long enough for a failed attempt and its first backoff (10 s)
AUTO_RETRY_RUN_ID_TAG = "dagster/auto_retry_run_id"  # set by Dagster on a run it ran again


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RegistryProcess:
    """`docker-registry serve` on a free loopback port with its own storage: a registry this story may stop."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.address = f"127.0.0.1:{free_port()}"
        self.process: subprocess.Popen | None = None
        folder.mkdir(parents=True)
        (folder / "registry.yml").write_text(
            "version: 0.1\nlog: {level: warn}\n"
            f"storage:\n  filesystem: {{rootdirectory: {folder / 'storage'}}}\n  delete: {{enabled: true}}\n"
            f"http:\n  addr: {self.address}\n")

    def answers(self) -> bool:
        try:
            urllib.request.urlopen(f"http://{self.address}/v2/", timeout=1).close()
            return True
        except OSError:
            return False

    def start(self) -> None:
        with open(self.folder / "registry.log", "ab") as log:
            self.process = subprocess.Popen(["docker-registry", "serve", str(self.folder / "registry.yml")],
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_until(self.answers, 10, f"the registry on {self.address}")

    def stop(self) -> None:
        _stop(self.process)


class EngineService:
    """`podman system service` on a socket of its own, over the host's podman storage: stopping it stops only
    this API endpoint, never the containers (conmon keeps them). Its registries.conf marks `insecure_registry`
    as plain HTTP, as scripts/setup_host.sh does for the host's registry: Podman 4.3 pulls ignore the API's
    `tlsVerify=false` (pushes honour it)."""

    def __init__(self, folder: Path, insecure_registry: str):
        self.folder = folder
        self.socket = folder / "engine.sock"
        self.url = f"unix://{self.socket}"
        self.process: subprocess.Popen | None = None
        folder.mkdir(parents=True)
        self.registries_conf = folder / "registries.conf"
        self.registries_conf.write_text(f'[[registry]]\nlocation = "{insecure_registry}"\ninsecure = true\n')

    def answers(self) -> bool:
        done = subprocess.run(["curl", "-fsS", "--max-time", "2", "--unix-socket", str(self.socket), "http://d/_ping"],
                              capture_output=True)
        return done.returncode == 0

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        with open(self.folder / "engine.log", "ab") as log:
            self.process = subprocess.Popen(["podman", "system", "service", "--time=0", self.url],
                                            env={**os.environ, "CONTAINERS_REGISTRIES_CONF": str(self.registries_conf)},
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_until(self.answers, 20, f"podman's API on {self.socket}")

    def stop(self) -> None:
        _stop(self.process)


def _stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not answer within {seconds:.0f} s")
        time.sleep(0.1)


@pytest.fixture
def own_registry(tmp_path):
    registry = RegistryProcess(tmp_path / "registry")
    registry.start()
    yield registry
    registry.stop()
    shutil.rmtree(registry.folder, ignore_errors=True)


@pytest.fixture
def own_engine(run_id, docker_client, own_registry):
    engine = EngineService(Path(f"/tmp/{run_id}-engine"), own_registry.address)  # a socket path must stay short
    engine.start()
    yield engine
    engine.stop()
    shutil.rmtree(engine.folder, ignore_errors=True)


@pytest.fixture
def live_settings(live_settings, own_registry, own_engine, docker_client, run_id):
    # The Dockerfiles build FROM the host registry's base images, with pull=False: the shared podman storage
    # already holds them (scripts/setup_host.sh), so pushes go to this story's registry and nothing is pulled.
    for base in base_images():
        docker_client.images.get(base)
    settings = dataclasses.replace(live_settings, registry=own_registry.address, env={"DOCKER_HOST": own_engine.url},
                                   name="transient")
    return settings  # its images go at the session's end (tests/conftest.py)


def base_images() -> set[str]:
    dockerfile = Path(__file__).resolve().parents[2] / "examples" / "shop" / "services" / SERVICE / "Dockerfile"
    return {line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("FROM ")
            and "/" in line.split()[1]}


def run_process(home: Path, run_id: str) -> int | None:
    """The pid of the process executing a run (with the default run launcher, a child of the code server): while
    it executes, its stdout is the run's compute log, `$DAGSTER_HOME/storage/<run id>/compute_logs/<key>.out`."""
    marker = f"{home}/storage/{run_id}/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stdout = os.readlink(entry / "fd" / "1")
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if stdout.startswith(marker) and b"python" in command:
            return int(entry.name)
    return None


def test_transient_faults_heal_without_a_new_commit_or_a_manual_step(live, own_registry, own_engine, monkeypatch):
    live.keep_only(SERVICE)
    monkeypatch.setenv("DAGSTER_HOME", str(live.home))
    # (a)'s commit is new when the daemon starts, so the Git sensor's first tick builds it: no fault-free release
    # comes first, which would make the story a release longer.
    sha_a = demo.commit_change(SERVICE, live.fleet_dir / ".repos").sha
    story_started = time.monotonic()
    live.start()
    fleet = live.fleet
    service = fleet.services[SERVICE]
    repository = service.image_repository(fleet)
    assert repository.startswith(own_registry.address)
    with dg.DagsterInstance.get() as instance:
        def digest(stage: str) -> str | None:
            key = image_key(SERVICE) if stage == "image" else environment_key(SERVICE, stage)
            record = history.latest(instance, key)
            return record.digest if record else None

        def in_staging(sha: str) -> bool:
            image = history.latest(instance, image_key(SERVICE))
            return bool(image and image.git_sha == sha and digest("staging") == image.digest)

        def image_run(sha: str) -> dg.DagsterRun | None:
            runs = instance.get_runs(filters=dg.RunsFilter(tags={SHA_TAG: sha}), limit=20)
            return next((r for r in reversed(runs) if image_key(SERVICE) in (r.asset_selection or ())), None)

        def warnings_of(run_id: str, words: str) -> list[str]:
            return [m for m in live.log_messages(instance, run_id) if words in m]

        report = {}

        # (a) When the registry stops while a new commit's image is being built, and comes back `OUTAGE_SECONDS` later
        building = {}

        def build_started() -> bool:  # the build's first progress line (`[1/4] STEP 1/5: FROM ...`)
            run = image_run(sha_a)
            if run and any(re.match(r"(\[\d+/\d+\] )?STEP 1/", m) for m in live.log_messages(instance, run.run_id)):
                building["run"] = run
                return True
            return False

        live.wait_for("the build of commit a", build_started, FIRST_BUILD_SECONDS, instance)
        own_registry.stop()
        stopped = time.monotonic()
        run_a = building["run"].run_id
        # then the run says first what is down, and waits instead of failing
        live.wait_for("a's run naming the registry", lambda: warnings_of(run_a, "did not answer"), 60, instance)
        seen_a = warnings_of(run_a, "did not answer")[0]
        assert "the registry did not answer" in seen_a and own_registry.address in seen_a, seen_a
        assert "not the commit's fault" in seen_a, seen_a
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))
        own_registry.start()
        restarted = time.monotonic()
        # and once it is back, the same commit reaches staging
        live.wait_for("commit a in staging", lambda: in_staging(sha_a), HEAL_SECONDS, instance)
        # by the same run (no new run, nobody did anything), built once: the attempt after the outage pushed the
        # image that the first attempt had built
        assert history.latest(instance, image_key(SERVICE)).run_id == run_a
        built = live.builds_in(instance, run_a, SERVICE)
        assert built == 1, f"commit a was built {built} times in {run_a}"
        report["a (registry stopped during the build)"] = (seen_a, time.monotonic() - restarted)

        # (b) When the engine's API stops and a commit lands while it is down, and the API comes back later
        own_engine.stop()
        stopped = time.monotonic()
        sha_b = demo.commit_change(SERVICE, live.fleet_dir / ".repos").sha
        live.wait_for("b's run naming the engine", lambda: image_run(sha_b) and warnings_of(
            image_run(sha_b).run_id, "did not answer"), 120, instance)
        seen_b = warnings_of(image_run(sha_b).run_id, "did not answer")[0]
        assert "container engine" in seen_b and str(own_engine.socket) in seen_b, seen_b
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))
        own_engine.start()
        restarted = time.monotonic()
        live.wait_for("commit b in staging", lambda: in_staging(sha_b), HEAL_SECONDS, instance)
        assert history.latest(instance, image_key(SERVICE)).run_id == image_run(sha_b).run_id
        report["b (engine API stopped, commit made meanwhile)"] = (seen_b, time.monotonic() - restarted)

        # (c) When `dagster dev` itself is killed (its daemon, code server and run processes: a machine restart, an
        # OOM kill of the process group) while a run deploys a new commit to dev, and started again
        sha_c = demo.commit_change(SERVICE, live.fleet_dir / ".repos").sha
        dev = environment_key(SERVICE, "dev")
        live.wait_for("commit c's image", lambda: history.latest(instance, image_key(SERVICE)).git_sha == sha_c,
                      HEAL_SECONDS, instance)
        victim = {}

        def dev_deployment_running() -> bool:  # its step started, and its process is at work
            for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]), limit=10):
                if dev not in (run.asset_selection or ()):
                    continue
                started = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_START).records
                if any(r.event_log_entry.step_key == f"{SERVICE}__dev" for r in started):
                    victim.update(run=run.run_id, pid=run_process(live.home, run.run_id))
                    return victim["pid"] is not None
            return False

        # (the deployment takes seconds: watch closely rather than at the harness's pace)
        deadline = time.monotonic() + HEAL_SECONDS
        while not dev_deployment_running():
            assert time.monotonic() < deadline, "commit c's dev deployment never started"
            time.sleep(0.2)
        os.killpg(live.process.pid, signal.SIGKILL)  # nothing is left to see the run's process go
        live.process.wait(30)
        killed = time.monotonic()
        assert instance.get_run_by_id(victim["run"]).status == dg.DagsterRunStatus.STARTED
        live.start()
        # then the `dead_runs` sensor fails the run that still says started, naming its process, and
        # `release-graph why` says so; Dagster runs it again
        # (watched closely: Dagster's retry may deploy within seconds, and the stage is up to date again)
        deadline = time.monotonic() + 180
        while instance.get_run_by_id(victim["run"]).status != dg.DagsterRunStatus.FAILURE:
            assert time.monotonic() < deadline, f"the killed run was not marked failed:\n{live.log_tail()}"
            time.sleep(0.5)
        death = process_death(instance, victim["run"])
        assert death and f"process {victim['pid']} ended with nobody to report it" in death, death
        # (waiting for Dagster's retry, or already running it: either way the cause is named)
        seen_c = stage_status(instance, fleet, service, "dev")
        assert seen_c.state in (WAITING, RUNNING) and death in seen_c.reason, seen_c.line()
        live.wait_for("commit c in staging", lambda: in_staging(sha_c), HEAL_SECONDS, instance)
        report["c (dagster dev killed while its run deployed, started again)"] = (
            seen_c.line(), time.monotonic() - killed)

        # Then: every commit reached staging, each built once, and no failed run was left un-retried
        builds = [r for r in history.history(instance, image_key(SERVICE)) if r.value("built")]
        assert len({r.git_sha for r in builds}) == len(builds), [(r.git_sha, r.run_id) for r in builds]
        assert {r.git_sha for r in builds} == {sha_a, sha_b, sha_c}
        staged = {r.digest for r in history.history(instance, environment_key(SERVICE, "staging"))}
        assert {r.digest for r in builds} <= staged
        assert all(live.builds_in(instance, r.run_id, SERVICE) == 1 for r in builds), [
            (r.git_sha, r.run_id) for r in builds]
        runs = list(instance.get_runs(limit=200))
        for run in runs:
            if run.status == dg.DagsterRunStatus.FAILURE:
                retry = instance.get_run_by_id(run.tags.get(AUTO_RETRY_RUN_ID_TAG, "")) if run.tags.get(
                    AUTO_RETRY_RUN_ID_TAG) else None
                assert retry and retry.status == dg.DagsterRunStatus.SUCCESS, (run.run_id, run.tags)
        assert {r.run_id for r in runs if r.status == dg.DagsterRunStatus.FAILURE} == {victim["run"]}
        # and no stage is blocked or failed, as `release-graph why` says
        for environment in fleet.environments:
            status = stage_status(instance, fleet, service, environment)
            assert status.state not in (BLOCKED, FAILED), status.line()
            done = live.cli("why", SERVICE, "--env", environment)
            assert done.returncode == 0, done.stdout + done.stderr
        for what, (seen, healed) in report.items():
            first = re.sub(r"\s+", " ", seen)[:300]
            print(f"{what}: healed {healed:.0f} s after the fault ended; first seen: {first}")
        print(f"story: {time.monotonic() - story_started:.0f} s, {len(runs)} runs")
