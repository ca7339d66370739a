"""The documented set of well-known infrastructure images: databases, caches, brokers, coordination and
telemetry backends. Their services are kept in the fleet as prebuilt nodes (lineage shows them) but
never released. docs/importing.md lists the same table; a test keeps the two in step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from release_graph.fleet.references import repository_of, split_host, split_reference


@dataclass(frozen=True)
class WellKnown:
    name: str  # the name the table is keyed by
    category: str
    port: int  # the port clients use by default
    image: str  # the official image repository, fully qualified: what stands in when compose builds its own
    # Other images of the same software: a last path component (`bitnami/redis` is `redis`), or a repository
    # path when the last component alone says nothing (`mssql/server`, `jaegertracing/all-in-one`).
    aliases: tuple[str, ...] = ()
    health: str | None = None  # an HTTP path on `port` that answers 200 when healthy, if the image has one


WELL_KNOWN: tuple[WellKnown, ...] = (
    WellKnown("mongo", "database", 27017, "docker.io/library/mongo",
              ("mongodb", "mongodb-community-server", "mongodb-enterprise-server")),
    WellKnown("postgres", "database", 5432, "docker.io/library/postgres",
              ("postgresql", "postgis", "timescaledb", "pgvector")),
    WellKnown("mysql", "database", 3306, "docker.io/library/mysql", ("mysql-server", "percona-server", "percona")),
    WellKnown("mariadb", "database", 3306, "docker.io/library/mariadb"),
    WellKnown("mssql", "database", 1433, "mcr.microsoft.com/mssql/server",
              ("mssql-server", "mssql/server", "mssql/rhel/server", "azure-sql-edge")),
    WellKnown("cockroach", "database", 26257, "docker.io/cockroachdb/cockroach", ("cockroachdb",)),
    WellKnown("cassandra", "database", 9042, "docker.io/library/cassandra", ("scylla", "scylladb")),
    WellKnown("couchdb", "database", 5984, "docker.io/library/couchdb"),
    WellKnown("couchbase", "database", 8091, "docker.io/library/couchbase", ("couchbase-server",)),
    WellKnown("neo4j", "database", 7687, "docker.io/library/neo4j"),
    WellKnown("influxdb", "database", 8086, "docker.io/library/influxdb"),
    WellKnown("clickhouse", "database", 8123, "docker.io/clickhouse/clickhouse-server", ("clickhouse-server",)),
    WellKnown("elasticsearch", "search", 9200, "docker.elastic.co/elasticsearch/elasticsearch", (),
              "/_cluster/health"),
    WellKnown("opensearch", "search", 9200, "docker.io/opensearchproject/opensearch"),
    WellKnown("redis", "cache", 6379, "docker.io/library/redis",
              ("redis-stack", "redis-stack-server", "keydb", "dragonfly")),
    WellKnown("valkey", "cache", 6379, "docker.io/valkey/valkey"),
    WellKnown("memcached", "cache", 11211, "docker.io/library/memcached"),
    WellKnown("rabbitmq", "broker", 5672, "docker.io/library/rabbitmq"),
    WellKnown("kafka", "broker", 9092, "docker.io/apache/kafka",
              ("cp-kafka", "cp-server", "redpanda", "confluent-local")),
    WellKnown("zookeeper", "coordination", 2181, "docker.io/library/zookeeper", ("cp-zookeeper",)),
    WellKnown("nats", "broker", 4222, "docker.io/library/nats", ("nats-streaming",)),
    WellKnown("activemq", "broker", 61616, "docker.io/apache/activemq-classic",
              ("activemq-classic", "activemq-artemis", "artemis")),
    WellKnown("pulsar", "broker", 6650, "docker.io/apachepulsar/pulsar"),
    WellKnown("etcd", "coordination", 2379, "quay.io/coreos/etcd", (), "/health"),
    WellKnown("consul", "coordination", 8500, "docker.io/hashicorp/consul", (), "/v1/status/leader"),
    WellKnown("vault", "secrets", 8200, "docker.io/hashicorp/vault"),
    WellKnown("minio", "object storage", 9000, "docker.io/minio/minio", (), "/minio/health/live"),
    WellKnown("opentelemetry-collector", "telemetry", 4317, "docker.io/otel/opentelemetry-collector-contrib",
              ("opentelemetry-collector-contrib", "otel-collector", "otelcol", "otelcol-contrib")),
    WellKnown("jaeger", "telemetry", 16686, "docker.io/jaegertracing/all-in-one",
              ("jaeger-collector", "jaeger-all-in-one")),
    WellKnown("zipkin", "telemetry", 9411, "docker.io/openzipkin/zipkin"),
    WellKnown("prometheus", "telemetry", 9090, "docker.io/prom/prometheus", (), "/-/healthy"),
    WellKnown("grafana", "telemetry", 3000, "docker.io/grafana/grafana", (), "/api/health"),
    WellKnown("tempo", "telemetry", 3200, "docker.io/grafana/tempo"),
    WellKnown("loki", "telemetry", 3100, "docker.io/grafana/loki"),
    WellKnown("seq", "telemetry", 80, "docker.io/datalust/seq", (), "/health"),
)

# Words that may surround an infrastructure name in a *service* name without making it something else:
# `mongodb`, `user-db`, `mysql-primary` are databases; `kafka-consumer` or `redis-cart` are not.
_NEUTRAL_WORDS = {"db", "database", "server", "primary", "master", "replica", "main", "data", "store",
                  "cluster", "node", "local", "dev", "svc", "service"}


def image_name(image: str) -> str:
    """`docker.io/library/redis:7@sha256:...` -> `redis`: the last path component, without tag or digest."""
    return repository_of(image).rsplit("/", 1)[-1].lower()


def image_path(image: str) -> str:
    """The repository path without registry host, tag or digest: `bitnami/redis`, `redis`, `mssql/server`."""
    _host, parts = split_host(repository_of(image))
    return "/".join(parts).removeprefix("library/").lower()


# Last path components that name the software (`redis`, `bitnami/redis`, `docker.io/library/redis:7`).
_BY_IMAGE_NAME: dict[str, WellKnown] = {}
# Repository paths, matched on the whole path or its end: `mcr.microsoft.com/mssql/server` is `mssql/server`.
_BY_PATH: dict[str, WellKnown] = {}
for _entry in WELL_KNOWN:
    _BY_PATH[image_path(_entry.image)] = _entry
    for _name in (_entry.name, *_entry.aliases):
        (_BY_PATH if "/" in _name else _BY_IMAGE_NAME)[_name] = _entry


def by_image(image: str) -> WellKnown | None:
    """The well-known software an image reference is: by its repository path (the whole path or its end, so
    `vendor/mssql/server` is mssql), else by its last path component (`bitnami/redis` is redis)."""
    parts = image_path(image).split("/")
    for start in range(len(parts)):
        entry = _BY_PATH.get("/".join(parts[start:]))
        if entry is not None:
            return entry
    return _BY_IMAGE_NAME.get(parts[-1])


def by_service_name(name: str) -> WellKnown | None:
    """A service named after its software (`mongodb`, `mysql`, `orders-db` is not: `orders` is a word)."""
    words = [w for w in re.split(r"[-_.]", name.lower()) if w]
    known = [w for w in words if w in _BY_IMAGE_NAME]
    if len(known) != 1:
        return None
    if all(w in _NEUTRAL_WORDS or w in _BY_IMAGE_NAME or w.isdigit() for w in words):
        return _BY_IMAGE_NAME[known[0]]
    return None


def is_telemetry_name(name: str) -> bool:
    """A service whose name says it receives telemetry: calls to it are never worth ordering deploys."""
    return bool(re.search(r"(^|[-_.])(otel|opentelemetry|jaeger|zipkin|collector|tempo)([-_.]|$)", name.lower())
                or "collector" in name.lower())


def unpinned_image_review(image: str) -> str:
    """A REVIEW note for a prebuilt image without a version (no tag, or `latest`): promotion moves one digest
    from environment to environment, and such a reference resolves to a different one over time."""
    _name, tag, digest = split_reference(image)
    if digest or (tag and tag != "latest"):
        return ""
    if "/" not in image and tag is None:  # `adservice`: a build tool (skaffold) fills in registry and tag
        return (f"image {image!r} has no registry and no tag (a build tool such as skaffold fills them in at "
                "deploy time): point it at a pushed image")
    return (f"image {image!r} names no version ({'`latest`' if tag else 'no tag'}): it resolves to whatever was "
            "pushed last; pin a tag or a digest")
