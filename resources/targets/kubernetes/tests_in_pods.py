"""Test images run as pods of a kubernetes environment, through Dagster Pipes (`PipesK8sClient`).

The fleet's end-to-end tests must run where the services answer by name: inside the cluster, in the environment's
namespace. `KubernetesTarget.run_tests` starts the test image as a Pod and follows it with dagster-k8s's
`PipesK8sClient`: the pod's output streams into the step's logs while it runs, and the verdict comes back as a Pipes
message.

The test image keeps its own command. The pod runs it under a small reporter (`REPORTER`, below) that needs only
`python3` in the image: it runs the command, then sends its exit code, the last lines of its output and the files
it left under the reports folder (the JUnit XML) as one Pipes message, and exits 0 whenever it could report (the
verdict travels in the report: a failing test is not a failed pod). The reporter and the `dagster_pipes` module
(the orchestrator's own copy, so the protocol versions match) reach the pod in a ConfigMap mounted read-only, so
the test image needs no Dagster package.

The pod is locked down as a deployment is (read-only root, a non-root user, no capabilities, no privilege
escalation, no service-account token); the reports folder and /tmp are in-memory volumes. It carries the label
`release-graph.io/role: end-to-end-tests`, which every service's NetworkPolicy admits when the fleet declares
end-to-end tests (release_graph/fleet/network.py). `activeDeadlineSeconds` ends it on the cluster side at the
timeout; the client deletes it when it ends, also on failure.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from release_graph.fleet.network import END_TO_END_TESTS, FLEET_LABEL, MANAGED_BY_LABEL, ROLE_LABEL
from resources.containers import RunResult
from resources.targets.kubernetes.objects import ENVIRONMENT_LABEL, MANAGED_BY

REPORTER_CONFIG_MAP = "release-graph-test-reporter"
REPORTER_MOUNT = "/opt/release-graph"
REPORTER_SCRIPT = "report_tests.py"
PIPES_MODULE_KEY = "dagster_pipes.py"  # mounted as dagster_pipes/__init__.py
TEST_CONTAINER = "tests"
TEST_USER_ID = 65532  # the conventional "nonroot" user: a test image needs no account of its own
TEST_REPORT_MESSAGE = "release-graph.test-report"
LOG_TAIL_LINES = 60
MAX_REPORT_BYTES = 4 * 1024 * 1024  # the reports folder, base64 in one log line: beyond this the reporter stops

# Runs inside the pod with the image's python3 (3.9 or later): stdlib and dagster_pipes only.
REPORTER = f'''\
"""release-graph's test reporter: runs the test image's command, then reports through Dagster Pipes."""
import base64, collections, os, subprocess, sys
from dagster_pipes import open_dagster_pipes

reports, command = sys.argv[1], sys.argv[3:]  # report_tests.py <reports folder> -- <command ...>
tail = collections.deque(maxlen={LOG_TAIL_LINES})
with open_dagster_pipes() as pipes:
    pipes.log.info("running " + " ".join(command))
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   errors="replace")
    except OSError as exc:
        code = 127
        tail.append("cannot start %s: %s" % (command[0] if command else "(no command)", exc))
    else:
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line.rstrip("\\n"))
        code = process.wait()
    files, size, left_out = {{}}, 0, []
    for folder, _, names in os.walk(reports):
        for name in sorted(names):
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                data = handle.read()
            size += len(data)
            if size > {MAX_REPORT_BYTES}:
                left_out.append(os.path.relpath(path, reports))
                continue
            files[os.path.relpath(path, reports)] = base64.b64encode(data).decode()
    if left_out:
        tail.append("reports left out (over {MAX_REPORT_BYTES} bytes in all): " + ", ".join(left_out))
    pipes.report_custom_message({{"kind": "{TEST_REPORT_MESSAGE}", "exit_code": code, "files": files,
                                  "logs_tail": "\\n".join(tail)}})
    pipes.log.info("the tests exited %d; %d report file(s) sent" % (code, len(files)))
'''


class NoTestReport(Exception):
    """The test pod could not run or could not report (not a test failure: that is in the report)."""


def reporter_config_map(fleet: str, environment: str, namespace: str) -> dict:
    """The ConfigMap the test pods mount: the reporter and this orchestrator's `dagster_pipes` module."""
    import dagster_pipes

    pipes_source = Path(dagster_pipes.__file__).read_text()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": REPORTER_CONFIG_MAP,
            "namespace": namespace,
            "labels": pod_labels_for_tests(fleet, environment),
            "annotations": {"release-graph.io/dagster-pipes": _short_hash(pipes_source)},
        },
        "data": {REPORTER_SCRIPT: REPORTER, PIPES_MODULE_KEY: pipes_source},
    }


def pod_labels_for_tests(fleet: str, environment: str) -> dict[str, str]:
    return {FLEET_LABEL: fleet, ENVIRONMENT_LABEL: environment, MANAGED_BY_LABEL: MANAGED_BY,
            ROLE_LABEL: END_TO_END_TESTS}


def pod_spec_for_tests(command: Sequence[str], reports: str, timeout_seconds: float) -> dict:
    """The pod spec handed to `PipesK8sClient.run` as `base_pod_spec` (it adds the image, the command and the
    Pipes variables to the first container)."""
    return {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": max(1, int(timeout_seconds)),
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": TEST_USER_ID, "runAsGroup": TEST_USER_ID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": TEST_CONTAINER,
            "command": reporter_command(command, reports),
            "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [
                {"name": "reporter", "mountPath": REPORTER_MOUNT, "readOnly": True},
                {"name": "reports", "mountPath": reports},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        }],
        "volumes": [
            {"name": "reporter", "configMap": {"name": REPORTER_CONFIG_MAP, "items": [
                {"key": REPORTER_SCRIPT, "path": REPORTER_SCRIPT},
                {"key": PIPES_MODULE_KEY, "path": "dagster_pipes/__init__.py"},
            ]}},
            {"name": "reports", "emptyDir": {"medium": "Memory"}},
            {"name": "tmp", "emptyDir": {"medium": "Memory"}},
        ],
    }


def reporter_command(command: Sequence[str], reports: str) -> list[str]:
    return ["python3", f"{REPORTER_MOUNT}/{REPORTER_SCRIPT}", reports, "--", *command]


def pod_env_for_tests(env: Mapping[str, str]) -> dict[str, str]:
    """The test's variables, and what the reporter needs: its module path and a writable home."""
    return {**env, "PYTHONPATH": REPORTER_MOUNT, "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}


def pod_manifest(name: str, namespace: str, image: str, spec: Mapping, labels: Mapping[str, str],
                 env: Mapping[str, str]) -> dict:
    """The Pod as `PipesK8sClient` will send it (less Dagster's own labels and Pipes variables), for validation."""
    (container, *_) = spec["containers"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {**spec, "containers": [{**container, "image": image,
                                         "env": [{"name": k, "value": v} for k, v in env.items()]}]},
    }


def result_from_report(messages: Sequence[object], *, pod: str, seconds: float) -> RunResult:
    """The RunResult of the reporter's message; NoTestReport when the pod sent none (it could not run)."""
    reports = [m for m in messages if isinstance(m, Mapping) and m.get("kind") == TEST_REPORT_MESSAGE]
    if not reports:
        raise NoTestReport(f"the test pod {pod} ended without a report from release-graph's reporter (does the test "
                           "image have python3?)")
    report = reports[-1]
    try:
        files = {name: base64.b64decode(data, validate=True) for name, data in (report.get("files") or {}).items()}
    except (binascii.Error, TypeError, AttributeError) as exc:
        raise NoTestReport(f"the test pod {pod}: its report's files could not be decoded: {exc}") from None
    return RunResult(exit_code=int(report.get("exit_code", -1)), logs_tail=str(report.get("logs_tail") or ""),
                     files=files, seconds=round(seconds, 3))


@contextmanager
def kubeconfig_for(api_host: str, namespace: str) -> Iterator[str]:
    """A kubeconfig file naming only `api_host` (no credentials: an emulator, `kubectl proxy`), for the Pipes client,
    which loads its connection from a kubeconfig; removed afterwards."""
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "release-graph",
        "clusters": [{"name": "release-graph", "cluster": {"server": api_host.rstrip("/")}}],
        "users": [{"name": "release-graph", "user": {}}],
        "contexts": [{"name": "release-graph",
                      "context": {"cluster": "release-graph", "user": "release-graph", "namespace": namespace}}],
    }
    handle, path = tempfile.mkstemp(prefix="release-graph-kubeconfig-", suffix=".json")
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(config, file)  # JSON is YAML
        yield path
    finally:
        os.unlink(path)


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
