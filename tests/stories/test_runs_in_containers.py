"""Every run in its own container: the orchestrator as deploy/docker/dagster.yaml ships it (Postgres storage, the
queued coordinator, dagster-docker's DockerRunLauncher), the user-code image built by
scripts/build_user_code_image.py from deploy/Dockerfile, and a commit of the demo's inventory released from its
build to staging with each stage's run in a container of that image, started through the engine's API.

What differs from deploy/compose.yaml, and why: the webserver, the daemon and the code server run on the host
(tests/stories/test_orchestrator_restarts.py has them as separate processes the same way), and the run containers
join the host's network (DAGSTER_DOCKER_NETWORK=host) with the folders they read mounted at the same paths:
this story's Postgres, registry, git repositories and state are the host's. The secrets and keys the fleet
reads reach the run containers the documented way: their names in the launcher's `env_vars`, their values from
the daemon's environment, never in a file or in Dagster's storage.
"""

from __future__ import annotations

import base64
import contextlib
import time

import dagster as dg
import docker
import pytest
import yaml
from dagster._core.storage.tags import DOCKER_IMAGE_TAG
from dagster_docker.docker_run_launcher import DOCKER_CONTAINER_ID_TAG

from release_graph import demo
from release_graph.release import history
from release_graph.release.keys import environment_key, image_key
from release_graph.release.tags import SHA_TAG
from resources import postgres_server
from resources.containers import ContainerEngine
from resources.targets import DeployTargets, DockerTargetConfig

from .conftest import REPO_ROOT, Orchestrator

pytestmark = [pytest.mark.engine, pytest.mark.user_code_image, pytest.mark.xdist_group("user-code-image")]

SERVICE = "inventory"
RELEASE_SECONDS = 420  # three processes start, then a build, integration, dev and staging, each run a container
# The variables the demo's fleet reads while releasing inventory (provenance signing key, notifications, CDEvents)
FLEET_SECRETS = ("SHOP_PROVENANCE_KEY", "SHOP_NOTIFY_URL", "SHOP_NOTIFY_KEY", "SHOP_CDEVENTS_SINK_URL")


class ContainerRunsOrchestrator(Orchestrator):
    """The separate processes of `Orchestrator` on deploy/docker/dagster.yaml: the daemon launches every run in a
    container of `image`."""

    def __init__(self, *args, image: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.image = image

    def prepare(self) -> None:
        super().prepare()
        self.trim_to_dev_and_staging()
        config = yaml.safe_load((REPO_ROOT / "deploy" / "docker" / "dagster.yaml").read_text())
        launcher = config["run_launcher"]["config"]
        socket = self.env["DOCKER_HOST"].removeprefix("unix://")
        # The mounts compose gives by name, here at the host's own paths: the engine's socket, the state folder,
        # the fleet with its repositories, and DAGSTER_HOME (where the runs' compute logs go).
        launcher["container_kwargs"]["volumes"] = [f"{path}:{path}" for path in (
            socket, str(self.state), str(self.fleet_dir), str(self.home))]
        launcher["env_vars"] = [*launcher["env_vars"], *FLEET_SECRETS]
        (self.home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.state.mkdir(parents=True, exist_ok=True)
        self.env.update({"DAGSTER_DOCKER_NETWORK": "host", "RELEASE_GRAPH_USER_CODE_IMAGE": self.image})

    def trim_to_dev_and_staging(self) -> None:
        """Environments that publish no port and roll out at once: an haproxy a run container starts ends with
        it (docs/operations.md, "Run launchers"), so such fleets keep the default launcher."""
        fleet_yaml = self.fleet_dir / "fleet.yaml"
        manifest = yaml.safe_load(fleet_yaml.read_text())
        manifest["environments"] = {name: {"target": "docker"} for name in ("dev", "staging")}
        fleet_yaml.write_text(yaml.safe_dump(manifest, sort_keys=False))

    def running(self, environment: str):
        """What the docker target says runs for the service in `environment`."""
        target = DeployTargets(engine=ContainerEngine(), docker=DockerTargetConfig(
            state_dir=str(self.state / "targets"))).for_environment("docker")
        return target.running(self.fleet_name, environment, SERVICE)


@pytest.fixture
def live_harness(user_code_image):
    with postgres_server.temporary("dagster") as server:
        yield lambda *args, **kwargs: ContainerRunsOrchestrator(*args, postgres=server, image=user_code_image,
                                                                **kwargs)
    # the run containers the daemon launched (DockerRunLauncher leaves them, exited); the image stays for others
    client = docker.from_env()
    for container in client.containers.list(all=True, filters={"ancestor": user_code_image,
                                                                "label": "dagster/run_id"}):
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)


def test_a_commit_reaches_staging_with_every_run_in_its_own_container(live, user_code_image, monkeypatch):
    live.keep_only(SERVICE)
    monkeypatch.setenv("DAGSTER_HOME", str(live.home))
    database = live.fleet_name.lower()
    for name in [*live.postgres.env(database), "DAGSTER_DOCKER_NETWORK", "RELEASE_GRAPH_USER_CODE_IMAGE"]:
        monkeypatch.setenv(name, live.env[name])  # this process reads the same instance
    # Given a new commit of inventory when the orchestrator starts
    sha = demo.commit_change(SERVICE, live.fleet_dir / ".repos").sha
    started = time.monotonic()
    live.start()
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_launcher).__name__ == "DockerRunLauncher"

        def in_staging() -> bool:
            failed = instance.get_runs(filters=dg.RunsFilter(tags={SHA_TAG: sha},
                                                             statuses=[dg.DagsterRunStatus.FAILURE]), limit=1)
            assert not failed, live.failure_reasons(instance, failed[0].run_id)
            image = history.latest(instance, image_key(SERVICE))
            staged = history.latest(instance, environment_key(SERVICE, "staging"))
            return bool(image and staged and image.git_sha == sha and staged.digest == image.digest)

        # When the sensors release it: the build, integration, dev and staging, each a run the daemon launches
        live.wait_for("the commit in staging, every run in a container", in_staging, RELEASE_SECONDS, instance)
        reached = time.monotonic() - started
        # (staging's record is written before its run's checks: the run ends a few seconds later)
        live.wait_for("every run of the commit to end", lambda: all(r.is_finished for r in instance.get_runs(
            filters=dg.RunsFilter(tags={SHA_TAG: sha}), limit=50)), 120, instance)

        # Then every run of the commit ran in a container of the user-code image, which exited cleanly
        runs = instance.get_runs(filters=dg.RunsFilter(tags={SHA_TAG: sha}), limit=50)
        stages = {k.to_user_string() for r in runs for k in r.asset_selection or ()}
        assert {f"{SERVICE}/image", f"{SERVICE}/dev", f"{SERVICE}/staging"} <= stages, stages
        client = docker.from_env()
        for run in runs:
            assert run.status == dg.DagsterRunStatus.SUCCESS, (run.run_id, run.status)
            assert run.tags[DOCKER_IMAGE_TAG] == user_code_image, run.tags
            container = client.containers.get(run.tags[DOCKER_CONTAINER_ID_TAG])
            assert container.labels["dagster/run_id"] == run.run_id
            assert container.attrs["State"]["ExitCode"] == 0, container.logs(tail=40).decode(errors="replace")
        # and what the runs did is real: the image staging runs is the one built, and it serves
        image = history.latest(instance, image_key(SERVICE))
        running = live.running("staging")
        assert running.digest == image.digest

    # and the secrets the runs used (the provenance key signed the image in its container) are in no row
    dump = live.postgres.dump(database)
    assert image.digest.encode() in dump
    for name in FLEET_SECRETS[:1] + FLEET_SECRETS[2:3]:
        secret = live.env[name].encode()
        for needle in (secret, base64.b64encode(secret).rstrip(b"=")):
            assert needle not in dump, name
    print(f"\ncommit in staging {reached:.0f} s after the orchestrator started; {len(runs)} runs, each in its "
          f"own container of {user_code_image}")

