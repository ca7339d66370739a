"""The one place where an environment's `target:` (from the manifest) picks a deploy-target implementation.

`DeployTargets` is the `deploy_targets` resource: it holds every target's configuration and answers
`for_environment(environment.target)` with a `DeployTarget`. The release steps and sensors only ever see
that interface, so a Kubernetes target is added here (a config field and one entry in `for_environment`)
with no change in the steps.

The docker target uses the `engine` resource's Docker client: `engine` is a nested resource (give it the
same `ContainerEngine` as the top-level `engine` key, so both talk to one engine with one configuration).
"""

import threading
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from resources.containers import ContainerEngine
from resources.targets.docker.target import DockerTarget, DockerTargetConfig
from resources.targets.interface import DeployTarget, TargetNotConfigured

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

    _targets: Any = PrivateAttr(default_factory=dict)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    def for_environment(self, environment_target: str) -> DeployTarget:
        """The target that runs environments whose manifest says `target: <environment_target>`.

        TargetNotConfigured for a target this instance has no implementation or configuration of.
        """
        with self._lock:
            if environment_target not in self._targets:
                self._targets[environment_target] = self._build(environment_target)
            return self._targets[environment_target]

    def for_integration(self) -> DeployTarget:
        """Where integration runs start their ephemeral environments."""
        return self.for_environment(INTEGRATION_TARGET)

    def _build(self, environment_target: str) -> DeployTarget:
        if environment_target == DOCKER:
            return DockerTarget(self.engine, self.docker)
        raise TargetNotConfigured(
            f"target '{environment_target}' is not configured on this instance"
            + (" (see docs/operations.md: Kubernetes)" if environment_target == KUBERNETES else "")
        )
