"""What grew in each traced process: its latest heap snapshot against its earliest (benchmarks/heap_trace).

    python -m benchmarks.heap_trace.compare DIR            # prints the report and writes DIR/report.txt

Each process (a role and a pid, from the file names `<role>-<pid>-<minute>.snap`) with snapshots at two minutes
or more gets: its RSS and traced Python heap at both (so that one sees how much of the RSS growth the Python heap
explains: the rest is native memory, the allocator's fragmentation, or tracemalloc's own tables), the files whose
allocations grew most, and the `TOP` allocation sites that grew most, grouped by their whole traceback (up to 25
frames) and shown by their innermost frames with the source line, plus the innermost frame in this project's
packages when that is deeper.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import linecache
import sys
import sysconfig
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

TOP = 25  # allocation sites per process
TOP_FILES = 10  # files per process
FRAMES_SHOWN = 6  # innermost frames shown per allocation site
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = tuple(str(PROJECT_ROOT / package) + "/" for package in ("release_graph", "resources", "sensors"))
# the roles in the order of interest: the two that grow first (section (f)), then the rest by name
ROLE_ORDER = ("daemon", "grpc", "code-server", "webserver", "dagster-dev", "run-worker")
# prefixes cut from file names, longest first: site-packages, the standard library, this project
PREFIXES = sorted(
    {
        sysconfig.get_paths()["purelib"] + "/",
        sysconfig.get_paths()["platlib"] + "/",
        sysconfig.get_paths()["stdlib"] + "/",
        str(PROJECT_ROOT) + "/",
    },
    key=len,
    reverse=True,
)


@dataclass
class Process:
    """One traced process: its snapshots by minute, with the facts the tracer wrote beside each."""

    role: str
    pid: int
    snapshots: dict[float, Path] = field(default_factory=dict)
    facts: dict[float, dict] = field(default_factory=dict)


def processes_in(directory: Path) -> list[Process]:
    """The traced processes whose snapshots are in `directory`, the roles of ROLE_ORDER first."""
    found: dict[tuple[str, int], Process] = {}
    for snap in directory.glob("*.snap"):
        try:
            role, pid, minute = snap.stem.rsplit("-", 2)
            key, at = (role, int(pid)), float(minute)
        except ValueError:
            continue
        process = found.setdefault(key, Process(role, int(pid)))
        process.snapshots[at] = snap
        sidecar = snap.with_suffix(".json")
        if sidecar.exists():
            with contextlib.suppress(OSError, ValueError):  # a sidecar only adds the RSS: report without it
                process.facts[at] = json.loads(sidecar.read_text())

    def order(process: Process) -> tuple:
        rank = ROLE_ORDER.index(process.role) if process.role in ROLE_ORDER else len(ROLE_ORDER)
        return rank, process.role, process.pid

    return sorted(found.values(), key=order)


def short(filename: str) -> str:
    return next((filename[len(p) :] for p in PREFIXES if filename.startswith(p)), filename)


def mib(value: float, sign: bool = False) -> str:
    """MiB, or KiB below one MiB: most sites of an idle process change by kilobytes."""
    if abs(value) < 1024 * 1024:
        return f"{value / 1024:{'+' if sign else ''}.1f} KiB"
    return f"{value / 1024 / 1024:{'+' if sign else ''}.1f} MiB"


def frame_line(frame: tracemalloc.Frame) -> str:
    source = linecache.getline(frame.filename, frame.lineno).strip()
    return f"{short(frame.filename)}:{frame.lineno}" + (f"  {source[:80]}" if source else "")


def describe(process: Process, top: int = TOP, frames: int = FRAMES_SHOWN) -> list[str]:
    """The report lines of one process: its earliest snapshot against its latest."""
    first, last = min(process.snapshots), max(process.snapshots)
    old = tracemalloc.Snapshot.load(str(process.snapshots[first]))
    new = tracemalloc.Snapshot.load(str(process.snapshots[last]))
    lines = [f"== {process.role} (pid {process.pid}): minute {first:g} -> minute {last:g} of the process"]
    before, after = process.facts.get(first, {}), process.facts.get(last, {})
    old_files, new_files = old.statistics("filename"), new.statistics("filename")
    traced_old, traced_new = sum(s.size for s in old_files), sum(s.size for s in new_files)
    blocks = sum(s.count for s in new_files) - sum(s.count for s in old_files)
    since = after.get("tracing_since_minute")
    lines.append(
        f"   traced: Python allocations made since minute {since:g} still alive"
        if since is not None
        else "   traced: Python allocations made since tracing started still alive"
    )
    summary = f"   traced: {mib(traced_old)} -> {mib(traced_new)} ({mib(traced_new - traced_old, True)}, "
    summary += f"{blocks:+,} blocks)"
    if before.get("rss_bytes") and after.get("rss_bytes"):
        rss_diff = after["rss_bytes"] - before["rss_bytes"]
        summary += f"; RSS {mib(before['rss_bytes'])} -> {mib(after['rss_bytes'])} ({mib(rss_diff, True)})"
    lines.append(summary)
    if after:
        lines.append(
            f"   gc objects {before.get('gc_objects', 0):,} -> {after.get('gc_objects', 0):,}; tracemalloc's own "
            f"tables {mib(after.get('tracemalloc_overhead_bytes', 0))} (in the RSS, not in the heap traced)"
        )
    by_file = new.compare_to(old, "filename")
    lines.append(f"   files whose allocations changed most (top {TOP_FILES}):")
    for stat in by_file[:TOP_FILES]:
        lines.append(
            f"     {mib(stat.size_diff, True):>12} {stat.count_diff:+9,} blocks  {short(stat.traceback[0].filename)}"
        )
    by_site = new.compare_to(old, "traceback")
    changed = sum(1 for stat in by_site if stat.size_diff or stat.count_diff)
    lines.append(f"   allocation sites that changed most (top {top} of {changed:,}), innermost frame first:")
    for rank, stat in enumerate(by_site[:top], 1):
        lines.append(
            f"   {rank:2}. {mib(stat.size_diff, True)}, {stat.count_diff:+,} blocks "
            f"(now {mib(stat.size)} in {stat.count:,})"
        )
        innermost = list(reversed(stat.traceback))  # tracemalloc keeps the oldest frame first
        for frame in innermost[:frames]:
            lines.append(f"         {frame_line(frame)}")
        ours = next((f for f in innermost if f.filename.startswith(PROJECT_PACKAGES)), None)
        if ours is not None and innermost.index(ours) >= frames:
            lines.append(f"         ... first frame of this project: {frame_line(ours)}")
    return lines


def report(directory: Path, top: int = TOP, frames: int = FRAMES_SHOWN) -> str:
    """The report of every process with two snapshots or more in `directory`; the others are named."""
    processes = processes_in(directory)
    lines = [f"Heap trace in {directory}: {len(processes)} processes traced"]
    for process in processes:
        if len(process.snapshots) < 2:
            minutes = ", ".join(f"minute {m:g}" for m in process.snapshots)
            lines.append(f"-- {process.role} (pid {process.pid}): one snapshot only ({minutes}), nothing to compare")
    for process in processes:
        if len(process.snapshots) >= 2:
            lines.append("")
            try:
                lines += describe(process, top, frames)
            except Exception as exc:  # one unreadable snapshot must not hide the others
                lines.append(f"== {process.role} (pid {process.pid}): {type(exc).__name__}: {exc}")
    return "\n".join(lines) + "\n"


def write_report(directory: Path, top: int = TOP, frames: int = FRAMES_SHOWN) -> str:
    """The report, also written to `directory`/report.txt."""
    text = report(directory, top, frames)
    (directory / "report.txt").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.heap_trace.compare", description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=Path, help="the folder given to --heap-trace-dir")
    parser.add_argument("--top", type=int, default=TOP, help=f"allocation sites per process (default {TOP})")
    parser.add_argument(
        "--frames",
        type=int,
        default=FRAMES_SHOWN,
        help=f"innermost frames shown per allocation site (default {FRAMES_SHOWN})",
    )
    args = parser.parse_args(argv)
    if not any(args.directory.glob("*.snap")):
        parser.error(f"no heap snapshots (*.snap) in {args.directory}")
    sys.stdout.write(write_report(args.directory, args.top, args.frames))
    return 0


if __name__ == "__main__":
    sys.exit(main())
