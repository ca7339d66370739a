"""A release manager's end-to-end tests against a kubernetes environment run as a pod of its namespace, through
Dagster Pipes (`PipesK8sClient`): the pod's output reaches the run while it runs, and its JUnit verdict comes back
as a Pipes message that becomes the `e2e_tests` check.

The API is emulated (benchmarks/kubernetes_emulator.py); its fake kubelet runs the pod as a real container of the
engine, so the test image, the reporter, the Pipes protocol and the log stream are all real.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from benchmarks.kubernetes_emulator import FakeKubelet, KubernetesApiEmulator
from release_graph.assets import fleet as fleet_assets
from release_graph.fleet import load_fleet
from release_graph.fleet.model import KubernetesCluster
from release_graph.fleet.network import END_TO_END, ROLE_LABEL, allowed_calls, network_policies
from release_graph.release.keys import e2e_key
from resources.containers import ContainerEngine
from resources.registry import Registry, RegistryError
from resources.targets import DeployTargets
from resources.targets.kubernetes.objects import validate_objects
from resources.targets.kubernetes.target import KubernetesTargetConfig
from resources.targets.kubernetes.tests_in_pods import (
    REPORTER_CONFIG_MAP,
    NoTestReport,
    kubeconfig_for,
    pod_env_for_tests,
    pod_labels_for_tests,
    pod_manifest,
    pod_spec_for_tests,
    reporter_config_map,
    result_from_report,
)
from tests.conftest import REPO_ROOT, TEST_RUN_LABEL

NAMESPACE = "shop-staging"
FLEET = """\
fleet: {fleet}
registry: {registry}
services:
  gateway:
    repo: repos/gateway
    build: {{}}
    port: 8080
e2e: {{context: e2e}}
environments:
  staging:
    target: kubernetes
    kubernetes: {{namespace: {namespace}, version: '1.33'}}
"""
E2E_DOCKERFILE = """\
FROM {base}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /e2e
COPY . ./
CMD ["python3", "-m", "junit_runner", ".", "/reports/e2e.xml"]
"""
PASSING = """\
import os, unittest

class OrderFlow(unittest.TestCase):
    def test_the_tests_are_told_where_the_gateway_answers(self):
        print("calling", os.environ["GATEWAY_URL"])
        self.assertEqual(os.environ["GATEWAY_URL"], "http://gateway:8080")

    def test_the_root_filesystem_is_read_only_and_the_reports_folder_writable(self):
        with self.assertRaises(OSError):
            open("/e2e/written-by-a-test", "w")
        open("/reports/scratch.txt", "w").write("ok")
"""
FAILING = """\
import unittest

class OrderFlow(unittest.TestCase):
    def test_an_order_is_confirmed(self):
        self.assertEqual("pending", "confirmed", "the order was never confirmed")
"""
SLOW = """\
import time, unittest

class OrderFlow(unittest.TestCase):
    def test_that_never_ends(self):
        time.sleep(120)
"""


@pytest.fixture
def cluster(docker_client, run_id):
    """The emulated API with a kubelet that runs its pods as containers named and labelled for this test run."""
    with KubernetesApiEmulator() as emulator, FakeKubelet(emulator, docker_client, prefix=f"{run_id}-pod",
                                                         labels={TEST_RUN_LABEL: run_id}):
        yield emulator


@pytest.fixture
def shop_e2e(tmp_path, run_id, registry_addr, cluster):
    """shop_e2e(tests, dockerfile=None) -> a fleet whose staging runs on the emulated cluster, with `tests` as
    its end-to-end tests; the pushed test images are deleted afterwards."""
    fleets = []

    def make(tests: str, dockerfile: str | None = None):
        root = tmp_path / f"fleet{len(fleets)}"
        (root / "repos" / "gateway").mkdir(parents=True)
        (root / "repos" / "gateway" / "Dockerfile").write_text("FROM scratch\n")
        e2e = root / "e2e"
        e2e.mkdir()
        (e2e / "junit_runner.py").write_text((REPO_ROOT / "examples/shop/e2e/junit_runner.py").read_text())
        (e2e / "test_order_flow.py").write_text(tests)
        base = f"{registry_addr}/base/python:bookworm"
        (e2e / "Dockerfile").write_text(dockerfile or E2E_DOCKERFILE.format(base=base))
        (root / "fleet.yaml").write_text(FLEET.format(fleet=f"{run_id}pods{len(fleets)}", namespace=NAMESPACE,
                                                      registry=f"{registry_addr}/{run_id}pods{len(fleets)}"))
        fleets.append(load_fleet(root / "fleet.yaml"))
        return fleets[-1]

    yield make
    registry = Registry()
    for fleet in fleets:
        repository = f"{fleet.registry}/fleet-e2e"
        try:
            for tag in registry.tags(repository):
                digest = registry.manifest_digest(repository, tag)
                if digest:
                    registry.delete(repository, digest)
        except RegistryError as exc:
            print(f"teardown: {repository}: {exc}")


def run_e2e(fleet, cluster, instance) -> dg.ExecuteInProcessResult:
    """The fleet's real e2e asset for staging, materialized on the emulated cluster."""
    engine = ContainerEngine()
    assets, _ = fleet_assets.build_fleet_assets(fleet)
    return dg.materialize(
        assets, selection=[e2e_key(fleet.environments["staging"])], instance=instance, raise_on_error=False,
        resources={"engine": engine, "registry": Registry(),
                   "deploy_targets": DeployTargets(engine=engine, kubernetes=KubernetesTargetConfig(
                       api_host=cluster.url, poll_seconds=0.1))},
    )


def e2e_check(result) -> dg.AssetCheckEvaluation:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "e2e_tests"]
    return evaluation


def pod_requests(cluster) -> list:
    return [r for r in cluster.requests() if r.resource == "v1/pods" and r.method == "POST"]


@pytest.mark.engine
def test_the_e2e_tests_run_as_a_pod_and_their_verdict_comes_back_through_pipes(shop_e2e, cluster, docker_client,
                                                                                run_id):
    fleet = shop_e2e(PASSING)
    with dg.instance_for_test() as instance:
        # When the fleet's e2e tests run against staging, which runs on kubernetes
        result = run_e2e(fleet, cluster, instance)
        assert result.success, [str(e.event_specific_data) for e in result.all_events if e.is_failure]
        # then both tests passed in the pod and the check says so
        check = e2e_check(result)
        assert check.passed, check.metadata
        assert check.metadata["tests"].value == 2 and check.metadata["failed"].value == 0
        # and what the pod said reached the run as it ran, through Pipes
        messages = [e.user_message for e in instance.all_logs(result.run_id)]
        assert any("running python3 -m junit_runner . /reports/e2e.xml" in m for m in messages), messages
        assert any("the tests exited 0; 2 report file(s) sent" in m for m in messages), messages

        # The pod that ran: the pushed image by digest, under the reporter, locked down, labelled as the fleet's
        # tests (the label every service's NetworkPolicy admits), gone afterwards with its container
        (sent,) = pod_requests(cluster)
        pod = json.loads(sent.body)
        (container,) = pod["spec"]["containers"]
        assert container["image"].startswith(f"{fleet.registry}/fleet-e2e@sha256:")
        assert container["command"][:2] == ["python3", "/opt/release-graph/report_tests.py"]
        assert container["command"][-5:] == ["python3", "-m", "junit_runner", ".", "/reports/e2e.xml"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert pod["metadata"]["labels"][ROLE_LABEL] == "end-to-end-tests"
        assert cluster.objects("v1/pods", NAMESPACE) == []
        assert docker_client.containers.list(all=True, filters={"label": f"{TEST_RUN_LABEL}={run_id}",
                                                                "name": f"{run_id}-pod"}) == []

        # A second run sends the reporter's ConfigMap no more: it is there as it should be
        def config_map_writes() -> int:
            return len([r for r in cluster.requests() if r.resource == "v1/configmaps" and r.writes])

        written = config_map_writes()
        assert written >= 1
        assert run_e2e(fleet, cluster, instance).success
        assert config_map_writes() == written


@pytest.mark.engine
def test_a_failing_e2e_test_in_the_pod_fails_the_check_naming_the_test(shop_e2e, cluster):
    fleet = shop_e2e(FAILING)
    with dg.instance_for_test() as instance:
        result = run_e2e(fleet, cluster, instance)
        # The tests ran and reported: the blocking check fails with the test's name (which fails the step: nothing
        # after the tests of staging may go on)
        check = e2e_check(result)
        assert check.passed is False
        assert "test_an_order_is_confirmed" in check.metadata["failing_tests"].value
        assert "the order was never confirmed" in check.metadata["failing_tests"].value
        assert not result.success
        (failure,) = [e for e in result.all_events if e.is_step_failure]
        assert "blocking asset check failed" in str(failure.event_specific_data.error)


@pytest.mark.engine
def test_a_test_image_without_python_fails_the_step_naming_the_pod_and_the_reason(shop_e2e, cluster, registry_addr):
    fleet = shop_e2e(PASSING, dockerfile=f'FROM {registry_addr}/base/busybox:latest\nCMD ["sh", "-c", "true"]\n')
    with dg.instance_for_test() as instance:
        result = run_e2e(fleet, cluster, instance)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    text = str(failure.event_specific_data.error)
    assert f"environment 'staging' of fleet '{fleet.name}': the test pod of {fleet.registry}/fleet-e2e@sha256:" in text
    assert f"in namespace {NAMESPACE}: it did not run to the end (the pod runs the tests under release-graph's " \
        "reporter: the test image needs python3)" in text
    assert 'exec: "python3": executable file not found' in text
    assert cluster.objects("v1/pods", NAMESPACE) == []


@pytest.mark.engine
def test_a_test_pod_past_its_timeout_is_ended_by_its_deadline(shop_e2e, cluster, monkeypatch):
    monkeypatch.setattr(fleet_assets, "E2E_TIMEOUT_SECONDS", 3)
    fleet = shop_e2e(SLOW)
    with dg.instance_for_test() as instance:
        result = run_e2e(fleet, cluster, instance)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    text = str(failure.event_specific_data.error)
    assert "it ran past its timeout of 3 s (activeDeadlineSeconds) and was ended" in text, text
    assert cluster.objects("v1/pods", NAMESPACE) == []


# --- what is sent, without a cluster ----------------------------------------------------------------------


def test_the_test_pod_and_the_reporter_config_map_are_valid_for_the_clusters_version():
    cluster = KubernetesCluster(namespace=NAMESPACE, version="1.33")
    spec = pod_spec_for_tests(["python3", "-m", "junit_runner", ".", "/reports/e2e.xml"], "/reports", 600)
    pod = pod_manifest("dagster-run-e2e", NAMESPACE, "127.0.0.1:5000/shop/fleet-e2e@sha256:" + "a" * 64, spec,
                       pod_labels_for_tests("shop", "staging"), pod_env_for_tests({"GATEWAY_URL": "http://gateway:8080"}))
    validate_objects([reporter_config_map("shop", "staging", NAMESPACE), pod], cluster, service=END_TO_END,
                     environment="staging")
    assert spec["activeDeadlineSeconds"] == 600 and spec["automountServiceAccountToken"] is False
    assert spec["volumes"][0]["configMap"]["name"] == REPORTER_CONFIG_MAP


def test_every_service_admits_the_fleets_test_pods_only_when_the_fleet_has_e2e_tests(tmp_path):
    (tmp_path / "repos" / "gateway").mkdir(parents=True)
    (tmp_path / "repos" / "gateway" / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "e2e").mkdir()
    (tmp_path / "e2e" / "Dockerfile").write_text("FROM scratch\n")
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET.format(fleet="shop", namespace=NAMESPACE, registry="127.0.0.1:5000/shop"))
    fleet = load_fleet(path)
    (policy,) = network_policies(fleet, NAMESPACE)
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "shop",
                                                             ROLE_LABEL: "end-to-end-tests"}}}]
    assert [call.line() for call in allowed_calls(fleet)] == [
        "(end-to-end tests) -> gateway:8080  (the fleet's e2e tests call it by name)"]

    path.write_text(path.read_text().replace("e2e: {context: e2e}\n", ""))
    (policy,) = network_policies(load_fleet(path), NAMESPACE)
    assert policy["spec"]["ingress"] == []


def test_a_pod_that_sent_no_report_is_an_error_not_a_verdict():
    with pytest.raises(NoTestReport, match="without a report .*python3"):
        result_from_report([{"kind": "something else"}], pod="shop-staging/p", seconds=1)
    with pytest.raises(NoTestReport, match="could not be decoded"):
        result_from_report([{"kind": "release-graph.test-report", "files": {"e2e.xml": "not base64!"}}],
                           pod="shop-staging/p", seconds=1)
    result = result_from_report([{"kind": "release-graph.test-report", "exit_code": 1, "logs_tail": "boom",
                                  "files": {"e2e.xml": "PHRlc3RzdWl0ZS8+"}}], pod="shop-staging/p", seconds=1.23456)
    assert (result.exit_code, result.logs_tail, result.files, result.seconds) == (1, "boom",
                                                                                  {"e2e.xml": b"<testsuite/>"}, 1.235)


def test_the_pipes_client_reaches_an_api_host_through_a_kubeconfig_that_is_removed_afterwards():
    with kubeconfig_for("http://127.0.0.1:6443/", NAMESPACE) as path:
        config = json.loads(Path(path).read_text())
        assert config["clusters"][0]["cluster"]["server"] == "http://127.0.0.1:6443"
        assert config["contexts"][0]["context"]["namespace"] == NAMESPACE
    assert not os.path.exists(path)
