"""Labels release-graph puts on containers, networks and images: one owner, one namespace `io.release-graph.*`.

Every module that writes or reads a release-graph label takes its name from here. The namespace is
reverse DNS, as the OCI image-spec asks of labels that are not `org.opencontainers.*`.

Containers inherit their image's labels: an image built with `SERVICE`/`FLEET` (image provenance) yields
containers that carry them too. That is harmless because what marks a deployed container is the
combination the deploy target writes itself (`ENVIRONMENT` with `FLEET` and `SERVICE`), never one label.

Earlier versions wrote `release-graph` (the marker) and `release-graph.<name>`. Containers and networks
created then still run, so whoever lists or reads labels asks for both namespaces: `selectors()` gives one
engine filter per namespace (engine label filters are AND-ed, so "either namespace" is two queries), and
`read()` falls back to the legacy name. Nothing writes the legacy names any more.
"""

from collections.abc import Mapping

NAMESPACE = "io.release-graph"

MANAGED = f"{NAMESPACE}.managed"  # "1" on everything release-graph created (containers, networks)
FLEET = f"{NAMESPACE}.fleet"
ENVIRONMENT = f"{NAMESPACE}.environment"
SERVICE = f"{NAMESPACE}.service"
DIGEST = f"{NAMESPACE}.digest"
IMAGE = f"{NAMESPACE}.image"
PORT = f"{NAMESPACE}.port"
HEALTH = f"{NAMESPACE}.health"
CONFIG = f"{NAMESPACE}.config"  # fingerprint of port, health, publish, plain env and secret *names*
EPHEMERAL = f"{NAMESPACE}.ephemeral"  # value: the ephemeral network's name
EXPIRES_AT = f"{NAMESPACE}.expires-at"  # epoch seconds after which `reap` may remove an ephemeral network
GIT_SHA = f"{NAMESPACE}.git-sha"  # the commit a deployed container was built from
STEP = f"{NAMESPACE}.step"  # which release step ran a container or built an image: unit-tests, sbom, e2e
INSTANCE = f"{NAMESPACE}.instance"  # the state folder of the release-graph instance that deployed it

# What a deploy target writes on its containers and networks and reads back as the truth about them: a
# deployment's own labels may not set these (in either namespace).
TARGET_OWNED = frozenset({MANAGED, FLEET, ENVIRONMENT, SERVICE, DIGEST, IMAGE, PORT, HEALTH, CONFIG, EPHEMERAL,
                          EXPIRES_AT, INSTANCE})

LEGACY_MANAGED = "release-graph"
LEGACY_PREFIX = "release-graph."


def legacy(key: str) -> str:
    """The name earlier versions wrote for `key` (`io.release-graph.fleet` -> `release-graph.fleet`)."""
    if key == MANAGED:
        return LEGACY_MANAGED
    if not key.startswith(NAMESPACE + "."):
        raise ValueError(f"{key!r} is not a release-graph label")
    return LEGACY_PREFIX + key[len(NAMESPACE) + 1:]


def read(labels: Mapping[str, str] | None, key: str, default: str | None = None) -> str | None:
    """The value of `key`, else of its legacy name, else `default`."""
    labels = labels or {}
    if key in labels:
        return labels[key]
    return labels.get(legacy(key), default)


def has(labels: Mapping[str, str] | None, key: str) -> bool:
    labels = labels or {}
    return key in labels or legacy(key) in labels


def selectors(*wanted: str | tuple[str, str]) -> list[list[str]]:
    """Engine label filters (`key` or `key=value`) that all must match: one list per namespace.

    `selectors(MANAGED, (FLEET, "shop"))` ->
    `[["io.release-graph.managed", "io.release-graph.fleet=shop"], ["release-graph", "release-graph.fleet=shop"]]`.
    A key given alone matches any value.
    """
    result = []
    for rename in (lambda key: key, legacy):
        result.append([rename(item) if isinstance(item, str) else f"{rename(item[0])}={item[1]}" for item in wanted])
    return result


def reserved(key: str) -> bool:
    """A label a deployment may not set: target-owned, in either namespace, or anything legacy."""
    return key in TARGET_OWNED or key == LEGACY_MANAGED or key.startswith(LEGACY_PREFIX)
