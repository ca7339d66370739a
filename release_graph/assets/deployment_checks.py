"""Evidence about `<service>/<environment>`: it is healthy, what runs is what was recorded (drift), and the network
refused no call to or from it (the network rule: only the manifest's edges are calls).

The same evaluations serve the checks (in a run) and the drift sensor (between runs).
"""


import dagster as dg

from release_graph.fleet import Environment, Fleet, Service
from release_graph.release import history
from release_graph.release import metadata as M
from release_graph.release.errors import ReleaseStepError
from release_graph.release.keys import environment_key
from release_graph.release.matrix import in_sync_evaluation, network_policy_evaluation
from resources.targets import DeployTarget


def _recorded(context, service: Service, environment: Environment):
    record = history.latest(context.instance, environment_key(service, environment))
    if record is None:
        raise ReleaseStepError(f"service '{service.name}', environment '{environment.name}': nothing deployed yet")
    return record


def check_healthy(context, fleet: Fleet, service: Service, environment: Environment, target: DeployTarget,
                  digest: str | None = None) -> dg.AssetCheckResult:
    digest = digest or _recorded(context, service, environment).digest
    actual = target.running(fleet.name, environment.name, service.name)
    probe = target.probe(fleet.name, environment.name, service.name, port=service.port, path=service.health)
    passed = actual is not None and actual.running and probe.healthy
    return dg.AssetCheckResult(
        check_name="healthy",
        passed=passed,
        metadata={
            M.DIGEST: digest,
            "container": actual.container_name if actual else "none",
            "status": actual.status if actual else "absent",
            "health": probe.detail,
        },
        description=probe.detail,
    )


def check_in_sync(context, fleet: Fleet, service: Service, environment: Environment, target: DeployTarget,
                  digest: str | None = None) -> dg.AssetCheckResult:
    digest = digest or _recorded(context, service, environment).digest
    actual = target.running(fleet.name, environment.name, service.name)
    passed, metadata = in_sync_evaluation(fleet, service, environment, digest, actual)
    return dg.AssetCheckResult(check_name="in_sync", passed=passed, metadata=metadata,
                               description=metadata["drift"])


def check_network_policy(fleet: Fleet, service: Service, environment: Environment,
                         target: DeployTarget) -> dg.AssetCheckResult:
    passed, metadata = network_policy_evaluation(fleet, service, target.refused_calls(fleet.name, environment.name))
    description = metadata.pop("drift")
    return dg.AssetCheckResult(check_name="network_policy", passed=passed, severity=dg.AssetCheckSeverity.WARN,
                               metadata=metadata, description=description)
