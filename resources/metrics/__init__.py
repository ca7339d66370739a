"""Metric providers for a rollout's analysis: one small interface (`interface.py`), one adapter per source."""

from resources.metrics.cloudwatch import CloudWatchMetrics
from resources.metrics.interface import (
    Measurement,
    MetricProvider,
    MetricsUnavailable,
    Subject,
    Window,
)
from resources.metrics.prometheus import PrometheusMetrics, ScrapeTarget, ScrapeTargets
from resources.metrics.prometheus_server import PrometheusServer

__all__ = [
    "CloudWatchMetrics",
    "Measurement",
    "MetricProvider",
    "MetricsUnavailable",
    "PrometheusMetrics",
    "PrometheusServer",
    "ScrapeTarget",
    "ScrapeTargets",
    "Subject",
    "Window",
]
