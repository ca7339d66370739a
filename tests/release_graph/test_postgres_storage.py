"""Releases on Postgres storage, for real: a private PostgreSQL (the Debian package, resources/postgres_server.py),
the instance opened from deploy/*/dagster.yaml exactly as shipped, and a service built, integrated and deployed
to dev through the real asset graph on it. The history reads back from Postgres in a new instance, and a secret
the deployment used is nowhere in a pg_dump of the database."""

from __future__ import annotations

import base64
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

from resources import postgres_server

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SECRET_VARIABLE = "RG_TEST_PAYMENTS_API_KEY"
ENVIRONMENTS = f"""\
  dev:
    target: docker
    secrets: {{payments: {{PAYMENTS_API_KEY: {{env: {SECRET_VARIABLE}}}}}}}
"""
TEST_KEY_VARIABLE = "RG_TEST_PAYMENTS_TEST_KEY"
INTEGRATION = f"""\
integration:
  secrets: {{payments: {{PAYMENTS_API_KEY: {{env: {TEST_KEY_VARIABLE}}}}}}}
"""


@pytest.fixture(scope="module")
def postgres():
    """One private cluster for the module (a database per test); stopped and removed even when a test fails."""
    started = time.monotonic()
    with postgres_server.temporary("dagster") as server:
        print(f"\nprivate PostgreSQL ready in {time.monotonic() - started:.2f} s on port {server.port}")
        yield server


@contextmanager
def instance_on(server: postgres_server.PostgresServer, setup: str, database: str, home: Path, monkeypatch):
    """A DagsterInstance from deploy/<setup>/dagster.yaml in a DAGSTER_HOME of its own, on `database`."""
    server.create_database(database)
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEPLOY / setup / "dagster.yaml", home / "dagster.yaml")
    for name, value in server.env(database).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DAGSTER_DOCKER_NETWORK", "release-graph")
    monkeypatch.setenv("RELEASE_GRAPH_USER_CODE_IMAGE", "release-graph/user-code:dev")
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        yield instance
    finally:
        instance.dispose()


@pytest.mark.parametrize("setup", ["postgres", "docker"])
def test_each_deploy_instance_opens_on_a_real_postgres(postgres, setup, tmp_path, monkeypatch):
    with instance_on(postgres, setup, f"open_{setup}", tmp_path / "home", monkeypatch) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert type(instance.run_launcher).__name__ == ("DockerRunLauncher" if setup == "docker"
                                                        else "DefaultRunLauncher")
        assert instance.run_monitoring_enabled and instance.run_retries_enabled
        assert instance.run_retries_max_retries == 0 or not instance.run_retries_retry_on_asset_or_op_failure
        # the project's concurrency limits reach the coordinator
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == 4
        assert [(limit["key"], limit["value"], limit["limit"]) for limit in queue.tag_concurrency_limits] == [
            ("release/env", "prod", 1)
        ]
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        # and it stores a run
        run = instance.create_run_for_job(dg.GraphDefinition(name="probe").to_job(), run_id=None)
        assert instance.get_run_by_id(run.run_id).job_name == "probe"


def release_payments(world) -> float:
    """payments from its head commit through image, integration and dev, as the sensors would; seconds taken."""
    started = time.monotonic()
    world.release_from_head()
    return time.monotonic() - started


def key(*path: str) -> dg.AssetKey:
    return dg.AssetKey(list(path))


@pytest.mark.engine
def test_a_release_on_postgres_reads_back_and_keeps_secrets_out(postgres, release_world_factory, tmp_path,
                                                                  monkeypatch):
    secret = "pk-" + os.urandom(12).hex()
    monkeypatch.setenv(SECRET_VARIABLE, secret)
    monkeypatch.setenv(TEST_KEY_VARIABLE, "test-" + os.urandom(12).hex())
    with instance_on(postgres, "postgres", "release", tmp_path / "home", monkeypatch) as instance:
        # Given a world whose Dagster instance is the Postgres one from deploy/postgres/dagster.yaml
        world = release_world_factory(["payments"], environments=ENVIRONMENTS, extra_top=INTEGRATION, instance=instance)
        # When payments is released from its head commit to dev
        on_postgres = release_payments(world)
        image = world.latest(key("payments", "image"))
        dev = world.latest(key("payments", "dev"))
        assert dev.digest == image.digest
        assert world.latest(key("payments", "integration")).digest == image.digest

    # Then a new instance opened from the same configuration reads the same history back from Postgres
    with instance_on(postgres, "postgres", "release", tmp_path / "home", monkeypatch) as again:
        from release_graph.release import history

        assert history.latest(again, key("payments", "dev")).digest == image.digest
        assert history.latest(again, key("payments", "image")).git_sha == image.git_sha
        assert len(again.get_run_records()) >= 2

    # and the secret the deployment used is nowhere in the database (plain or base64)
    dump = postgres.dump("release")
    assert image.digest.encode() in dump  # the dump holds the history
    for needle in (secret.encode(), base64.b64encode(secret.encode()).rstrip(b"=")):
        assert needle not in dump
    running = world.target().running(world.fleet.name, "dev", "payments")
    assert running.digest == image.digest  # it was deployed with that secret

    # The same release on the default SQLite instance, for the figure (printed, not asserted: a shared machine)
    sqlite_world = release_world_factory(["payments"], environments=ENVIRONMENTS, extra_top=INTEGRATION)
    on_sqlite = release_payments(sqlite_world)
    print(f"\nrelease of payments (image, integration, dev): Postgres {on_postgres:.1f} s, SQLite {on_sqlite:.1f} s "
          "(one after the other on a shared machine: a figure, not a benchmark)")
