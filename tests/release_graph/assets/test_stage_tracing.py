"""`traced_stage` around one stage, without the engine: off, a release step creates nothing of OpenTelemetry (not
even an import), yet still names its trace in its metadata and log lines; on, a step that refuses records its
span as the release's failure and still fails."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg

from release_graph.assets.stage_tracing import Stage, tag_release, traced_stage
from release_graph.fleet import load_fleet
from release_graph.release.errors import ReleaseStepError
from release_graph.release.keys import image_key
from release_graph.release.tags import SHA_TAG, release_tags
from release_graph.release.tracing import ReleaseTrace
from release_graph.wiring import tracer_resource

PROJECT_ROOT = Path(__file__).resolve().parents[3]
SHA = "0123456789abcdef0123456789abcdef01234567"  # the commit benchmarks/tracing_cost.py's stage deploys
FLEET = """\
fleet: traced
registry: 127.0.0.1:5000/traced
services:
  orders:
    repo: repos/orders
    build: {dockerfile: Dockerfile}
    port: 8080
environments:
  dev: {target: docker}
"""

# One dev deployment of a cheap stage (benchmarks/tracing_cost.py), in a fresh process with tracing as the
# environment says; it reports what exists afterwards.
OFF_STORY = textwrap.dedent("""
    import json, sys, threading
    from pathlib import Path
    import dagster as dg
    from benchmarks.tracing_cost import FLEET, cheap_stage
    from release_graph.fleet import load_fleet
    from release_graph.wiring import tracer_resource

    work = Path(sys.argv[1])
    (work / "repos" / "orders").mkdir(parents=True)
    (work / "repos" / "orders" / "Dockerfile").write_text("FROM scratch\\n")
    (work / "fleet.yaml").write_text(FLEET)
    (work / "home").mkdir()
    fleet = load_fleet(work / "fleet.yaml")
    threads = {t.name for t in threading.enumerate()}
    with dg.instance_for_test(temp_dir=str(work / "home")) as instance:
        result = dg.materialize([cheap_stage(fleet, fleet.services["orders"])], instance=instance,
                                resources={"release_tracer": tracer_resource()})
        metadata = instance.fetch_materializations(dg.AssetKey(["orders", "dev"]), limit=1).records[0] \\
            .asset_materialization.metadata
        lines = [e.user_message for e in instance.all_logs(result.run_id) if e.step_key and not e.is_dagster_event]
    print(json.dumps({
        "success": result.success,
        "opentelemetry_imported": sorted(m for m in sys.modules if m.startswith("opentelemetry")),
        "new_threads": sorted({t.name for t in threading.enumerate()} - threads),
        "trace_id": metadata["trace_id"].value,
        "lines": lines,
        "fleet": fleet.name,
    }))
""")


def test_with_tracing_off_a_stage_creates_nothing_of_opentelemetry_yet_names_its_trace(tmp_path):
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("RELEASE_GRAPH_OTLP_ENDPOINT", "RELEASE_GRAPH_TRACE_FILE")}
    done = subprocess.run([sys.executable, "-c", OFF_STORY, str(tmp_path / "work")], cwd=PROJECT_ROOT,
                          env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    story = json.loads(done.stdout.strip().splitlines()[-1])

    assert story["success"]
    # no tracer provider, no exporter, no thread: OpenTelemetry is not even imported
    assert story["opentelemetry_imported"] == []
    assert story["new_threads"] == []
    assert [p.name for p in tmp_path.rglob("*.jsonl")] == []
    # the trace id is the release's all the same: in the metadata and on every log line
    trace_id = ReleaseTrace(story["fleet"], "orders", SHA).trace_id_hex
    assert story["trace_id"] == trace_id
    assert story["lines"] == [f"[service=orders environment=dev sha={SHA[:12]} trace_id={trace_id}] deployed"]


def test_a_stage_that_refuses_records_its_span_as_the_release_failure_and_still_fails(tmp_path, monkeypatch):
    trace_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv("RELEASE_GRAPH_TRACE_FILE", str(trace_file))
    (tmp_path / "repos" / "orders").mkdir(parents=True)
    (tmp_path / "repos" / "orders" / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "fleet.yaml").write_text(FLEET)
    (tmp_path / "home").mkdir()
    fleet = load_fleet(tmp_path / "fleet.yaml")
    orders = fleet.services["orders"]

    @dg.asset(key=dg.AssetKey(["orders", "dev"]))
    @traced_stage(fleet, orders, Stage("dev", "deploy dev", "deploy", environment="dev", after=image_key(orders)))
    def dev(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        tag_release(context, fleet, orders, SHA, "dev")
        raise ReleaseStepError("service 'orders', environment 'dev': refused: the digest never passed orders/image")

    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        result = dg.materialize([dev], instance=instance, resources={"release_tracer": tracer_resource()},
                                raise_on_error=False)
        assert not result.success
        (failure,) = [event for event in result.all_events if event.is_step_failure]
        assert "refused" in failure.step_failure_data.error.message

    # no image of this commit is recorded, so no wait: only the stage's span, a failure of the release's own
    (span,) = [json.loads(line) for line in trace_file.read_text().splitlines()]
    assert (span["name"], span["trace_id"]) == ("deploy dev", ReleaseTrace(fleet.name, "orders", SHA).trace_id_hex)
    assert span["status"] == "ERROR" and "refused" in span["status_description"]
    assert span["attributes"]["cicd.pipeline.task.run.result"] == "failure"


def test_a_build_run_that_deploys_a_newer_commit_keeps_the_tags_of_the_commit_it_was_launched_for(tmp_path):
    # In a burst, commit OLDER's build run reaches its dev deployment after SHA's build passed: it deploys SHA
    (tmp_path / "repos" / "orders").mkdir(parents=True)
    (tmp_path / "repos" / "orders" / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "fleet.yaml").write_text(FLEET)
    fleet = load_fleet(tmp_path / "fleet.yaml")
    orders = fleet.services["orders"]
    older = "0" * 40

    @dg.asset(key=dg.AssetKey(["orders", "dev"]))
    def dev(context: dg.AssetExecutionContext) -> None:
        tag_release(context, fleet, orders, SHA, "dev")

    with dg.instance_for_test() as instance:
        launched = dg.materialize([dev], instance=instance,
                                  tags=release_tags("orders", older, fleet=fleet.name))
        tags = instance.get_run_by_id(launched.run_id).tags
        # the run still says which commit it built, and now the environment it deployed to too
        assert (tags[SHA_TAG], tags["release/env"]) == (older, "dev")
        assert tags["release/trace_id"] == ReleaseTrace(fleet.name, "orders", older).trace_id_hex
        # while a deployment run that automation launched untagged takes the commit it deploys
        untagged = dg.materialize([dev], instance=instance)
        assert instance.get_run_by_id(untagged.run_id).tags[SHA_TAG] == SHA
