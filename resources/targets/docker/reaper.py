"""Clean-up: tearing an environment down, and reaping what earlier runs left behind.

What `reap` removes:
- ephemeral networks (and their containers) whose expiry passed: an integration run that was killed;
- per service, containers that neither serve nor are the last one that did (a deployment that died
  halfway, a previous version that was not removed), once older than `min_age_seconds`;
- with `fleet` and `keep_environments`: whole environments of that fleet not in the list;
- haproxy state of environments whose network is gone.
A container stopped by hand that last served is kept: it is drift, for the drift check to report.

Containers and networks are found by their labels in both namespaces (`resources/labels.py`): what an
earlier version created under `release-graph.*` is reaped like what this one creates.
"""

import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

from docker.errors import NotFound

from resources import labels as L
from resources.targets.docker import inspect, isolation
from resources.targets.interface import ReapReport, TargetError, check_name

if TYPE_CHECKING:
    from resources.targets.docker.target import DockerTarget


def teardown_environment(target: "DockerTarget", fleet: str, environment: str) -> ReapReport:
    """Remove every container of the environment (and anything else on its network), the network and its
    haproxy."""
    check_name("fleet", fleet)
    check_name("environment", environment)
    net = target.network_name(fleet, environment)
    # the environment's network and its services' own (`<net>.<service>`)
    names = [net] if target._network_exists(net) else []
    names += sorted(n.name for n in target._list_networks(f"listing the networks of {fleet}/{environment}",
                                                          (L.FLEET, fleet), (L.ENVIRONMENT, environment))
                    if n.name.startswith(f"{net}."))
    containers = {c.id: c for c in target._service_containers(fleet, environment)}
    for name in names:
        containers.update({c.id: c for c in target._network_members(name)})
    # An environment deployed by another instance (another checkout, a `make clean` since) has its switch in
    # that instance's state folder, named on its containers: stop that one too.
    roots = {L.read(inspect.container_labels(c), L.INSTANCE) for c in containers.values()} - {None, ""}
    removed = []
    for container in containers.values():
        with suppress(NotFound), target._engine(f"removing {container.name}"):
            target._remove_container(container)
            removed.append(container.name)
    networks = []
    for name in names:
        with suppress(NotFound), target._engine(f"removing network {name}"):
            network = target._docker().networks.get(name)
            network.remove()
            networks.append(name)
            if (subnet := target._subnet(network)) and target._engine_is_local():
                isolation.release(subnet)
    router = target._router(fleet, environment)
    proxies = [net] if router.exists() else []
    router.destroy()
    for root in sorted(roots):
        other = target._router_at(Path(root) / net, f"{fleet}/{environment}")
        if other.directory != router.directory and other.exists():
            other.destroy()
            proxies.append(f"{net} ({root})")
    return ReapReport(tuple(removed), tuple(networks), tuple(proxies))


def reap(
    target: "DockerTarget",
    fleet: str | None = None,
    *,
    keep_environments: Sequence[str] | None = None,
    min_age_seconds: float | None = None,
) -> ReapReport:
    """Remove what earlier runs left behind (see the module docstring) and return what was removed.

    `min_age_seconds` defaults to long enough for any deployment in progress to finish: health timeout +
    drain + stop + 60 s.
    """
    if keep_environments is not None and fleet is None:
        raise TargetError("reap: keep_environments needs a fleet (environments are per fleet)")
    config = target.config
    if min_age_seconds is None:
        min_age_seconds = config.health_timeout_seconds + config.drain_seconds + config.stop_timeout_seconds + 60
    now = time.time()
    containers: list[str] = []
    networks: list[str] = []
    proxies: list[str] = []
    base: list[str | tuple[str, str]] = [(L.MANAGED, "1")] + ([(L.FLEET, fleet)] if fleet else [])

    for network in target._list_networks("reap: listing ephemeral networks", *base, L.EPHEMERAL):
        labels = network.attrs.get("Labels") or {}
        try:
            expires = float(L.read(labels, L.EXPIRES_AT, "0"))
        except ValueError:
            expires = 0.0
        if expires <= now:
            found = remove_ephemeral(target, network.name)
            containers.extend(found[0])
            networks.extend(found[1])

    groups: dict[tuple[str, str, str], list] = {}
    for container in target._list_containers("reap: listing containers", *base, L.SERVICE):
        labels = inspect.container_labels(container)
        environment = L.read(labels, L.ENVIRONMENT)
        if L.has(labels, L.EPHEMERAL) or not environment:
            continue
        key = (L.read(labels, L.FLEET, ""), environment, L.read(labels, L.SERVICE))
        groups.setdefault(key, []).append(container)
    for (group_fleet, environment, service), members in groups.items():
        if keep_environments is not None and environment not in keep_environments:
            continue  # the whole environment goes below
        keep = target._pick(members, group_fleet, environment, service)
        for container in members:
            if container is keep or now - inspect.created(container) < min_age_seconds:
                continue
            with suppress(NotFound), target._engine(f"reap: removing {container.name}"):
                target._remove_container(container)
                containers.append(container.name)

    if keep_environments is not None and fleet is not None:
        env_networks = target._list_networks("reap: listing environment networks", *base, L.ENVIRONMENT)
        stale = {
            L.read(n.attrs.get("Labels"), L.ENVIRONMENT)
            for n in env_networks
            if not L.has(n.attrs.get("Labels"), L.EPHEMERAL)
        }
        stale |= {env for (f, env, _s) in groups if f == fleet}
        for environment in sorted(e for e in stale if e and e not in keep_environments):
            report = teardown_environment(target, fleet, environment)
            containers.extend(report.containers)
            networks.extend(report.networks)
            proxies.extend(report.proxies)

    root = target._state_root()
    if root.is_dir():
        prefix = f"{config.name_prefix}-{fleet}-" if fleet else f"{config.name_prefix}-"
        for folder in sorted(root.iterdir()):
            if folder.is_dir() and folder.name.startswith(prefix) and not target._network_exists(folder.name):
                target._router_at(folder, folder.name).destroy()
                proxies.append(folder.name)
    target.sweep_secret_files()
    if target._engine_is_local():
        # the firewall rules of networks removed without their teardown (every network of the engine counts:
        # other fleets' and other instances' networks keep theirs)
        def existing() -> list[str]:
            with target._engine("reap: listing networks"):
                return [subnet for n in target._docker().networks.list() if (subnet := target._subnet(n))]

        isolation.sweep(existing)
    return ReapReport(tuple(containers), tuple(networks), tuple(proxies))


def remove_ephemeral(target: "DockerTarget", net: str) -> tuple[list[str], list[str]]:
    """Remove an ephemeral network and everything on it or labelled as its own: (containers, networks)."""
    client = target._docker()
    members = {c.id: c for c in target._list_containers(f"tearing down {net}", (L.EPHEMERAL, net))}
    with target._engine(f"tearing down {net}"):
        try:
            network = client.networks.get(net)
        except NotFound:
            network = None
        if network is not None:
            attached = client.containers.list(all=True, ignore_removed=True, filters={"network": net})
            members.update({c.id: c for c in attached})
    removed = []
    for container in members.values():
        with suppress(NotFound), target._engine(f"tearing down {net}: removing {container.name}"):
            target._remove_container(container)
            removed.append(container.name)
    networks = []
    if network is not None:
        with suppress(NotFound), target._engine(f"tearing down {net}: removing the network"):
            network.remove()
            networks.append(net)
    return removed, networks
