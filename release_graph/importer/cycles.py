"""Soft edges and deploy units: how an imported fleet with call cycles stays loadable.

An edge is judged soft when the service called receives telemetry (its name or image says collector,
OpenTelemetry, Jaeger, Zipkin, Tempo) or when every piece of evidence is a telemetry, callback or
client-facing key (`OTEL_*`, `*_COLLECTOR*`, `*CALLBACK*`, `*REDIRECT*`, `*RETURN_URL*`, `MvcClient`,
`IdentityUrlExternal`, ...): such calls never need the other side deployed first. Any strongly connected
set of the remaining hard edges (Tarjan, shared with the manifest's cycle check in
release_graph.fleet.dependencies) becomes one `deploy_unit`, so its members deploy together instead of in
an order that cannot exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from release_graph.fleet.dependencies import shortest_cycle, strongly_connected
from release_graph.importer import infra
from release_graph.importer.edges import EdgeReport, InferredEdge, key_words
from release_graph.importer.model import ImportedService

_TELEMETRY_KEY = re.compile(r"(^|_)(OTEL|OTLP|OPENTELEMETRY|JAEGER|ZIPKIN|TRACING|TRACES|TELEMETRY)(_|$)|COLLECTOR")
_CALLBACK_KEY = re.compile(r"CALLBACK|REDIRECT|RETURN_URL|RETURNURL|WEBHOOK")
# Addresses handed to clients rather than called: OIDC client URLs (`MvcClient=http://...:5100`) and the
# external URL a browser is sent to (`IdentityUrlExternal`).
_CLIENT_FACING_WORDS = {"CLIENT", "EXTERNAL"}


def _is_client_facing_key(key: str) -> bool:
    return bool(_CLIENT_FACING_WORDS.intersection(key_words(key)))


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
        if all(_is_client_facing_key(key) or _CALLBACK_KEY.search(key.upper()) for key in keys):
            return (f"only client-facing URLs name it ({', '.join(sorted(set(keys)))}): "
                    "an address handed to clients (a browser, an OIDC client), not called at start-up")
    return ""


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
