"""A kubernetes environment says where it runs (namespace, the cluster's version, optionally a kube context), and
a service what it asks for and may use (requests and limits). Every mistake names the file, line, environment or
service, and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from release_graph.fleet import ManifestError, load_fleet
from release_graph.fleet.model import KubernetesCluster, Resources

FLEET = """\
fleet: shop
registry: 127.0.0.1:5000/shop
services:
  orders:
    repo: repos/orders
    build: {{}}
    port: 8080
{orders_extra}environments:
{environments}"""


def write_fleet(tmp_path: Path, environments: str, orders_extra: str = "") -> Path:
    (tmp_path / "repos" / "orders").mkdir(parents=True, exist_ok=True)
    (tmp_path / "repos" / "orders" / "Dockerfile").write_text("FROM scratch\n")
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET.format(orders_extra=orders_extra, environments=environments))
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_fleet(path)
    return caught.value.problems


def test_a_kubernetes_environment_names_its_namespace_version_and_context_and_a_service_its_resources(tmp_path):
    fleet = load_fleet(write_fleet(tmp_path, """\
  dev: {target: docker}
  prod:
    target: kubernetes
    kubernetes: {namespace: shop-prod, version: '1.33', context: eks-prod}
""", orders_extra="""\
    resources:
      requests: {cpu: 250m, memory: 128Mi}
      limits: {cpu: 1, memory: 256Mi}
"""))
    assert fleet.environments["dev"].kubernetes is None
    assert fleet.environments["prod"].kubernetes == KubernetesCluster(namespace="shop-prod", version="1.33",
                                                                       context="eks-prod")
    assert fleet.services["orders"].resources == Resources(cpu_request="250m", memory_request="128Mi",
                                                           cpu_limit="1", memory_limit="256Mi")
    assert fleet.services["orders"].resources.as_kubernetes() == {
        "requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}


@pytest.mark.parametrize(("environment", "expected"), [
    ("  prod: {target: kubernetes}\n",
     "fleet.yaml:9: environment 'prod', field 'kubernetes': target: kubernetes needs {namespace:"),
    ("  prod:\n    target: kubernetes\n    kubernetes: {namespace: shop, version: 1.30}\n",
     "field 'kubernetes.version': expected the cluster's version as a quoted string such as '1.30', got 1.3"),
    ("  prod:\n    target: kubernetes\n    kubernetes: {namespace: shop, version: '1.12'}\n",
     "field 'kubernetes.version': no schemas for Kubernetes 1.12"),
    ("  prod:\n    target: kubernetes\n    kubernetes: {namespace: Shop_Prod, version: '1.33'}\n",
     "field 'kubernetes.namespace': expected a Kubernetes namespace (a DNS label), got 'Shop_Prod'"),
    ("  prod:\n    target: kubernetes\n    kubernetes: {namespace: shop, version: '1.33', cluster: x}\n",
     "field 'cluster': unknown key"),
    ("  prod:\n    target: docker\n    kubernetes: {namespace: shop, version: '1.33'}\n",
     "field 'kubernetes': only applies with target: kubernetes (this environment's target is docker)"),
])
def test_a_kubernetes_environment_that_cannot_be_validated_against_its_cluster_is_refused(
        tmp_path, environment, expected):
    problems = problems_of(write_fleet(tmp_path, environment))
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(("resources", "expected"), [
    ("    resources: {requests: {cpu: lots}}\n",
     "fleet.yaml:8: service 'orders', field 'resources.requests.cpu': expected a quantity such as 250m or 0.5 "
     "(cores), got 'lots'"),
    ("    resources: {limits: {memory: 256MB}}\n",
     "field 'resources.limits.memory': expected a quantity such as 256Mi or 1Gi, got '256MB'"),
    ("    resources: {requests: {memory: 1Gi}, limits: {memory: 512Mi}}\n",
     "field 'resources.requests.memory': the request 1Gi is above the limit 512Mi"),
    ("    resources: {requests: {gpu: 1}}\n", "field 'gpu': unknown key (expected one of: cpu, memory)"),
    ("    resources: 2 cores\n", "field 'resources': expected a mapping such as {requests:"),
])
def test_resources_a_cluster_would_refuse_are_refused_by_line_and_field(tmp_path, resources, expected):
    problems = problems_of(write_fleet(tmp_path, "  dev: {target: docker}\n", orders_extra=resources))
    assert any(expected in problem for problem in problems), problems
