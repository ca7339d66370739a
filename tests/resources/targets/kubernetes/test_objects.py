"""What a deployment to Kubernetes sends, generated from the same spec the docker target deploys: a ConfigMap, a
Secret (values only there), a Deployment (image by digest, probes, requests and limits, an immutable container)
and a Service, each valid for the cluster's version under strict schema validation; an invalid one is refused
naming the service, the object and the field, before any API call. The demo fleet, and a fleet imported from
Kubernetes files, pass `release-graph validate` with a kubernetes environment."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from release_graph import demo
from release_graph.fleet import load_fleet
from release_graph.fleet.model import Hardening, KubernetesCluster, Resources
from release_graph.fleet.network import network_policies
from resources.targets.interface import DeploymentSpec
from resources.targets.kubernetes.objects import (
    KubernetesObjectError,
    _definitions,
    deployment_objects,
    environment_objects,
    strict_validator,
    validate_objects,
)

ROOT = Path(__file__).resolve().parents[4]
DIGEST = "sha256:" + "ab" * 32
CLUSTER = KubernetesCluster(namespace="shop-prod", version="1.33")
SECRET = "pk-live-" + "7" * 24


def spec(**changes) -> DeploymentSpec:
    values = dict(fleet="shop", environment="prod", service="payments", image=f"127.0.0.1:5000/shop/payments@{DIGEST}",
                  port=8080, health="/healthz", env={"LOG_LEVEL": "info"}, secrets={"PAYMENTS_API_KEY": SECRET})
    return DeploymentSpec(**{**values, **changes})


def by_kind(objects: list[dict]) -> dict[str, dict]:
    return {obj["kind"]: obj for obj in objects}


@pytest.mark.parametrize("version", ["1.27", "1.33", "1.37"])
def test_a_deployment_sends_a_configmap_a_secret_a_deployment_and_a_service_valid_for_the_cluster(version):
    cluster = KubernetesCluster(namespace="shop-prod", version=version)
    objects = deployment_objects(spec(resources=Resources(cpu_request="250m", memory_limit="256Mi")), cluster)
    assert [obj["kind"] for obj in objects] == ["ConfigMap", "Secret", "NetworkPolicy", "Deployment", "Service"]
    validate_objects(objects, cluster, service="payments", environment="prod")  # strict: unknown fields refused
    deployment = by_kind(objects)["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    # the image by digest, the probes from the health path, requests and limits from the manifest
    assert container["image"].endswith(f"@{DIGEST}")
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 8080}
    assert container["resources"] == {"requests": {"cpu": "250m"}, "limits": {"memory": "256Mi"}}
    # labelled with service, fleet, environment and digest; the selector is what the NetworkPolicies select
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "payments" and labels["app.kubernetes.io/part-of"] == "shop"
    assert labels["release-graph.io/digest"] == "sha256-" + "ab" * 6
    assert deployment["metadata"]["annotations"]["release-graph.io/digest"] == DIGEST
    assert by_kind(objects)["Service"]["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert all(obj["metadata"]["namespace"] == "shop-prod" for obj in objects)


def test_the_secret_value_is_only_in_the_secret_object_and_arrives_as_a_read_only_file():
    objects = deployment_objects(spec(), CLUSTER)
    kinds = by_kind(objects)
    assert kinds["Secret"]["stringData"] == {"PAYMENTS_API_KEY": SECRET}
    others = json.dumps([obj for obj in objects if obj["kind"] != "Secret"])
    assert SECRET not in others
    assert kinds["ConfigMap"]["data"]["PAYMENTS_API_KEY_FILE"] == "/run/secrets/PAYMENTS_API_KEY"
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    assert {"name": "secrets", "secret": {"secretName": "payments-secrets", "defaultMode": 0o400}} in pod["volumes"]
    # a service that opted in to environment variables receives the Secret through envFrom instead
    as_env = by_kind(deployment_objects(spec(secrets_as="env"), CLUSTER))["Deployment"]
    (container,) = as_env["spec"]["template"]["spec"]["containers"]
    assert {"secretRef": {"name": "payments-secrets"}} in container["envFrom"]
    # the pod template changes with the configuration, not with a secret's value
    rotated = by_kind(deployment_objects(spec(secrets={"PAYMENTS_API_KEY": "another"}), CLUSTER))["Deployment"]
    reconfigured = by_kind(deployment_objects(spec(env={"LOG_LEVEL": "debug"}), CLUSTER))["Deployment"]

    def config_hash(deployment: dict) -> str:
        return deployment["spec"]["template"]["metadata"]["annotations"]["release-graph.io/config-hash"]

    assert config_hash(rotated) == config_hash(kinds["Deployment"]) != config_hash(reconfigured)


def test_containers_are_immutable_by_default_and_each_opt_out_shows_in_the_pod():
    default = by_kind(deployment_objects(spec(), CLUSTER))["Deployment"]["spec"]["template"]["spec"]
    (container,) = default["containers"]
    assert container["securityContext"] == {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True}
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp", "/run/secrets"]
    assert all(v.get("emptyDir") == {"medium": "Memory"} for v in default["volumes"] if "emptyDir" in v)
    assert default["automountServiceAccountToken"] is False
    opted_out = Hardening(tmpfs=("/var/cache/nginx",), writable_root="vendor image", run_as_root="binds :80",
                          privilege_escalation="setuid helper", capabilities=("NET_BIND_SERVICE",),
                          capabilities_reason="port 80")
    objects = deployment_objects(spec(hardening=opted_out), CLUSTER)
    validate_objects(objects, CLUSTER, service="payments", environment="prod")
    (container,) = by_kind(objects)["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["securityContext"] == {"readOnlyRootFilesystem": False, "allowPrivilegeEscalation": True,
                                            "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}
    assert "/var/cache/nginx" in [m["mountPath"] for m in container["volumeMounts"]]


def test_a_worker_without_a_port_has_no_service_and_no_probe():
    objects = deployment_objects(spec(port=None, health=None, secrets={}, command=("worker", "--queue", "mail")),
                                 CLUSTER)
    assert [obj["kind"] for obj in objects] == ["ConfigMap", "NetworkPolicy", "Deployment"]
    (container,) = by_kind(objects)["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert "readinessProbe" not in container and container["args"] == ["worker", "--queue", "mail"]
    validate_objects(objects, CLUSTER, service="payments", environment="prod")


def test_an_invalid_object_is_refused_naming_service_object_and_field_and_never_a_secrets_value():
    objects = deployment_objects(spec(), CLUSTER)
    by_kind(objects)["Deployment"]["spec"]["replicas"] = "two"
    with pytest.raises(KubernetesObjectError, match=r"service 'payments', environment 'prod': Deployment/payments "
                                                    r"is not a valid object for Kubernetes 1.33: field spec.replicas"):
        validate_objects(objects, CLUSTER, service="payments", environment="prod")
    objects = deployment_objects(spec(), CLUSTER)
    by_kind(objects)["Secret"]["stringData"] = {"PAYMENTS_API_KEY": {"nested": SECRET}}
    with pytest.raises(KubernetesObjectError, match="Secret/payments-secrets") as refused:
        validate_objects(objects, CLUSTER, service="payments", environment="prod")
    assert SECRET not in str(refused.value)
    objects = deployment_objects(spec(), CLUSTER)
    by_kind(objects)["Service"]["spec"]["clusterIPs"] = "10.0.0.1"  # a list in the schema
    with pytest.raises(KubernetesObjectError, match="field spec.clusterIPs"):
        validate_objects(objects, CLUSTER, service="payments", environment="prod")
    # the schemas take any string as a quantity; the API server would refuse this one, so validation does
    objects = deployment_objects(spec(resources=Resources(cpu_request="lots")), CLUSTER)
    with pytest.raises(KubernetesObjectError, match=r"Deployment/payments .* field spec.template.spec.containers.0."
                                                    r"resources.requests.cpu: 'lots' is not a quantity"):
        validate_objects(objects, CLUSTER, service="payments", environment="prod")


def test_the_schemas_are_read_once_per_kind_and_cluster_version_and_judge_as_kubernetes_validate_does(monkeypatch):
    import kubernetes_validate
    from kubernetes_validate import utils

    strict_validator.cache_clear()
    _definitions.cache_clear()
    reads = []
    real_contents = utils.schema_contents
    monkeypatch.setattr(utils, "schema_contents", lambda *a: reads.append(a[0]) or real_contents(*a))
    for _ in range(3):
        validate_objects(deployment_objects(spec(), CLUSTER), CLUSTER, service="payments", environment="prod")
    # five kinds, each its own schema, and the definitions they share, read the first time only
    assert len(reads) == 6 and len({path for path in reads if "_definitions" not in path}) == 5
    validate_objects(deployment_objects(spec(), KubernetesCluster("shop-prod", "1.30")), CLUSTER,
                     service="payments", environment="prod")
    assert len(reads) == 6  # the cluster of the objects does not matter, only the version validated against
    validate_objects(deployment_objects(spec(), CLUSTER), KubernetesCluster("shop-prod", "1.30"),
                     service="payments", environment="prod")
    assert len(reads) == 12  # another cluster version: its own schemas
    # the same verdicts as kubernetes-validate's own strict validation, valid and not
    broken = deployment_objects(spec(), CLUSTER)
    by_kind(broken)["Deployment"]["spec"]["replicaz"] = 2
    for obj in [*deployment_objects(spec(), CLUSTER), *broken]:
        try:
            kubernetes_validate.validate(obj, "1.33", strict=True)
            theirs = None
        except utils.ValidationError as exc:
            theirs = (list(exc.path), exc.message)
        ours = next(iter(strict_validator(obj["kind"], obj["apiVersion"], "1.33").iter_errors(obj)), None)
        assert (None if ours is None else (list(ours.path), ours.message)) == theirs


def shop_with_kubernetes_prod(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "examples" / "shop", tmp_path / "shop", ignore=shutil.ignore_patterns(".repos"))
    path = tmp_path / "shop" / "fleet.yaml"
    manifest = yaml.safe_load(path.read_text())
    manifest["environments"]["prod"] = {**manifest["environments"]["prod"], "target": "kubernetes",
                                        "kubernetes": {"namespace": "shop-prod", "version": "1.33"}}
    manifest["environments"]["prod"].pop("publish")
    # haproxy counts the docker target's switch: on kubernetes the canary is measured by Prometheus
    manifest["environments"]["prod"]["rollout"]["analysis"]["providers"] = ["prometheus"]
    manifest["services"]["orders"]["resources"] = {"requests": {"cpu": "100m", "memory": "64Mi"}}
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    demo.sync_repos(tmp_path / "shop" / "services", tmp_path / "shop" / ".repos")
    return path


def test_the_demo_with_a_kubernetes_prod_validates_every_object_a_release_would_send(tmp_path):
    path = shop_with_kubernetes_prod(tmp_path)
    fleet = load_fleet(path)
    generated = dict(environment_objects(fleet, fleet.environments["prod"]))
    assert set(generated) == {"gateway", "orders", "inventory", "payments"}  # every policy is a service's
    # each service's NetworkPolicy is the one `network_policies` gives for the fleet, labelled with its environment
    for expected in network_policies(fleet, "shop-prod"):
        service = expected["metadata"]["labels"]["app.kubernetes.io/name"]
        (policy,) = [obj for obj in generated[service] if obj["kind"] == "NetworkPolicy"]
        assert policy["metadata"]["labels"].pop("release-graph.io/environment") == "prod"
        assert policy == expected
    (orders,) = [obj for obj in generated["orders"] if obj["kind"] == "Deployment"]
    assert orders["spec"]["template"]["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "100m", "memory": "64Mi"}}  # the manifest's, through deployment_spec
    secrets = [obj for obj in generated["payments"] if obj["kind"] == "Secret"]
    assert secrets and list(secrets[0]["stringData"].values()) == ["(resolved at deploy time)"]
    done = subprocess.run([sys.executable, "-m", "release_graph.cli.main", "validate", "--fleet", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    count = sum(len(objects) for objects in generated.values())
    assert (f"environment 'prod': the {count} Kubernetes objects a release sends are valid for Kubernetes 1.33"
            in done.stdout)
