"""The CloudWatch provider against a real moto_server (AWS's CloudWatch API on loopback).

Given alarms and per-version metrics in CloudWatch, the provider reports the configured alarms that are in
ALARM and the requests and 5xx answers one version published during the window, apart from other versions';
an alarm that does not exist and an endpoint that does not answer are MetricsUnavailable naming the alarm
or namespace and the region. moto never evaluates alarms (tests set their state) and computes no
percentiles, so the p95 is only seen empty here.
"""

from __future__ import annotations

import time

import boto3
import pytest

from release_graph.fleet.model import AWS_ENDPOINT_URL_VARIABLE, CloudWatchSettings
from resources.metrics import CloudWatchMetrics, MetricsUnavailable, Subject, Window
from resources.metrics.cloudwatch import ERRORS_METRIC, REQUESTS_METRIC, version_dimensions

REGION = "eu-west-1"
CANDIDATE = "sha256:" + "b" * 64
STABLE = "sha256:" + "a" * 64


@pytest.fixture
def cloudwatch(moto_server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv(AWS_ENDPOINT_URL_VARIABLE, raising=False)
    return boto3.client("cloudwatch", region_name=REGION, endpoint_url=moto_server)


def alarm(client, name: str, state: str) -> None:
    client.put_metric_alarm(AlarmName=name, Namespace="shop", MetricName=ERRORS_METRIC, Statistic="Sum", Period=60,
                            EvaluationPeriods=1, Threshold=5, ComparisonOperator="GreaterThanThreshold")
    client.set_alarm_state(AlarmName=name, StateValue=state, StateReason="set by the test")


def test_an_alarm_in_alarm_is_carried_in_the_measurement(cloudwatch, moto_server, run_id):
    alarm(cloudwatch, f"{run_id}-orders-5xx", "ALARM")
    alarm(cloudwatch, f"{run_id}-orders-latency", "OK")
    alarm(cloudwatch, f"{run_id}-orders-saturation", "INSUFFICIENT_DATA")
    names = (f"{run_id}-orders-latency", f"{run_id}-orders-5xx", f"{run_id}-orders-saturation")
    provider = CloudWatchMetrics(CloudWatchSettings(region=REGION, endpoint_url=moto_server, alarms=names))

    firing = provider.measure(provider.open_window(Subject(run_id, "prod", "orders", CANDIDATE)))
    alarm(cloudwatch, f"{run_id}-orders-5xx", "OK")
    quiet = provider.measure(provider.open_window(Subject(run_id, "prod", "orders", CANDIDATE)))

    assert firing.alarms == (f"{run_id}-orders-5xx",)
    assert firing.as_metadata() == {"alarms": f"{run_id}-orders-5xx"}  # no namespace: no numbers
    assert quiet.alarms == () and quiet.requests is None and quiet.provider == "cloudwatch"


def test_the_versions_requests_and_errors_come_from_its_metrics(cloudwatch, moto_server, run_id):
    namespace = f"{run_id}/shop"
    candidate = Subject(run_id, "prod", "orders", CANDIDATE)
    provider = CloudWatchMetrics(CloudWatchSettings(region=REGION, endpoint_url=moto_server, namespace=namespace))
    window = provider.open_window(candidate)

    for requests, errors in ((120, 6), (80, 4)):
        cloudwatch.put_metric_data(Namespace=namespace, MetricData=[
            {"MetricName": REQUESTS_METRIC, "Dimensions": version_dimensions(candidate), "Value": requests,
             "Unit": "Count"},
            {"MetricName": ERRORS_METRIC, "Dimensions": version_dimensions(candidate), "Value": errors,
             "Unit": "Count"},
        ])
    cloudwatch.put_metric_data(Namespace=namespace, MetricData=[  # the version that served before
        {"MetricName": REQUESTS_METRIC, "Dimensions": version_dimensions(Subject(run_id, "prod", "orders", STABLE)),
         "Value": 1000, "Unit": "Count"}])
    started = time.monotonic()
    measurement = provider.measure(window)
    seconds = time.monotonic() - started

    print(f"get_metric_data against moto_server: {seconds * 1000:.0f} ms")
    assert (measurement.requests, measurement.errors, measurement.error_rate) == (200, 10, 0.05)
    assert measurement.p95_ms is None  # moto computes no percentiles; no latency was published either
    assert measurement.alarms == ()


def test_a_window_without_datapoints_has_no_requests(cloudwatch, moto_server, run_id):
    provider = CloudWatchMetrics(CloudWatchSettings(region=REGION, endpoint_url=moto_server,
                                                    namespace=f"{run_id}/quiet"))

    # A service no test published for: moto matches metrics by dimensions alone once any are given, whatever
    # the namespace, so the other tests' "orders" datapoints would count here.
    quiet = Subject(run_id, "prod", "quiet", CANDIDATE)
    measurement = provider.measure(Window(quiet, opened_at=time.time() - 30))

    assert (measurement.requests, measurement.errors, measurement.error_rate) == (0, 0, None)


def test_an_alarm_that_does_not_exist_is_unavailable_not_quiet(cloudwatch, moto_server, run_id):
    alarm(cloudwatch, f"{run_id}-known", "OK")
    settings = CloudWatchSettings(region=REGION, endpoint_url=moto_server, alarms=(f"{run_id}-known", f"{run_id}-typo"))

    with pytest.raises(MetricsUnavailable) as caught:
        CloudWatchMetrics(settings).measure(Window(Subject(run_id, "prod", "orders", CANDIDATE)))

    assert str(caught.value) == (f"CloudWatch in {REGION} at {moto_server}: describe_alarms for {run_id}-known, "
                                 f"{run_id}-typo: no alarm named {run_id}-typo")


def test_an_endpoint_that_does_not_answer_is_unavailable_naming_the_alarm_and_region(cloudwatch, free_port, run_id):
    wrong = f"http://127.0.0.1:{free_port}"
    provider = CloudWatchMetrics(CloudWatchSettings(region=REGION, endpoint_url=wrong,
                                                    alarms=(f"{run_id}-orders-5xx",), namespace="shop"))

    started = time.monotonic()
    with pytest.raises(MetricsUnavailable) as caught:
        provider.measure(Window(Subject(run_id, "prod", "orders", CANDIDATE)))

    assert time.monotonic() - started < 10
    assert str(caught.value).startswith(f"CloudWatch in {REGION} at {wrong}: describe_alarms for {run_id}-orders-5xx: "
                                        f"Could not connect to the endpoint URL")


def test_a_namespace_query_the_service_refuses_is_unavailable_naming_the_namespace(cloudwatch, moto_server, run_id):
    provider = CloudWatchMetrics(CloudWatchSettings(region=REGION, endpoint_url=moto_server, namespace="shop"))
    # EndTime before StartTime: CloudWatch (and moto) refuse the query with a ValidationError.
    window = Window(Subject(run_id, "prod", "orders", CANDIDATE), opened_at=time.time() + 3600)

    with pytest.raises(MetricsUnavailable) as caught:
        provider.measure(window)

    assert str(caught.value).startswith(f"CloudWatch in {REGION} at {moto_server}: get_metric_data in namespace "
                                        f"shop for orders {CANDIDATE} in prod: ")
    assert "EndTime" in str(caught.value)


def test_the_endpoint_is_the_manifests_else_the_environments_else_aws(cloudwatch, moto_server, monkeypatch, run_id):
    alarm(cloudwatch, f"{run_id}-env", "ALARM")
    monkeypatch.setenv(AWS_ENDPOINT_URL_VARIABLE, moto_server)
    provider = CloudWatchMetrics(CloudWatchSettings(region=REGION, alarms=(f"{run_id}-env",)))

    assert provider.endpoint_url == moto_server
    assert provider.measure(Window(Subject(run_id, "prod", "orders", CANDIDATE))).alarms == (f"{run_id}-env",)
    assert CloudWatchMetrics(CloudWatchSettings(endpoint_url="http://10.0.0.1:4566")).endpoint_url == \
        "http://10.0.0.1:4566"
    monkeypatch.delenv(AWS_ENDPOINT_URL_VARIABLE)
    assert CloudWatchMetrics(CloudWatchSettings()).endpoint_url is None
