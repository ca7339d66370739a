"""Python-heap snapshots of this process at fixed minutes, for section (f)'s heap trace (benchmarks/heap_trace).

Python imports `sitecustomize` at start-up from the first folder on sys.path that has one: the benchmark puts
this folder first on PYTHONPATH of release-graph's `dagster dev` only, and every Python process that `dagster dev`
spawns (webserver, daemon, code server, its gRPC server, run workers) inherits the environment, so each one traces
itself. With $RELEASE_GRAPH_HEAP_TRACE_DIR unset this module does nothing at all; set, it starts
`tracemalloc.start(25)` and a daemon thread that, at each minute of $RELEASE_GRAPH_HEAP_TRACE_MINUTES (e.g.
"5,15", counted from this process's start), writes `<dir>/<role>-<pid>-<minute>.snap` (a `tracemalloc` snapshot)
and then `<role>-<pid>-<minute>.json` (the process's RSS and traced totals at that moment).

Tracing 25 frames deep from the interpreter's start makes imports 20-40 times slower here (`import dagster`
takes 24 s instead of 0.7 s): a code server loading its definitions so slowly misses Dagster's start-up timeout
(180 s). $RELEASE_GRAPH_HEAP_TRACE_START (a minute, default 0: the interpreter's start) starts tracing later,
from the thread, once the process is up; a snapshot then holds only what was allocated since, which is all a
comparison of two snapshots needs to see what grows. $RELEASE_GRAPH_HEAP_TRACE_FRAMES changes the depth (25).

The role is read from
the command line, as section (f) names its processes: daemon, webserver, code-server (the proxy `dagster
code-server start`), grpc (the `dagster api grpc` server that loads the definitions and evaluates the sensors),
dagster-dev, run-worker, else the program's name.

Nothing here may break the traced process: every step is wrapped and a failure only ends the tracing.

No chaining to another sitecustomize: neither this project's venv (include-system-site-packages = false) nor
its interpreter's standard library (pyenv 3.11.7) has one (`import sitecustomize` fails there), so this module
shadows nothing. Should one appear, load it from here.
"""

import os

DIR_VARIABLE = "RELEASE_GRAPH_HEAP_TRACE_DIR"
MINUTES_VARIABLE = "RELEASE_GRAPH_HEAP_TRACE_MINUTES"
START_VARIABLE = "RELEASE_GRAPH_HEAP_TRACE_START"
FRAMES_VARIABLE = "RELEASE_GRAPH_HEAP_TRACE_FRAMES"
FRAMES = 25
# (role, marker in the command line), first match wins: the markers of benchmarks/orchestrator_memory.ROLES
ROLES = (
    ("daemon", "dagster._daemon"),
    ("webserver", "dagster_webserver"),
    ("grpc", "api grpc"),
    ("code-server", "code-server start"),
    ("run-worker", "execute_run"),
    ("dagster-dev", "dagster dev"),
)


def command_line() -> list[str]:
    """This process's command line as it was started: sys.argv is incomplete while `site` runs (`-m` modules)."""
    try:
        with open("/proc/self/cmdline", "rb") as cmdline:
            return [part.decode(errors="replace") for part in cmdline.read().split(b"\0") if part]
    except OSError:
        import sys

        return list(getattr(sys, "argv", []))


def role_of(arguments: list[str]) -> str:
    joined = " ".join(arguments)
    for role, marker in ROLES:
        if marker in joined:
            return role
    program = next((arguments[i + 1] for i, a in enumerate(arguments[:-1]) if a == "-m"), None)
    if program is None and len(arguments) > 1 and not arguments[1].startswith("-"):
        program = os.path.basename(arguments[1])  # a script
    return "".join(c if c.isalnum() or c in "._" else "_" for c in program or "python")[:40]


def resident_bytes() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def write_snapshot(directory: str, minute: float, start: float, started: float, wall_started: float) -> None:
    """One snapshot of the live Python heap, written under a temporary name and renamed: a reader never sees
    half a file. The sidecar JSON comes last: its presence says the snapshot is complete."""
    import gc
    import json
    import time
    import tracemalloc

    taken = time.monotonic()
    gc.collect()  # unreachable cycles would be freed soon anyway: what stays is what the process holds
    snapshot = tracemalloc.take_snapshot().filter_traces(
        (tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__))
    )
    traced, peak = tracemalloc.get_traced_memory()
    arguments = command_line()
    stem = os.path.join(directory, f"{role_of(arguments)}-{os.getpid()}-{minute:g}")
    snapshot.dump(stem + ".snap.partial")
    os.replace(stem + ".snap.partial", stem + ".snap")
    facts = {
        "pid": os.getpid(),
        "minute": minute,
        "elapsed_seconds": round(taken - started, 1),
        "write_seconds": round(time.monotonic() - taken, 1),  # a large heap takes a while to walk and dump
        "started": wall_started,
        "command": arguments[:12],
        "rss_bytes": resident_bytes(),
        "traced_bytes": traced,
        "traced_peak_bytes": peak,
        "tracemalloc_overhead_bytes": tracemalloc.get_tracemalloc_memory(),
        "gc_objects": len(gc.get_objects()),
        "tracing_since_minute": start,
    }
    with open(stem + ".json.partial", "w") as out:
        json.dump(facts, out)
    os.replace(stem + ".json.partial", stem + ".json")


def sleep_until(started: float, minute: float) -> None:
    import time

    delay = started + minute * 60 - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def trace(directory: str, minutes: list[float], start: float, frames: int, started: float, wall_started: float) -> None:
    """The snapshot thread: start tracing at minute `start` unless it runs already, then sleep until each mark
    and write its snapshot; a failure ends the thread quietly."""
    import tracemalloc

    try:
        if not tracemalloc.is_tracing():
            sleep_until(started, start)
            tracemalloc.start(frames)
        for minute in minutes:
            sleep_until(started, minute)
            write_snapshot(directory, minute, start, started, wall_started)
    except Exception:
        pass


def start() -> None:
    directory = os.environ.get(DIR_VARIABLE)
    if not directory:
        return
    import threading
    import time
    import tracemalloc

    def number(variable: str, default: float) -> float:
        try:
            return float(os.environ.get(variable) or default)
        except ValueError:
            return default

    start, frames = max(0.0, number(START_VARIABLE, 0)), max(1, int(number(FRAMES_VARIABLE, FRAMES)))
    minutes = []
    for item in os.environ.get(MINUTES_VARIABLE, "").split(","):
        try:
            minutes.append(float(item))
        except ValueError:
            continue
    minutes = sorted({m for m in minutes if m >= start})  # a snapshot needs tracing on
    if not minutes:
        return
    os.makedirs(directory, exist_ok=True)
    if start == 0:
        tracemalloc.start(frames)
    thread = threading.Thread(
        target=trace,
        args=(directory, minutes, start, frames, time.monotonic(), time.time()),
        name="release-graph-heap-trace",
        daemon=True,
    )
    thread.start()


# not contextlib.suppress: with the variable unset, this module imports nothing more than `site` already has
try:  # noqa: SIM105
    start()
except Exception:
    pass
