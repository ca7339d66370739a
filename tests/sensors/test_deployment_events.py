"""Deployment events on the sensor daemon's own loop: a code server runs the story's definitions, and each tick is
Dagster's `execute_sensor_iteration`, which keeps the sensor's cursor, ticks and logs in the instance's storage
as `dagster-daemon run` does.

Given orders released through dev and prod (first deployments, an upgrade, a prod deployment that fails, the
upgrade to prod, a rollback by hand, dev torn down), when the sensor ticks, then CloudWatch (a real
moto_server) holds exactly the expected sums per environment, and the CDEvents sink (an HTTP receiver on
loopback, down at first) receives each of the six CDEvents once, in order, valid against its schema, once it
answers; nothing is sent twice however many ticks follow and across a restart of the daemon, no tick fails,
and the sink's token is nowhere in the instance's storage. A second story, on the sensor alone: releases before
its first tick are no news, and an event the sink refuses (a 400) is logged and never sent again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import boto3
import dagster as dg
import jsonschema
import pytest
from dagster._core.instance.ref import InstanceRef
from dagster._core.scheduler.instigation import TickStatus
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
from dagster._core.workspace.load_target import PythonFileTarget
from dagster._daemon.sensor import execute_sensor_iteration

from release_graph.fleet import load_fleet
from release_graph.release import metadata as M
from release_graph.release.errors import ReleaseStepError
from resources.events.cloudwatch import dimensions
from sensors.deployment_events import SENSOR_NAME

REGION = "eu-west-1"
SCHEMAS = Path(__file__).parents[1] / "resources" / "events" / "schemas"
A, B = "sha256:" + "a1" * 32, "sha256:" + "b2" * 32

FLEET = """\
fleet: {fleet}
registry: 127.0.0.1:5000/{fleet}
services:
  orders: {{repo: repos/orders, build: {{dockerfile: Dockerfile}}}}
environments:
  dev: {{target: docker}}
  prod: {{target: docker, approval: required}}
events:
  cdevents: {{sink_url_env: RG_TEST_CDEVENTS_URL}}
  cloudwatch: {{namespace: "{namespace}", region: {region}, endpoint_url: "{endpoint}"}}
"""

DEFINITIONS = """\
from pathlib import Path

import dagster as dg

from release_graph.fleet import load_fleet
from resources.events import EventSinks
from sensors.deployment_events import build_deployment_events_sensor

# The deployment events sensor alone, ticking every second: the daemon would otherwise also tick the fleet's git
# and drift sensors, and a story cannot wait 30 s between ticks.
fleet = load_fleet(Path(__file__).parent / "fleet.yaml")
defs = dg.Definitions(sensors=[build_deployment_events_sensor(fleet, minimum_interval_seconds=1)],
                      resources={"event_sinks": EventSinks(timeout_seconds=2)})
"""


class Daemon:
    """The sensor daemon over a fresh instance on `home`'s storage; leaving the block stops it."""

    def __init__(self, home: Path, definitions: Path):
        self.home, self.definitions = home, definitions

    def __enter__(self) -> Daemon:
        self.stack = contextlib.ExitStack()
        self.instance = self.stack.enter_context(dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(self.home))))
        target = PythonFileTarget(python_file=str(self.definitions), attribute="defs",
                                  working_directory=str(self.definitions.parent), location_name="fleet")
        self.context = self.stack.enter_context(create_test_daemon_workspace_context(target, self.instance))
        self.last = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()

    def tick(self) -> float:
        """One iteration of the sensor daemon; returns how long it took."""
        time.sleep(max(0.0, self.last + 1.1 - time.time()))  # the sensor's minimum interval
        started = time.time()
        list(execute_sensor_iteration(self.context, logging.getLogger("sensor-daemon"), None, None))
        self.last = time.time()
        return self.last - started

    def ticks(self) -> list:
        repository = next(iter(self.context.create_request_context().get_code_location("fleet")
                               .get_repositories().values()))
        sensor = repository.get_sensor(SENSOR_NAME)
        return list(self.instance.get_ticks(sensor.get_remote_origin_id(), sensor.selector_id))


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def release(instance, environment: str, at: float, *, metadata=None, failure: str | None = None) -> None:
    """A real run of orders/<environment> at `at` that records what the deploy step records (or fails as it does)."""
    key = dg.AssetKey(["orders", environment])

    @dg.asset(key=key)
    def deployment():
        if failure:
            raise ReleaseStepError(f"service 'orders', environment '{environment}': {failure}")
        return dg.MaterializeResult(metadata=metadata)

    with freeze_time(at):
        result = dg.Definitions(assets=[deployment]).resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, raise_on_error=False, tags={"release/service": "orders"})
    assert result.success == (failure is None)


def image(instance, digest: str, at: float, committed_at: float) -> None:
    with freeze_time(at):
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=["orders", "image"], metadata={M.DIGEST: digest, M.COMMITTED_AT: iso(committed_at)}))


def record_the_release(instance, t0: float) -> None:
    image(instance, A, t0 + 1, committed_at=t0 - 7200)
    release(instance, "dev", t0 + 10, metadata={M.DIGEST: A, M.CHANGED: True})         # deployed (7210 s)
    release(instance, "prod", t0 + 20, metadata={M.DIGEST: A, M.CHANGED: True})        # deployed (7220 s)
    image(instance, B, t0 + 25, committed_at=t0 - 3600)
    release(instance, "dev", t0 + 30, metadata={M.DIGEST: B, M.CHANGED: True})         # upgraded (3630 s)
    release(instance, "prod", t0 + 40, failure="new container not healthy")            # failed
    release(instance, "prod", t0 + 50, metadata={M.DIGEST: B, M.CHANGED: True})        # upgraded (3650 s)
    release(instance, "prod", t0 + 60, metadata={M.DIGEST: A, M.CHANGED: True,          # rolled back by hand
                                                 M.ROLLED_BACK_FROM: B})
    with freeze_time(t0 + 70):                                                         # dev torn down
        instance.report_runless_asset_event(dg.AssetObservation(asset_key=["orders", "dev"],
                                                                metadata={"event": M.REMOVED_EVENT}))


EXPECTED_CDEVENTS = [("deployed", "dev", A), ("deployed", "prod", A), ("upgraded", "dev", B),
                     ("upgraded", "prod", B), ("rolledback", "prod", A), ("removed", "dev", None)]
EXPECTED_SUMS = {
    "dev": {"Deployments": 2, "DeploymentFailures": 0, "Rollbacks": 0, "LeadTimeSeconds": 7210 + 3630},
    "prod": {"Deployments": 3, "DeploymentFailures": 1, "Rollbacks": 1, "LeadTimeSeconds": 7220 + 3650},
}


@pytest.fixture
def cloudwatch(moto_server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return boto3.client("cloudwatch", region_name=REGION, endpoint_url=moto_server)


def metric_sums(client, fleet: str, namespace: str, start: float, end: float) -> dict[str, dict[str, float]]:
    names = ("Deployments", "DeploymentFailures", "Rollbacks", "LeadTimeSeconds")
    found = {}
    for environment in ("dev", "prod"):
        answer = client.get_metric_data(
            MetricDataQueries=[{"Id": name.lower(), "ReturnData": True, "MetricStat": {
                "Metric": {"Namespace": namespace, "MetricName": name,
                           "Dimensions": dimensions(fleet, "orders", environment)},
                "Period": 60, "Stat": "Sum"}} for name in names],
            StartTime=datetime.fromtimestamp(start, UTC), EndTime=datetime.fromtimestamp(end, UTC))
        sums = {r["Id"]: sum(r["Values"]) for r in answer["MetricDataResults"]}
        found[environment] = {name: sums[name.lower()] for name in names}
    return found


def files_holding(home: Path, *values: str) -> list[str]:
    return [str(path) for path in home.rglob("*") if path.is_file()
            and any(value.encode() in path.read_bytes() for value in values)]


def test_a_release_through_dev_and_prod_reaches_cloudwatch_and_a_sink_that_was_down_exactly_once(
        tmp_path, cloudwatch, moto_server, http_receiver, monkeypatch, run_id):
    fleet_name, namespace = f"{run_id}e", f"{run_id}/ReleaseGraph"
    (tmp_path / "repos" / "orders").mkdir(parents=True)
    (tmp_path / "repos" / "orders" / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "definitions.py").write_text(DEFINITIONS)
    (tmp_path / "fleet.yaml").write_text(textwrap.dedent(FLEET.format(
        fleet=fleet_name, namespace=namespace, region=REGION, endpoint=moto_server)))
    assert load_fleet(tmp_path / "fleet.yaml").events is not None
    home, definitions = tmp_path / "dagster_home", tmp_path / "definitions.py"
    home.mkdir()
    sink, token = http_receiver(status=202), secrets.token_hex(12)  # the sink is down at first
    monkeypatch.setenv("RG_TEST_CDEVENTS_URL", f"{sink.url}/cdevents/{token}")

    with dg.instance_for_test(temp_dir=str(home)) as instance, Daemon(home, definitions) as daemon:
        daemon.tick()  # the sensor's first tick: nothing has happened since
        t0 = float(int(time.time())) + 2

        # Given orders released through dev and prod
        record_the_release(instance, t0)

        # when the sensor ticks with the CDEvents sink down, then CloudWatch has every event, once
        tick_seconds = daemon.tick()
        daemon.tick()
        assert metric_sums(cloudwatch, fleet_name, namespace, t0 - 60, t0 + 600) == EXPECTED_SUMS
        assert not sink.received

        # once the sink answers, the next tick delivers every CDEvent to it, once and in order
        sink.start()
        up = time.time()
        daemon.tick()
        delivered_after = sink.received[-1]["at"] - up if sink.received else None
        daemon.tick()
        assert len(sink.received) == len(EXPECTED_CDEVENTS)
        assert {t.status for t in daemon.ticks()} == {TickStatus.SKIPPED}, [t.error for t in daemon.ticks()]

    # Given the daemon restarted (a fresh instance on the same storage, a new code server)
    with Daemon(home, definitions) as daemon:
        daemon.tick()
        daemon.tick()
    # then nothing is sent again
    assert len(sink.received) == len(EXPECTED_CDEVENTS)
    assert metric_sums(cloudwatch, fleet_name, namespace, t0 - 60, t0 + 600) == EXPECTED_SUMS

    # Each CDEvent is a structured CloudEvent whose data is valid against its type's schema
    found = []
    for message in sink.received:
        assert message["path"] == f"/cdevents/{token}"
        cloud_event = json.loads(message["body"])
        data = cloud_event["data"]
        kind = data["context"]["type"].split(".")[3]
        jsonschema.validate(data, json.loads((SCHEMAS / f"service-{kind}.json").read_text()))
        assert cloud_event["id"] == data["context"]["id"]
        assert data["context"]["source"] == f"/release-graph/{fleet_name}"
        content = data["subject"]["content"]
        digest = content["artifactId"].split("@")[1].split("?")[0] if "artifactId" in content else None
        found.append((kind, content["environment"]["id"], digest))
        if digest:
            assert content["artifactId"] == (f"pkg:oci/orders@{digest}?repository_url=127.0.0.1:5000/{fleet_name}/"
                                             "orders")
    assert found == EXPECTED_CDEVENTS
    assert len({json.loads(m["body"])["id"] for m in sink.received}) == len(EXPECTED_CDEVENTS)

    # The sink's token is nowhere in the instance's storage, whose logs do say what waited
    assert files_holding(home, token) == []
    assert files_holding(home, "not delivered: deployed of orders/dev")
    print(f"\none tick reading the history and putting 7 events to CloudWatch: {tick_seconds:.2f} s; the sink "
          f"received its last CDEvent {delivered_after:.2f} s after it came back (the next tick)")


def test_releases_before_the_first_tick_are_not_news_and_an_event_the_sink_refuses_is_not_sent_again(
        tmp_path, http_receiver, monkeypatch, run_id):
    from resources.events import EventSinks
    from sensors.deployment_events import build_deployment_events_sensor

    sink = http_receiver(status=400).start()  # a sink that refuses what it is sent (a 4xx: never)
    monkeypatch.setenv("RG_TEST_CDEVENTS_URL", f"{sink.url}/cdevents")
    (tmp_path / "repos" / "orders").mkdir(parents=True)
    (tmp_path / "repos" / "orders" / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "fleet.yaml").write_text(textwrap.dedent(FLEET.format(
        fleet=f"{run_id}r", namespace="unused", region=REGION, endpoint="http://127.0.0.1:9")).replace(
        "  cloudwatch:", "  # cloudwatch:"))
    fleet = load_fleet(tmp_path / "fleet.yaml")
    assert fleet.events.cloudwatch is None
    sensor = build_deployment_events_sensor(fleet)
    resources = {"event_sinks": EventSinks(timeout_seconds=2)}

    def tick(instance, cursor):
        return sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))

    with dg.instance_for_test() as instance:
        # Given orders deployed to dev before the sensor ever ran
        t0 = float(int(time.time())) - 600
        image(instance, A, t0, committed_at=t0 - 60)
        release(instance, "dev", t0 + 10, metadata={M.DIGEST: A, M.CHANGED: True})
        # when it first ticks, that is no news
        first = tick(instance, None)
        assert first.skip_reason.skip_message == "nothing new to send" and not sink.received
        # Given an upgrade after that, which the sink refuses
        t1 = float(int(time.time())) + 1
        image(instance, B, t1, committed_at=t1 - 60)
        release(instance, "dev", t1 + 1, metadata={M.DIGEST: B, M.CHANGED: True})
        second = tick(instance, first.cursor)
        assert second.skip_reason.skip_message == "sent nothing; 1 refused for good (see the log)"
        # then it is not sent again
        third = tick(instance, second.cursor)
        assert third.skip_reason.skip_message == "nothing new to send"
    assert len(sink.received) == 1
    assert json.loads(sink.received[0]["body"])["type"] == "dev.cdevents.service.upgraded.0.2.0"
