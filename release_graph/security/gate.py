"""The one security decision: do these findings stop this service from entering this environment?

The deploy step of an environment calls `evaluate_gate` and refuses when `passed` is False (`raise_if_blocked`);
the asset checks call the same function and record its result as evidence. One function for both, so the UI
can never show a pass for something the deploy step refused, or the other way round.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Protocol

from release_graph.security.findings import (
    SEVERITIES,
    Finding,
    count_by_severity,
    parse_threshold,
    sort_findings,
)
from release_graph.security.waivers import Waiver, apply_waivers

TABLE_LIMIT = 20


class Limit(Protocol):
    """What decides that a finding blocks: a severity `Threshold` or a `CompliancePolicy` of rule ids."""

    text: str

    def blocks(self, item: Finding) -> bool: ...

    def describe(self) -> str: ...


class GateBlocked(Exception):
    """Raised by the deploy step: findings at or above the environment's threshold and not waived."""

    def __init__(self, message: str, result: GateResult):
        self.result = result
        super().__init__(message)


@dataclass(frozen=True)
class GateResult:
    passed: bool
    service: str
    threshold: Limit
    blocking: list[Finding]  # at or above the threshold and not waived
    waived: list[tuple[Finding, Waiver]]  # every finding a waiver matched, at any severity
    counts: dict[str, int]  # every finding by severity, worst first (waived ones included)
    table: list[dict[str, str]]  # the top findings, blocking first, each with a `status` column
    total: int

    @property
    def waiver_rows(self) -> list[dict[str, str]]:
        """One row per waived finding: what was waived, by whom, why and until when."""
        return [{"finding": f"{item.rule} at {item.location}", "severity": item.severity, **waiver.as_row()}
                for item, waiver in self.waived]

    def summary(self) -> str:
        verdict = "passed" if self.passed else "blocked"
        rule = f"threshold '{self.threshold.text}' ({self.threshold.describe()})"
        parts = [f"{verdict}: {len(self.blocking)} blocking finding(s) under {rule}"]
        parts.append(f"{self.total} finding(s) in all")
        if self.waived:
            parts.append(f"{len(self.waived)} waived")
        if self.blocking:
            worst = ", ".join(f"{f.rule} ({f.severity}) at {f.location}" for f in self.blocking[:3])
            parts.append(f"worst: {worst}")
        return "; ".join(parts)

    def metadata(self) -> dict[str, object]:
        """JSON-safe evidence for an asset check: counts, threshold, the top table and every waiver used."""
        return {
            "passed": self.passed,
            "service": self.service,
            "threshold": self.threshold.text,
            "blocking_findings": len(self.blocking),
            "waived_findings": len(self.waived),
            "total_findings": self.total,
            **{f"{level.lower()}_findings": self.counts[level] for level in SEVERITIES},
            "top_findings": self.table,
            "waivers_used": self.waiver_rows,
        }

    def raise_if_blocked(self, what: str) -> None:
        """For the deploy step: `what` names the gate, e.g. "image scan of orders@sha256:... for prod"."""
        if not self.passed:
            raise GateBlocked(f"{what} refused: {self.summary()}", self)


def evaluate_gate(
    findings: Iterable[Finding],
    threshold: Limit | str,
    waivers: Iterable[Waiver],
    today: date,
    service: str,
    *,
    table_limit: int = TABLE_LIMIT,
) -> GateResult:
    """Apply waivers (raising WaiverError for expired ones), then the threshold.

    `threshold` is a severity Threshold, a CompliancePolicy, or threshold text ("no HIGH or CRITICAL", "none");
    parse text with `parse_threshold(text, where)` first to get errors that name the manifest field.
    """
    limit = parse_threshold(threshold) if isinstance(threshold, str) else threshold
    everything = sort_findings(findings)
    remaining, waived = apply_waivers(everything, waivers, today, service)
    blocking = [item for item in remaining if limit.blocks(item)]
    waived_by = {id(item): waiver for item, waiver in waived}
    blocking_ids = {id(item) for item in blocking}

    def status(item: Finding) -> str:
        if id(item) in blocking_ids:
            return "blocking"
        waiver = waived_by.get(id(item))
        if waiver is not None:
            return f"waived by {waiver.owner} until {waiver.expires.isoformat()}"
        return "below threshold"

    ordered = sorted(everything, key=lambda f: (id(f) not in blocking_ids, id(f) not in waived_by, -f.rank))
    table = [{"status": status(item), **item.as_row()} for item in ordered[:table_limit]]
    return GateResult(
        passed=not blocking,
        service=service,
        threshold=limit,
        blocking=blocking,
        waived=waived,
        counts=count_by_severity(everything),
        table=table,
        total=len(everything),
    )
