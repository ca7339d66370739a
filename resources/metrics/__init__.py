"""Metric providers for a rollout's analysis: one small interface (`interface.py`), one adapter per source.

`prometheus_server.py` (the Prometheus process release-graph runs) is not imported here: it is also a command,
`python -m resources.metrics.prometheus_server`, and a package that imports it would import it twice.
"""

from resources.metrics.cloudwatch import CloudWatchMetrics
from resources.metrics.interface import (
    Measurement,
    MetricProvider,
    MetricsUnavailable,
    Subject,
    Window,
)
from resources.metrics.prometheus import PrometheusMetrics, ScrapeTarget, ScrapeTargets

__all__ = [
    "CloudWatchMetrics",
    "Measurement",
    "MetricProvider",
    "MetricsUnavailable",
    "PrometheusMetrics",
    "ScrapeTarget",
    "ScrapeTargets",
    "Subject",
    "Window",
]
