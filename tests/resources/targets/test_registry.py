"""The one place where an environment's `target:` picks the deploy target (the `deploy_targets` resource)."""

import dagster as dg
import pytest

from release_graph.fleet.model import KubernetesCluster
from release_graph.wiring import default_resources
from resources.containers import ContainerEngine
from resources.targets import (
    DeployTarget,
    DeployTargets,
    DockerTarget,
    DockerTargetConfig,
    KubernetesTarget,
    KubernetesTargetConfig,
    TargetError,
    TargetNotConfigured,
)


def test_target_docker_is_the_docker_target_on_the_engine_resource_with_its_config():
    engine = ContainerEngine(docker_host="unix:///nonexistent/engine.sock")
    targets = DeployTargets(engine=engine, docker=DockerTargetConfig(state_dir="/tmp/rg-state", name_prefix="x"))

    target = targets.for_environment("docker")

    assert isinstance(target, DeployTarget) and isinstance(target, DockerTarget)
    assert target.engine.docker_host == "unix:///nonexistent/engine.sock"
    assert target.config.state_dir == "/tmp/rg-state" and target.network_name("shop", "dev") == "x-shop-dev"
    assert targets.for_environment("docker") is target  # one client per resource, not one per call
    assert targets.for_integration() is target


def test_target_kubernetes_is_refused_naming_that_this_instance_has_no_such_target():
    targets = DeployTargets(engine=ContainerEngine())
    with pytest.raises(TargetNotConfigured) as refusal:
        targets.for_environment("kubernetes")
    assert str(refusal.value) == ("target 'kubernetes' is not configured on this instance (see docs/operations.md, "
                                  "\"Kubernetes target\": set $RELEASE_GRAPH_KUBECONFIG or "
                                  "$RELEASE_GRAPH_KUBERNETES_API)")
    assert isinstance(refusal.value, TargetError)
    with pytest.raises(TargetNotConfigured, match="target 'nomad' is not configured on this instance"):
        targets.for_environment("nomad")


def test_a_step_gets_the_resource_by_type_and_the_target_by_the_environment():
    seen = {}

    @dg.asset
    def deployed(deploy_targets: DeployTargets, engine: ContainerEngine) -> None:
        target = deploy_targets.for_environment("docker")
        seen.update(target=target, engine=engine)

    engine = ContainerEngine(docker_host="unix:///nonexistent/engine.sock")
    result = dg.materialize([deployed], resources={
        "engine": engine, "deploy_targets": DeployTargets(engine=engine, docker=DockerTargetConfig(drain_seconds=3)),
    })

    assert result.success
    assert isinstance(seen["target"], DockerTarget) and seen["target"].config.drain_seconds == 3
    assert seen["target"].engine.docker_host == seen["engine"].docker_host


def test_a_step_gets_the_kubernetes_target_of_a_cluster_from_the_resources_configuration():
    seen = {}
    cluster = KubernetesCluster(namespace="shop-prod", version="1.33", context="eks-prod")

    @dg.asset
    def deployed(deploy_targets: DeployTargets) -> None:
        seen["target"] = deploy_targets.for_environment("kubernetes", cluster)

    engine = ContainerEngine(docker_host="unix:///nonexistent/engine.sock")
    config = KubernetesTargetConfig(kubeconfig="/nonexistent/kubeconfig", rollout_timeout_seconds=90)
    result = dg.materialize([deployed], resources={
        "engine": engine, "deploy_targets": DeployTargets(engine=engine, kubernetes=config)})

    assert result.success
    target = seen["target"]
    assert isinstance(target, KubernetesTarget) and target.cluster == cluster
    assert target.config.rollout_timeout_seconds == 90 and target.config.kubeconfig == "/nonexistent/kubeconfig"
    assert target.describe_cluster() == ("the Kubernetes API of context 'eks-prod' in /nonexistent/kubeconfig")


def test_the_instance_configures_kubernetes_from_its_environment_variables(monkeypatch):
    for name in ("KUBECONFIG", "KUBERNETES_API", "KUBERNETES_ROLLOUT_TIMEOUT", "KUBERNETES_CANARY_REPLICAS"):
        monkeypatch.delenv(f"RELEASE_GRAPH_{name}", raising=False)
    assert default_resources()["deploy_targets"].kubernetes is None

    monkeypatch.setenv("RELEASE_GRAPH_KUBECONFIG", "/etc/release-graph/kubeconfig")
    monkeypatch.setenv("RELEASE_GRAPH_KUBERNETES_ROLLOUT_TIMEOUT", "120")
    config = default_resources()["deploy_targets"].kubernetes
    assert (config.kubeconfig, config.api_host, config.rollout_timeout_seconds, config.canary_replicas) == (
        "/etc/release-graph/kubeconfig", None, 120, 10)
    monkeypatch.setenv("RELEASE_GRAPH_KUBERNETES_CANARY_REPLICAS", "20")
    assert default_resources()["deploy_targets"].kubernetes.canary_replicas == 20
    monkeypatch.setenv("RELEASE_GRAPH_KUBERNETES_CANARY_REPLICAS", "1")
    with pytest.raises(ValueError, match=r"\$RELEASE_GRAPH_KUBERNETES_CANARY_REPLICAS must be a whole number of pods"):
        default_resources()
    monkeypatch.delenv("RELEASE_GRAPH_KUBERNETES_CANARY_REPLICAS")

    monkeypatch.setenv("RELEASE_GRAPH_KUBERNETES_ROLLOUT_TIMEOUT", "soon")
    with pytest.raises(ValueError, match=r"\$RELEASE_GRAPH_KUBERNETES_ROLLOUT_TIMEOUT must be a number of seconds"):
        default_resources()
