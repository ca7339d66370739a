"""A release is one trace, from its commit through its image, the image's checks and every deployment: given a new
commit on inventory, when the Git sensor's run builds it and an automation run deploys it to dev, then one trace
holds them all, in order, with the waits between them, although two runs wrote it and neither told the other.
The stage's log lines and metadata carry the same trace id, so a log search and the UI lead to the trace."""

from __future__ import annotations

import json
from datetime import datetime

import dagster as dg
import pytest

from release_graph.release import metadata as M
from release_graph.release.tracing import ReleaseTrace

SERVICE = "inventory"
IMAGE = dg.AssetKey([SERVICE, "image"])
DEV = dg.AssetKey([SERVICE, "dev"])


def release_to_dev(world):
    """The Git sensor's run (image and its checks), then the automation run it leads to (dev)."""
    assert world.automate() == []  # nothing before the first commit is built
    (request,) = world.tick("git_commits").run_requests
    build = world.execute(request)
    assert build.success
    # (the fleet's reports, the matrix and DORA, refresh in runs of their own)
    (deploy,) = [run for keys, run in world.automate() if DEV in keys]
    assert deploy.success
    return request, build, deploy


def ns(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1e9)


def image_checks(world) -> list[str]:
    """The checks on the image (unit tests, lint, SAST, SBOM, ... as the manifest's `security:` says)."""
    return sorted(key.name for checks in world.defs.asset_checks for key in checks.check_keys if key.asset_key == IMAGE)


def assert_one_trace_of_the_release(spans: list[dict], release: ReleaseTrace, *, checks: list[str], build_run: str,
                                    deploy_run: str, committed_at: str) -> None:
    assert "unit_tests" in checks
    names = [span["name"] for span in spans]
    expected = {release.root_name, "wait before image", "image", *(f"check {c}" for c in checks),
                "wait before deploy dev", "deploy dev"}
    assert sorted(names) == sorted(expected), names  # each exactly once: one root, one span per stage
    by_name = {span["name"]: span for span in spans}
    root = by_name[release.root_name]

    # one trace, the release's: every span is the root's child, the root has no parent
    assert {span["trace_id"] for span in spans} == {release.trace_id_hex}
    assert (root["span_id"], root["parent_span_id"]) == (f"{release.root_span_id:016x}", None)
    assert {span["parent_span_id"] for span in spans if span is not root} == {root["span_id"]}

    # in order: the commit, the wait for its build, the image, its checks, the wait for dev, dev
    image, wait_for_image = by_name["image"], by_name["wait before image"]
    deploy, wait_for_dev = by_name["deploy dev"], by_name["wait before deploy dev"]
    assert root["start_ns"] == wait_for_image["start_ns"] == ns(committed_at)
    assert wait_for_image["end_ns"] == image["start_ns"] < image["end_ns"]
    for check in checks:
        assert image["end_ns"] <= by_name[f"check {check}"]["start_ns"] <= by_name[f"check {check}"]["end_ns"]
    # the wait for dev begins when the image is recorded (just after its step's work) and ends when dev starts
    assert image["end_ns"] <= wait_for_dev["start_ns"] < wait_for_dev["end_ns"] == deploy["start_ns"]
    assert deploy["start_ns"] < deploy["end_ns"]
    assert wait_for_dev["attributes"]["release_graph.waited_for"] == f"{SERVICE}/image"

    # written by two runs: the sensor's (image and checks) and automation's (dev)
    runs = {span["name"]: span["attributes"].get("release_graph.dagster.run_id") for span in spans}
    assert {runs["image"], *(runs[f"check {c}"] for c in checks)} == {build_run}
    assert runs["deploy dev"] == deploy_run

    # the conventions' names
    assert deploy["attributes"] | {"cicd.pipeline.task.run.id": "", "release_graph.image.digest": ""} == {
        "cicd.pipeline.name": release.pipeline_name, "cicd.pipeline.run.id": release.trace_id_hex,
        "cicd.pipeline.task.name": "dev", "cicd.pipeline.task.type": "deploy",
        "cicd.pipeline.task.run.id": "", "cicd.pipeline.task.run.result": "success",
        "vcs.ref.head.revision": release.sha, "vcs.ref.head.name": "main", "deployment.environment.name": "dev",
        "service.name": SERVICE, "release_graph.fleet": release.fleet, "release_graph.dagster.run_id": deploy_run,
        "release_graph.dagster.step_key": "inventory__dev", "release_graph.image.digest": "",
    }
    assert deploy["attributes"]["cicd.pipeline.task.run.id"] == f"{deploy_run}/inventory__dev"
    assert deploy["attributes"]["release_graph.image.digest"].startswith("sha256:")
    assert by_name["check unit_tests"]["attributes"]["cicd.pipeline.task.type"] == "test"
    assert image["attributes"]["cicd.pipeline.task.type"] == "build"
    assert {span["resource"]["service.name"] for span in spans} == {SERVICE}


@pytest.mark.engine
def test_a_release_to_dev_is_one_trace_in_the_trace_file_and_its_id_is_in_every_stage(
        release_world_factory, tmp_path, monkeypatch):
    trace_file = tmp_path / "traces" / "release.jsonl"
    monkeypatch.delenv("RELEASE_GRAPH_OTLP_ENDPOINT", raising=False)
    monkeypatch.setenv("RELEASE_GRAPH_TRACE_FILE", str(trace_file))
    world = release_world_factory([SERVICE], integration=False)

    request, build, deploy = release_to_dev(world)

    sha = request.tags["release/git_sha"]
    release = ReleaseTrace(world.fleet.name, SERVICE, sha)
    spans = [json.loads(line) for line in trace_file.read_text().splitlines()]
    assert_one_trace_of_the_release(spans, release, checks=image_checks(world), build_run=build.run_id,
                                    deploy_run=deploy.run_id,
                                    committed_at=world.latest(IMAGE).value(M.COMMITTED_AT))

    # The trace id is in every stage's metadata and its checks' evidence
    assert world.latest(IMAGE).value(M.TRACE_ID) == release.trace_id_hex
    assert world.latest(DEV).value(M.TRACE_ID) == release.trace_id_hex
    for check in (*image_checks(world), "healthy", "in_sync"):
        key = DEV if check in ("healthy", "in_sync") else IMAGE
        assert world.check_evaluation(key, check).metadata[M.TRACE_ID].value == release.trace_id_hex, check
    # ... and in both runs' tags: the sensor's from its request, automation's from the step
    assert request.tags["release/trace_id"] == release.trace_id_hex
    assert world.instance.get_run_by_id(deploy.run_id).tags["release/trace_id"] == release.trace_id_hex

    # Every line the dev stage logged names the service, the environment, the commit and the trace
    lines = [entry.user_message for entry in world.instance.all_logs(deploy.run_id)
             if entry.step_key == "inventory__dev" and not entry.is_dagster_event]
    prefix = f"[service=inventory environment=dev sha={sha[:12]} trace_id={release.trace_id_hex}] "
    assert any("deployed" in line for line in lines), lines
    assert all(line.startswith(prefix) for line in lines), lines


@pytest.mark.engine
def test_a_release_to_dev_reaches_an_otlp_collector_as_one_trace(release_world_factory, otlp_receiver, monkeypatch):
    monkeypatch.delenv("RELEASE_GRAPH_TRACE_FILE", raising=False)
    monkeypatch.setenv("RELEASE_GRAPH_OTLP_ENDPOINT", otlp_receiver.endpoint)
    world = release_world_factory([SERVICE], integration=False)

    request, build, deploy = release_to_dev(world)

    release = ReleaseTrace(world.fleet.name, SERVICE, request.tags["release/git_sha"])
    assert_one_trace_of_the_release(otlp_receiver.spans(), release, checks=image_checks(world),
                                    build_run=build.run_id, deploy_run=deploy.run_id,
                                    committed_at=world.latest(IMAGE).value(M.COMMITTED_AT))
