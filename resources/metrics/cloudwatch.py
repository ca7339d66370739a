"""CloudWatch as a source of a rollout's measurements, through boto3 (`rollout.analysis.cloudwatch`).

- Alarms (`alarms:`): `describe_alarms(AlarmNames=...)`. Any of them in ALARM is carried in the measurement's
  `alarms`, which fails the analysis whatever the numbers say. A named alarm that does not exist is
  MetricsUnavailable: a misspelt name must not pass as "no alarm".
- Metrics (`namespace:`): one `get_metric_data` call over the window for the version's requests
  (`RequestCount`, Sum), 5xx answers (`HTTPCode_5XX_Count`, Sum) and latency (`Latency` in milliseconds, p95),
  each with the dimensions Service, Environment and Version (the digest): what an application or its load
  balancer publishes per version with `put_metric_data`.

The endpoint is the manifest's `endpoint_url`, else $RELEASE_GRAPH_AWS_ENDPOINT_URL (a moto_server in tests and
demos), else AWS itself. The client is made on first use, never at import or construction.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

from release_graph.fleet.model import CloudWatchSettings
from resources.metrics.interface import Measurement, MetricProvider, MetricsUnavailable, Subject, Window

REQUESTS_METRIC = "RequestCount"
ERRORS_METRIC = "HTTPCode_5XX_Count"
LATENCY_METRIC = "Latency"  # milliseconds
# Standard-resolution metrics aggregate per minute: a window shorter than that is one period.
PERIOD_SECONDS = 60
ALARM_NAMES_PER_CALL = 100  # describe_alarms takes at most 100 names


def version_dimensions(subject: Subject) -> list[dict[str, str]]:
    """The dimensions that name one version of one service in one environment."""
    return [{"Name": "Service", "Value": subject.service}, {"Name": "Environment", "Value": subject.environment},
            {"Name": "Version", "Value": subject.digest}]


class CloudWatchMetrics(MetricProvider):
    """Alarms in ALARM, and requests, 5xx answers and p95 latency of one version, from CloudWatch."""

    name = "cloudwatch"

    def __init__(self, settings: CloudWatchSettings, *, timeout_seconds: float = 5.0) -> None:
        self.settings = settings
        self.timeout_seconds = timeout_seconds
        self._client: Any = None

    @property
    def endpoint_url(self) -> str | None:
        return self.settings.resolved_endpoint_url()

    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            # Fail within seconds: an analysis counts an unreachable source as an Error and moves on.
            config = Config(connect_timeout=self.timeout_seconds, read_timeout=self.timeout_seconds,
                            retries={"max_attempts": 2, "mode": "standard"})
            self._client = boto3.client("cloudwatch", region_name=self.settings.region,
                                        endpoint_url=self.endpoint_url, config=config)
        return self._client

    def measure(self, window: Window) -> Measurement:
        now = time.time()
        alarms = self.alarms_in_alarm() if self.settings.alarms else ()
        requests = errors = p95_ms = None
        if self.settings.namespace:
            requests, errors, p95_ms = self._version_metrics(window, now)
        return Measurement(provider=self.name, requests=requests, errors=errors, p95_ms=p95_ms, alarms=alarms,
                           seconds=round(max(0.0, now - window.opened_at), 1))

    def alarms_in_alarm(self) -> tuple[str, ...]:
        """The configured alarms now in ALARM, in the manifest's order."""
        names = list(dict.fromkeys(self.settings.alarms))
        where = self._where(f"describe_alarms for {', '.join(names)}")
        states: dict[str, str] = {}
        for first in range(0, len(names), ALARM_NAMES_PER_CALL):
            kwargs: dict[str, Any] = {"AlarmNames": names[first:first + ALARM_NAMES_PER_CALL],
                                      "AlarmTypes": ["CompositeAlarm", "MetricAlarm"]}
            while True:
                page = self._call(where, "describe_alarms", **kwargs)
                for alarm in [*page.get("MetricAlarms", []), *page.get("CompositeAlarms", [])]:
                    states[alarm["AlarmName"]] = alarm.get("StateValue", "")
                if not page.get("NextToken"):
                    break
                kwargs["NextToken"] = page["NextToken"]
        missing = [name for name in names if name not in states]
        if missing:
            raise MetricsUnavailable(f"{where}: no alarm named {', '.join(missing)}")
        return tuple(name for name in names if states[name] == "ALARM")

    def _version_metrics(self, window: Window, now: float) -> tuple[int, int, float | None]:
        subject, namespace = window.subject, self.settings.namespace
        where = self._where(f"get_metric_data in namespace {namespace} for {subject.service} {subject.digest} "
                            f"in {subject.environment}")

        def query(query_id: str, metric: str, stat: str) -> dict[str, Any]:
            return {"Id": query_id, "ReturnData": True, "MetricStat": {
                "Metric": {"Namespace": namespace, "MetricName": metric, "Dimensions": version_dimensions(subject)},
                "Period": PERIOD_SECONDS, "Stat": stat}}

        kwargs: dict[str, Any] = {
            "MetricDataQueries": [query("requests", REQUESTS_METRIC, "Sum"), query("errors", ERRORS_METRIC, "Sum"),
                                  query("p95", LATENCY_METRIC, "p95")],
            # Whole seconds, the end one past now: the API takes [StartTime, EndTime).
            "StartTime": datetime.fromtimestamp(math.floor(window.opened_at), UTC),
            "EndTime": datetime.fromtimestamp(math.ceil(now) + 1, UTC),
            "ScanBy": "TimestampAscending",
        }
        values: dict[str, list[float]] = {"requests": [], "errors": [], "p95": []}
        while True:
            page = self._call(where, "get_metric_data", **kwargs)
            for result in page.get("MetricDataResults", []):
                if result.get("StatusCode") in ("InternalError", "Forbidden"):
                    detail = "; ".join(m.get("Value", "") for m in result.get("Messages", []))
                    raise MetricsUnavailable(f"{where}: {result['Id']} {result['StatusCode']}: {detail}")
                # A percentile over a period without samples has no value; skip anything that is no number.
                values[result["Id"]] += [v for v in result.get("Values", []) if isinstance(v, int | float)]
            if not page.get("NextToken"):
                break
            kwargs["NextToken"] = page["NextToken"]
        # No datapoints: the version reported no traffic in the window (Inconclusive), not an error.
        # Several periods: counts add up; the p95 taken is the worst period's (a percentile cannot be summed).
        p95 = max(values["p95"]) if values["p95"] else None
        return round(sum(values["requests"])), round(sum(values["errors"])), p95

    def _where(self, what: str) -> str:
        return f"CloudWatch in {self.settings.region} at {self.endpoint_url or 'AWS'}: {what}"

    def _call(self, where: str, operation: str, **kwargs: Any) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client(), operation)(**kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise MetricsUnavailable(f"{where}: {error.get('Code', 'error')}: {error.get('Message', exc)}") from None
        except BotoCoreError as exc:  # unreachable endpoint, timeout, no credentials
            raise MetricsUnavailable(f"{where}: {exc}") from None
