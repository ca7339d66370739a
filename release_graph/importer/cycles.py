"""Soft edges and deploy units: how an imported fleet with call cycles stays loadable.

An edge is judged soft when the service called receives telemetry (its name or image says collector,
OpenTelemetry, Jaeger, Zipkin, Tempo) or when every piece of evidence is a telemetry or callback key
(`OTEL_*`, `*_COLLECTOR*`, `*CALLBACK*`, `*REDIRECT*`, `*RETURN_URL*`, ...): such calls never need
the other side deployed first. Any strongly connected set of the remaining hard edges (Tarjan) becomes
one `deploy_unit`, so its members deploy together instead of in an order that cannot exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from release_graph.importer import infra
from release_graph.importer.edges import EdgeReport, InferredEdge
from release_graph.importer.model import ImportedService

_TELEMETRY_KEY = re.compile(r"(^|_)(OTEL|OTLP|OPENTELEMETRY|JAEGER|ZIPKIN|TRACING|TRACES|TELEMETRY)(_|$)|COLLECTOR")
_CALLBACK_KEY = re.compile(r"CALLBACK|REDIRECT|RETURN_URL|RETURNURL|WEBHOOK")


@dataclass
class CycleReport:
    cycles: list[list[str]] = field(default_factory=list)  # every cycle of the inferred graph, before softening
    units: dict[str, list[str]] = field(default_factory=dict)  # deploy_unit -> members


def soft_reason(edge: InferredEdge, provider: ImportedService) -> str:
    """Why an edge is soft, or "" when it orders deployments."""
    if infra.is_telemetry_name(provider.source_name) or infra.is_telemetry_name(provider.name):
        return f"{provider.name} receives telemetry: sending to it never needs it deployed first"
    known = infra.by_image(provider.image) if provider.image else None
    if known and known.category == "telemetry":
        return f"{provider.name} runs {known.name} (telemetry): sending to it never needs it deployed first"
    keys = [item.key for item in edge.items]
    if edge.items and all(item.kind == "env" for item in edge.items):
        if all(_TELEMETRY_KEY.search(key.upper()) for key in keys):
            return f"only telemetry settings name it ({', '.join(sorted(set(keys)))})"
        if all(_CALLBACK_KEY.search(key.upper()) or _TELEMETRY_KEY.search(key.upper()) for key in keys):
            return (f"only callback URLs name it ({', '.join(sorted(set(keys)))}): "
                    "a callback is handed out, not called at start-up")
    return ""


def strongly_connected(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (deep chains must not hit the recursion limit); sets of 2 or more."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def shortest_cycle(graph: dict[str, list[str]], members: list[str]) -> list[str]:
    """A shortest cycle through the smallest member, for a message people can follow."""
    start = min(members)
    inside = set(members)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph.get(node, ())):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return list(reversed(path))
                if child in inside and child not in came_from:
                    came_from[child] = node
                    following.append(child)
        frontier = following
    return [start]


def unit_name(members: list[str]) -> str:
    joined = "-".join(sorted(members))
    if len(joined) <= 63:
        return joined
    return f"{sorted(members)[0][:40]}-and-{len(members) - 1}-more"


def resolve_cycles(report: EdgeReport, services: dict[str, ImportedService]) -> CycleReport:
    """Mark soft edges, then group what still cycles. Mutates the edges' soft flags."""
    result = CycleReport()
    full: dict[str, list[str]] = {name: [] for name in services}
    for (consumer, provider) in report.edges:
        full[consumer].append(provider)
    for members in strongly_connected(full):
        result.cycles.append(shortest_cycle(full, members))

    for edge in report.edges.values():
        reason = soft_reason(edge, services[edge.provider])
        edge.soft = bool(reason)
        edge.soft_reason = reason

    hard: dict[str, list[str]] = {name: [] for name in services}
    for (consumer, provider), edge in report.edges.items():
        if not edge.soft:
            hard[consumer].append(provider)
    for members in strongly_connected(hard):
        result.units[unit_name(members)] = members
    return result
