"""The one place where an environment's `target:` picks the deploy target (the `deploy_targets` resource)."""

import dagster as dg
import pytest

from resources.containers import ContainerEngine
from resources.targets import (
    DeployTarget,
    DeployTargets,
    DockerTarget,
    DockerTargetConfig,
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
    assert str(refusal.value) == ("target 'kubernetes' is not configured on this instance "
                                  "(see docs/operations.md: Kubernetes)")
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
