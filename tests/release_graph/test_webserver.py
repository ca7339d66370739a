"""The UI behind an authenticating proxy: a run launched from the launchpad carries the identity the proxy's
header gave, never one the person typed. Dagster's own webserver app, served by uvicorn, with the middleware of
release_graph/webserver.py around it; the instance queues the runs (nothing executes them here: the approval
step's use of the tag is told in tests/release_graph/assets/test_approval_step.py)."""

from __future__ import annotations

import json
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


def test_requests_that_could_launch_a_run_past_the_rewriting_are_refused(ui):
    url, instance = ui
    proxied = {HEADER: "ann@shop.example"}
    inline = ('mutation { launchPipelineExecution(executionParams: {selector: {repositoryLocationName: "shop", '
              'repositoryName: "__repository__", jobName: "__ASSET_JOB"}}) { __typename } }')
    # launch inputs written inline, which the rewriting of variables would not see
    answer = requests.post(url, json={"query": inline}, headers=proxied, timeout=30)
    assert (answer.status_code, answer.text) == (403, "behind the authenticating proxy a mutation passes its inputs "
                                                      "as variables (as the Dagster UI does), not inline")
    # the tag's name in a mutation, even spelled with an escape
    smuggled = ('mutation M($key: String = "release\\u002fauthenticated_user", $p: ExecutionParams!) '
                '{ launchPipelineExecution(executionParams: $p) { __typename } }')
    answer = requests.post(url, json={"query": smuggled}, headers=proxied, timeout=30)
    assert answer.status_code == 403 and "set by the authenticating proxy, never by a request" in answer.text
    # a mutation sent in the URL or as application/graphql
    answer = requests.get(url, params={"query": LAUNCH}, headers=proxied, timeout=30)
    assert answer.status_code == 403 and "POST application/json" in answer.text
    answer = requests.post(url, data=LAUNCH, headers={**proxied, "Content-Type": "application/graphql"}, timeout=30)
    assert answer.status_code == 403
    assert instance.get_runs() == []  # nothing was launched
    # queries are left alone: in the URL, and the Runs page's filter by the identity tag
    assert requests.get(url, params={"query": "{ version }"}, headers=proxied, timeout=30).json() == {
        "data": {"version": ""}}
    by_identity = {"query": "query Runs($filter: RunsFilter) { runsOrError(filter: $filter) { __typename } }",
                   "variables": {"filter": {"tags": [{"key": AUTHENTICATED_USER_TAG, "value": "bob@shop.example"}]}}}
    answer = requests.post(url, json=by_identity, headers=proxied, timeout=30)
    assert answer.json() == {"data": {"runsOrError": {"__typename": "Runs"}}}
    assert stamp_identity(by_identity, "ann@shop.example") == by_identity


def test_every_kind_of_launch_gets_the_identity_and_loses_a_typed_one():
    typed = {"key": AUTHENTICATED_USER_TAG, "value": "ann@shop.example"}
    bob = {"key": AUTHENTICATED_USER_TAG, "value": "bob@shop.example"}

    def stamped(query: str, variables, identity="bob@shop.example") -> dict:
        return stamp_identity({"query": query, "variables": variables}, identity)["variables"]

    # a launch whose form sent no tags at all
    launch = stamped(LAUNCH, {"executionParams": {"selector": {}}})
    assert launch["executionParams"]["executionMetadata"]["tags"] == [bob]
    # several runs, with variables sent as a JSON text
    several = stamped("mutation M($all: [ExecutionParams!]!) { launchMultipleRuns(executionParamsList: $all) "
                      "{ __typename } }",
                      json.dumps({"all": [{"executionMetadata": {"tags": [typed]}}]}))
    assert several["all"][0]["executionMetadata"]["tags"] == [bob]
    # a re-execution, whatever its variable is called, would otherwise keep the parent run's identity
    reexecution = "mutation R($p: ReexecutionParams) { launchPipelineReexecution(reexecutionParams: $p) " \
                  "{ __typename } }"
    assert stamped(reexecution, {"p": {"parentRunId": "r1", "extraTags": [typed]}})["p"]["extraTags"] == [bob]
    assert stamped(reexecution, {"p": {"parentRunId": "r1"}}, identity=None)["p"]["extraTags"] == [
        {"key": AUTHENTICATED_USER_TAG, "value": ""}]
    # a backfill; and a typed identity anywhere else in the variables is dropped too
    backfill = stamped("mutation B($b: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $b) "
                       "{ __typename } }", {"b": {"tags": [typed, {"key": "note", "value": "x"}]},
                                            "other": {"deep": [typed]}})
    assert backfill == {"b": {"tags": [{"key": "note", "value": "x"}, bob]}, "other": {"deep": []}}
    # without the header, a typed identity is dropped and none is added
    assert stamped(LAUNCH, {"executionParams": {"executionMetadata": {"tags": [typed]}}}, identity=None) == {
        "executionParams": {"executionMetadata": {"tags": []}}}
