"""The UI behind an authenticating proxy: a run launched from the launchpad carries the identity the proxy's
header gave, never one the person typed. Dagster's own webserver app, served by uvicorn, with the middleware of
release_graph/webserver.py around it; the instance queues the runs (nothing executes them here: the approval
step's use of the tag is told in tests/release_graph/assets/test_approval_step.py)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import requests
import uvicorn
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster_webserver.app import create_app_from_workspace_process_context

from release_graph.release.tags import AUTHENTICATED_USER_TAG
from release_graph.webserver import ProxyIdentityMiddleware, stamp_identity

CODE = """\
import dagster as dg


@dg.asset(key=["orders", "prod_approval"])
def approval(context) -> None:
    context.log.info("approved")


defs = dg.Definitions(assets=[approval])
"""
LAUNCH = """\
mutation LaunchPipelineExecution($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""
HEADER = "X-Forwarded-Email"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ui(tmp_path: Path):
    """(the UI's GraphQL URL, the instance) of a webserver behind ProxyIdentityMiddleware."""
    (tmp_path / "code.py").write_text(CODE)
    origin = InProcessCodeLocationOrigin(LoadableTargetOrigin(python_file=str(tmp_path / "code.py"),
                                                              attribute="defs"), location_name="shop")
    queued = {"run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}}
    with dg.instance_for_test(overrides=queued) as instance, WorkspaceProcessContext(
            instance, version="", read_only=False,
            workspace_load_target=InProcessWorkspaceLoadTarget(origin)) as workspace:
        app = ProxyIdentityMiddleware(create_app_from_workspace_process_context(workspace, ""), HEADER)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "the webserver did not start within 30 s"
        try:
            yield f"http://127.0.0.1:{port}/graphql", instance
        finally:
            server.should_exit = True
            thread.join(timeout=10)


def launch_approval(url: str, *, typed_tags: dict, headers: dict) -> str:
    """What the launchpad sends when a person clicks Launch run: the asset, and the tags in the form."""
    params = {
        "selector": {"repositoryLocationName": "shop", "repositoryName": "__repository__",
                     "jobName": "__ASSET_JOB", "assetSelection": [{"path": ["orders", "prod_approval"]}]},
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in typed_tags.items()]},
    }
    answer = requests.post(url, json={"operationName": "LaunchPipelineExecution", "query": LAUNCH,
                                      "variables": {"executionParams": params}}, headers=headers, timeout=60)
    answer.raise_for_status()
    launched = answer.json()["data"]["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def test_a_run_launched_through_the_proxy_carries_the_proxys_identity_not_the_typed_one(ui):
    url, instance = ui
    # Bob signed in at the proxy, and typed Ann's identity as a tag in the launchpad
    run_id = launch_approval(url, typed_tags={AUTHENTICATED_USER_TAG: "ann@shop.example", "note": "CHG-1"},
                             headers={HEADER: "bob@shop.example"})
    tags = instance.get_run_by_id(run_id).tags
    assert tags[AUTHENTICATED_USER_TAG] == "bob@shop.example" and tags["note"] == "CHG-1"
    # A request without the header (it did not come through the proxy) keeps no identity, typed or not
    run_id = launch_approval(url, typed_tags={AUTHENTICATED_USER_TAG: "ann@shop.example"}, headers={})
    assert AUTHENTICATED_USER_TAG not in instance.get_run_by_id(run_id).tags
    # Everything else the UI asks goes through untouched
    answer = requests.post(url, json={"query": "{ version }"}, headers={HEADER: "bob@shop.example"}, timeout=30)
    assert answer.json()["data"]["version"] == ""


def test_every_kind_of_launch_gets_the_identity_and_loses_a_typed_one():
    typed = {"key": AUTHENTICATED_USER_TAG, "value": "ann@shop.example"}
    batch = [
        {"variables": {"executionParams": {"selector": {}}}},  # no tags sent at all
        {"variables": {"executionParamsList": [{"executionMetadata": {"tags": [typed]}}]}},
        {"variables": {"reexecutionParams": {"parentRunId": "r1", "extraTags": [typed]}}},
        {"variables": {"backfillParams": {"tags": [typed, {"key": "note", "value": "x"}]}}},
        {"query": "{ version }"},
    ]
    stamped = stamp_identity(batch, "bob@shop.example")
    bob = {"key": AUTHENTICATED_USER_TAG, "value": "bob@shop.example"}
    assert stamped[0]["variables"]["executionParams"]["executionMetadata"]["tags"] == [bob]
    assert stamped[1]["variables"]["executionParamsList"][0]["executionMetadata"]["tags"] == [bob]
    # a re-execution would otherwise keep the parent run's identity: the proxy's upserts over it
    assert stamped[2]["variables"]["reexecutionParams"]["extraTags"] == [bob]
    assert stamped[3]["variables"]["backfillParams"]["tags"] == [{"key": "note", "value": "x"}, bob]
    assert stamped[4] == {"query": "{ version }"}
    # without the header, a typed identity is dropped, and a re-execution does not inherit its parent's
    unstamped = stamp_identity(batch, None)
    assert unstamped[1]["variables"]["executionParamsList"][0]["executionMetadata"]["tags"] == []
    assert unstamped[2]["variables"]["reexecutionParams"]["extraTags"] == [{"key": AUTHENTICATED_USER_TAG, "value": ""}]
