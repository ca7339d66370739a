"""Metric providers for a rollout's analysis: one small interface (`interface.py`), one adapter per source."""

from resources.metrics.interface import (
    Measurement,
    MetricProvider,
    MetricsUnavailable,
    Subject,
    Window,
)

__all__ = ["Measurement", "MetricProvider", "MetricsUnavailable", "Subject", "Window"]
