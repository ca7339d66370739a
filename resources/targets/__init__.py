"""Deploy targets: where an environment's services run, and how a new version replaces the old one.

`interface.py` is what every target does and the values it speaks in; `registry.py` is the `deploy_targets`
resource that picks the implementation for an environment's `target:`; `docker/` is the docker target,
`kubernetes/` the kubernetes target.
"""

from resources.targets.docker.ephemeral import DockerEphemeralEnvironment
from resources.targets.docker.target import DockerTarget, DockerTargetConfig
from resources.targets.interface import (
    DeploymentFailed,
    DeploymentResult,
    DeploymentSpec,
    DeployTarget,
    EnvironmentContainer,
    EnvironmentReport,
    EphemeralEnvironment,
    HealthProbe,
    ImageNotPinned,
    ImageUnavailable,
    InvalidDeploymentSpec,
    PortUnavailable,
    ProxyError,
    ReapReport,
    RefusedCalls,
    RunningService,
    StartedService,
    TargetError,
    TargetNotConfigured,
    deployment_spec,
    pinned_reference,
    validate_spec,
)
from resources.targets.kubernetes.target import KubernetesTarget, KubernetesTargetConfig
from resources.targets.registry import DeployTargets

__all__ = [
    "DeployTarget",
    "DeployTargets",
    "DeploymentFailed",
    "DeploymentResult",
    "DeploymentSpec",
    "DockerEphemeralEnvironment",
    "DockerTarget",
    "DockerTargetConfig",
    "EnvironmentContainer",
    "EnvironmentReport",
    "EphemeralEnvironment",
    "HealthProbe",
    "ImageNotPinned",
    "ImageUnavailable",
    "InvalidDeploymentSpec",
    "KubernetesTarget",
    "KubernetesTargetConfig",
    "PortUnavailable",
    "ProxyError",
    "ReapReport",
    "RefusedCalls",
    "RunningService",
    "StartedService",
    "TargetError",
    "TargetNotConfigured",
    "deployment_spec",
    "pinned_reference",
    "validate_spec",
]
