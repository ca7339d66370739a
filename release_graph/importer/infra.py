"""The documented set of well-known infrastructure images: databases, caches, brokers, coordination and
telemetry backends. Their services are kept in the fleet as prebuilt nodes (lineage shows them) but
never released. docs/importing.md lists the same table; a test keeps the two in step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from release_graph.fleet.references import repository_of, split_host


@dataclass(frozen=True)
class WellKnown:
    name: str  # the name the table is keyed by (and the official image)
    category: str
    port: int  # the port clients use by default
    aliases: tuple[str, ...] = ()  # other image names (last path component) of the same software
    health: str | None = None  # an HTTP path on `port` that answers 200 when healthy, if the image has one


WELL_KNOWN: tuple[WellKnown, ...] = (
    WellKnown("mongo", "database", 27017, ("mongodb", "mongodb-community-server", "mongodb-enterprise-server")),
    WellKnown("postgres", "database", 5432, ("postgresql", "postgis", "timescaledb", "pgvector")),
    WellKnown("mysql", "database", 3306, ("mysql-server", "percona-server", "percona")),
    WellKnown("mariadb", "database", 3306),
    WellKnown("mssql", "database", 1433, ("mssql-server",)),
    WellKnown("cockroach", "database", 26257, ("cockroachdb",)),
    WellKnown("cassandra", "database", 9042, ("scylla", "scylladb")),
    WellKnown("couchdb", "database", 5984),
    WellKnown("couchbase", "database", 8091, ("couchbase-server",)),
    WellKnown("neo4j", "database", 7687),
    WellKnown("influxdb", "database", 8086),
    WellKnown("clickhouse", "database", 8123, ("clickhouse-server",)),
    WellKnown("elasticsearch", "search", 9200, (), "/_cluster/health"),
    WellKnown("opensearch", "search", 9200),
    WellKnown("redis", "cache", 6379, ("redis-stack", "redis-stack-server", "keydb", "dragonfly")),
    WellKnown("valkey", "cache", 6379),
    WellKnown("memcached", "cache", 11211),
    WellKnown("rabbitmq", "broker", 5672),
    WellKnown("kafka", "broker", 9092, ("cp-kafka", "cp-server", "redpanda")),
    WellKnown("zookeeper", "coordination", 2181, ("cp-zookeeper",)),
    WellKnown("nats", "broker", 4222, ("nats-streaming",)),
    WellKnown("activemq", "broker", 61616, ("activemq-classic", "activemq-artemis", "artemis")),
    WellKnown("pulsar", "broker", 6650),
    WellKnown("etcd", "coordination", 2379, (), "/health"),
    WellKnown("consul", "coordination", 8500, (), "/v1/status/leader"),
    WellKnown("vault", "secrets", 8200),
    WellKnown("minio", "object storage", 9000, (), "/minio/health/live"),
    WellKnown("opentelemetry-collector", "telemetry", 4317,
              ("opentelemetry-collector-contrib", "otel-collector", "otelcol", "otelcol-contrib")),
    WellKnown("jaeger", "telemetry", 16686, ("all-in-one", "jaeger-collector", "jaeger-all-in-one")),
    WellKnown("zipkin", "telemetry", 9411),
    WellKnown("prometheus", "telemetry", 9090, (), "/-/healthy"),
    WellKnown("grafana", "telemetry", 3000, (), "/api/health"),
    WellKnown("tempo", "telemetry", 3200),
    WellKnown("loki", "telemetry", 3100),
)

_BY_IMAGE_NAME: dict[str, WellKnown] = {}
for _entry in WELL_KNOWN:
    for _name in (_entry.name, *_entry.aliases):
        _BY_IMAGE_NAME[_name] = _entry

# Words that may surround an infrastructure name in a *service* name without making it something else:
# `mongodb`, `user-db`, `mysql-primary` are databases; `kafka-consumer` or `redis-cart` are not.
_NEUTRAL_WORDS = {"db", "database", "server", "primary", "master", "replica", "main", "data", "store",
                  "cluster", "node", "local", "dev", "svc", "service"}
# Generic aliases are only trusted as image names under their vendor's path.
_VENDOR_ONLY = {"all-in-one": "jaegertracing/"}


def image_name(image: str) -> str:
    """`docker.io/library/redis:7@sha256:...` -> `redis`: the last path component, without tag or digest."""
    return repository_of(image).rsplit("/", 1)[-1].lower()


def image_path(image: str) -> str:
    """The repository path without registry host, tag or digest: `bitnami/redis`, `redis`."""
    _host, parts = split_host(repository_of(image))
    return "/".join(parts).removeprefix("library/").lower()


def by_image(image: str) -> WellKnown | None:
    """The well-known software an image reference is, judged by its repository name."""
    name = image_name(image)
    entry = _BY_IMAGE_NAME.get(name)
    if entry is None:
        return None
    vendor = _VENDOR_ONLY.get(name)
    if vendor and not image_path(image).startswith(vendor):
        return None
    return entry


def by_service_name(name: str) -> WellKnown | None:
    """A service named after its software (`mongodb`, `mysql`, `orders-db` is not: `orders` is a word)."""
    words = [w for w in re.split(r"[-_.]", name.lower()) if w]
    known = [w for w in words if w in _BY_IMAGE_NAME and w not in _VENDOR_ONLY]
    if len(known) != 1:
        return None
    if all(w in _NEUTRAL_WORDS or w in _BY_IMAGE_NAME or w.isdigit() for w in words):
        return _BY_IMAGE_NAME[known[0]]
    return None


def is_telemetry_name(name: str) -> bool:
    """A service whose name says it receives telemetry: calls to it are never worth ordering deploys."""
    return bool(re.search(r"(^|[-_.])(otel|opentelemetry|jaeger|zipkin|collector|tempo)([-_.]|$)", name.lower())
                or "collector" in name.lower())
