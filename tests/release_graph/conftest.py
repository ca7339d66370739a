"""A release world for scenario tests: the demo services as real git repos in a temporary folder, a fleet
manifest whose registry and names carry the run prefix, a Dagster instance, and the real adapters.

Everything it creates in the registry, the engine and on the host is removed at teardown.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest

from release_graph.demo import commit_change, sync_repo
from release_graph.fleet import Fleet, load_fleet, topological_order
from release_graph.wiring import build_definitions, registry_resource, scanner_resource, tracer_resource
from resources.containers import ContainerEngine
from resources.git import GitResource
from resources.registry import Registry, RegistryError
from sensors.git_commits import LAST_FULL_POLL_KEY

SHOP_DIR = Path(__file__).resolve().parents[2] / "examples" / "shop"
SOURCES_DIR = SHOP_DIR / "services"

ENGINE_BUILDS: list[str] = []  # tags built by CountingEngine, across the test session


class CountingEngine(ContainerEngine):
    """The real engine; it also counts builds so a test can prove that nothing was rebuilt."""

    def build(self, context_dir, **kwargs):
        ENGINE_BUILDS.append(kwargs.get("tag", ""))
        return super().build(context_dir, **kwargs)


@dataclass
class ReleaseWorld:
    root: Path
    fleet: Fleet
    instance: dg.DagsterInstance
    resources: dict
    defs: dg.Definitions
    run_id: str
    registry: Registry
    repos: Path
    instance_context: object = None  # the instance_for_test context manager, closed at teardown
    sensor_cursors: dict = field(default_factory=dict)
    automation_cursor: object = None

    def target(self, environment_target: str = "docker"):
        """The deploy target the world's `deploy_targets` resource picks for `target: <environment_target>`."""
        return self.resources["deploy_targets"].for_environment(environment_target)

    # --- git ---------------------------------------------------------------------------------------
    def commit(self, service: str, *, breakage: str | None = None, repair: bool = False, message=None):
        return commit_change(service, self.repos, breakage=breakage, repair=repair, message=message)

    # --- sensors -----------------------------------------------------------------------------------
    def tick(self, sensor_name: str):
        sensor = self.defs.resolve_sensor_def(sensor_name)
        # A context manager: deploy_targets nests the engine resource, which Dagster sets up and tears down.
        with dg.build_sensor_context(
            instance=self.instance, cursor=self.sensor_cursors.get(sensor_name), resources=self.resources,
            definitions=self.defs,
        ) as context:
            result = sensor(context)
        if isinstance(result, dg.SensorResult):
            if result.cursor is not None:
                self.sensor_cursors[sensor_name] = result.cursor
                if sensor_name == "git_commits":  # every story tick is a full poll: as if its interval passed
                    cursor = json.loads(result.cursor)
                    cursor.pop(LAST_FULL_POLL_KEY, None)
                    self.sensor_cursors[sensor_name] = json.dumps(cursor, sort_keys=True)
            for event in result.asset_events or []:
                self.instance.report_runless_asset_event(event)
        return result

    # --- runs ----------------------------------------------------------------------------------------
    def materialize(self, keys: Iterable[dg.AssetKey], *, tags: dict | None = None, run_config=None):
        job = self.defs.resolve_implicit_global_asset_job_def()
        return job.execute_in_process(
            instance=self.instance, asset_selection=list(keys), tags=tags or {}, run_config=run_config or {},
            raise_on_error=False,
        )

    def execute(self, request: dg.RunRequest):
        return self.materialize(request.asset_selection, tags=request.tags, run_config=request.run_config)

    @staticmethod
    def failures(run) -> dict[str, str]:
        """step key -> the failure's whole text (the error and every cause), as the UI shows it."""
        texts = {}
        for event in run.all_events:
            if event.is_step_failure:
                error, parts = event.step_failure_data.error, []
                while error is not None:
                    parts.append(error.message)
                    error = error.cause
                texts[event.step_key] = "\n".join(parts)
        return texts

    def release_from_head(self) -> None:
        """Every service from its head commit through the Git tick's builds and the automation's runs, as the
        sensors would; asserts that no step failed."""
        self.automate()  # the automation sensor's first tick only initialises
        for request in self.tick("git_commits").run_requests:
            assert self.execute(request).success
        failed = {k: v for _, run in self.automate() for k, v in self.failures(run).items()}
        assert not failed, failed

    def automate(self, max_ticks: int = 12) -> list[tuple[list[dg.AssetKey], object]]:
        """Tick the automation conditions and run what they request, as the automation sensor would
        (one run per tick), until nothing more is requested. Returns (requested keys, run) per tick."""
        runs = []
        keys = self.defs.resolve_asset_graph().get_all_asset_keys()
        for _ in range(max_ticks):
            result = dg.evaluate_automation_conditions(
                defs=self.defs, instance=self.instance, cursor=self.automation_cursor
            )
            self.automation_cursor = result.cursor
            requested = sorted((k for k in keys if result.get_num_requested(k)), key=lambda k: k.path)
            if not requested:
                return runs
            # One run per service (and one for the fleet's assets), as the per-service automation sensors
            # launch them; providers first.
            order = {name: i for i, name in enumerate(topological_order(self.fleet.services))}
            by_service: dict[str, list[dg.AssetKey]] = {}
            for k in requested:
                by_service.setdefault(k.path[0], []).append(k)
            for service in sorted(by_service, key=lambda name: order.get(name, len(order))):
                tags = {"release/trigger": "automation", **({"release/service": service} if service in order else {})}
                runs.append((by_service[service], self.materialize(by_service[service], tags=tags)))
        raise AssertionError(f"automation still requesting after {max_ticks} ticks: {runs[-1][0]}")

    def approve(self, service: str, environment: str, *, by: str = "release@shop.example", digest=None,
                ticket: str = "CHG-1"):
        asset = dg.AssetKey([service, f"{environment}_approval"])
        config = {"approver": by, "ticket": ticket, **({"digest": digest} if digest else {})}
        return self.materialize([asset], run_config={"ops": {asset.to_python_identifier(): {"config": config}}})

    def check_status(self, key: dg.AssetKey, check_name: str):
        records = self.instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(key, check_name)]
        )
        return records.get(dg.AssetCheckKey(key, check_name))

    def check_evaluation(self, key: dg.AssetKey, check_name: str):
        """The check's latest evaluation, or None when it never produced one (it could not run)."""
        record = self.check_status(key, check_name)
        data = record.event.dagster_event.event_specific_data if record and record.event else None
        return data if isinstance(data, dg.AssetCheckEvaluation) else None

    def latest(self, key: dg.AssetKey):
        from release_graph.release import history

        return history.latest(self.instance, key)


FLEET_TEMPLATE = """\
fleet: {fleet}
registry: {registry}
{extra_top}services:
{services}
environments:
{environments}
"""


def service_block(name: str, repo: Path, deps: list[str], extra: str = "", integration: bool = True) -> str:
    stages = "test_target: test" + (", integration_target: integration" if integration else "")
    lines = [
        f"  {name}:",
        f"    repo: {repo}",
        f"    build: {{dockerfile: Dockerfile, {stages}}}",
        "    port: 8080",
        "    language: python",
        f"    depends_on: [{', '.join(deps)}]",
    ]
    return "\n".join(lines) + (("\n" + extra) if extra else "")


DEMO_EDGES = {"inventory": [], "payments": [], "orders": ["inventory", "payments"], "gateway": ["orders"]}


@pytest.fixture
def assert_nowhere():
    """assert_nowhere(root, secret, *also): `secret` is in no file under `root`, raw or base64 (with or without its
    padding), nor any of the other forms `also` names (e.g. a PEM key's body without its armour lines)."""
    import base64

    def search(root: Path, secret: str, *also: str) -> None:
        encoded = base64.b64encode(secret.encode())
        needles = [secret.encode(), encoded, encoded.rstrip(b"="), *(form.encode() for form in also)]
        searched = 0
        for path in root.rglob("*"):
            if path.is_file():
                searched += 1
                data = path.read_bytes()
                assert not any(needle in data for needle in needles), f"a secret is in {path}"
        assert searched > 0, f"nothing to search under {root}"
    return search


@pytest.fixture
def engine_builds() -> list[str]:
    """Tags the CountingEngine has built so far in this session (compare lengths before and after)."""
    return ENGINE_BUILDS


def release_world_maker(folder: Path, run_id: str, registry_addr: str, worlds: list[ReleaseWorld], *,
                        letter: str = "w", numbers: Iterator[int] | None = None):
    """The body of the world factories below: `make(...)` builds a ReleaseWorld in `folder`/world<n>, its fleet
    named `<run_id><letter><n>` (n from `numbers`, by default 0, 1, ...), and appends it to `worlds`, which the
    caller cleans up (`cleanup_world`)."""
    counter = numbers if numbers is not None else iter(range(100))

    def make(services: Iterable[str] = ("inventory",), environments: str = "  dev: {target: docker}",
             extra_top: str = "", extra_services: dict | None = None, integration: bool = True,
             registry_host: str | None = None, files: dict[str, str] | None = None,
             instance: dg.DagsterInstance | None = None) -> ReleaseWorld:
        """`instance`: the Dagster instance to release on (e.g. one on Postgres), owned and disposed of by the
        caller; by default a fresh SQLite instance under the world's folder."""
        index = next(counter)
        root = folder / f"world{index}"
        repos = root / "repos"
        services = list(services)
        for name in services:
            sync_repo(name, SOURCES_DIR / name, repos / name)
        fleet_name = f"{run_id}{letter}{index}"
        registry = f"{registry_host or registry_addr}/{fleet_name}"
        blocks = [
            service_block(name, repos / name, [d for d in DEMO_EDGES[name] if d in services],
                          (extra_services or {}).get(name, ""), integration)
            for name in services
        ]
        path = root / "fleet.yaml"
        path.write_text(FLEET_TEMPLATE.format(
            fleet=fleet_name, registry=registry, extra_top=extra_top.replace("{shop}", str(SHOP_DIR)),
            services="\n".join(blocks), environments=environments,
        ))
        for name, text in (files or {}).items():  # files beside fleet.yaml, e.g. waivers.yaml, osv/PyPI/<id>.json
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        fleet = load_fleet(path)
        resources = world_resources(root, fleet_name)
        resources["scanner"] = scanner_resource(fleet)  # as the manifest configures it
        resources["registry"] = registry_resource(fleet)  # logged in as the manifest's registry_auth says
        (root / "dagster_home").mkdir()
        instance_context = (contextlib.nullcontext(instance) if instance is not None
                            else dg.instance_for_test(temp_dir=str(root / "dagster_home")))
        instance = instance_context.__enter__()
        world = ReleaseWorld(
            instance_context=instance_context,
            root=root, fleet=fleet, instance=instance, resources=resources,
            defs=build_definitions(fleet, resources), run_id=run_id, registry=registry_resource(fleet), repos=repos,
        )
        worlds.append(world)
        return world

    return make


@pytest.fixture
def release_world_factory(tmp_path, run_id, registry_addr, docker_client):
    """Builds a ReleaseWorld for a subset of the demo services and environments; all of them go at the test's end."""
    worlds: list[ReleaseWorld] = []
    yield release_world_maker(tmp_path, run_id, registry_addr, worlds)
    for world in worlds:
        cleanup_world(world, docker_client)


SHARED_WORLDS = itertools.count()  # numbers the shared worlds across this pytest process: their names never repeat


@pytest.fixture(scope="module")
def module_release_world_factory(tmp_path_factory, run_id, registry_addr, docker_client):
    """release_world_factory for a world that the tests of one module share (a module-scoped fixture builds it
    once); all of them go at the module's end. Their fleets are named `<run id>s<n>`, never as the function-scoped
    factory's (`<run id>w<n>`), whose worlds may exist beside them on the same worker; the shared world's state
    outlives each test, so its tests run on one xdist worker in file order (`pytest.mark.xdist_group`)."""
    worlds: list[ReleaseWorld] = []
    yield release_world_maker(tmp_path_factory.mktemp("shared"), run_id, registry_addr, worlds, letter="s",
                              numbers=SHARED_WORLDS)
    for world in worlds:
        cleanup_world(world, docker_client)


@pytest.fixture
def first_release_for_the_cli(monkeypatch):
    """Points the `release-graph` CLI at a world (its manifest, instance and target state) and runs the world's
    first release: the Git sensor's run, then what automation starts after it."""

    def release(world: ReleaseWorld) -> ReleaseWorld:
        monkeypatch.setenv("DAGSTER_HOME", str(world.root / "dagster_home"))
        monkeypatch.setenv("RELEASE_GRAPH_FLEET", str(world.fleet.source_file))
        # The CLI's adapters keep their state beside the instance; the target must find this world's containers.
        monkeypatch.setenv("RELEASE_GRAPH_STATE", f"/tmp/{world.fleet.name}-state")
        world.automate()
        (request,) = world.tick("git_commits").run_requests
        assert world.execute(request).success
        world.automate()
        return world

    return release


def world_resources(root: Path, fleet_name: str) -> dict:
    from resources.secrets import SecretsResource
    from resources.targets import DeployTargets, DockerTargetConfig

    engine = CountingEngine()
    return {
        "git": GitResource(mirror_dir=str(root / "mirrors")),
        "engine": engine,
        "registry": Registry(),
        # haproxy's admin socket path must stay short (unix sockets): not under pytest's tmp_path.
        # The demo services answer their health path within seconds even on a loaded machine: a version whose
        # health fails is given up on after 30 s instead of the default 60.
        "deploy_targets": DeployTargets(engine=engine,
                                        docker=DockerTargetConfig(state_dir=f"/tmp/{fleet_name}-state/targets",
                                                                  health_timeout_seconds=30)),
        "secrets": SecretsResource(),
        "release_tracer": tracer_resource(),  # as the environment configures it: off unless a story turns it on
    }


def cleanup_world(world: ReleaseWorld, docker_client) -> None:
    fleet = world.fleet
    target = world.target()
    for environment in fleet.environments:
        target.teardown_environment(fleet.name, environment)
    for service in fleet.services.values():
        repository = service.image_repository(fleet)
        with contextlib.suppress(RegistryError):  # a story may have stopped its registry for real
            for tag in world.registry.tags(repository):
                digest = world.registry.manifest_digest(repository, tag)
                if digest:
                    world.registry.delete(repository, digest)
        # local images go at the session's end (tests/conftest.py): removing one now breaks parallel builds
    world.instance_context.__exit__(None, None, None)
    shutil.rmtree(world.root, ignore_errors=True)
    shutil.rmtree(f"/tmp/{fleet.name}-state", ignore_errors=True)
