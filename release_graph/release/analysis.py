"""Judging a new version while it serves: the conditions of an environment's `rollout.analysis` applied to
what the metric providers measured, in the field's vocabulary (Argo Rollouts' AnalysisRun outcomes).

- Successful: every provider measured enough requests and every condition holds;
- Failed: a condition does not hold (error rate, p95 or mean response time, an alarm in ALARM);
- Inconclusive: too few requests to judge (`min_requests`);
- Error: a provider could not be asked (the caller counts those; see `WatchCounts`).

Plain rules over plain numbers: no Dagster, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from release_graph.fleet.model import Analysis

SUCCESSFUL, FAILED, INCONCLUSIVE, ERROR = "Successful", "Failed", "Inconclusive", "Error"


@dataclass(frozen=True)
class Verdict:
    outcome: str  # one of SUCCESSFUL, FAILED, INCONCLUSIVE, ERROR
    reason: str  # a sentence for a release manager
    values: dict = field(default_factory=dict)  # provider -> its measured numbers


def judge(analysis: Analysis, measurements) -> Verdict:
    """The verdict over one measurement per provider (objects with the shape of resources.metrics'
    Measurement: provider, requests, errors, error_rate, p95_ms, mean_ms, alarms)."""
    values = {m.provider: m.as_metadata() for m in measurements}
    failures, too_little = [], []
    for m in measurements:
        if m.alarms:
            failures.append(f"{m.provider}: alarm {', '.join(m.alarms)} in ALARM")
        if m.requests is not None and m.requests < analysis.min_requests:
            too_little.append(f"{m.provider}: {m.requests} request(s), fewer than the {analysis.min_requests} "
                              "needed to judge")
            continue
        rate = m.error_rate
        if analysis.max_error_rate is not None and rate is not None and rate > analysis.max_error_rate:
            failures.append(f"{m.provider}: error rate {rate:.1%} ({m.errors} of {m.requests}) above "
                            f"{analysis.max_error_rate:.1%}")
        if analysis.max_p95_ms is not None:
            latency, what = (m.p95_ms, "p95") if m.p95_ms is not None else (m.mean_ms, "mean response time")
            if latency is not None and latency > analysis.max_p95_ms:
                failures.append(f"{m.provider}: {what} {latency:.0f} ms above {analysis.max_p95_ms:g} ms")
    if failures:
        return Verdict(FAILED, "; ".join(failures), values)
    if too_little:
        return Verdict(INCONCLUSIVE, "; ".join(too_little), values)
    summary = ", ".join(_summary(m) for m in measurements) or "nothing measured"
    return Verdict(SUCCESSFUL, f"every condition holds ({summary})", values)


def _summary(m) -> str:
    parts = [f"{m.requests} requests" if m.requests is not None else None,
             f"error rate {m.error_rate:.1%}" if m.error_rate is not None else None,
             f"p95 {m.p95_ms:.0f} ms" if m.p95_ms is not None else None,
             f"mean {m.mean_ms:.0f} ms" if m.p95_ms is None and m.mean_ms is not None else None]
    return f"{m.provider}: " + ", ".join(p for p in parts if p) if any(parts) else f"{m.provider}: no alarm"


@dataclass
class WatchCounts:
    """The limits of one watch: Failed results tolerated, Inconclusive ones, and Errors in a row."""

    analysis: Analysis
    failed: int = 0
    inconclusive: int = 0
    errors_in_a_row: int = 0

    def add(self, verdict: Verdict) -> str | None:
        """Count `verdict`; return why the rollout must roll back now, or None."""
        if verdict.outcome == ERROR:
            self.errors_in_a_row += 1
            if self.errors_in_a_row >= self.analysis.consecutive_error_limit:
                return (f"the analysis could not measure {self.errors_in_a_row} time(s) in a row "
                        f"(limit {self.analysis.consecutive_error_limit}): {verdict.reason}")
            return None
        self.errors_in_a_row = 0
        if verdict.outcome == FAILED:
            self.failed += 1
            if self.failed > self.analysis.failure_limit:
                return f"the analysis failed: {verdict.reason}"
        if verdict.outcome == INCONCLUSIVE:
            self.inconclusive += 1
        return None

    def inconclusive_exhausted(self) -> bool:
        return self.inconclusive >= self.analysis.inconclusive_limit
