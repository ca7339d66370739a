"""The one place where an environment's `target:` (from the manifest) picks a deploy-target implementation.

`DeployTargets` is the `deploy_targets` resource: it holds every target's configuration and answers
`target_of(environment)` (the manifest's environment) or `for_environment(target, cluster)` with a
`DeployTarget`. The release steps and sensors only ever see that interface.

The docker target uses the `engine` resource's Docker client: `engine` is a nested resource (give it the
same `ContainerEngine` as the top-level `engine` key, so both talk to one engine with one configuration).
The kubernetes target is configured only when `kubernetes` is set (docs/operations.md, "Kubernetes target"),
and there is one per cluster (namespace, version, context) an environment declares.
"""

import threading
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from release_graph.fleet.model import Environment, KubernetesCluster
from resources.containers import ContainerEngine
from resources.targets.docker.target import DockerTarget, DockerTargetConfig
from resources.targets.interface import DeployTarget, TargetError, TargetNotConfigured
from resources.targets.kubernetes.target import KubernetesTarget, KubernetesTargetConfig

DOCKER = "docker"
KUBERNETES = "kubernetes"
# Where integration runs start a service with its dependencies: the host's engine.
INTEGRATION_TARGET = DOCKER


class DeployTargets(dg.ConfigurableResource):
    """Every deploy target this instance can use, chosen per environment by the manifest's `target:`."""

    engine: ContainerEngine = Field(description="The container engine the docker target runs containers on.")
    docker: DockerTargetConfig = Field(
        default_factory=DockerTargetConfig, description="How the docker target runs environments."
    )
    kubernetes: KubernetesTargetConfig | None = Field(
        default=None,
        description="How the kubernetes target reaches clusters (None: kubernetes environments are refused).",
    )

    _targets: Any = PrivateAttr(default_factory=dict)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    def target_of(self, environment: Environment) -> DeployTarget:
        """The target that runs the manifest's `environment`, bound to its cluster when it declares one."""
        return self.for_environment(environment.target, environment.kubernetes, environment=environment.name)

    def for_environment(self, environment_target: str, cluster: KubernetesCluster | None = None, *,
                        environment: str | None = None) -> DeployTarget:
        """The target that runs environments whose manifest says `target: <environment_target>`; for kubernetes,
        the one bound to `cluster` (one per cluster, cached like the docker target). `environment` names the
        environment in a refusal.

        TargetNotConfigured for a target this instance has no implementation or configuration of.
        """
        key = (environment_target, cluster if environment_target == KUBERNETES else None)
        with self._lock:
            if key not in self._targets:
                self._targets[key] = self._build(environment_target, cluster, environment)
            return self._targets[key]

    def for_integration(self) -> DeployTarget:
        """Where integration runs start their ephemeral environments."""
        return self.for_environment(INTEGRATION_TARGET)

    def _build(self, environment_target: str, cluster: KubernetesCluster | None,
               environment: str | None) -> DeployTarget:
        if environment_target == DOCKER:
            return DockerTarget(self.engine, self.docker)
        named = f"environment '{environment}': " if environment else ""
        if environment_target == KUBERNETES and self.kubernetes is not None:
            if cluster is None:
                raise TargetError(f"{named}target 'kubernetes' needs the environment's cluster "
                                  "(`kubernetes: {namespace, version}` in the manifest)")
            return KubernetesTarget(cluster, self.kubernetes)
        raise TargetNotConfigured(
            f"{named}target '{environment_target}' is not configured on this instance"
            + (" (see docs/operations.md, \"Kubernetes target\": set $RELEASE_GRAPH_KUBECONFIG or "
               "$RELEASE_GRAPH_KUBERNETES_API)" if environment_target == KUBERNETES else "")
        )
