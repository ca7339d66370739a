"""One shape for every security finding (SAST, image scan, compliance, hardening) and the thresholds that judge them.

Each tool speaks its own severity words (semgrep ERROR/WARNING/INFO, hadolint error/warning/info/style, Grype
Negligible, ECR INFORMATIONAL/UNDEFINED...). They are normalised once, here, to six levels, so a threshold
such as "no HIGH or CRITICAL" means the same thing whichever tool produced the finding.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "INFO", "UNKNOWN")  # worst first
# UNKNOWN ranks lowest: an unrated finding is shown and counted, but a severity threshold cannot reason about
# it. Blocking on a specific unrated rule is what compliance policies (rule ids) are for.
SEVERITY_RANK = {"CRITICAL": 5, "HIGH": 4, "MEDIUM": 3, "LOW": 2, "INFO": 1, "UNKNOWN": 0}

_SEVERITY_SYNONYMS = {
    "CRITICAL": "CRITICAL",
    "HIGH": "HIGH",
    "ERROR": "HIGH",  # semgrep, hadolint
    "MEDIUM": "MEDIUM",
    "MODERATE": "MEDIUM",
    "WARNING": "MEDIUM",  # semgrep, hadolint
    "WARN": "MEDIUM",
    "LOW": "LOW",
    "INFO": "INFO",
    "INFORMATIONAL": "INFO",  # ECR
    "NEGLIGIBLE": "INFO",  # Grype
    "STYLE": "INFO",  # hadolint
    "NOTE": "INFO",
    "UNKNOWN": "UNKNOWN",
    "UNDEFINED": "UNKNOWN",  # ECR, bandit
    "UNTRIAGED": "UNKNOWN",  # ECR enhanced scanning
    "": "UNKNOWN",
}


class ThresholdError(ValueError):
    """A threshold that cannot be understood; the message names where it was written."""


def normalise_severity(value: object) -> str:
    """One of SEVERITIES for any tool's severity word (None and unrecognised words are UNKNOWN)."""
    if value is None:
        return "UNKNOWN"
    return _SEVERITY_SYNONYMS.get(str(value).strip().upper(), "UNKNOWN")


@dataclass(frozen=True)
class Finding:
    tool: str  # semgrep, bandit, hadolint, checkov, ecr, trivy, grype, release-graph
    rule: str  # what a waiver or a policy names: CVE-2024-1234, B602, DL3007, CKV_DOCKER_2, rg-python-eval
    severity: str  # one of SEVERITIES (constructed through `finding()` or normalised by the parser)
    location: str  # file:line for code and Dockerfiles, package@version for image vulnerabilities
    message: str
    fixed_version: str | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITY_RANK:
            raise ValueError(f"finding {self.rule} at {self.location}: severity {self.severity!r} is not normalised")

    @property
    def rank(self) -> int:
        return SEVERITY_RANK[self.severity]

    def as_row(self) -> dict[str, str]:
        return {
            "severity": self.severity,
            "rule": self.rule,
            "location": self.location,
            "tool": self.tool,
            "message": self.message,
            "fixed_version": self.fixed_version or "",
        }


def finding(
    tool: str, rule: str, severity: object, location: str, message: str, fixed_version: str | None = None
) -> Finding:
    """A Finding with the tool's severity word normalised."""
    return Finding(tool, str(rule), normalise_severity(severity), location, message, fixed_version or None)


@dataclass(frozen=True)
class Threshold:
    """Block findings at or above `floor`; `floor=None` never blocks (the text `none`)."""

    floor: str | None
    text: str

    def blocks(self, item: Finding) -> bool:
        return self.floor is not None and item.rank >= SEVERITY_RANK[self.floor]

    def describe(self) -> str:
        if self.floor is None:
            return "never blocks"
        blocked = [s for s in SEVERITIES if SEVERITY_RANK[s] >= SEVERITY_RANK[self.floor]]
        return "blocks " + ", ".join(blocked)


_THRESHOLD_FORMS = (
    "'none', '<SEVERITY>' (that severity or worse), 'no <SEVERITY> or above', "
    "or 'no <SEVERITY> or <SEVERITY>...' naming every severity from the lowest blocked one up to CRITICAL"
)


def parse_threshold(text: object, where: str = "threshold") -> Threshold:
    """Read "no CRITICAL", "no HIGH or CRITICAL", "no MEDIUM or above", "HIGH" (or worse) or "none".

    `where` names the origin in errors, e.g. "fleet.yaml: environment 'prod', field 'scan_threshold'".
    A list of severities with a gap ("no LOW or CRITICAL") is refused: it would read as blocking LOW findings
    while letting HIGH ones through, which no one means.
    """
    if isinstance(text, Threshold):
        return text
    if not isinstance(text, str) or not text.strip():
        raise ThresholdError(f"{where}: expected text such as 'no HIGH or CRITICAL', got {text!r}")
    words = text.strip()
    if words.lower() == "none":
        return Threshold(None, words)
    body = re.sub(r"^no\s+", "", words, flags=re.IGNORECASE)
    or_above = re.search(r"(\s+or\s+(above|worse|higher)|\+)$", body, flags=re.IGNORECASE)
    if or_above:
        body = body[: or_above.start()]
    named = [w.upper() for w in re.split(r"\s*,\s*|\s+or\s+|\s+and\s+", body.strip(), flags=re.IGNORECASE) if w]
    unknown = [w for w in named if w not in SEVERITY_RANK or w == "UNKNOWN"]
    if not named or unknown:
        bad = ", ".join(repr(w) for w in unknown) or "no severity"
        raise ThresholdError(
            f"{where}: {words!r} names {bad}; severities are CRITICAL, HIGH, MEDIUM, LOW, INFO. "
            f"Write {_THRESHOLD_FORMS}"
        )
    floor = min(named, key=lambda s: SEVERITY_RANK[s])
    expected = {s for s in SEVERITIES if s != "UNKNOWN" and SEVERITY_RANK[s] >= SEVERITY_RANK[floor]}
    if len(named) > 1 and set(named) != expected:
        missing = sorted(expected - set(named), key=lambda s: -SEVERITY_RANK[s])
        raise ThresholdError(
            f"{where}: {words!r} blocks {floor} but not {', '.join(missing)}; name every severity from "
            f"{floor} up to CRITICAL (or write 'no {floor} or above')"
        )
    return Threshold(floor, words)


def count_by_severity(findings: Iterable[Finding]) -> dict[str, int]:
    """{severity: count} for every level, worst first (zeros included, so metadata keys are stable)."""
    counts = dict.fromkeys(SEVERITIES, 0)
    for item in findings:
        counts[item.severity] += 1
    return counts


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Worst first, then by rule and location, so tables and reports are stable between runs."""
    return sorted(findings, key=lambda f: (-f.rank, f.rule, f.location, f.tool))


def top_rows(findings: Iterable[Finding], limit: int = 20) -> list[dict[str, str]]:
    """The `limit` worst findings as table rows (severity, rule, location, tool, message, fixed_version)."""
    return [f.as_row() for f in sort_findings(findings)[:limit]]
