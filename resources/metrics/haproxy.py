"""The analysis provider that needs no other component: the environment switch's own counters.

Every request to a switched service passes haproxy (published port and service-to-service calls), which
counts per server slot: `app` is the version that served before, `next` the candidate. The counters are
cumulative, so a window notes them when it opens and measures the difference. haproxy keeps no
percentiles: it gives the mean response time, which the analysis compares where a p95 is asked for.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from resources.metrics.interface import Measurement, MetricProvider, MetricsUnavailable, Subject, Window

SLOT = {"candidate": "next", "stable": "app"}


class HaproxyMetrics(MetricProvider):
    """`read_counters(fleet, environment, service)` returns the switch's counters per slot (the docker
    target's `counters`)."""

    name = "haproxy"

    def __init__(self, read_counters: Callable[[str, str, str], dict]):
        self._read_counters = read_counters

    def _slot(self, subject: Subject):
        try:
            counters = self._read_counters(subject.fleet, subject.environment, subject.service)
        except Exception as exc:  # whatever the switch's reader raised (ProxyError, OSError): no measurement
            raise MetricsUnavailable(f"haproxy of {subject.fleet}/{subject.environment}: cannot read the "
                                     f"counters of {subject.service}: {exc}") from exc
        slot = counters.get(SLOT[subject.role])
        if slot is None:
            raise MetricsUnavailable(f"haproxy of {subject.fleet}/{subject.environment} does not switch "
                                     f"{subject.service} (no server slot '{SLOT[subject.role]}' in its counters)")
        return slot

    def open_window(self, subject: Subject) -> Window:
        slot = self._slot(subject)
        return Window(subject, baseline={"requests": slot.requests, "errors": slot.errors})

    def measure(self, window: Window) -> Measurement:
        slot = self._slot(window.subject)
        before_requests = window.baseline.get("requests", 0)
        before_errors = window.baseline.get("errors", 0)
        if slot.requests < before_requests:  # haproxy reloaded meanwhile: its counters restarted at zero
            before_requests = before_errors = 0
        return Measurement(provider=self.name, requests=slot.requests - before_requests,
                           errors=slot.errors - before_errors, mean_ms=slot.mean_ms,
                           seconds=round(time.time() - window.opened_at, 1))
