"""Progressive delivery as a release manager lives it, on the real engine, registry and haproxy, in one story
(one world: building it is the slow part): a new release rolls out to staging as a canary (its steps in the
deployment's metadata, the analysis as a passed check); `release-graph rollback` goes back at once under
load, recorded with who and why, and stays where it was made; a rollout whose process was killed half-way is
reported by `release-graph rollout status` and settled by `abort`.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from release_graph.cli.main import main as cli
from release_graph.release import history
from release_graph.release.tracing import ReleaseTrace
from release_graph.release.why import FAILED, stage_status

# With the switch's own load tests, one after another: see tests/resources/targets/docker/test_target.py.
pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("switch")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environments(port: int) -> str:
    return f"""\
  dev: {{target: docker}}
  staging:
    target: docker
    publish: {{inventory: {port}}}
    rollout:
      strategy: canary
      steps: [{{weight: 50, pause_seconds: 2}}]
      bake_seconds: 2
      analysis: {{providers: [haproxy], min_requests: 0, interval_seconds: 1}}
"""


class Load:
    """A bounded client on the published port (127.0.0.1 only), counting answers that are not 200."""

    def __init__(self, port: int):
        self.port, self.ok, self.failed = port, 0, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        for _ in range(50_000):
            if self.stop.is_set():
                return
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                conn.request("GET", "/version")
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    self.ok += 1
                else:
                    self.failed.append(response.status)
            except OSError as exc:
                self.failed.append(repr(exc))
            finally:
                conn.close()
            time.sleep(0.005)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=60)


@pytest.fixture
def released(release_world_factory, first_release_for_the_cli):
    """inventory's first release in dev and staging; the CLI pointed at this world."""
    return first_release_for_the_cli(release_world_factory(
        ["inventory"], environments=environments(free_port()), integration=False,
        extra_services={"inventory": "    health: /healthz"}))


def staging(world) -> dg.AssetKey:
    return dg.AssetKey(["inventory", "staging"])


@pytest.fixture
def trace_file(tmp_path, monkeypatch):
    """Release traces to a JSON-lines file (set before the world is made: its tracer is configured from it)."""
    path = tmp_path / "traces" / "release.jsonl"
    monkeypatch.delenv("RELEASE_GRAPH_OTLP_ENDPOINT", raising=False)
    monkeypatch.setenv("RELEASE_GRAPH_TRACE_FILE", str(path))
    return path


def test_a_canary_release_a_rollback_under_load_and_an_interrupted_rollout_settled(trace_file, released, capsys):
    world = released
    first = world.latest(staging(world))
    assert first.value("analysis").startswith("not analysed: the first deployment")

    # When a new commit is built and reaches staging: a canary at 50 %, then the bake at 100 %
    world.commit("inventory")
    (request,) = world.tick("git_commits").run_requests
    assert world.execute(request).success
    runs = world.automate()
    assert all(run.success for _, run in runs), [world.failures(run) for _, run in runs]
    second = world.latest(staging(world))
    assert second.digest != first.digest
    steps = second.metadata["rollout_steps"].records
    assert [(row.data["weight"], row.data["outcome"]) for row in steps] == [("50", "Successful"),
                                                                            ("100", "Successful")]
    assert second.value("analysis").startswith("Successful")
    # and each rollout step is a span of the release's trace, inside staging's deployment (its run and step)
    trace = ReleaseTrace(world.fleet.name, "inventory", second.git_sha)
    spans = [json.loads(line) for line in trace_file.read_text().splitlines()]
    deploy = next(span for span in spans if span["name"] == "deploy staging"
                  and span["trace_id"] == trace.trace_id_hex)
    parts = [span for span in spans if span["name"].startswith("rollout ") and span["trace_id"] == trace.trace_id_hex]
    assert [(span["name"], span["attributes"]["release_graph.rollout.outcome"]) for span in parts] == [
        ("rollout 1. canary 50%", "Successful"), ("rollout 2. full traffic (bake)", "Successful")], parts
    assert all(deploy["start_ns"] <= span["start_ns"] <= span["end_ns"] <= deploy["end_ns"] for span in parts)
    assert {span["attributes"]["cicd.pipeline.task.run.id"] for span in parts} == {
        deploy["attributes"]["cicd.pipeline.task.run.id"]}
    analysis = world.instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(staging(world), "analysis")])
    assert next(iter(analysis.values())).status.value == "SUCCEEDED"
    capsys.readouterr()
    assert cli(["rollout", "status", "inventory", "--env", "staging"]) == 0
    assert "no rollout in progress" in capsys.readouterr().out

    # When the release manager rolls back under load: at once (no canary), no request fails
    port = world.fleet.environments["staging"].publish["inventory"]
    with Load(port) as load:
        time.sleep(0.5)
        code = cli(["rollback", "inventory", "--env", "staging", "--by", "rm@shop.example",
                    "--reason", "p95 doubled after the release"])
        time.sleep(0.5)
    out = capsys.readouterr().out
    assert code == 0, out
    print(f"\nrollback under load: {load.ok} ok, {len(load.failed)} failed")
    assert load.failed == [] and load.ok > 0
    back = world.latest(staging(world))
    assert back.digest == first.digest
    assert (back.value("rollback_by"), back.value("rollback_reason")) == ("rm@shop.example",
                                                                           "p95 doubled after the release")
    assert back.value("rolled_back_from") == second.digest
    assert "rolled back from" in out
    # and it stays where it was made: automation does not bring the newer digest back by itself
    world.automate()
    assert history.latest(world.instance, staging(world)).digest == first.digest

    # When the process of a deployment run is killed while its canary holds 50 % (SIGKILL: nothing of it
    # cleans up): `release-graph deploy` of the newer image, its run executing in the CLI's own process
    target, fleet = world.target(), world.fleet
    current = world.latest(staging(world))
    newer = world.latest(dg.AssetKey(["inventory", "image"])).digest
    assert newer != current.digest
    output = world.root / "killed-deploy.log"
    with open(output, "wb") as log:
        process = subprocess.Popen([str(Path(sys.executable).parent / "release-graph"), "deploy", "inventory",
                                    "--env", "staging", "--digest", newer], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while (route := target.traffic(fleet.name, "staging", "inventory")).candidate_weight != 50:
            assert process.poll() is None, output.read_text()[-3000:]
            assert time.monotonic() < deadline, "the canary never reached 50 %: " + output.read_text()[-3000:]
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    capsys.readouterr()
    # then the split stays where the dead run left it, and status says so and exits 1
    assert target.traffic(fleet.name, "staging", "inventory").candidate_weight == 50
    assert cli(["rollout", "status", "inventory", "--env", "staging"]) == 1
    out = capsys.readouterr().out
    assert f"interrupted: {route.candidate_name} takes 50 %" in out and "rollout abort" in out, out
    assert f"its process {process.pid} runs no more" in out, out
    # (and `why` says the same of the stage, never "a run is deploying it now")
    stuck = stage_status(world.instance, fleet, fleet.services["inventory"], "staging")
    assert stuck.state == FAILED and f"its process {process.pid} runs no more" in stuck.reason, stuck
    # and abort puts the serving version back at 100 %, the candidate removed
    assert cli(["rollout", "abort", "inventory", "--env", "staging"]) == 0
    assert "settled" in capsys.readouterr().out
    assert target.traffic(fleet.name, "staging", "inventory").candidate is None
    assert target.running(fleet.name, "staging", "inventory").digest == current.digest
    # nothing left to abort or promote
    assert cli(["rollout", "promote", "inventory", "--env", "staging"]) == 1
