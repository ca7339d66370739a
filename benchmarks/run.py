"""`make bench`: measure release-graph on this machine and write docs/benchmarks.md.

Every figure comes from real work: real git repositories (the demo services, copied into a temporary
folder), the real container engine ($DOCKER_HOST), the real registry and real haproxy processes. Each case
runs N times; the tables give the median and the range. Everything the run creates carries a unique prefix
(`rgb<8 hex>`: fleet name, registry path, containers, networks, temporary folders) and is removed at the
end, also when a case fails.

    python -m benchmarks.run                 # everything into docs/benchmarks.md (~60 min: (f) 30, (g) 20)
    python -m benchmarks.run --quick         # one run per case, printed only (a smoke test of this script)
    python -m benchmarks.run --only a,e      # some sections, printed only
    python -m benchmarks.run --only e --update   # re-measure some sections in docs/benchmarks.md, keep the rest
    python -m benchmarks.run --only e --fleet eshop=../eShop/src   # more fleets to import in (e)
    python -m benchmarks.run --only f --memory-minutes 15 --heap-trace-dir /tmp/heap --heap-trace-minutes 5,15
                                             # (f) with release-graph's Python heap traced: what grows

Sections: (a) manifest validation and graph build, (b) Git sensor ticks, (c) image build and push,
(d) deployments to a docker environment, (e) `release-graph import` of the shared third-party fleets (and any
given with --fleet): how long, and what it finds, (f) the orchestrator's memory and sensor ticks over 30 minutes
with 200 services, side by side with plain Dagster (`--memory-minutes` to change how long, `--memory-services`
how many services, `--heap-trace-dir` to trace release-graph's Python heap: benchmarks/heap_trace), (g) a burst
of 200 commits over 20 services within a minute, the daemon restarted in its middle (the story
tests/stories/test_bursts.py, run by pytest; `--quick`: 20 commits over 4 services), (h) a kubernetes deployment
through the emulated API (benchmarks/kubernetes_deploy.py): its time against its API calls alone, and the calls,
(i) the network rule on the docker target: a call's latency with and without it, a refused call's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

from benchmarks import orchestrator_memory

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = PROJECT_ROOT / "docs" / "benchmarks.md"
DEMO_FLEET = PROJECT_ROOT / "examples" / "shop" / "fleet.yaml"
# The third-party deploy files to import: $RELEASE_GRAPH_FLEETS, else the shared folder of this project's hosts.
SHARED_FLEETS = Path(os.environ.get("RELEASE_GRAPH_FLEETS") or "/work/shared/fleets")
IMPORT_INPUTS = {
    "online-boutique (Kubernetes manifests)": "online-boutique/kubernetes-manifests",
    "robot-shop (docker-compose)": "robot-shop/docker-compose.yaml",
}
GENERATED_SIZES = (50, 200, 500)
BUILT_SERVICE = "inventory"  # no dependencies: it deploys and answers /healthz on its own
COMMIT_SERVICE = "orders"  # the service the sensor benchmark commits to
GIT_URL = re.compile(r"^(git|file|ssh|https?)://|^[\w.-]+@[\w.-]+:")


# --- measuring --------------------------------------------------------------------------------------------


@dataclass
class Row:
    case: str
    samples: list[float] = field(default_factory=list)
    note: str = ""


@dataclass
class Section:
    key: str
    title: str
    intro: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    tables: list[str] = field(default_factory=list)  # more markdown after the timings (figures that are not times)

    def row(self, case: str, note: str = "") -> Row:
        for row in self.rows:
            if row.case == case:
                if note:
                    row.note = note
                return row
        row = Row(case, note=note)
        self.rows.append(row)
        return row


def timed(fn: Callable, *args, **kwargs):
    """(seconds, result) of one call, by the monotonic high-resolution clock."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def fmt_seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"


def log(message: str) -> None:
    print(f"[bench {datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the machine --------------------------------------------------------------------------------------------


def _first_line(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({type(exc).__name__})"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


def machine_facts() -> dict[str, str]:
    import dagster as dg

    facts: dict[str, str] = {}
    facts["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    facts["CPU"] = f"{cpu_model}, {os.cpu_count()} logical CPUs (nproc {len(os.sched_getaffinity(0))})"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                facts["memory"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    os_name = platform.system()
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    facts["OS"] = f"{os_name}, kernel {platform.release()}"
    try:
        import docker

        client = docker.from_env(timeout=30)
        version = client.version()
        engines = [f"{c.get('Name')} {c.get('Version')}" for c in version.get("Components") or []
                   if "engine" in str(c.get("Name", "")).lower()]
        facts["container engine"] = (
            f"{engines[0] if engines else 'version ' + str(version.get('Version'))} "
            f"(Docker Engine API {version.get('ApiVersion')}) "
            f"at {os.environ.get('DOCKER_HOST', 'the default socket')}"
        )
        client.close()
    except Exception as exc:  # the report says what it could not find; the engine sections then fail loudly
        facts["container engine"] = f"unavailable: {type(exc).__name__}: {exc}"
    facts["Python"] = platform.python_version()
    facts["Dagster"] = dg.__version__
    facts["git"] = _first_line(["git", "--version"])
    facts["haproxy"] = _first_line(["haproxy", "-v"])
    commit = _first_line(["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short=12", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    facts["release-graph commit"] = commit + (" (with uncommitted changes)" if dirty else "")
    return facts


# --- fixtures: a copy of the demo fleet and generated fleets --------------------------------------------------


@dataclass
class Bench:
    prefix: str
    work: Path
    quick: bool
    registry_host: str
    fleet_name: str = ""
    fleet_path: Path | None = None
    repos: Path | None = None
    digests: list[tuple[str, str]] = field(default_factory=list)  # (sha, digest) of BUILT_SERVICE
    environments: list[str] = field(default_factory=list)  # created by section (d), torn down at the end
    _resources: dict | None = None
    more_fleets: dict[str, Path] = field(default_factory=dict)  # --fleet LABEL=PATH: more imports for (e)
    memory_minutes: float = 30.0  # how long (f) runs both orchestrators
    memory_services: int = orchestrator_memory.SERVICES  # the size of (f)'s generated fleet
    heap_trace_dir: Path | None = None  # --heap-trace-dir: (f) traces release-graph's Python heap into it
    heap_trace_minutes: tuple[float, ...] = ()  # the minutes of its snapshots (default: warm-up and end)
    heap_trace_start: float | None = None  # the minute tracing starts (default: halfway to the first snapshot)

    @property
    def registry(self) -> str:
        return f"{self.registry_host}/{self.fleet_name}"

    def n(self, full: int) -> int:
        """How many times to run a case: `full`, or once for --quick."""
        return 1 if self.quick else full

    def folder(self, name: str) -> str:
        """A new folder under the work folder (Dagster's test instance needs its folder to exist)."""
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def resources(self) -> dict:
        """The same adapters as the demo (release_graph.wiring.default_resources), with state in the work folder."""
        if self._resources is None:
            from release_graph.fleet import load_fleet
            from release_graph.wiring import scanner_resource, tracer_resource
            from resources.containers import ContainerEngine
            from resources.git import GitResource
            from resources.registry import Registry
            from resources.secrets import SecretsResource
            from resources.targets import DeployTargets, DockerTargetConfig

            engine = ContainerEngine()
            self._resources = {
                "git": GitResource(mirror_dir=str(self.work / "mirrors")),
                "engine": engine,
                "registry": Registry(),
                "deploy_targets": DeployTargets(engine=engine,
                                                docker=DockerTargetConfig(state_dir=str(self.work / "targets"))),
                "secrets": SecretsResource(),
                "release_tracer": tracer_resource(),
                # the demo's scanner: its SBOM against the OSV records copied beside the manifest
                "scanner": scanner_resource(load_fleet(self.fleet_path) if self.fleet_path else None),
            }
        return self._resources


def write_demo_copy(bench: Bench) -> Path:
    """The demo manifest with its repositories recreated under the work folder, and the benchmark's fleet name
    and registry. Published ports are dropped: the demo's fixed ports belong to a demo that may be running."""
    from release_graph.demo import sync_repos

    bench.repos = bench.work / "repos"
    sync_repos(DEMO_FLEET.parent / "services", bench.repos)
    document = yaml.safe_load(DEMO_FLEET.read_text())
    document["fleet"] = bench.fleet_name
    document["registry"] = bench.registry
    for service in document["services"].values():
        repo = service.get("repo")
        if repo and not GIT_URL.match(repo):
            service["repo"] = str(bench.repos / Path(repo).name)
    if isinstance(document.get("e2e"), dict):
        document["e2e"]["context"] = str((DEMO_FLEET.parent / document["e2e"]["context"]).resolve())
    for environment in (document.get("environments") or {}).values():
        if isinstance(environment, dict):
            environment.pop("publish", None)
    # What the manifest names beside itself: the offline OSV database and the waivers.
    for name in ("osv", "waivers.yaml"):
        source = DEMO_FLEET.parent / name
        if source.is_dir():
            shutil.copytree(source, bench.work / name)
        elif source.is_file():
            shutil.copy(source, bench.work / name)
    # The demo signs its images' provenance with a key `make demo` keeps in .dagster_home; the benchmark signs
    # with a key of its own when none is exported.
    signing_key = ((document.get("security") or {}).get("provenance") or {}).get("signing_key") or {}
    if "env" in signing_key:
        from release_graph.security.provenance import generate_key_pem

        os.environ.setdefault(signing_key["env"], generate_key_pem())
    path = bench.work / "demo-fleet.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    bench.fleet_path = path
    return path


def write_generated_fleet(bench: Bench, size: int, folder: str | None = None) -> tuple[Path, int]:
    """A fleet of `size` built services, each in its own local folder with a Dockerfile, 1-3 hard edges each
    to lower-numbered services (acyclic), three environments (prod approval-gated) and the demo's e2e tests;
    under the work folder's `folder` (default `generated-<size>`)."""
    root = bench.work / (folder or f"generated-{size}")
    services, edges = {}, 0
    for index in range(size):
        name = f"svc-{index:03d}"
        folder = root / "repos" / name
        folder.mkdir(parents=True)
        (folder / "Dockerfile").write_text("FROM 127.0.0.1:5000/base/python:bookworm\nCMD [\"python3\"]\n")
        deps = sorted({d for d in (index - 1, index // 2, index // 3) if 0 <= d < index})
        edges += len(deps)
        services[name] = {
            "repo": f"repos/{name}",
            "build": {"dockerfile": "Dockerfile", "test_target": "test", "integration_target": "integration"},
            "port": 8080,
            "language": "python",
            "owners": [f"team:team{index % 10}"],
            "depends_on": [f"svc-{d:03d}" for d in deps],
        }
    document = {
        "fleet": f"{bench.prefix}-gen{size}",
        "registry": f"{bench.registry_host}/{bench.prefix}-gen{size}",
        "e2e": {"context": str((DEMO_FLEET.parent / "e2e").resolve())},
        "services": services,
        "environments": {
            "dev": {"target": "docker"},
            "staging": {"target": "docker"},
            "prod": {"target": "docker", "approval": "required"},
        },
    }
    path = root / "fleet.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path, edges


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- (a) manifest validation and graph build ------------------------------------------------------------------


def bench_graph(bench: Bench, section: Section) -> None:
    from release_graph.fleet import load_fleet
    from release_graph.wiring import build_definitions, default_resources

    fleets = [("demo fleet", bench.fleet_path, None)]
    sizes = {}
    for size in GENERATED_SIZES:
        path, edges = write_generated_fleet(bench, size)
        fleets.append((f"generated, {size} services", path, edges))
        sizes[fleets[-1][0]] = size

    asset_counts: dict[str, int] = {}
    for label, path, edges in fleets:
        runs = bench.n(3 if sizes.get(label, 0) >= 200 else 5)
        for _ in range(runs):
            validate, fleet = timed(load_fleet, path)
            build, defs = timed(build_definitions, fleet, default_resources(fleet))
            resolve, repository = timed(defs.get_repository_def)
            graph = repository.asset_graph
            assets = len(graph.get_all_asset_keys())
            asset_counts[label] = assets
            checks = len(list(graph.asset_check_keys))
            edge_count = edges if edges is not None else sum(len(s.hard_deps) for s in fleet.services.values())
            shape = f"{len(fleet.services)} services, {edge_count} hard edges: {assets} assets, {checks} checks"
            section.row(f"{label}: validate manifest (load_fleet)", shape).samples.append(validate)
            section.row(f"{label}: build Definitions").samples.append(build)
            section.row(f"{label}: resolve repository (asset graph, jobs)").samples.append(resolve)
            section.row(f"{label}: total").samples.append(validate + build + resolve)

        if edges is not None:  # the baseline: plain Dagster assets and checks of the same shape, in this run
            bare = [timed(bare_definitions_like, graph)[0] for _ in range(runs)]
            ours = section.row(f"{label}: total").samples
            section.row(f"{label}: plain Dagster, same assets and checks (baseline)",
                        f"ours / baseline: {statistics.median(ours) / statistics.median(bare):.2f}x").samples = bare

    section.notes.append("The baseline is plain Dagster with the same asset keys, dependencies and check keys: one "
                         "`@asset` (eager automation) per key and one `@asset_check` per check, no resources, built "
                         "and resolved in the same run. Ratios move by about 0.15 between runs on this shared "
                         "2-core host; compare several runs.")
    for label, assets in asset_counts.items():
        build = section.row(f"{label}: build Definitions").samples
        section.notes.append(f"{label}: building Definitions costs {statistics.median(build) / assets * 1000:.2f} ms "
                             f"per asset ({assets} assets).")

    # What `dagster dev` and every run worker do first: a fresh interpreter importing the code location.
    code = "from release_graph.definitions import defs; defs.get_repository_def()"
    for label, path, _ in (fleets[0], fleets[-1]):
        for _ in range(bench.n(3)):
            env = {**os.environ, "RELEASE_GRAPH_FLEET": str(path)}
            seconds, done = timed(subprocess.run, [sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env,
                                  capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                raise RuntimeError(f"loading the code location for {path} failed:\n{done.stderr[-2000:]}")
            section.row(f"{label}: load the code location in a fresh Python process",
                        "interpreter start, imports, manifest, Definitions, resolve").samples.append(seconds)


def bare_definitions_like(graph) -> None:
    """Plain Dagster with the asset graph's shape: one `@asset` per key with the same dependencies and an eager
    automation condition, one `@asset_check` per check; built and resolved as ours are."""
    import dagster as dg

    assets, checks = [], []
    for key in graph.get_all_asset_keys():
        parents = sorted(graph.get(key).parent_keys)

        @dg.asset(key=key, deps=parents, automation_condition=dg.AutomationCondition.eager())
        def bare_asset():
            return None

        assets.append(bare_asset)
    for check_key in graph.asset_check_keys:
        @dg.asset_check(asset=check_key.asset_key, name=check_key.name)
        def bare_check():
            return dg.AssetCheckResult(passed=True)

        checks.append(bare_check)
    dg.Definitions(assets=assets, asset_checks=checks).get_repository_def()


# --- (b) Git sensor ticks --------------------------------------------------------------------------------------


def bench_sensor(bench: Bench, section: Section) -> None:
    import dagster as dg

    from release_graph.demo import commit_change
    from release_graph.fleet import load_fleet
    from release_graph.wiring import build_definitions
    from resources.git import GitResource
    from resources.registry import Registry
    from sensors.git_commits import build_git_commit_sensor, evaluate_git_tick

    fleet = load_fleet(bench.fleet_path)
    registry = Registry()
    branches = len({(s.repo_url, s.branch) for s in fleet.built_services})

    cursor = None
    git = None
    for index in range(bench.n(3)):
        # A fresh mirror folder each time: the first tick clones every repository into its mirror.
        git = GitResource(mirror_dir=str(bench.work / f"sensor-mirrors-{index}"))
        seconds, tick = timed(evaluate_git_tick, fleet, git, registry, None)
        if tick.problems or len(tick.run_requests()) != len(fleet.built_services):
            raise RuntimeError(f"first tick: expected {len(fleet.built_services)} builds, got "
                               f"{len(tick.run_requests())}; problems: {tick.problems}")
        section.row("first tick (no cursor, empty mirrors): clone, look up images, request builds",
                    f"{branches} repositories; {len(tick.run_requests())} builds requested").samples.append(seconds)
        cursor = json.dumps(tick.cursor, sort_keys=True)

    for _ in range(bench.n(10)):
        seconds, tick = timed(evaluate_git_tick, fleet, git, registry, cursor)
        if tick.releases or tick.problems:
            raise RuntimeError(f"idle tick found releases or problems: {tick.releases} {tick.problems}")
        section.row("idle tick (no new commit)", f"{branches} × git ls-remote, in parallel").samples.append(seconds)

    for _ in range(bench.n(5)):
        commit = commit_change(COMMIT_SERVICE, bench.repos)
        seconds, tick = timed(evaluate_git_tick, fleet, git, registry, cursor)
        if [(r.service, r.sha) for r in tick.releases] != [(COMMIT_SERVICE, commit.sha)]:
            raise RuntimeError(f"tick after a commit on {COMMIT_SERVICE}: {tick.releases} {tick.problems}")
        section.row("tick after one new commit", "ls-remote, fetch into the mirror, log, one build requested"
                    ).samples.append(seconds)
        cursor = json.dumps(tick.cursor, sort_keys=True)

    # The same idle tick through Dagster's sensor machinery (context, resources, SensorResult).
    resources = {"git": git, "registry": registry}
    defs = build_definitions(fleet, {**bench.resources(), **resources})
    sensor = build_git_commit_sensor(fleet)
    with dg.instance_for_test(temp_dir=bench.folder("sensor-instance")) as instance:
        for _ in range(bench.n(10)):
            context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources,
                                              definitions=defs)
            seconds, result = timed(sensor, context)
            if result.run_requests:
                raise RuntimeError(f"idle sensor evaluation requested runs: {result.run_requests}")
            section.row("idle tick through the sensor definition (build_sensor_context)",
                        "what the daemon evaluates every 30 s").samples.append(seconds)


# --- (c) image build and push --------------------------------------------------------------------------------


def engine_build_of_a_fresh_commit(bench: Bench):
    """A new commit of BUILT_SERVICE in the demo copy, exported, built and pushed with the engine alone (no
    orchestrator, no checks): (sha, digest, the built image, (export, build, push) seconds)."""
    from release_graph.assets.image import export_build_context, image_labels
    from release_graph.demo import commit_change
    from release_graph.fleet import load_fleet

    fleet = load_fleet(bench.fleet_path)
    service = fleet.services[BUILT_SERVICE]
    resources = bench.resources()
    git, engine = resources["git"], resources["engine"]
    repository = service.image_repository(fleet)
    sha = commit_change(BUILT_SERVICE, bench.repos).sha
    git.ensure_commit(service.repo_url, sha)
    with tempfile.TemporaryDirectory(prefix=f"{bench.prefix}-ctx-", dir=bench.work) as tmp:
        export_s, context_dir = timed(export_build_context, git, service, sha, Path(tmp))
        build_s, built = timed(
            engine.build, context_dir, dockerfile=service.build.dockerfile, tag=f"{repository}:{sha}",
            target=service.build.target, labels=image_labels(fleet, service, sha),
            buildargs={"GIT_SHA": sha, **service.build.args},
        )
    push_s, digest = timed(engine.push, f"{repository}:{sha}")
    return sha, digest, built, (export_s, build_s, push_s)


def bench_image(bench: Bench, section: Section) -> None:
    import dagster as dg

    from release_graph.demo import commit_change
    from release_graph.fleet import load_fleet
    from release_graph.release.tags import SERVICE_TAG, SHA_TAG, SHORT_SHA_TAG
    from release_graph.wiring import build_definitions

    fleet = load_fleet(bench.fleet_path)
    service = fleet.services[BUILT_SERVICE]
    resources = bench.resources()
    engine = resources["engine"]
    repository = service.image_repository(fleet)

    # The engine alone: export the commit's tree, build it, push it. A fresh commit each time (a changed
    # VERSION file): the base image layers stay cached, as they would on a build host.
    for _ in range(bench.n(3)):
        sha, digest, built, (export_s, build_s, push_s) = engine_build_of_a_fresh_commit(bench)
        bench.digests.append((sha, digest))
        size = f"image {built.size_bytes / 1e6:.0f} MB"
        section.row("engine: export the commit's tree (git archive)").samples.append(export_s)
        section.row("engine: build (fresh commit, base layers cached)", size).samples.append(build_s)
        section.row("engine: push to the registry").samples.append(push_s)
        section.row("engine: export + build + push").samples.append(export_s + build_s + push_s)

    # The vulnerability scan as the demo configures it (security.scanner: osv): the image's packages read through
    # the engine into a CycloneDX SBOM, matched against the OSV records beside the manifest.
    scanner = resources["scanner"]
    if scanner.backend == "osv":
        for index, (_sha, digest) in enumerate(bench.digests[-bench.n(3):]):
            with tempfile.TemporaryDirectory(prefix=f"{bench.prefix}-scan-", dir=bench.work) as tmp:
                seconds, report = timed(scanner.scan_image, repository, digest, registry=resources["registry"],
                                        engine=engine, report_path=str(Path(tmp) / "osv.json"),
                                        container_name=f"{bench.prefix}-scan-{index}")
            section.row("osv scan of the image (SBOM read through the engine, then matched)",
                        f"{len(report.findings)} findings from {report.details['osv_records']} records; "
                        f"{report.details['packages_compared']} packages; matching alone "
                        f"{float(report.details['match_seconds']) * 1000:.0f} ms").samples.append(seconds)

    defs = build_definitions(fleet, resources)
    image_key = dg.AssetKey([service.name, "image"])
    image_only = dg.define_asset_job(f"{bench.prefix.replace('-', '_')}_image_only",
                                     selection=dg.AssetSelection.assets(image_key).without_checks())
    defs = dg.Definitions.merge(defs, dg.Definitions(jobs=[image_only]))
    whole_run = defs.resolve_implicit_global_asset_job_def()
    image_job = defs.resolve_job_def(image_only.name)

    def tags(sha: str) -> dict[str, str]:
        return {SERVICE_TAG: service.name, SHA_TAG: sha, SHORT_SHA_TAG: sha[:12], "dagster/max_retries": "0"}

    with dg.instance_for_test(temp_dir=bench.folder("image-instance")) as instance:
        def materialize(job, sha: str, **kwargs):
            # Dagster's console logger would print every event at DEBUG to stderr; the run's events are kept.
            quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
            seconds, result = timed(job.execute_in_process, instance=instance, tags=tags(sha), run_config=quiet,
                                    raise_on_error=False, **kwargs)
            if not result.success:
                failures = [e.step_failure_data.error.message for e in result.all_events if e.is_step_failure]
                raise RuntimeError(f"materializing {image_key.to_user_string()} at {sha[:12]} failed: {failures}")
            return seconds, result

        def built(result) -> bool:
            event = instance.get_latest_materialization_event(image_key)
            return bool(event.asset_materialization.metadata["built"].value)

        # The `<svc>/image` step as the Git sensor's run executes it, with its checks (unit tests in the
        # Dockerfile's test stage, bandit, hadolint), in-process on a SQLite instance.
        for _ in range(bench.n(2)):
            sha = commit_change(BUILT_SERVICE, bench.repos).sha
            seconds, result = materialize(whole_run, sha, asset_selection=[image_key])
            if not built(result):
                raise RuntimeError(f"{sha[:12]}: a fresh commit was not built")
            checks = sorted({e.event_specific_data.check_name for e in result.all_events
                             if e.event_type_value == "ASSET_CHECK_EVALUATION"})
            section.row("image step with its checks, fresh commit (what the sensor's run does)",
                        f"build + push, then the checks: {', '.join(checks)}").samples.append(seconds)
            digest = instance.get_latest_materialization_event(image_key).asset_materialization.metadata
            bench.digests.append((sha, digest["digest"].value))
            if "provenance_sign_ms" in digest:
                section.row("provenance: statement built and signed (in the image step)",
                            "Dockerfile read from the commit (git archive), in-toto/SLSA statement, DSSE ed25519"
                            ).samples.append(float(digest["provenance_sign_ms"].value) / 1000)
        for _ in range(bench.n(2)):
            seconds, result = materialize(whole_run, sha, asset_selection=[image_key])
            if built(result):
                raise RuntimeError(f"{sha[:12]}: the second request rebuilt the image")
            section.row("image step with its checks, same SHA again",
                        "no rebuild; the checks run again (test image reused)").samples.append(seconds)
        for _ in range(bench.n(3)):
            seconds, result = materialize(image_job, sha)
            if built(result):
                raise RuntimeError(f"{sha[:12]}: the second request rebuilt the image")
            section.row("image step alone, same SHA again",
                        "registry HEAD finds the tag: digest recorded, nothing built").samples.append(seconds)
    section.notes.append(
        "A unique build argument cannot force a cold build: Podman ignores build-arg *values* when it looks up "
        "its layer cache. Every build here is of a fresh commit (a changed VERSION file), so the layers from the "
        "first `COPY` of the source onward are rebuilt and the base image layers come from the cache, which is "
        "what a build host sees for a normal commit."
    )
    section.notes.append(
        "Builds take a host-wide lock per engine (Podman's layer cache is not safe under concurrent builds), so "
        "on a shared machine a build can include time spent waiting for another process's build."
    )


# --- (d) deployments ---------------------------------------------------------------------------------------------


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


def bench_deploy(bench: Bench, section: Section) -> None:
    from resources import labels as L
    from resources.targets import DeploymentSpec

    if len(bench.digests) < 2:
        raise RuntimeError("needs two built digests of the service: run section (c) first")
    target = bench.resources()["deploy_targets"].for_environment("docker")
    repository = f"{bench.registry}/{BUILT_SERVICE}"
    (sha_a, digest_a), (sha_b, digest_b) = bench.digests[0], bench.digests[-1]

    def spec(environment: str, sha: str, digest: str, port: int) -> DeploymentSpec:
        return DeploymentSpec(
            fleet=bench.fleet_name, environment=environment, service=BUILT_SERVICE,
            image=f"{repository}@{digest}", port=8080, health="/healthz",
            env={"GIT_SHA": sha}, publish=port, labels={L.GIT_SHA: sha},
        )

    def serves(port: int, sha: str) -> None:
        status, body = _get(f"http://127.0.0.1:{port}/version")
        if status != 200 or sha.encode() not in body:
            raise RuntimeError(f"published port {port} answered {status} {body[:200]!r}, expected {sha[:12]}")

    for index in range(bench.n(3)):
        environment = f"e{index}"
        bench.environments.append(environment)
        port = free_port()
        seconds, result = timed(target.deploy, spec(environment, sha_a, digest_a, port))
        if not result.changed:
            raise RuntimeError(f"first deployment to {environment} reported no change")
        serves(port, sha_a)
        section.row("first deployment to a new environment",
                    "network, pull by digest, start, health gate, haproxy started on a published port"
                    ).samples.append(seconds)
        seconds, result = timed(target.deploy, spec(environment, sha_a, digest_a, port))
        if result.changed:
            raise RuntimeError(f"redeploying the same digest to {environment} changed something")
        section.row("redeploy of the same digest (no-op)", "inspect + one health probe; nothing moves"
                    ).samples.append(seconds)
        seconds, result = timed(target.deploy, spec(environment, sha_b, digest_b, port))
        if not result.changed:
            raise RuntimeError(f"switching {environment} to a new digest reported no change")
        serves(port, sha_b)
        section.row("new digest replaces the running one",
                    "start beside, health gate, move the name and the haproxy route, "
                    f"drain {target.config.drain_seconds:g} s, stop the old").samples.append(seconds)
        if index == 0:
            bench_switch_latency(target, bench, environment, port, section)
            bench_rollouts(target, spec(environment, sha_a, digest_a, port), section)
            serves(port, sha_a)
        seconds, _ = timed(target.teardown_environment, bench.fleet_name, environment)
        bench.environments.remove(environment)
        section.row("teardown of the environment", "containers, network, haproxy").samples.append(seconds)
    section.notes.append(
        f"DockerTarget against {os.environ.get('DOCKER_HOST', 'the default socket')}: one service "
        f"({BUILT_SERVICE}, a Python standard-library HTTP service), health path /healthz, one published port; "
        "each published answer is checked (`/version` names the deployed commit)."
    )


def _latencies_ms(url: str, count: int) -> list[float]:
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    values = []
    for _ in range(count):
        started = time.perf_counter()
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.request("GET", parts.path)
        response = conn.getresponse()
        response.read()
        conn.close()
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}")
        values.append((time.perf_counter() - started) * 1000)
    return sorted(values)


def bench_switch_latency(target, bench: Bench, environment: str, port: int, section: Section) -> None:
    """What the environment's switch (haproxy) adds to one request: the same container asked directly and
    through its published port, one fresh connection per request, one at a time."""
    running = target.running(bench.fleet_name, environment, BUILT_SERVICE)
    count = bench.n(500)
    direct = _latencies_ms(f"http://{running.address}:8080/version", count)
    switched = _latencies_ms(f"http://127.0.0.1:{port}/version", count)

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]

    section.tables.append(
        f"One request at a time ({count} each, fresh connection): the switch's added latency\n\n"
        "| path | p50 | p99 |\n|---|---|---|\n"
        f"| direct to the container ({running.address}:8080) | {pct(direct, .5):.2f} ms | {pct(direct, .99):.2f} ms |\n"
        f"| through haproxy (127.0.0.1:{port}) | {pct(switched, .5):.2f} ms | {pct(switched, .99):.2f} ms |\n"
        f"| added by the switch | {pct(switched, .5) - pct(direct, .5):.2f} ms | "
        f"{pct(switched, .99) - pct(direct, .99):.2f} ms |\n")


def bench_rollouts(target, spec, section: Section) -> None:
    """A canary (50 % for 2 s, then 2 s of bake) and a blue-green switch (2 s hold) of the running digest's
    image against itself, measured on haproxy's counters: total time against the configured pauses."""
    import dataclasses

    from release_graph.assets.rollout import RolloutController, metric_providers
    from release_graph.fleet.model import Analysis, Environment, Rollout, RolloutStep

    class Quiet:
        def info(self, message: str) -> None:
            log(message)

        warning = info

    analysis = Analysis(min_requests=0, interval_seconds=1)
    for label, rollout in (
        ("canary rollout: 50 % for 2 s, then 2 s of bake (4 s of pauses)",
         Rollout(strategy="canary", steps=(RolloutStep(50, 2.0),), bake_seconds=2.0, analysis=analysis)),
        ("blue-green rollout: switch, 2 s hold (2 s of pauses)",
         Rollout(strategy="blue-green", hold_seconds=2.0, analysis=analysis)),
    ):
        # the same image under a new config fingerprint: a real second container, a real rollout
        candidate = dataclasses.replace(spec, env={**spec.env, "ROLLOUT": label[:6]})
        controller = RolloutController(target=target, spec=candidate, environment=Environment(
            name=spec.environment, rollout=rollout), providers=metric_providers(analysis, target), log=Quiet(),
            request=lambda: None)
        seconds, _ = timed(controller.run)
        section.row(label, "start beside, health gate, weights over the runtime API, analysis, promote, drain, "
                    "stop the old").samples.append(seconds)


# --- (e) import -----------------------------------------------------------------------------------------------------


def bench_import(bench: Bench, section: Section) -> None:
    from release_graph.importer.cli import run

    present = {label: SHARED_FLEETS / relative for label, relative in IMPORT_INPUTS.items()
               if (SHARED_FLEETS / relative).exists()}
    for label in IMPORT_INPUTS:
        if label not in present:
            section.notes.append(f"Skipped {label}: {SHARED_FLEETS / IMPORT_INPUTS[label]} does not exist (set "
                                 "RELEASE_GRAPH_FLEETS to the folder holding online-boutique/ and robot-shop/).")
    present.update(bench.more_fleets)
    cli = Path(sys.executable).parent / "release-graph"
    figures = []
    for label, source in present.items():
        output = bench.work / "imported" / f"{re.sub(r'[^a-z0-9]+', '-', label.lower())}.yaml"
        output.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(bench.n(5)):
            stdout, stderr = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                seconds, code = timed(run, [str(source), "-o", str(output), "--force"])
            if code != 0:  # a fleet that imports nothing is a figure too: it says why
                why = " ".join(" ".join(stderr.getvalue().splitlines()[1:]).split()).replace("|", "/")
                figures.append(f"| {label} | writes nothing: {why[:240]}{'...' if len(why) > 240 else ''} | | | | |")
                break
            section.row(f"{label}: in-process", "read, infer, write and validate the fleet.yaml").samples.append(
                seconds)
        else:
            figures.append(import_figures(label, source, output))
            for _ in range(bench.n(3)):
                seconds, done = timed(subprocess.run, [str(cli), "import", str(source), "-o", str(output), "--force"],
                                      capture_output=True, text=True, timeout=300)
                if done.returncode != 0:
                    raise RuntimeError(f"`release-graph import {source}` exited {done.returncode}:\n{done.stderr}")
                section.row(f"{label}: `release-graph import` command", "including interpreter start and imports"
                            ).samples.append(seconds)
    section.tables += [
        "What each import finds: services (application + infrastructure); edges, of which hard, soft and "
        "startup-only (only a start-up ordering names it: `depends_on`, a wait); edges whose evidence shows a call "
        "(an environment value, a connection string, a command); references to hosts no input deploys; `REVIEW` "
        "notes a person should act on.",
        "",
        "| fleet | services | edges (hard / soft / startup-only) | edges with a call seen | unresolved | REVIEW "
        "notes |",
        "|---|---|---|---:|---:|---:|",
        *figures,
        "",
    ]
    section.notes.append(f"Inputs read in place from {SHARED_FLEETS}"
                         + (f", and {len(bench.more_fleets)} more given with --fleet (the repository and commit "
                            "are in each label; their files stay outside this repository)" if bench.more_fleets
                            else "")
                         + "; the written fleet.yaml goes to a temporary folder and is validated by the manifest "
                           "loader before it is written (part of the time).")


def import_figures(label: str, source: Path, output: Path) -> str:
    """One row of the figures table: what the import of `source` found."""
    from release_graph.importer.cli import import_fleet

    result = import_fleet([source], output)
    services = result.fleet.services.values()
    infrastructure = sum(1 for s in services if s.infrastructure)
    edges = list(result.edges.edges.values())
    soft = sum(1 for e in edges if e.soft)
    startup = sum(1 for e in edges if not e.soft and e.startup_only)
    calls = sum(1 for e in edges if not e.startup_only)
    reviews = sum(len(s.review) for s in services) + sum(1 for n in result.fleet.notes if n.startswith("REVIEW"))
    return (f"| {label} | {len(result.fleet.services)} ({len(result.fleet.services) - infrastructure} + "
            f"{infrastructure}) | {len(edges)} ({len(edges) - soft} / {soft} / {startup}) | {calls} | "
            f"{len(result.edges.unresolved)} | {reviews} |")


# --- cleanup ---------------------------------------------------------------------------------------------------------


def remove_images(repository: str, attempts: int = 5) -> None:
    """Delete every manifest of `repository` from the registry and untag its local images.

    Untag only: image ids and layers can be shared with other builds on this engine. Podman 4.3 answers an
    image listing with 500 ("image not known") while another process removes an image, so listing is retried.
    """
    import docker

    from resources.registry import Registry

    registry = Registry()
    for tag in registry.tags(repository):
        digest = registry.manifest_digest(repository, tag)
        if digest:
            registry.delete(repository, digest)
    client = docker.from_env(timeout=120)
    try:
        for attempt in range(attempts):
            try:
                images = client.images.list(name=repository)
                break
            except docker.errors.APIError:
                if attempt == attempts - 1:
                    raise
                time.sleep(1 + attempt)
        for image in images:
            for tag in image.tags:
                if tag.startswith(repository + ":"):
                    with contextlib.suppress(docker.errors.APIError):
                        client.images.remove(tag)
    finally:
        client.close()


def cleanup(bench: Bench, *, engine_used: bool = True) -> list[str]:
    """Remove everything the run created; returns what could not be removed (reported, never hidden).
    `engine_used=False` (only sections that never touch the container engine ran): just the work folder."""
    problems: list[str] = []
    if not engine_used:
        shutil.rmtree(bench.work, ignore_errors=True)
        return problems
    if bench._resources is not None and bench.fleet_name:
        target = bench._resources["deploy_targets"].for_environment("docker")
        for environment in list(bench.environments):
            try:
                target.teardown_environment(bench.fleet_name, environment)
            except Exception as exc:
                problems.append(f"environment {environment}: {exc}")
    if bench.fleet_name:
        for service in yaml.safe_load(DEMO_FLEET.read_text())["services"]:
            repository = f"{bench.registry}/{service}"
            try:
                remove_images(repository)
            except Exception as exc:
                problems.append(f"{repository}: {type(exc).__name__}: {exc}")
        try:
            import docker

            client = docker.from_env(timeout=120)
            from resources import labels as L

            for selectors in L.selectors((L.FLEET, bench.fleet_name)):
                leftovers = {"label": selectors}
                for container in client.containers.list(all=True, filters=leftovers, ignore_removed=True):
                    container.remove(force=True)
            client.close()
        except Exception as exc:
            problems.append(f"containers of {bench.fleet_name}: {type(exc).__name__}: {exc}")
    shutil.rmtree(bench.work, ignore_errors=True)
    return problems


# --- (f) the orchestrator over time ------------------------------------------------------------------------------


def bench_orchestrator_memory(bench: Bench, section: Section) -> None:
    orchestrator_memory.measure(bench, section, 2 if bench.quick else bench.memory_minutes,
                                services=bench.memory_services, heap_trace_dir=bench.heap_trace_dir,
                                heap_trace_minutes=bench.heap_trace_minutes, heap_trace_from=bench.heap_trace_start)


# --- the report ------------------------------------------------------------------------------------------------------


def render(facts: dict[str, str], sections: list[Section], started: float, load: tuple, load_after: tuple,
           runs_note: str) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m benchmarks.run`): a full run rewrites the whole file, and "
        "`--only <sections> --update` re-measures some sections in place (each such section says when). Each case "
        "ran N times on real repositories, the real container engine, registry and haproxy; times are wall-clock "
        "(median, fastest and slowest run). " + runs_note,
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {name} | {value} |" for name, value in facts.items()]
    lines += [
        f"| load average (1/5/15 min) | {' / '.join(f'{x:.2f}' for x in load)} at the start, "
        f"{' / '.join(f'{x:.2f}' for x in load_after)} at the end |",
        f"| benchmark duration | {time.perf_counter() - started:.0f} s |",
        "",
        "The machine is shared with other work (tests, builds): the load average above says how busy it was. "
        "Compare medians between runs on the same machine, not across machines.",
        "",
    ]
    for section in sections:
        lines += [f"## ({section.key}) {section.title}", "", section.intro, ""]
        if section.rows:
            lines += ["| case | N | median | min | max | what it covers |", "|---|---:|---:|---:|---:|---|"]
            for row in section.rows:
                if not row.samples:
                    continue
                lines.append(
                    f"| {row.case} | {len(row.samples)} | {fmt_seconds(statistics.median(row.samples))} | "
                    f"{fmt_seconds(min(row.samples))} | {fmt_seconds(max(row.samples))} | {row.note} |"
                )
            lines.append("")
        if section.error:
            lines += ["**This section failed**; the figures above (if any) are what it measured before:", "",
                      "```", section.error.strip(), "```", ""]
        for table in section.tables:
            lines += [table, ""]
        lines += [f"- {note}" for note in section.notes]
        if section.notes:
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def update_report(existing: str, report: str, measured: str) -> str:
    """`existing` with each section of `report` put in place of the section of the same letter (or added),
    marked with when and where it was measured: the other sections and the machine table stay as they were."""
    def sections_of(text: str) -> tuple[str, dict[str, str]]:
        parts = re.split(r"(?m)^(?=## \([a-z]\) )", text)
        return parts[0], {part[4]: part.rstrip() + "\n\n" for part in parts[1:]}  # a blank line between sections

    head, old_sections = sections_of(existing)
    _, new_sections = sections_of(report)
    for key, part in new_sections.items():
        title, _, body = part.partition("\n\n")
        old_sections[key] = f"{title}\n\n{measured}\n\n{body}".rstrip() + "\n\n"
    return (head + "".join(old_sections[key] for key in sorted(old_sections))).rstrip() + "\n"


# --- (g) a burst of commits ----------------------------------------------------------------------------------------

BURST_STORY = "tests/stories/test_bursts.py"
BURST_INTRO = (
    "The story `tests/stories/test_bursts.py` (pytest, marker `burst`), on the orchestrator as the production "
    "setups run it: code server, webserver and daemon as separate processes on a private PostgreSQL. A fleet of 20 "
    "copies of the demo's inventory, each in its own git repository, with the demo's security checks (unit tests, "
    "SAST, compliance, SBOM, signed provenance), dev and staging ungated, prod gated, no integration stage "
    "(inventory's integration tests call it by its own name); the Git sensor polls every 4 s "
    "as in the demo, builds run four at a time (dagster.yaml). 200 commits land over a minute, round after round over "
    "every service, and the daemon is killed 24 s into the burst and started again 10 s later. The story passes "
    "only if every service ends at its newest commit in dev and staging, no commit was built twice, every commit "
    "not built is named by the build that coalesced it, no run failed and the run queue drained. The baseline is "
    "the same commits' builds without the orchestrator: a fresh inventory commit exported, built and pushed with "
    "the engine alone (base layers cached), measured in the same run, times the number of commits."
)


def bench_burst(bench: Bench, section: Section) -> None:
    report = bench.work / "burst.json"
    services, commits = (4, 20) if bench.quick else (20, 200)
    env = {**os.environ, "RELEASE_GRAPH_BURST_REPORT": str(report),
           "RELEASE_GRAPH_BURST_SERVICES": str(services), "RELEASE_GRAPH_BURST_COMMITS": str(commits)}
    # The baseline: the same kind of build, with the engine alone, before the story loads the machine
    baseline = []
    for _ in range(bench.n(3)):
        _sha, _digest, _built, phases = engine_build_of_a_fresh_commit(bench)
        baseline.append(sum(phases))
    section.row("baseline: one commit exported, built and pushed with the engine alone").samples.extend(baseline)
    log(f"(g) {BURST_STORY}: {commits} commits over {services} services (about 20 minutes)")
    seconds, story = timed(subprocess.run, [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                                            "-m", "burst", BURST_STORY], cwd=PROJECT_ROOT, env=env,
                           capture_output=True, text=True)
    if story.returncode != 0 or not report.exists():
        raise RuntimeError(f"{BURST_STORY} failed (exit {story.returncode}):\n{story.stdout[-6000:]}\n"
                           f"{story.stderr[-2000:]}")
    figures = json.loads(report.read_text())
    shape = f"{figures['commits']} commits, {figures['services']} services"
    section.row("the story, start to end (orchestrator start, burst, settle, checks)", shape).samples.append(seconds)
    section.row("the burst itself (commits landing, daemon killed and restarted)").samples.append(
        figures["burst_seconds"])
    section.row("last commit → every service's newest commit in dev and staging").samples.append(
        figures["settled_after_last_commit_seconds"])
    section.row("last commit → run queue drained").samples.append(figures["queue_drained_after_last_commit_seconds"])
    section.tables.append("\n".join([
        "| what happened to the burst's commits | count |", "|---|---:|",
        f"| commits | {figures['commits']} |",
        f"| built (engine builds) | {figures['engine_builds']} |",
        f"| coalesced into a newer commit's build (named on its run) | {figures['coalesced']} |",
        f"| of which: builds cancelled while queued, superseded by a newer commit | "
        f"{figures['superseded_while_queued']} |",
        f"| build runs | {figures['build_runs']} |",
        f"| deployment runs | {figures['deploy_runs']} |",
        f"| runs in all (none failed) | {figures['runs']} |",
    ]))
    build_seconds = statistics.median(baseline)
    section.notes.append(
        f"Baseline, measured in the same run: building every commit without the orchestrator would be "
        f"{figures['commits']} engine builds; at the median export + build + push of a fresh inventory commit "
        f"with the engine alone ({build_seconds:.1f} s over {len(baseline)} builds, base layers cached) that is "
        f"{figures['commits'] * build_seconds / 60:.0f} minutes of builds alone, before any check or deployment. "
        f"The orchestrator built {figures['engine_builds']} images "
        f"({figures['engine_builds'] / figures['commits']:.2f}× the commits) and had every service at its newest "
        f"commit in staging {figures['settled_after_last_commit_seconds'] / 60:.1f} minutes after the last commit.")


# --- (h) a kubernetes deployment through the emulated API --------------------------------------------------------


def bench_kubernetes_deploy(bench: Bench, section: Section) -> None:
    from benchmarks import kubernetes_deploy

    runs = bench.n(20)
    timings, calls = kubernetes_deploy.measure(runs)
    for case in (kubernetes_deploy.COLD, *kubernetes_deploy.CASES):
        verbs = calls[case]
        counted = ", ".join(f"{verbs[verb]} {verb}" for verb in kubernetes_deploy.VERBS if verbs.get(verb))
        section.row(f"{case}: whole deploy()", f"{sum(verbs.values())} API calls: {counted}").samples.extend(
            total for total, _api, _validation in timings[case])
        section.row(f"{case}: inside the API calls alone (the baseline)").samples.extend(
            api for _total, api, _validation in timings[case])
        section.row(f"{case}: strict schema validation of the objects").samples.extend(
            validation for _total, _api, validation in timings[case])
    first = [total / api for total, api, _validation in timings[kubernetes_deploy.CASES[0]]]
    validation = statistics.median(v for _total, _api, v in timings[kubernetes_deploy.CASES[0]])
    cold = timings[kubernetes_deploy.COLD][0][2]
    section.notes.append(
        f"A first deployment takes {statistics.median(first):.1f}× its API calls alone (median of {len(first)}). "
        f"The strict schema validation costs {validation * 1000:.1f} ms (median) once the process has built its "
        f"validators, one per kind and cluster version (objects.strict_validator), from the schema files it reads "
        f"once: {cold * 1000:.1f} ms in the process's first deployment. The rollout costs nothing here: the "
        "emulator's fake controller makes a Deployment available at once, so a real cluster adds its scheduling, "
        "image pull and readiness time.")


# --- (i) the network rule on the docker target ---------------------------------------------------------------------

# Run inside a caller's container: `count` GETs of a URL one at a time, each on a fresh connection, with a Host
# header; prints the statuses seen and every latency in ms (JSON).
CALLS_INSIDE = """
import http.client, json, sys, time
host, port, path, name, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
latencies, statuses = [], {}
for _ in range(count):
    started = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", path, headers={"Host": name})
    response = conn.getresponse()
    response.read()
    conn.close()
    latencies.append((time.perf_counter() - started) * 1000)
    statuses[response.status] = statuses.get(response.status, 0) + 1
print(json.dumps({"latencies": latencies, "statuses": statuses}))
"""


def _calls_inside(target, fleet: str, environment: str, caller: str, host: str, name: str, count: int) -> dict:
    running = target.running(fleet, environment, caller)
    container = target.engine.client().containers.get(running.container_id)
    result = container.exec_run(["python3", "-c", CALLS_INSIDE, host, "8080", "/", name, str(count)])
    if result.exit_code != 0:
        raise RuntimeError(f"calls from {caller}: {result.output.decode(errors='replace')[-500:]}")
    return json.loads(result.output.decode().strip().splitlines()[-1])


def bench_network_rule(bench: Bench, section: Section) -> None:
    """Request latency from one service to another through the environment's switch, with the network rule (the
    switch admits the declared callers' networks only) and without it (the same route with no sources), and what
    a refused call costs; then the deploy time the rule adds (networks and firewall rules)."""
    import dataclasses

    from resources.registry import Registry
    from resources.targets import DeploymentSpec
    from resources.targets.docker import isolation

    target = bench.resources()["deploy_targets"].for_environment("docker")
    digest = Registry().manifest_digest(f"{bench.registry_host}/base/python", "bookworm")
    if not digest:
        raise RuntimeError(f"{bench.registry_host}/base/python:bookworm is not in the registry (make setup builds it)")
    environment = "netrule"
    bench.environments.append(environment)
    common = dict(fleet=bench.fleet_name, environment=environment, image=f"{bench.registry_host}/base/python@{digest}",
                  port=8080, health="/", command=("python3", "-m", "http.server", "8080"))
    seconds, _ = timed(target.deploy, DeploymentSpec(service="api", callers=("web",), **common))
    section.row("first deployment of a provider", "its network, its callers' networks and the environment's, "
                "their firewall rules, start, health gate, switch with the rule").samples.append(seconds)
    target.deploy(DeploymentSpec(service="web", calls=("api",), **common))
    target.deploy(DeploymentSpec(service="intruder", **common))
    for _ in range(bench.n(5)):
        seconds, result = timed(target.deploy, DeploymentSpec(service="api", callers=("web",), **common))
        if result.changed:
            raise RuntimeError("redeploying api's digest changed something")
        section.row("redeploy of the same digest (no-op)", "reads the networks of the service, its callers and the "
                    "environment, and checks their firewall rules").samples.append(seconds)
    router = target._router(bench.fleet_name, environment)
    route = router.route_of("api")
    if isolation.available():
        for _ in range(bench.n(20)):
            seconds, _ = timed(isolation.isolate, route.subnet)
            section.row("the firewall rule of one network, already in place", "what each network of a deployment "
                        "costs: the chain, the FORWARD jump and the rule checked (iptables, under a lock)"
                        ).samples.append(seconds)
    open_route = dataclasses.replace(route, sources=(), callers=())
    count = bench.n(100)
    latencies: dict[str, list[float]] = {"with the rule": [], "without the rule": [], "refused": []}
    for _ in range(bench.n(5)):  # interleaved, so that both see the same machine
        for label, wanted in (("with the rule", route), ("without the rule", open_route)):
            router.set_route("api", wanted)
            answer = _calls_inside(target, bench.fleet_name, environment, "web", "api", "api", count)
            if answer["statuses"] != {"200": count}:
                raise RuntimeError(f"web -> api {label}: {answer['statuses']}")
            latencies[label] += answer["latencies"]
        router.set_route("api", route)
        answer = _calls_inside(target, bench.fleet_name, environment, "intruder", route.gateway, "api", count)
        if answer["statuses"] != {"403": count}:
            raise RuntimeError(f"intruder -> api: {answer['statuses']}")
        latencies["refused"] += answer["latencies"]
    refused = target.refused_calls(bench.fleet_name, environment)["intruder -> api"]
    if refused.total != count:
        raise RuntimeError(f"the switch counted {refused.total} refused calls of the last round's {count}")

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    rows = "".join(f"| {label} | {len(values)} | {pct(values, .5):.2f} ms | {pct(values, .9):.2f} ms | "
                   f"{pct(values, .99):.2f} ms |\n" for label, values in latencies.items())
    added = pct(latencies["with the rule"], .5) - pct(latencies["without the rule"], .5)
    section.tables.append(
        "A call from `web` to `api` through the environment's switch, as their code makes it (`http://api:8080/`, "
        "from inside web's container; one at a time, a fresh connection each), with the rule and without it "
        "(the same route, no sources), interleaved in rounds; and `intruder`'s refused calls at the switch\n\n"
        "| call | requests | p50 | p90 | p99 |\n|---|---:|---:|---:|---:|\n" + rows +
        f"\nThe rule adds {added:+.2f} ms at the median. A refused call is answered by the switch itself, without a "
        f"connection to a server. The switch counted {refused.total} refused calls since its last reload (each "
        f"toggle of the rule reloads haproxy, which restarts the counts; the last round made {count}).\n")
    seconds, _ = timed(target.teardown_environment, bench.fleet_name, environment)
    bench.environments.remove(environment)
    section.row("teardown of the environment", "containers, 4 networks and their firewall rules, haproxy"
                ).samples.append(seconds)


# --- (j) end-to-end tests as a pod ----------------------------------------------------------------------------------

# What the measured test image runs: one passing test's JUnit report, written where the reporter collects it.
TEST_POD_SCRIPT = (
    "import os, pathlib; print('one test'); os.makedirs('/reports', exist_ok=True); "
    "pathlib.Path('/reports/e2e.xml').write_text("
    "'<testsuite tests=\"1\" failures=\"0\"><testcase classname=\"e2e\" name=\"test_ok\"/></testsuite>')")


def bench_test_pods(bench: Bench, section: Section) -> None:
    """The same test image run as the docker target runs end-to-end tests (a container, its /reports copied out)
    and as the kubernetes target does (a pod through Dagster Pipes, its report sent back), with the pod's API
    calls counted."""
    from resources.containers import ContainerEngine
    from resources.registry import Registry

    digest = Registry().manifest_digest(f"{bench.registry_host}/base/python", "bookworm")
    if not digest:
        raise RuntimeError(f"{bench.registry_host}/base/python:bookworm is not in the registry (make setup builds it)")
    image = f"{bench.registry_host}/base/python@{digest}"
    command = ["python3", "-c", TEST_POD_SCRIPT]
    engine = ContainerEngine()
    for _ in range(bench.n(5)):
        seconds, result = timed(engine.run_to_completion, image, command=command, timeout_seconds=120,
                                name=f"{bench.prefix}-tests-{uuid.uuid4().hex[:6]}", copy_out="/reports")
        if result.exit_code != 0 or "e2e.xml" not in result.files:
            raise RuntimeError(f"the docker run of the tests exited {result.exit_code}: {result.logs_tail}")
        section.row("docker target: a container, its reports copied out").samples.append(seconds)
    calls = {}
    for _ in range(bench.n(5)):
        seconds, calls = _one_test_pod(bench, image, command)
        section.row("kubernetes target: a pod through Dagster Pipes, the report sent back",
                    "the whole step, in-process (the fake kubelet polls every 0.1 s)").samples.append(seconds)
    section.notes.append(
        f"API calls of one test pod ({sum(calls.values())}): " + ", ".join(f"{n} {what}" for what, n in sorted(
            calls.items(), key=lambda item: -item[1])) + ". Most are the Pipes client's polls of the pod's status "
        "(every `poll_seconds`) until it is ready and until it ends; the log is one streamed request. The first "
        "run in a namespace also writes the reporter's ConfigMap (a server-side apply, which the emulator answers "
        "404, then a create), later runs only read it. On a real cluster the pod's scheduling and image pull come "
        "on top.")


def _one_test_pod(bench: Bench, image: str, command: list[str]) -> tuple[float, dict[str, int]]:
    """One test pod through a Dagster step on a fresh emulator: the step's seconds and the API calls by kind."""
    import collections

    import dagster as dg
    import docker

    from benchmarks.kubernetes_emulator import FakeKubelet, KubernetesApiEmulator
    from release_graph.fleet.model import KubernetesCluster
    from resources.targets.kubernetes.target import KubernetesTarget, KubernetesTargetConfig

    with KubernetesApiEmulator() as emulator, FakeKubelet(emulator, docker.from_env(), prefix=bench.prefix):
        target = KubernetesTarget(KubernetesCluster(namespace="bench", version="1.33"),
                                  KubernetesTargetConfig(api_host=emulator.url, poll_seconds=0.1))
        results = []

        @dg.asset(name="e2e")
        def e2e(context):
            results.append(target.run_tests(bench.fleet_name, "bench", image, command=command, step=context))
            return dg.MaterializeResult()

        with dg.instance_for_test() as instance:
            seconds, outcome = timed(dg.materialize, [e2e], instance=instance)
        if not outcome.success or results[0].exit_code != 0 or "e2e.xml" not in results[0].files:
            raise RuntimeError("the test pod did not report a pass")
        calls = collections.Counter(
            f"{r.method} {r.resource or r.path}" + (f"/{r.subresource}" if r.subresource else "")
            for r in emulator.requests())
    return seconds, dict(calls)


SECTIONS: list[tuple[str, str, str, Callable[[Bench, Section], None]]] = [
    ("a", "Manifest validation and graph build",
     "`load_fleet` (validation of the whole manifest, with the file checks of local repositories), "
     "`build_definitions` (every service's assets, checks, sensors) and Dagster resolving the repository (asset "
     "graph, implicit job). The demo fleet, and generated fleets whose services each live in a local folder "
     "with a Dockerfile and have 1-3 hard edges to other services; three environments, prod approval-gated.",
     bench_graph),
    ("b", "Git sensor ticks (demo fleet)",
     "`sensors.git_commits.evaluate_git_tick` on a copy of the demo fleet's four git repositories (local paths), "
     "with the registry lookup of the first tick; and the idle tick through the sensor definition.",
     bench_sensor),
    ("c", f"Image build and push ({BUILT_SERVICE})",
     "One demo service built from a commit with the Docker Engine API and pushed to the local registry; its "
     "offline vulnerability scan (the demo's `osv` scanner); then the `<svc>/image` asset step as a run executes "
     "it (in-process, SQLite instance).",
     bench_image),
    ("d", f"Deployment to a docker environment ({BUILT_SERVICE})",
     "`resources.targets.DockerTarget.deploy` of the digests built in (c): a first deployment, a no-op redeploy, "
     "a switch to another digest behind the same published port, and the teardown.",
     bench_deploy),
    ("e", "`release-graph import` of real fleets",
     "The importer on public microservice demos' deploy files: infer services, infrastructure and edges, "
     "write and validate a fleet.yaml.",
     bench_import),
    ("f", f"The orchestrator over time: {orchestrator_memory.SERVICES} services against plain Dagster",
     orchestrator_memory.INTRO,
     bench_orchestrator_memory),
    ("g", "A burst: 200 commits over 20 services in a minute, the daemon restarted in the middle",
     BURST_INTRO,
     bench_burst),
    ("h", "A kubernetes deployment through the emulated API (payments)",
     "`resources.targets.KubernetesTarget.deploy` of one service (ConfigMap, Secret, NetworkPolicy, Deployment, "
     "Service) against "
     "the emulated Kubernetes API (benchmarks/kubernetes_emulator.py: kmock in a thread of this process, its "
     "server-side apply creating like a real API server's, a fake controller making each Deployment available at "
     "once): a first deployment, the same digest again, a new digest, each round on a fresh emulator; timed whole, "
     "inside the client's API calls (the baseline: the same deployment's API calls alone) and in schema "
     "validation, with the API calls counted by verb.",
     bench_kubernetes_deploy),
    ("i", "The network rule on the docker target",
     "Three services of one environment on the docker target, each on its own network (the Python base image's "
     "`http.server`): `web` declares an edge to `api`, `intruder` none. Request latency from web to api through "
     "the switch with the rule and without it, a refused call's, and what the rule adds to a deployment.",
     bench_network_rule),
    ("j", "End-to-end tests as a pod (Dagster Pipes) against a container",
     "One test image (the Python base image writing a one-test JUnit report) run as the docker target runs a "
     "fleet's end-to-end tests (a container, `/reports` copied out) and as the kubernetes target does "
     "(`KubernetesTarget.run_tests` in a Dagster step: a pod through `PipesK8sClient` against the emulated API, "
     "whose fake kubelet runs it as a container of the same engine; the report comes back as a Pipes message). "
     "Each pod round on a fresh emulator.",
     bench_test_pods),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run per case (a smoke test); prints only")
    parser.add_argument("--only", help="comma-separated sections to run (a-j); prints only. (d) needs (c)")
    parser.add_argument("--output", type=Path, help=f"where to write the report (default for a full run: "
                                                    f"{DEFAULT_OUTPUT.relative_to(PROJECT_ROOT)})")
    parser.add_argument("--update", action="store_true",
                        help="with --only: put the sections run into the existing report, keep the others")
    parser.add_argument("--memory-minutes", type=float, default=30.0,
                        help="how long (f) runs release-graph and plain Dagster side by side (default 30)")
    parser.add_argument("--memory-services", type=int, default=orchestrator_memory.SERVICES,
                        help=f"how many services (f)'s generated fleet has (default {orchestrator_memory.SERVICES})")
    parser.add_argument("--heap-trace-dir", type=Path, metavar="DIR",
                        help="(f): run release-graph's processes under tracemalloc, dump heap snapshots into DIR "
                             "and report what grew (DIR/report.txt); its memory figures then include the tracer")
    parser.add_argument("--heap-trace-minutes", default="", metavar="M,M,...",
                        help="with --heap-trace-dir: the minutes of each process's life to snapshot (default: the "
                             "end of the warm-up and the end of the run)")
    parser.add_argument("--heap-trace-start", type=float, metavar="MINUTE",
                        help="with --heap-trace-dir: the minute of each process's life tracing starts (default: "
                             "halfway to the first snapshot; 0 traces the start-up too, which takes minutes)")
    parser.add_argument("--fleet", action="append", default=[], metavar="LABEL=PATH",
                        help="one more fleet for (e): a folder or file to import (repeatable)")
    args = parser.parse_args(argv)
    more_fleets = {}
    for item in args.fleet:
        label, sep, path = item.partition("=")
        if not sep or not Path(path).exists():
            parser.error(f"--fleet {item!r}: expected LABEL=PATH of a file or folder that exists")
        more_fleets[label] = Path(path).resolve()
    selected = set((args.only or "abcdef").replace(" ", "").split(","))
    if len(selected) == 1 and len(next(iter(selected))) > 1:
        selected = set(next(iter(selected)))
    unknown = selected - {key for key, *_ in SECTIONS}
    if unknown:
        known = ", ".join(key for key, *_ in SECTIONS)
        parser.error(f"--only: unknown section(s) {', '.join(sorted(unknown))} (sections: {known})")
    full = not args.quick and not args.only
    if args.update and (full or args.quick):
        parser.error("--update needs --only (the sections to replace) and a full run of them (no --quick)")
    output = args.output or (DEFAULT_OUTPUT if full or args.update else None)
    heap_trace_minutes: tuple[float, ...] = ()
    if args.heap_trace_dir:
        if "f" not in selected or output == DEFAULT_OUTPUT:
            parser.error("--heap-trace-dir: with --only f (and no --update): the tracer's cost distorts (f)'s figures, "
                         f"they do not belong in {DEFAULT_OUTPUT.relative_to(PROJECT_ROOT)}")
        if any(args.heap_trace_dir.glob("*.snap")):
            parser.error(f"--heap-trace-dir {args.heap_trace_dir}: holds snapshots already (give an empty folder)")
        try:
            heap_trace_minutes = tuple(float(m) for m in args.heap_trace_minutes.split(",") if m.strip())
        except ValueError:
            parser.error(f"--heap-trace-minutes {args.heap_trace_minutes!r}: expected minutes like 5,15")
        args.heap_trace_dir = args.heap_trace_dir.resolve()
    if not os.environ.get("DOCKER_HOST") and selected & {"c", "d", "g"}:
        log("DOCKER_HOST is not set: run through `make bench` (it sources /var/lib/release-graph/env)")
        return 2

    prefix = f"rgb{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))  # short: haproxy's admin socket path lives under it
    bench = Bench(prefix=prefix, work=work, quick=args.quick,
                  registry_host=os.environ.get("RG_REGISTRY", "127.0.0.1:5000"), fleet_name=f"{prefix}-shop",
                  more_fleets=more_fleets, memory_minutes=args.memory_minutes, memory_services=args.memory_services,
                  heap_trace_dir=args.heap_trace_dir, heap_trace_minutes=heap_trace_minutes,
                  heap_trace_start=args.heap_trace_start)
    started, load = time.perf_counter(), os.getloadavg()
    log(f"prefix {prefix}, work folder {work}")
    facts = machine_facts()
    sections: list[Section] = []
    failed = False
    try:
        write_demo_copy(bench)
        for key, title, intro, function in SECTIONS:
            if key not in selected:
                continue
            section = Section(key, title, intro)
            sections.append(section)
            log(f"({key}) {title}")
            section_started = time.perf_counter()
            try:
                function(bench, section)
            except Exception:
                failed = True
                section.error = traceback.format_exc(limit=6)
                log(f"({key}) FAILED:\n{section.error}")
            log(f"({key}) done in {time.perf_counter() - section_started:.1f} s")
    finally:
        problems = cleanup(bench, engine_used=bool(selected & {"c", "d", "g"}))
        for problem in problems:
            log(f"clean-up: {problem}")
    runs_note = ("This was a `--quick` run: one sample per case." if args.quick else
                 "N differs per case to keep the whole run within a few minutes.")
    report = render(facts, sections, started, load, os.getloadavg(), runs_note)
    if args.update:
        measured = (f"Measured on its own (`python -m benchmarks.run --only {','.join(sorted(selected))} --update`) "
                    f"on {facts['date']}: {facts['CPU']}, {facts.get('memory', '')}, {facts['OS']}, Python "
                    f"{facts.get('Python', '')}, release-graph {facts.get('release-graph commit', '')}; load average "
                    f"{' / '.join(f'{x:.2f}' for x in load)} at the start. The machine table above is the full "
                    "run's.")
        report = update_report(output.read_text(), report, measured)
    if output is not None:
        output.write_text(report)
        log(f"wrote {output}")
    else:
        sys.stdout.write(report)
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
