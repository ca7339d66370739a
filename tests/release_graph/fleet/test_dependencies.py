"""Deployment order and cycles: one strongly-connected-sets implementation for the manifest and the importer."""

from __future__ import annotations

from release_graph.fleet import Edge, Service, find_hard_cycles, topological_order
from release_graph.fleet.dependencies import shortest_cycle, strongly_connected


def service(name: str, *deps: str, soft: tuple[str, ...] = (), unit: str | None = None) -> Service:
    edges = tuple(Edge(d) for d in deps) + tuple(Edge(d, soft=True) for d in soft)
    return Service(name=name, image="redis:7.2", depends_on=edges, deploy_unit=unit)


def test_tarjan_finds_each_strongly_connected_set_and_survives_deep_chains():
    graph = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": ["e"], "e": ["d"], "f": ["a"], "g": []}
    assert strongly_connected(graph) == [["a", "b", "c"], ["d", "e"]]
    assert shortest_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c"]
    chain = {f"s{i}": [f"s{i + 1}"] for i in range(5000)}
    chain["s5000"] = ["s0"]
    (component,) = strongly_connected(chain)
    assert len(component) == 5001


def test_hard_cycles_ignore_soft_edges_and_edges_inside_one_deploy_unit():
    services = {s.name: s for s in [
        service("api", "billing"), service("billing", "ledger"), service("ledger", "billing", soft=("api",)),
        service("cart", "orders", unit="shop"), service("orders", "cart", unit="shop"),
    ]}
    assert find_hard_cycles(services) == [["billing", "ledger"]]


def test_providers_deploy_before_their_consumers():
    services = {s.name: s for s in [service("gateway", "orders", "cart"), service("orders", "inventory"),
                                    service("cart"), service("inventory"), service("web", soft=("gateway",))]}
    order = topological_order(services)
    assert order == ["cart", "inventory", "orders", "gateway", "web"]
