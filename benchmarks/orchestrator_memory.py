"""Section (f) of `make bench`: the orchestrator's memory over time with a large fleet, against plain Dagster.

Two `dagster dev` instances run side by side for the same minutes on the same machine:

- ours: release-graph's code location on a generated fleet of 200 services (the shape of section (a)), each in
  its own local git repository, with the default intervals: every 10 s the Git sensor runs `git ls-remote` on
  200 repositories, every service's automation sensor evaluates its stages' conditions, the run watchers look
  for dead runs and drifted environments;
- the baseline: plain Dagster with the same asset keys, dependencies and checks (one `@asset` with an eager
  condition per key, one `@asset_check` per check, as in section (a)) and Dagster's own automation sensor.

The fleet is idle on purpose, so that only the orchestrator is measured: every service's image for its head
commit is put in the registry first (a tiny image manifest), so the Git sensor's first tick records the heads
and requests no build. Every 10 s the resident memory (RSS) of each process of both process trees is read from
/proc. Growth is taken after a warm-up (the first sixth of the run, at least a minute), each point the median
of three samples; CPU is the processes' user + system time over the same span. The sensors' ticks (how many,
how long each took) are read from the instances afterwards: that is the automation hot path at 200 services.

With a heap-trace folder (`--heap-trace-dir`, benchmarks/heap_trace), every Python process of release-graph's tree
runs under `tracemalloc` from a given minute of its life (25 frames deep: too slow for the start-up, see
benchmarks/heap_trace/sitecustomize.py) and dumps snapshots at given minutes; afterwards each process's latest
snapshot is compared with its earliest, to see which allocations grow. Tracing costs memory and CPU: that run's
figures for release-graph are not comparable with plain Dagster's, nor with a run without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

SERVICES = 200
HEAP_TRACE = Path(__file__).resolve().parent / "heap_trace"  # first on PYTHONPATH: its sitecustomize traces
HEAP_TRACE_GRACE_SECONDS = 180  # how long to wait after the run for the snapshots of the last minute
SAMPLE_SECONDS = 10
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SERVICE_AUTOMATION_PREFIX = "release_automation_svc_"  # the generated services are svc-000 ... svc-199
INTRO = (
    "Two `dagster dev` instances side by side for the same minutes on the same machine: release-graph on a "
    f"generated fleet of {SERVICES} services (the shape of (a)), each in its own local git repository, with the "
    "default Git poll interval (10 s); and plain Dagster with the same asset keys, "
    "dependencies and checks (one `@asset` with an eager condition per key, one `@asset_check` per check) and "
    "Dagster's automation sensor over all of them. The fleet is idle on purpose, so that only the orchestrators "
    "are measured: each service's image for its head commit is put in the registry first (a tiny manifest), so "
    f"the Git sensor records the heads and requests no build. Every {SAMPLE_SECONDS} s the resident memory (RSS) "
    "of every process of both trees is read from /proc; each point in the table is the median of the three "
    "nearest samples. Afterwards the sensors' ticks (how many, how long each took) are read from each instance: "
    "the automation hot path at this size."
)
# The processes of a `dagster dev` tree, by what their command line runs.
ROLES = (("daemon", "dagster._daemon"), ("webserver", "dagster_webserver"), ("code server", "code-server start"),
         ("code server", "api grpc"), ("dagster dev", "bin/dagster dev"))
# What a location module of the baseline runs: the asset graph's shape, written as JSON by the benchmark.
BARE_LOCATION = '''\
import json, os
import dagster as dg

shape = json.loads(open(os.environ["RELEASE_GRAPH_BENCH_SHAPE"]).read())
assets, checks = [], []
for key, parents in shape["assets"]:
    @dg.asset(key=key, deps=[dg.AssetKey(p) for p in parents], automation_condition=dg.AutomationCondition.eager())
    def bare_asset():
        return None
    assets.append(bare_asset)
for key, name in shape["checks"]:
    @dg.asset_check(asset=dg.AssetKey(key), name=name)
    def bare_check():
        return dg.AssetCheckResult(passed=True)
    checks.append(bare_check)
# Dagster's own automation sensor over every asset, running from the start as ours do
automation = dg.AutomationConditionSensorDefinition(
    "default_automation_condition_sensor", target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING)
defs = dg.Definitions(assets=assets, asset_checks=checks, sensors=[automation])
'''


@dataclass
class Instance:
    """One `dagster dev` process tree being measured."""

    label: str
    home: Path
    command: list[str]
    env: dict[str, str]
    port: int
    process: subprocess.Popen | None = None
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)  # (seconds, {role: RSS bytes})
    cpu: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # (seconds, {role: CPU seconds so far})

    def start(self, log: Path) -> None:
        with open(log, "wb") as out:  # the child keeps its own descriptor
            self.process = subprocess.Popen(self.command, cwd=self.home, env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def wait_until_answering(self, timeout: float, log: Path) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/server_info", timeout=2):
                return
            if self.process.poll() is not None:
                break
            time.sleep(1)
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise RuntimeError(f"{self.label}: `dagster dev` did not answer within {timeout:.0f} s:\n{tail}")

    def sample(self, at: float) -> None:
        rss, cpu = usage_by_role(self.process.pid)
        self.samples.append((at, rss))
        self.cpu.append((at, cpu))

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


def usage_by_role(session: int) -> tuple[dict[str, int], dict[str, float]]:
    """({role: resident bytes}, {role: CPU seconds used so far}) of the processes in the session (`dagster dev`
    runs as a session leader). CPU is user + system time of the live processes: a run worker that ended takes
    its share with it (none run here: the fleet is idle)."""
    totals: dict[str, int] = {}
    cpu: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            # field 6 (after the command in parentheses, which may hold spaces) is the session id
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[3]) != session:
                continue
            cpu_seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15)
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            rss_kib = next(int(line.split()[1]) for line in (entry / "status").read_text().splitlines()
                           if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError, IndexError):
            continue  # the process ended meanwhile, or is a kernel thread
        role = next((name for name, marker in ROLES if marker in command), "other (run workers, watchers)")
        totals[role] = totals.get(role, 0) + rss_kib * 1024
        cpu[role] = cpu.get(role, 0.0) + cpu_seconds
    totals["all"] = sum(totals.values())
    cpu["all"] = sum(cpu.values())
    return totals, cpu


def git_init(folder: Path) -> str:
    """The folder as a git repository with one commit on `main`; returns the commit's SHA."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid"}
    for command in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "the service"]):
        subprocess.run(["git", "-C", str(folder), *command], check=True, env=env, capture_output=True)
    return subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def put_tiny_image(repository: str, tag: str) -> None:
    """An OCI image manifest with a config and no layers at `repository:tag` (`host[:port]/path`): enough for
    the Git sensor to find the head's image and request no build (nothing ever runs it)."""
    registry_host, repository = repository.split("/", 1)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                         "config": {}}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    base = f"http://{registry_host}/v2/{repository}"
    started = urllib.request.urlopen(urllib.request.Request(f"{base}/blobs/uploads/", method="POST"), timeout=30)
    location = started.headers["Location"]
    if location.startswith("/"):
        location = f"http://{registry_host}{location}"
    separator = "&" if "?" in location else "?"
    urllib.request.urlopen(urllib.request.Request(
        f"{location}{separator}digest={config_digest}", data=config, method="PUT",
        headers={"Content-Type": "application/octet-stream"}), timeout=30)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": config_digest, "size": len(config)},
                           "layers": []}).encode()
    urllib.request.urlopen(urllib.request.Request(
        f"{base}/manifests/{tag}", data=manifest, method="PUT",
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}), timeout=30)


def graph_shape(fleet_path: Path) -> dict:
    """The asset keys with their parents and the check keys of release-graph's definitions for the fleet."""
    from release_graph.fleet import load_fleet
    from release_graph.wiring import build_definitions, default_resources

    fleet = load_fleet(fleet_path)
    graph = build_definitions(fleet, default_resources(fleet)).get_repository_def().asset_graph
    return {"assets": [[key.path, [parent.path for parent in sorted(graph.get(key).parent_keys)]]
                       for key in sorted(graph.get_all_asset_keys())],
            "checks": [[check.asset_key.path, check.name] for check in sorted(graph.asset_check_keys)]}


def ticks_by_sensor(home: Path) -> dict[str, list[float]]:
    """{sensor: the durations in seconds of its finished ticks}, read from the instance in `home`."""
    import dagster as dg

    durations: dict[str, list[float]] = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for state in instance.all_instigator_state():
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=100_000)
            durations[state.instigator_name] = [t.end_timestamp - t.timestamp for t in ticks
                                                if t.end_timestamp is not None]
    return durations


def runs_started(home: Path) -> int:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        return len(instance.get_run_records())


def median_around(samples: list[tuple[float, dict[str, int]]], at: float, role: str) -> float:
    """The median RSS of `role` in the three samples nearest to `at` seconds."""
    nearest = sorted(samples, key=lambda sample: abs(sample[0] - at))[:3]
    return statistics.median(rss.get(role, 0) for _, rss in nearest)


def cpu_share(instance: Instance, role: str, since: float) -> str:
    """The share of one core `role` used from `since` seconds to the end (100 % = one core busy throughout)."""
    start = min(instance.cpu, key=lambda sample: abs(sample[0] - since))
    end = instance.cpu[-1]
    if end[0] <= start[0]:
        return "n/a"
    return f"{(end[1].get(role, 0.0) - start[1].get(role, 0.0)) / (end[0] - start[0]) * 100:.0f} % of a core"


def mib(value: float) -> str:
    return f"{value / 1024 / 1024:.0f} MiB"


def heap_trace_marks(minutes: float, marks: tuple[float, ...] = ()) -> tuple[float, ...]:
    """The minutes at which each traced process dumps a snapshot: `marks`, else the end of the warm-up of
    `report` and the end of the run. A process counts from its own start, which is before the measurement's (the
    instances must answer first), so a mark up to `minutes` is reached before the run ends."""
    return tuple(sorted(set(marks))) or (round(max(1.0, minutes / 6), 1), minutes)


def heap_trace_start(marks: tuple[float, ...], start: float | None = None) -> float:
    """The minute of each process's life at which tracing starts: `start`, else halfway to the first mark (the
    processes are up by then; tracing their start-up would take minutes)."""
    return start if start is not None else round(min(marks) / 2, 2)


GRPC_FAILURE = re.compile(r"^\S*(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) .*Sensor daemon caught an error for sensor")


def code_server_call_failures(log: Path) -> list[str]:
    """When a sensor's call into the code server failed (the log's timestamps): after each, the daemon reloads the
    code location, which fetches the whole repository snapshot again (tens of MiB of objects at 200 services)."""
    if not log.exists():
        return []
    return [m.group(1) for m in map(GRPC_FAILURE.match, log.read_text(errors="replace").splitlines()) if m]


def measure(bench, section, minutes: float, services: int = SERVICES, heap_trace_dir: Path | None = None,
            heap_trace_minutes: tuple[float, ...] = (), heap_trace_from: float | None = None) -> None:
    """Run both instances for `minutes`, sampling memory; fill `section` (rows: tick durations; tables: memory).
    `services`: the size of the generated fleet (fewer for a smoke test). `heap_trace_dir`: trace release-graph's
    processes (not plain Dagster's) with `tracemalloc` from `heap_trace_start(marks, heap_trace_from)`, snapshots
    at `heap_trace_marks(minutes, heap_trace_minutes)`, and report what grew, printed and in `heap_trace_dir`/
    report.txt ($RELEASE_GRAPH_HEAP_TRACE_FRAMES in the environment: another depth than 25 frames)."""
    from benchmarks.run import PROJECT_ROOT, free_port, write_generated_fleet

    path, _ = write_generated_fleet(bench, services, folder="memory-fleet")
    root = path.parent
    images = []
    for folder in sorted((root / "repos").iterdir()):
        images.append((f"{bench.registry_host}/{bench.prefix}-gen{services}/{folder.name}", git_init(folder)))
        put_tiny_image(*images[-1])
    shape_file = root / "shape.json"
    shape_file.write_text(json.dumps(graph_shape(path)))
    (root / "bare_location.py").write_text(BARE_LOCATION)

    dagster = str(Path(sys.executable).parent / "dagster")
    instances = []
    for label, module in (("release-graph", "release_graph.definitions"), ("plain Dagster", "bare_location")):
        home = bench.work / f"memory-{len(instances)}"
        home.mkdir()
        shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
        port = free_port()
        env = {**os.environ, "DAGSTER_HOME": str(home), "RELEASE_GRAPH_FLEET": str(path),
               "RELEASE_GRAPH_STATE": str(bench.work / f"state-{len(instances)}"),
               "RELEASE_GRAPH_BENCH_SHAPE": str(shape_file),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
        env.pop("RELEASE_GRAPH_GIT_POLL_SECONDS", None)  # the production interval, not the demo's
        # as `make demo` and deploy/Dockerfile start the orchestrator; for both, so that the ratio compares the
        # orchestrators, not the allocators (MALLOC_ARENA_MAX=8 or more in the environment to see glibc's default)
        env.setdefault("MALLOC_ARENA_MAX", "2")
        if heap_trace_dir is not None and label == "release-graph":
            heap_trace_dir.mkdir(parents=True, exist_ok=True)
            env["RELEASE_GRAPH_HEAP_TRACE_DIR"] = str(heap_trace_dir.resolve())
            marks = heap_trace_marks(minutes, heap_trace_minutes)
            env["RELEASE_GRAPH_HEAP_TRACE_MINUTES"] = ",".join(f"{m:g}" for m in marks)
            env["RELEASE_GRAPH_HEAP_TRACE_START"] = f"{heap_trace_start(marks, heap_trace_from):g}"
            env["PYTHONPATH"] = os.pathsep.join([str(HEAP_TRACE), env["PYTHONPATH"]])
        instances.append(Instance(label, home, [dagster, "dev", "-h", "127.0.0.1", "-p", str(port), "-m", module],
                                  env, port))
    try:
        for instance in instances:
            instance.start(instance.home / "dagster-dev.log")
        for instance in instances:
            instance.wait_until_answering(300, instance.home / "dagster-dev.log")
        started = time.monotonic()
        end = started + minutes * 60
        while time.monotonic() < end:
            for instance in instances:
                if instance.process.poll() is not None:
                    raise RuntimeError(f"{instance.label}: `dagster dev` exited with {instance.process.returncode}")
                instance.sample(time.monotonic() - started)
            time.sleep(SAMPLE_SECONDS)
        if heap_trace_dir is not None:
            late = await_heap_snapshots(heap_trace_dir, max(heap_trace_marks(minutes, heap_trace_minutes)))
            if late:
                section.notes.append(f"heap trace: no snapshot at the last minute from {', '.join(late)} within "
                                     f"{HEAP_TRACE_GRACE_SECONDS} s after the run")
    finally:
        for instance in instances:
            instance.stop()
        remove_tiny_images(images, section)
        if heap_trace_dir is not None:  # beside the snapshots: the work folder goes at the end of the run
            with contextlib.suppress(OSError):
                shutil.copy(instances[0].home / "dagster-dev.log", heap_trace_dir / "dagster-dev.log")

    report(section, instances, minutes)
    for instance in instances:
        failures = code_server_call_failures(instance.home / "dagster-dev.log")
        section.notes.append(f"{instance.label}: {len(failures)} sensor ticks failed calling the code server"
                             + (f" (first {failures[0]}, last {failures[-1]} UTC)" if failures else ""))
        if heap_trace_dir is not None:  # what the report's RSS steps can be read against
            (heap_trace_dir / f"samples-{instance.label.replace(' ', '-')}.json").write_text(json.dumps(
                {"rss_by_role": instance.samples, "code_server_call_failures": failures}))
    if services != SERVICES:
        section.notes.append(f"This run: a fleet of {services} services, not {SERVICES}.")
    if heap_trace_dir is not None:
        from benchmarks.heap_trace import compare

        sys.stderr.write(compare.write_report(heap_trace_dir))
        section.notes.append(f"release-graph ran under tracemalloc ({heap_trace_dir}, report.txt there): its memory "
                             "and CPU figures include the tracer's cost and are not comparable with plain Dagster's.")


def await_heap_snapshots(directory: Path, last: float) -> list[str]:
    """Wait until every traced process still alive has written its snapshot of minute `last` (a large heap
    takes a while to dump, and stopping `dagster dev` ends the dump), at most HEAP_TRACE_GRACE_SECONDS; a process
    that started too late to reach that minute by then (a run worker) is not waited for. Returns those missing."""
    deadline = time.time() + HEAP_TRACE_GRACE_SECONDS
    while True:
        missing = set()
        for sidecar in directory.glob("*.json"):  # written after each snapshot, with the process's start
            role = sidecar.stem.rsplit("-", 2)[0]
            try:
                facts = json.loads(sidecar.read_text())
            except (OSError, ValueError):
                continue
            done = (directory / f"{role}-{facts['pid']}-{last:g}.json").exists()
            alive = Path(f"/proc/{facts['pid']}").exists()
            due = facts["started"] + last * 60 <= deadline
            if not done and alive and due:
                missing.add(f"{role} (pid {facts['pid']})")
        if not missing or time.time() > deadline:
            return sorted(missing)
        time.sleep(5)


def remove_tiny_images(images: list[tuple[str, str]], section) -> None:
    from resources.registry import Registry, RegistryError

    registry, left = Registry(), []
    for repository, tag in images:
        try:
            digest = registry.manifest_digest(repository, tag)
            if digest and not registry.delete(repository, digest):
                left.append(repository)
        except RegistryError as exc:
            left.append(f"{repository}: {exc}")
    if left:
        section.notes.append(f"clean-up: {len(left)} tiny images left in the registry, e.g. {left[0]}")


def report(section, instances: list[Instance], minutes: float) -> None:
    warm_up = max(60.0, minutes * 60 / 6)
    last = instances[0].samples[-1][0]
    header = ("| instance | process | RSS at 1 min | RSS after warm-up | RSS at the end | peak | growth after "
              "warm-up | CPU after warm-up |\n|---|---|---:|---:|---:|---:|---:|---:|")
    lines = [header]
    for instance in instances:
        roles = sorted({role for _, rss in instance.samples for role in rss}, key=lambda r: (r == "all", r))
        for role in roles:
            first = median_around(instance.samples, 60, role)
            warm = median_around(instance.samples, warm_up, role)
            final = median_around(instance.samples, last, role)
            peak = max(rss.get(role, 0) for _, rss in instance.samples)
            # a role with no process after the warm-up (run workers of an idle fleet) has no growth to speak of
            grew = f"{(final - warm) / warm * 100:+.1f} %" if warm else "n/a"
            lines.append(f"| {instance.label} | {role} | {mib(first)} | {mib(warm)} | {mib(final)} | {mib(peak)} | "
                         f"{grew} | {cpu_share(instance, role, warm_up)} |")
    section.tables.append("\n".join(lines))
    ours, bare = instances
    for role in ("daemon", "all"):
        ratio = median_around(ours.samples, last, role) / median_around(bare.samples, last, role)
        section.notes.append(f"{role}: release-graph / plain Dagster at the end: {ratio:.2f}x")
    from release_graph.wiring import AUTOMATION_VARIABLE, automation_seconds

    where = "set" if os.environ.get(AUTOMATION_VARIABLE) else "unset: the default"
    section.notes.append(f"release-graph's automation sensors ticked at most every {automation_seconds()} s "
                         f"(${AUTOMATION_VARIABLE} {where}); glibc's malloc arenas: "
                         f"{os.environ.get('MALLOC_ARENA_MAX') or '2'} (MALLOC_ARENA_MAX, for both instances, as "
                         "`make demo` and deploy/Dockerfile set it for the orchestrator).")
    section.notes.append(f"{len(ours.samples)} samples per instance over {minutes:g} min, every {SAMPLE_SECONDS} s; "
                         f"warm-up: the first {warm_up:.0f} s. Runs started during the measurement: "
                         f"release-graph {runs_started(ours.home)}, plain Dagster {runs_started(bare.home)} "
                         "(the fleet is idle: nothing to build or deploy).")
    for instance in instances:
        for sensor, durations in sorted(ticks_by_sensor(instance.home).items()):
            if not durations:
                continue
            # one automation sensor per service: one row for all of them
            per_service = sensor.startswith(SERVICE_AUTOMATION_PREFIX)
            case = (f"{instance.label}: one tick of a service's automation sensor (`{SERVICE_AUTOMATION_PREFIX}<svc>`)"
                    if per_service else f"{instance.label}: one tick of `{sensor}`")
            section.row(case).samples.extend(durations)
        for row in section.rows:
            if row.case.startswith(f"{instance.label}:"):
                row.note = f"{len(row.samples)} ticks in {minutes:g} min"
