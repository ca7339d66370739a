"""Graph algorithms over the fleet's edges: deployment order and cycles of hard edges.

`strongly_connected` and `shortest_cycle` are the one implementation of strongly connected sets, used by the
manifest's cycle check and by the importer's cycle resolution (release_graph.importer.cycles).
"""

from __future__ import annotations

from collections.abc import Mapping

from release_graph.fleet.model import Service


def strongly_connected(graph: Mapping[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (deep chains must not hit the recursion limit): every set of 2 or more
    nodes that reach each other, each sorted, in order of their smallest member."""
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


def shortest_cycle(graph: Mapping[str, list[str]], members: list[str]) -> list[str]:
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


def find_hard_cycles(services: Mapping[str, Service]) -> list[list[str]]:
    """Strongly connected sets of hard edges, ignoring edges inside one deploy_unit.

    Each cycle is returned as a path in edge order starting at its smallest name, so messages are stable.
    """
    def unit(name: str) -> str | None:
        return services[name].deploy_unit if name in services else None

    graph = {
        name: sorted(
            dep for dep in svc.hard_deps
            if dep in services and dep != name and not (svc.deploy_unit and unit(dep) == svc.deploy_unit)
        )
        for name, svc in services.items()
    }
    return [shortest_cycle(graph, members) for members in strongly_connected(graph)]


def topological_order(services: Mapping[str, Service]) -> list[str]:
    """Providers before consumers along hard edges (stable by name)."""
    order: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        done.add(name)
        for dep in sorted(services[name].hard_deps):
            if dep in services:
                visit(dep)
        order.append(name)

    for name in sorted(services):
        visit(name)
    return order
