"""What a rollout's analysis asks a metric source: how one version of one service did since a moment.

A rollout opens a window when a step starts serving (`open_window`) and measures it when the step's pause
is over (`measure`): haproxy's counters are cumulative, so its window remembers them; Prometheus and
CloudWatch only need the start time. A provider that cannot be asked raises MetricsUnavailable: the
analysis counts that as an Error, never as a pass.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field


class MetricsUnavailable(Exception):
    """The metric source did not answer (or answered nonsense); the message names it and what was asked."""


@dataclass(frozen=True)
class Subject:
    """The version being measured: one service's deployment of `digest` in one environment. `role` is
    `candidate` (the new version) or `stable` (the one that served before)."""

    fleet: str
    environment: str
    service: str
    digest: str
    role: str = "candidate"


@dataclass(frozen=True)
class Window:
    """An open measurement window: its subject, when it opened, and what the provider noted then."""

    subject: Subject
    opened_at: float = field(default_factory=time.time)  # epoch seconds
    baseline: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Measurement:
    """What the subject did in the window. None: the provider does not measure that quantity."""

    provider: str
    requests: int | None = None
    errors: int | None = None  # 5xx answers
    p95_ms: float | None = None
    mean_ms: float | None = None
    alarms: tuple[str, ...] = ()  # alarms in ALARM state (CloudWatch)
    seconds: float = 0.0

    @property
    def error_rate(self) -> float | None:
        if not self.requests or self.errors is None:
            return None
        return self.errors / self.requests

    def as_metadata(self) -> dict:
        """Plain numbers for the deployment's metadata and the step table (None left out)."""
        values = {"requests": self.requests, "errors": self.errors, "error_rate": self.error_rate,
                  "p95_ms": self.p95_ms, "mean_ms": self.mean_ms}
        result = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in values.items() if v is not None}
        if self.alarms:
            result["alarms"] = ", ".join(self.alarms)
        return result


class MetricProvider(ABC):
    """One source of measurements; adapters hold their configuration and do no I/O when constructed."""

    name: str = "metrics"

    def open_window(self, subject: Subject) -> Window:
        """Start measuring `subject` now. Providers with cumulative counters note them in `baseline`."""
        return Window(subject)

    @abstractmethod
    def measure(self, window: Window) -> Measurement:
        """What the subject did since the window opened. Raises MetricsUnavailable."""
