"""The guide's infrastructure table is the importer's table: a reader can trust what docs/importing.md says."""

from __future__ import annotations

from pathlib import Path

from release_graph.importer.infra import WELL_KNOWN, by_image, by_service_name

GUIDE = Path(__file__).resolve().parents[3] / "docs" / "importing.md"


def guide_rows() -> list[tuple[str, str, int, str, tuple[str, ...], str | None]]:
    lines = GUIDE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("<!-- infra-table"))
    rows = []
    for line in lines[start + 3:]:
        if not line.startswith("|"):
            break
        name, category, port, image, aliases, health = (cell.strip() for cell in line.strip("|").split("|"))
        rows.append((name, category, int(port), image, tuple(a.strip() for a in aliases.split(",") if a.strip()),
                     health or None))
    return rows


def test_the_documented_infrastructure_table_matches_the_code():
    assert guide_rows() == [(w.name, w.category, w.port, w.image, w.aliases, w.health) for w in WELL_KNOWN]


def test_infrastructure_is_recognised_by_image_and_by_plain_service_names():
    assert by_image("docker.io/library/redis:7.2@sha256:" + "0" * 64).name == "redis"
    assert by_image("bitnami/postgresql:16").name == "postgres"
    assert by_image("jaegertracing/all-in-one:1.57").name == "jaeger"
    assert by_image("example/all-in-one:1") is None  # a generic name counts only under its vendor
    # the full repository path, whole or its end: the last component `server` alone says nothing
    assert by_image("mcr.microsoft.com/mssql/server:2022-latest").name == "mssql"
    assert by_image("registry.example.com/vendor/mssql/server:2019").name == "mssql"
    assert by_image("example/server:1") is None
    assert by_image("quay.io/coreos/etcd:v3.5").name == "etcd"
    assert by_image("frontend") is None
    assert by_service_name("mongodb").name == "mongo"
    assert by_service_name("user-db") is None and by_service_name("orders-postgres") is None
    assert by_service_name("redis-primary").name == "redis"
    assert by_service_name("kafka-consumer") is None and by_service_name("redis-cart") is None
