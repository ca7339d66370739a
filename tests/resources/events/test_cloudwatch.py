"""Release metrics on a real moto_server (CloudWatch's API on loopback): each event's data points are put once
with the dimensions Fleet, Service and Environment at the event's own time, and get_metric_data reads back
exactly their sums. An endpoint that does not answer is SinkUnavailable naming the namespace and region."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import boto3
import pytest

from release_graph.fleet.model import AWS_ENDPOINT_URL_VARIABLE, ReleaseMetricsSettings
from resources.events import ServiceEvent, SinkUnavailable
from resources.events.cloudwatch import ReleaseMetrics, dimensions, metric_data

REGION = "eu-west-1"
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def cloudwatch(moto_server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv(AWS_ENDPOINT_URL_VARIABLE, raising=False)
    return boto3.client("cloudwatch", region_name=REGION, endpoint_url=moto_server)


def event(kind: str, at: float, **changes) -> ServiceEvent:
    values = {"kind": kind, "fleet": "shop", "service": "orders", "environment": "prod", "at": at,
              "key": f"{kind}|{at}", "repository": "127.0.0.1:5000/shop/orders", "digest": DIGEST}
    return ServiceEvent(**{**values, **changes})


def sums(client, namespace: str, start: float, end: float, environment: str = "prod") -> dict[str, float]:
    """Every release metric's sum over [start, end) for orders in `environment`, as CloudWatch answers."""
    names = ("Deployments", "DeploymentFailures", "Rollbacks", "LeadTimeSeconds")
    answer = client.get_metric_data(
        MetricDataQueries=[{"Id": name.lower(), "ReturnData": True, "MetricStat": {
            "Metric": {"Namespace": namespace, "MetricName": name,
                       "Dimensions": dimensions("shop", "orders", environment)},
            "Period": 60, "Stat": "Sum"}} for name in names],
        StartTime=datetime.fromtimestamp(start, UTC), EndTime=datetime.fromtimestamp(end, UTC))
    found = {r["Id"]: sum(r["Values"]) for r in answer["MetricDataResults"]}
    return {name: found[name.lower()] for name in names}


def test_each_events_points_are_put_at_its_time_and_read_back_as_exact_sums(cloudwatch, moto_server, run_id):
    namespace = f"{run_id}/ReleaseGraph"
    sink = ReleaseMetrics(ReleaseMetricsSettings(namespace=namespace, region=REGION, endpoint_url=moto_server))
    t0 = float(int(time.time())) - 600
    sent = [sink.send(e) for e in (
        event("deployed", t0, deployment=True, lead_time_seconds=7200.0),
        event("upgraded", t0 + 60, deployment=True, lead_time_seconds=1800.5),
        event("failed", t0 + 120, digest=""),
        event("rolledback", t0 + 180, deployment=True),  # by hand: a deployment and a rollback
        event("rolledback", t0 + 240),  # by a rollout's analysis: a rollback, no deployment
        event("removed", t0 + 300),  # nothing to count
        event("deployed", t0 + 300, environment="dev", deployment=True, lead_time_seconds=60.0),
    )]
    assert sent == [True] * 5 + [False, True]
    assert sums(cloudwatch, namespace, t0 - 60, t0 + 600) == {
        "Deployments": 3, "DeploymentFailures": 1, "Rollbacks": 2, "LeadTimeSeconds": 9000.5}
    assert sums(cloudwatch, namespace, t0 - 60, t0 + 600, environment="dev") == {
        "Deployments": 1, "DeploymentFailures": 0, "Rollbacks": 0, "LeadTimeSeconds": 60.0}
    # at the event's own time: only the first deployment lies in the first minute
    assert sums(cloudwatch, namespace, t0, t0 + 60)["Deployments"] == 1


def test_a_rollback_takes_no_lead_time_and_a_removal_no_points():
    assert [p["MetricName"] for p in metric_data(event("rolledback", 0.0, deployment=True,
                                                       lead_time_seconds=5.0))] == ["Deployments", "Rollbacks"]
    assert metric_data(event("removed", 0.0)) == []


def test_an_endpoint_that_does_not_answer_is_unavailable(free_port, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    sink = ReleaseMetrics(ReleaseMetricsSettings(region=REGION, endpoint_url=f"http://127.0.0.1:{free_port}"),
                          timeout_seconds=1)
    with pytest.raises(SinkUnavailable, match=rf"sink cloudwatch \(namespace ReleaseGraph in {REGION} at "
                       rf"http://127.0.0.1:{free_port}\): EndpointConnectionError"):
        sink.send(event("deployed", time.time(), deployment=True))
