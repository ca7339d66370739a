"""Which values name a host, which names hold secrets, and which start-up commands wait for whom."""

from __future__ import annotations

import pytest

from release_graph.importer.edges import (
    has_credentials,
    hosts_in_value,
    is_address_key,
    is_secret_name,
    mask_credentials,
    wait_targets,
)
from release_graph.importer.model import HostRef as H


@pytest.mark.parametrize(
    ("key", "value", "hosts"),
    [
        ("CART_ADDR", "cartservice", (H("cartservice"),)),
        ("ANY", "cartservice:7070", (H("cartservice", 7070),)),
        ("ANY", "http://catalog:8080/api/v1?x=1", (H("catalog", 8080),)),
        ("ANY", "https://Catalog/health", (H("catalog"),)),
        ("ANY", "redis.cache.svc.cluster.local:6379", (H("redis.cache.svc.cluster.local", 6379),)),
        ("MONGO_URL", "mongodb://user:pw@mongodb:27017/catalogue", (H("mongodb", 27017),)),
        ("ANY", "mongodb://a:27017,b:27018/db?replicaSet=rs0", (H("a", 27017), H("b", 27018))),
        ("BROKERS", "kafka-1:9092,kafka-2:9092", (H("kafka-1", 9092), H("kafka-2", 9092))),
        ("SEEDS", "http://a:1, http://b:2", (H("a", 1), H("b", 2))),
        ("DSN", "jdbc:mysql://mysql:3306/ratings", (H("mysql", 3306),)),
        ("DSN", "jdbc:sqlserver://mssql:1433;databaseName=shop", (H("mssql", 1433),)),
        ("PG", "host=db port=5432 dbname=shop", (H("db"),)),
        ("AMQP", "amqp://guest:guest@rabbitmq", (H("rabbitmq"),)),
        ("REDIS", "redis://:secret@redis:6379/0", (H("redis", 6379),)),
        ("DB_HOST", "db", (H("db"),)),
        # no host: a bare word under a key that is no address, numbers, paths, loopback, versions
        ("MODE", "cart", ()),
        ("PORT", "8080", ()),
        ("CONFIG", "/etc/app/config.yaml", ()),
        ("ANY", "http://localhost:8080/x", ()),
        ("ANY", "127.0.0.1:9000", ()),
        ("TIME", "10:30", ()),
        ("FLAGS", "a=b,c=d", ()),
        ("GREETING", "hello world", ()),
        ("ANY", "", ()),
    ],
)
def test_hosts_named_by_a_value(key, value, hosts):
    assert hosts_in_value(value, key) == hosts


@pytest.mark.parametrize(
    ("name", "secret"),
    [("DB_PASSWORD", True), ("MYSQL_ROOT_PASSWD", True), ("JWT_SECRET", True), ("GITHUB_TOKEN", True),
     ("API_KEY", True), ("APIKEY", True), ("AWS_ACCESS_KEY_ID", True), ("KEY", True), ("DB_PWD", True),
     ("CREDENTIALS_FILE", True), ("KEYCLOAK_URL", False), ("LOG_LEVEL", False), ("CACHE_HOST", False)],
)
def test_secret_names(name, secret):
    assert is_secret_name(name) is secret


def test_credentials_in_urls_are_detected_and_masked():
    assert has_credentials("postgres://app:s3cret@db/app")
    assert not has_credentials("postgres://app@db/app")
    assert mask_credentials("a=postgres://app:s3cret@db/app b=redis://:pw@r:6379") == \
        "a=postgres://app:***@db/app b=redis://:***@r:6379"


def test_address_keys():
    assert all(is_address_key(k) for k in ("DB_HOST", "CART_SERVICE_ADDR", "API_URL", "KAFKA_BROKERS", "dsn"))
    assert not any(is_address_key(k) for k in ("SERVICE_NAME", "MODE", "LOG_LEVEL", "HOSTING_PLAN"))


@pytest.mark.parametrize(
    ("command", "urls", "hosts"),
    [
        ("until nc -z db 5432; do sleep 1; done", False, (H("db", 5432),)),
        ("nc -w 2 -zv queue 5672 && echo up", False, (H("queue", 5672),)),
        ("until nslookup auth.shop.svc.cluster.local; do sleep 2; done", False,
         (H("auth.shop.svc.cluster.local"),)),
        ("until getent hosts search; do sleep 1; done", False, (H("search"),)),
        ("./wait-for-it.sh orders:8080 -t 30 -- npm start", False, (H("orders", 8080),)),
        ("until pg_isready -h postgres -p 5432; do sleep 1; done", False, (H("postgres", 5432),)),
        ("until redis-cli -h cache ping; do sleep 1; done", False, (H("cache"),)),
        ("timeout 1 bash -c '</dev/tcp/mysql/3306'", False, (H("mysql", 3306),)),
        ("until wget -q http://frontend:80/; do sleep 5; done", True, (H("frontend", 80),)),
        ("until curl -fs http://api/ready; do sleep 1; done", True, (H("api"),)),
        ("serve --config http://config:8888", False, ()),  # a main command's URL is not a wait
        ("python app.py", True, ()),
    ],
)
def test_start_up_commands_that_wait(command, urls, hosts):
    assert wait_targets(command, urls=urls) == hosts
