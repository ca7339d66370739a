"""Which calls the network should allow, from the manifest's edges: a service may be called only by the services
that declare an edge to it (hard or soft: a soft edge is still a call, only not a deployment order), and by the
outside world where an environment publishes it; nothing else.

`allowed_calls` is that rule as a list (what `release-graph validate --explain-network` prints);
`network_policies` is the same rule as one Kubernetes NetworkPolicy per service (networking.k8s.io/v1), selecting
pods by `pod_labels`; `network_policy` builds one service's, which the kubernetes target applies with the service's
deployment. The docker target enforces the rule itself (resources/targets/docker: a network per service, and a
switch that admits only the declared callers' networks, counting and naming every refusal); docs/manifest.md,
"Allowed calls".

Plain Python: no Dagster, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from release_graph.fleet.model import Fleet, Service

OUTSIDE = "(outside)"  # a caller that is not a service: a published port's clients
END_TO_END = "(end-to-end tests)"  # the fleet's `e2e:` tests, which call services as the outside world does
SERVICE_LABEL = "app.kubernetes.io/name"
FLEET_LABEL = "app.kubernetes.io/part-of"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
ROLE_LABEL = "release-graph.io/role"  # on pods that are not a service's: what they are for
END_TO_END_TESTS = "end-to-end-tests"  # the role of the pods that run the fleet's end-to-end tests


@dataclass(frozen=True)
class AllowedCall:
    caller: str  # a service of the fleet, or OUTSIDE
    callee: str
    port: int | None  # the callee's port (None: it declares none, so nothing can be reached on it)
    why: str  # the manifest's words that allow it

    def line(self) -> str:
        port = f":{self.port}" if self.port is not None else " (no port declared)"
        return f"{self.caller} -> {self.callee}{port}  ({self.why})"


def allowed_calls(fleet: Fleet) -> list[AllowedCall]:
    """Every call the network allows, callee by callee in manifest order, callers sorted."""
    calls = []
    for callee in fleet.services.values():
        for caller in fleet.callers_of(callee.name):
            edge = fleet.edge(caller, callee.name)
            kind = "soft edge" if edge.soft else ("start-up edge" if edge.startup_only else "edge")
            unit = callee.deploy_unit if callee.deploy_unit and fleet.services[caller].deploy_unit == \
                callee.deploy_unit else None
            why = f"{caller} depends_on {callee.name}: {kind}" + (f", deploy unit {unit}" if unit else "")
            calls.append(AllowedCall(caller, callee.name, callee.port, why))
        published = _published_in(fleet, callee)
        if published:
            calls.append(AllowedCall(OUTSIDE, callee.name, callee.port,
                                     "published in " + ", ".join(f"{env} on {port}" for env, port in published)))
        if fleet.e2e is not None and callee.port is not None:
            calls.append(AllowedCall(END_TO_END, callee.name, callee.port, "the fleet's e2e tests call it by name"))
    return calls


def refused(fleet: Fleet, caller: str, callee: str) -> bool:
    """Whether the network refuses `caller` calling `callee` (both services of the fleet)."""
    return caller not in fleet.callers_of(callee)


def network_policies(fleet: Fleet, namespace: str) -> list[dict]:
    """One NetworkPolicy per service (`network_policy`), in manifest order."""
    return [network_policy(fleet.name, service.name, service.port, fleet.callers_of(service.name),
                           bool(_published_in(fleet, service)), namespace, tested=fleet.e2e is not None)
            for service in fleet.services.values()]


def network_policy(fleet_name: str, service: str, port: int | None, callers: Iterable[str], published: bool,
                   namespace: str, *, tested: bool = False) -> dict:
    """A service's NetworkPolicy: ingress to its pods only from its `callers`' pods, on its port, from the fleet's
    end-to-end test pods when the fleet has them (`tested`: they call every service, as the docker target's tests do
    from the environment's network), and from anywhere on that port when an environment publishes it; a service
    nobody calls admits nothing. The kubernetes target applies this object with the service's deployment, from what
    its DeploymentSpec carries."""
    sources = [{"podSelector": {"matchLabels": pod_labels(fleet_name, caller)}} for caller in callers]
    if tested:
        sources.append({"podSelector": {"matchLabels": {FLEET_LABEL: fleet_name, ROLE_LABEL: END_TO_END_TESTS}}})
    rules = []
    ports = [{"protocol": "TCP", "port": port}] if port is not None else None
    if ports and sources:
        rules.append({"from": sources, "ports": ports})
    if ports and published:
        rules.append({"ports": ports})  # no `from`: every source, as a published port is
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"{service}-callers", "namespace": namespace,
                     "labels": {**pod_labels(fleet_name, service), MANAGED_BY_LABEL: "release-graph"}},
        "spec": {"podSelector": {"matchLabels": pod_labels(fleet_name, service)},
                 "policyTypes": ["Ingress"],
                 "ingress": rules},
    }


def pod_labels(fleet_name: str, service_name: str) -> dict[str, str]:
    """The labels that select a service's pods (the ones a kubernetes target must put on every pod it creates)."""
    return {SERVICE_LABEL: service_name, FLEET_LABEL: fleet_name}


def _published_in(fleet: Fleet, service: Service) -> list[tuple[str, int]]:
    return [(env.name, env.publish[service.name]) for env in fleet.environments.values()
            if service.name in env.publish]
