"""What tracing costs a release stage: one cheap stage (its body returns at once), wrapped by `traced_stage` like
every stage, materialized N times in real Dagster runs with tracing off, to a trace file, and to a local OTLP/HTTP
receiver; the figure is Dagster's own step duration (STEP_SUCCESS), median and range.

    python -m benchmarks.tracing_cost            # N=20 per case, prints a Markdown table
    python -m benchmarks.tracing_cost --runs 5

The stage does what a real stage's wrapper does: the log filter, the trace id in its metadata, and with tracing
on the reads of the event log (its step start, the previous stage's materialization) and the export. Real stages
spend seconds to minutes in the engine; this isolates what tracing adds to each.
"""

# No `from __future__ import annotations`: Dagster reads the stage's `context` annotation as a type.

import argparse
import contextlib
import http.server
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import dagster as dg

SHA = "0123456789abcdef0123456789abcdef01234567"
FLEET = """\
fleet: bench
registry: 127.0.0.1:5000/bench
services:
  orders:
    repo: repos/orders
    build: {dockerfile: Dockerfile}
    port: 8080
environments:
  dev: {target: docker}
"""


def cheap_stage(fleet, service, *, traced: bool = True):
    """The stage, wrapped like every stage (or, `traced=False`, as stages were before tracing existed)."""
    from release_graph.assets.stage_tracing import Stage, tag_release, traced_stage
    from release_graph.release import metadata as M
    from release_graph.release.keys import image_key

    stage = Stage("dev", "deploy dev", "deploy", environment="dev", after=image_key(service))
    wrap = traced_stage(fleet, service, stage) if traced else (lambda function: function)

    @dg.asset(key=dg.AssetKey([service.name, "dev"]))
    @wrap
    def dev(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        tag_release(context, fleet, service, SHA, "dev")  # as every stage does once it knows its commit
        context.log.info("deployed")
        return dg.MaterializeResult(metadata={M.GIT_SHA: SHA, M.DIGEST: "sha256:" + "0" * 64})

    return dev


def step_seconds(instance, run_id: str) -> float:
    (record,) = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS).records
    return record.event_log_entry.dagster_event.step_success_data.duration_ms / 1000


def measure(cases: dict, runs: int) -> dict[str, list[float]]:
    """Step seconds per case (name: (stage, resources)); the cases take turns, so a busy moment of the machine
    hits them alike."""
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    with contextlib.ExitStack() as stack:
        instances = {name: stack.enter_context(dg.instance_for_test(temp_dir=stack.enter_context(
            tempfile.TemporaryDirectory()))) for name in cases}
        for repetition in range(runs + 1):  # the first round warms imports and caches; it is not counted
            for name, (stage, resources) in cases.items():
                result = dg.materialize([stage], instance=instances[name], resources=resources)
                if repetition:
                    seconds[name].append(step_seconds(instances[name], result.run_id))
    return seconds


class Collector(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - the standard library's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tracing_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)

    from release_graph.fleet import load_fleet
    from resources.tracing import ReleaseTracer

    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "repos" / "orders").mkdir(parents=True)
        (Path(work) / "repos" / "orders" / "Dockerfile").write_text("FROM scratch\n")
        (Path(work) / "fleet.yaml").write_text(FLEET)
        fleet = load_fleet(Path(work) / "fleet.yaml")
        service = fleet.services["orders"]
        collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
        threading.Thread(target=collector.serve_forever, daemon=True).start()
        traced = cheap_stage(fleet, service)
        cases = {
            "without the wrapper (before tracing)": (cheap_stage(fleet, service, traced=False), {}),
            "tracing off": (traced, {"release_tracer": ReleaseTracer()}),
            "trace file": (traced, {"release_tracer": ReleaseTracer(trace_file=os.path.join(work, "spans.jsonl"))}),
            "OTLP/HTTP (local receiver)": (traced, {"release_tracer": ReleaseTracer(
                otlp_endpoint=f"http://127.0.0.1:{collector.server_port}")}),
        }
        print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
              f"load {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print("\n| case | N | median | min | max |\n|---|---:|---:|---:|---:|")
        for name, seconds in measure(cases, args.runs).items():
            print(f"| {name} | {len(seconds)} | {statistics.median(seconds) * 1000:.1f} ms | "
                  f"{min(seconds) * 1000:.1f} ms | {max(seconds) * 1000:.1f} ms |")
        collector.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
