"""Release metrics in CloudWatch: one `put_metric_data` per deployment event, in the manifest's namespace
(default `ReleaseGraph`), with the dimensions Fleet, Service and Environment and the event's own time.

- Deployments (Count, 1): a deployment that changed what runs (deployed, upgraded, rolled back by hand);
- DeploymentFailures (Count, 1): a deploy step that failed for good (a canary the analysis rolled back too);
- Rollbacks (Count, 1): a rollback, by hand or by a rollout's analysis;
- LeadTimeSeconds (Seconds): commit -> running there, for a deployment moving forward (deployed, upgraded).

One call per event, so an event is either wholly recorded or not at all (the sensor remembers it only when the
call succeeded). A removal records nothing. The endpoint is the manifest's `endpoint_url`, else
$RELEASE_GRAPH_AWS_ENDPOINT_URL (moto_server in tests), else AWS; credentials come from boto3's usual chain.
The client is made on first use, never at import or construction.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from release_graph.fleet.model import ReleaseMetricsSettings
from resources.events.interface import DEPLOYED, FAILED, ROLLED_BACK, UPGRADED, ServiceEvent, SinkUnavailable

DEPLOYMENTS, DEPLOYMENT_FAILURES, ROLLBACKS, LEAD_TIME = (
    "Deployments", "DeploymentFailures", "Rollbacks", "LeadTimeSeconds")


def dimensions(fleet: str, service: str, environment: str) -> list[dict[str, str]]:
    return [{"Name": "Fleet", "Value": fleet}, {"Name": "Service", "Value": service},
            {"Name": "Environment", "Value": environment}]


def metric_data(event: ServiceEvent) -> list[dict[str, Any]]:
    """The data points of one event (none for a removal)."""
    at = datetime.fromtimestamp(event.at, UTC)
    where = dimensions(event.fleet, event.service, event.environment)

    def point(name: str, value: float, unit: str) -> dict[str, Any]:
        return {"MetricName": name, "Dimensions": where, "Timestamp": at, "Value": value, "Unit": unit}

    points = []
    if event.deployment:
        points.append(point(DEPLOYMENTS, 1, "Count"))
    if event.kind == FAILED:
        points.append(point(DEPLOYMENT_FAILURES, 1, "Count"))
    if event.kind == ROLLED_BACK:
        points.append(point(ROLLBACKS, 1, "Count"))
    if event.kind in (DEPLOYED, UPGRADED) and event.lead_time_seconds is not None:
        points.append(point(LEAD_TIME, round(event.lead_time_seconds, 3), "Seconds"))
    return points


class ReleaseMetrics:
    """Puts each event's data points; built from the manifest's `events.cloudwatch`."""

    def __init__(self, settings: ReleaseMetricsSettings, *, timeout_seconds: float = 5.0) -> None:
        self.settings = settings
        self.timeout_seconds = timeout_seconds
        self._client: Any = None

    def describe(self) -> str:
        endpoint = self.settings.resolved_endpoint_url() or "AWS"
        return f"cloudwatch (namespace {self.settings.namespace} in {self.settings.region} at {endpoint})"

    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            # Fail within seconds: the sensor tries the same event again at its next tick.
            config = Config(connect_timeout=self.timeout_seconds, read_timeout=self.timeout_seconds,
                            retries={"max_attempts": 1, "mode": "standard"})
            self._client = boto3.client("cloudwatch", region_name=self.settings.region,
                                        endpoint_url=self.settings.resolved_endpoint_url(), config=config)
        return self._client

    def send(self, event: ServiceEvent) -> bool:
        """Record one event's data points; False when it has none. Raises SinkUnavailable."""
        points = metric_data(event)
        if not points:
            return False
        try:
            self.client().put_metric_data(Namespace=self.settings.namespace, MetricData=points)
        except Exception as exc:  # botocore raises many kinds; each means these points were not recorded
            raise SinkUnavailable(f"sink {self.describe()}: {type(exc).__name__}: {exc}") from None
        return True
