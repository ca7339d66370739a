"""The release story of test_target.py against a real cluster, where the emulator cannot vouch: a real API server's
server-side apply, defaulting and generation, a real controller and kubelet. It runs against the cluster
$KUBECONFIG names (its current context, or $RELEASE_GRAPH_TEST_KUBE_CONTEXT) and is skipped without it; `make test`
deselects it (marker kubernetes_cluster). Run it with

    KUBECONFIG=~/.kube/config RELEASE_GRAPH_TEST_KUBE_IMAGE=<repo>@sha256:<digest> \\
        .venv/bin/pytest -m kubernetes_cluster tests/resources/targets/kubernetes/test_real_cluster.py

$RELEASE_GRAPH_TEST_KUBE_VERSION overrides the server's version (the objects are validated for it). The image
must be pullable by the cluster, pinned by digest, and run as a non-root user with a read-only root filesystem (the
default hardening); with $RELEASE_GRAPH_TEST_KUBE_PORT (and $RELEASE_GRAPH_TEST_KUBE_HEALTH) it must answer that
path with 2xx on that port. The story uses a namespace of its own, `rg-test-<random>`, deleted at the end (or
$RELEASE_GRAPH_TEST_KUBE_NAMESPACE, which must exist and is left in place).

The test pod's story needs $RELEASE_GRAPH_TEST_KUBE_PYTHON_IMAGE: an image with python3, pinned by digest, that the
cluster can pull (a Debian or the official python image); the pod runs as user 65532 with a read-only root.
"""

from __future__ import annotations

import os
import secrets

import dagster as dg
import pytest

from release_graph.fleet.model import KubernetesCluster
from resources.targets import DeploymentSpec, KubernetesTarget, KubernetesTargetConfig

pytestmark = pytest.mark.kubernetes_cluster

WRITES = ("create_", "patch_", "replace_", "delete_")


@pytest.fixture
def real_cluster_target():
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        pytest.skip("KUBECONFIG is unset: this story runs against the cluster it names (docs/operations.md, "
                    "\"Kubernetes target\")")
    if not os.environ.get("RELEASE_GRAPH_TEST_KUBE_IMAGE"):
        pytest.skip("RELEASE_GRAPH_TEST_KUBE_IMAGE is unset: give an image the cluster can pull, pinned by digest")
    import kubernetes

    context = os.environ.get("RELEASE_GRAPH_TEST_KUBE_CONTEXT") or None
    client = kubernetes.config.new_client_from_config(config_file=kubeconfig, context=context)
    core = kubernetes.client.CoreV1Api(client)
    version = os.environ.get("RELEASE_GRAPH_TEST_KUBE_VERSION")  # the objects are validated for it
    if not version:
        server = kubernetes.client.VersionApi(client).get_code()
        version = f"{server.major}.{server.minor.rstrip('+')}"
    namespace = os.environ.get("RELEASE_GRAPH_TEST_KUBE_NAMESPACE")
    owned = namespace is None
    if owned:
        namespace = f"rg-test-{secrets.token_hex(3)}"
        core.create_namespace({"metadata": {"name": namespace, "labels": {"app.kubernetes.io/managed-by":
                                                                           "release-graph-tests"}}})
    cluster = KubernetesCluster(namespace=namespace, version=version, context=context)
    try:
        yield KubernetesTarget(cluster, KubernetesTargetConfig(kubeconfig=kubeconfig, rollout_timeout_seconds=180,
                                                               poll_seconds=1))
    finally:
        if owned:
            core.delete_namespace(namespace)


def test_a_real_cluster_deploys_once_sends_nothing_the_second_time_and_tears_down(real_cluster_target, monkeypatch):
    target = real_cluster_target
    port = os.environ.get("RELEASE_GRAPH_TEST_KUBE_PORT")
    spec = DeploymentSpec(fleet="rgtest", environment="story", service="hello",
                          image=os.environ["RELEASE_GRAPH_TEST_KUBE_IMAGE"], port=int(port) if port else None,
                          health=(os.environ.get("RELEASE_GRAPH_TEST_KUBE_HEALTH") or "/") if port else None,
                          env={"GREETING": "hello"}, secrets={"TOKEN": secrets.token_hex(16)})
    calls: list[str] = []
    request = target._request

    def counted(what, group, method, *args, **kwargs):
        calls.append(method)
        return request(what, group, method, *args, **kwargs)

    monkeypatch.setattr(target, "_request", counted)

    first = target.deploy(spec)
    assert first.changed and sum(call.startswith("create_") for call in calls) == 4 - (port is None)
    serving = target.running(spec.fleet, spec.environment, spec.service)
    assert serving.digest == first.digest and serving.digest_matches and serving.serving
    assert target.probe(spec.fleet, spec.environment, spec.service).healthy

    calls.clear()
    again = target.deploy(spec)  # a real API server's defaults and canonical forms must still compare equal
    assert not again.changed and not [call for call in calls if call.startswith(WRITES)], calls

    removed = target.teardown_environment(spec.fleet, spec.environment)
    assert "Deployment/hello" in removed.containers
    assert target.running_services(spec.fleet, spec.environment) == {}


# What the test image runs: two tests' JUnit report written where the reporter collects it, one failing.
JUNIT_WRITER = """\
import pathlib, sys
print("checking the order flow")
pathlib.Path("/reports/e2e.xml").write_text(
    '<testsuite tests="2" failures="1"><testcase classname="e2e" name="test_an_order_is_placed"/>'
    '<testcase classname="e2e" name="test_an_order_is_confirmed"><failure message="never confirmed"/></testcase>'
    '</testsuite>')
sys.exit(1)
"""


def test_a_real_cluster_runs_the_tests_as_a_pod_and_their_report_comes_back_through_pipes(real_cluster_target):
    target = real_cluster_target
    image = os.environ.get("RELEASE_GRAPH_TEST_KUBE_PYTHON_IMAGE")
    if not image:
        pytest.skip("RELEASE_GRAPH_TEST_KUBE_PYTHON_IMAGE is unset: give an image with python3, pinned by digest")
    results = []

    @dg.asset
    def e2e(context):  # (no annotation: this module's annotations are strings)
        results.append(target.run_tests("rgtest", "story", image, env={"GATEWAY_URL": "http://gateway:8080"},
                                        command=["python3", "-c", JUNIT_WRITER], step=context, timeout_seconds=300))
        return dg.MaterializeResult(metadata={"exit_code": results[-1].exit_code})

    with dg.instance_for_test() as instance:
        outcome = dg.materialize([e2e], instance=instance)
        assert outcome.success
        messages = [entry.user_message for entry in instance.all_logs(outcome.run_id)]
    (result,) = results
    assert result.exit_code == 1 and b"test_an_order_is_confirmed" in result.files["e2e.xml"]
    assert "checking the order flow" in result.logs_tail
    assert any("the tests exited 1; 1 report file(s) sent" in message for message in messages), messages
    assert target.teardown_environment("rgtest", "story").containers == ("ConfigMap/release-graph-test-reporter",)
