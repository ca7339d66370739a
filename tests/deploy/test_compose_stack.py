"""The orchestrator's own stack, deploy/compose.yaml as shipped, brought up through the engine: Postgres, the code
location, the webserver and the daemon, each a container of its image. Then the UI answers with the fleet's
code location loaded, the daemon reports healthy, and the UI keeps answering while the daemon's container is
stopped and started again.

What stands in for what here, and why: `podman-compose` (from requirements.lock) runs the file, as this host's
engine is Podman with no `docker compose` plugin; Postgres is the image deploy/postgres/Dockerfile builds from
Debian's packages (POSTGRES_IMAGE), as Docker Hub cannot be reached; the fleet is the demo reduced to inventory,
mounted where the image keeps its fleet (deploy/fleet/). A second file adds that mount and nothing else. Every
name the stack creates carries this run's prefix (the project, network, volumes, images; the UI on a free port).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import docker
import pytest
import yaml

from release_graph import demo

pytestmark = [pytest.mark.engine, pytest.mark.user_code_image, pytest.mark.xdist_group("user-code-image")]

ROOT = Path(__file__).resolve().parents[2]
STACK_SECONDS = 240  # Postgres initialises, the code server loads the fleet, the daemon's first heartbeat
SERVICES = ("postgres", "user-code", "webserver", "daemon")
# The daemons deploy/docker/dagster.yaml turns on, each of which must report a heartbeat
DAEMONS = {"SENSOR", "QUEUED_RUN_COORDINATOR", "MONITORING", "ASSET", "BACKFILL"}


@pytest.fixture(scope="module")
def postgres_image(run_id):
    """deploy/postgres/Dockerfile built on the host's Debian base image (its apt sources reach the host's mirror)."""
    tag = f"127.0.0.1:5000/{run_id}/postgres:15"
    client = docker.from_env()
    started = time.monotonic()
    client.images.build(path=str(ROOT), dockerfile="deploy/postgres/Dockerfile", tag=tag, pull=False, rm=True,
                        buildargs={"BASE_IMAGE": "127.0.0.1:5000/base/python:bookworm"})
    print(f"\npostgres image built in {time.monotonic() - started:.0f} s")
    return tag


class ComposeStack:
    def __init__(self, root: Path, run_id: str, env: dict[str, str]):
        self.root = root
        self.project = f"{run_id}-stack".lower()
        self.env = env

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        argv = [str(Path(sys.executable).parent / "podman-compose"), "-p", self.project,
                "-f", str(ROOT / "deploy" / "compose.yaml"), "-f", str(self.root / "fleet-mount.yaml"), *args]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)

    def graphql(self, query: str) -> dict:
        request = urllib.request.Request(f"http://127.0.0.1:{self.env['RELEASE_GRAPH_UI_PORT']}/graphql",
                                         data=json.dumps({"query": query}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())["data"]

    def location(self) -> dict | None:
        with contextlib.suppress(OSError, KeyError, TypeError, ValueError):
            (entry,) = self.graphql(
                "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus locationOrLoadError {"
                " __typename ... on RepositoryLocation { repositories { assetNodes { id } } }"
                " ... on PythonError { message } } } } } }")["workspaceOrError"]["locationEntries"]
            return entry
        return None

    def daemons_beating_since(self, since: float) -> set[str]:
        """The required daemons that report healthy with a heartbeat after `since` (epoch seconds)."""
        with contextlib.suppress(OSError, KeyError, TypeError, ValueError):
            statuses = self.graphql("{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy"
                                    " lastHeartbeatTime } } } }")["instance"]["daemonHealth"]["allDaemonStatuses"]
            return {s["daemonType"] for s in statuses if s["required"] and s["healthy"]
                    and (s["lastHeartbeatTime"] or 0) > since}
        return set()

    def logs(self) -> str:
        return "\n".join(f"--- {service}\n{self.compose('logs', '--tail', '25', service, timeout=60).stdout}"
                         for service in SERVICES)

    def wait_for(self, what: str, condition, timeout: float = STACK_SECONDS) -> float:
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > timeout:
                pytest.fail(f"{what}: not within {timeout:.0f} s\n{self.compose('ps', timeout=60).stdout}\n"
                            f"{self.logs()}")
            time.sleep(2)
        return time.monotonic() - started


@pytest.fixture
def stack(tmp_path, run_id, user_code_image, postgres_image, free_port):
    fleet = tmp_path / "fleet"
    shutil.copytree(ROOT / "examples" / "shop", fleet, ignore=shutil.ignore_patterns(".repos", "__pycache__"))
    manifest = yaml.safe_load((fleet / "fleet.yaml").read_text())
    manifest["services"] = {"inventory": manifest["services"]["inventory"]}
    manifest.pop("e2e", None)
    manifest.pop("integration", None)
    manifest["environments"] = {"dev": {"target": "docker"}}
    manifest["fleet"] = f"{run_id}stack"
    (fleet / "fleet.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    demo.sync_repos(fleet / "services", fleet / ".repos")
    (tmp_path / "fleet-mount.yaml").write_text(yaml.safe_dump({"services": {"user-code": {
        "volumes": [f"{fleet}:/opt/release-graph/fleet:ro"]}}}))
    prefix = f"{run_id}-stack".lower()
    env = {**os.environ, "DAGSTER_PG_PASSWORD": os.urandom(12).hex(), "RELEASE_GRAPH_USER_CODE_IMAGE": user_code_image,
           "POSTGRES_IMAGE": postgres_image, "ENGINE_SOCKET": os.environ["DOCKER_HOST"].removeprefix("unix://"),
           "RELEASE_GRAPH_UI_PORT": str(free_port), "RELEASE_GRAPH_NETWORK": f"{prefix}-net",
           "RELEASE_GRAPH_STATE_VOLUME": f"{prefix}-state", "RELEASE_GRAPH_STORAGE_VOLUME": f"{prefix}-storage",
           "RG_REGISTRY": os.environ.get("RG_REGISTRY", "127.0.0.1:5000")}
    env.pop("CONTAINER_HOST", None)
    stack = ComposeStack(tmp_path, run_id, env)
    try:
        yield stack
    finally:
        down = stack.compose("down", "-v", "-t", "5")
        if down.returncode != 0:
            print(f"teardown: compose down exited {down.returncode}: {down.stderr[-2000:]}")


def test_the_compose_stack_comes_up_answers_and_keeps_answering_while_its_daemon_restarts(stack):
    # When the stack is brought up through the engine
    started = time.monotonic()
    up = stack.compose("up", "-d")
    assert up.returncode == 0, up.stderr[-3000:] + up.stdout[-2000:]

    # Then the UI answers with the fleet's code location loaded from the user-code container
    def loaded() -> bool:
        entry = stack.location()
        return bool(entry) and entry["locationOrLoadError"]["__typename"] == "RepositoryLocation"

    stack.wait_for("the code location loaded in the UI", loaded)
    entry = stack.location()
    assets = sum(len(r["assetNodes"]) for r in entry["locationOrLoadError"]["repositories"])
    assert assets >= 5, entry  # inventory's source, image, integration and dev, and the fleet's assets
    # and every daemon deploy/docker/dagster.yaml turns on reports healthy
    stack.wait_for("every daemon healthy", lambda: stack.daemons_beating_since(0) >= DAEMONS)
    came_up = time.monotonic() - started

    # When the daemon's container stops, the UI keeps answering; started again, the daemon is healthy again
    client = docker.from_env()
    (daemon,) = client.containers.list(filters={"label": f"com.docker.compose.project={stack.project}",
                                                "name": "daemon"})
    daemon.stop(timeout=5)
    for _ in range(5):
        assert stack.location() is not None
        time.sleep(1)
    restarted = time.time()
    daemon.start()
    again = stack.wait_for("the daemon's heartbeats after its restart",
                           lambda: stack.daemons_beating_since(restarted) >= DAEMONS)
    print(f"\ncompose stack up and healthy in {came_up:.0f} s ({assets} assets); every daemon's "
          f"heartbeat {again:.0f} s after its container started again")
