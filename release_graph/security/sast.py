"""Static analysis (SAST) of a service's source at the commit being released: semgrep with the rules shipped in
`semgrep_rules/` (Python, JavaScript/TypeScript, Go, Dockerfile), plus bandit for Python.

semgrep runs from its own venv with metrics off, no version check and only local rule files, so nothing is
downloaded at run time and no code leaves the machine. Findings come back as `Finding`s: the gate applies
thresholds and waivers, this module only reports.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from release_graph.security import evidence
from release_graph.security.findings import Finding, finding, sort_findings
from release_graph.security.tools import ToolError, excerpt, isolated_tool, run_tool

SEMGREP_RULES_DIR = Path(__file__).resolve().parent / "semgrep_rules"
SEMGREP_TIMEOUT_SECONDS = 600
SEMGREP_EXIT_OK = (0, 1)  # 1 = findings with --error; JSON output is judged on its own


@dataclass(frozen=True)
class SastReport:
    findings: list[Finding]
    tools: tuple[str, ...]  # the tools that ran
    scanned_files: tuple[str, ...] = ()  # as semgrep lists them, relative to the source folder
    not_analysed: tuple[str, ...] = field(default=())  # "path: reason" a tool could not parse: not covered


def semgrep_rule_ids(rules_dir: Path = SEMGREP_RULES_DIR) -> dict[str, str]:
    """{rule id: rule file name} of a rules folder; raises ToolError for a folder with no usable rules."""
    rules_dir = Path(rules_dir)
    files = sorted([*rules_dir.glob("*.yaml"), *rules_dir.glob("*.yml")])
    if not files:
        raise ToolError(f"semgrep: no rule files (*.yaml) in {rules_dir}")
    ids: dict[str, str] = {}
    for path in files:
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ToolError(f"semgrep rules {path}: cannot be read as YAML: {exc}") from exc
        rules = document.get("rules") if isinstance(document, dict) else None
        if not isinstance(rules, list):
            raise ToolError(f"semgrep rules {path}: expected a mapping with a `rules` list")
        for index, rule in enumerate(rules):
            rule_id = rule.get("id") if isinstance(rule, dict) else None
            if not isinstance(rule_id, str) or not rule_id:
                raise ToolError(f"semgrep rules {path}: rule #{index} has no id")
            if rule_id in ids:
                raise ToolError(f"semgrep rules {path}: rule id {rule_id} is also defined in {ids[rule_id]}")
            ids[rule_id] = path.name
    return ids


def parse_semgrep(json_text: str | bytes, rule_ids: Iterable[str] = ()) -> SastReport:
    """A SastReport from `semgrep --json` output.

    Rule or configuration errors (semgrep's `errors` with level `error` and no file) raise ToolError: some
    rules did not run. A file semgrep could not parse is listed in `not_analysed`, since its findings are missing.
    """
    text = json_text.decode("utf-8", "replace") if isinstance(json_text, bytes) else json_text
    try:
        report = json.loads(text)
    except ValueError as exc:
        raise ToolError(f"semgrep output is not JSON ({exc}): {excerpt(text)}") from exc
    if not isinstance(report, dict) or not isinstance(report.get("results"), list):
        raise ToolError(f"semgrep output is not a semgrep JSON report (no `results` list): {excerpt(text)}")
    known = set(rule_ids)
    not_analysed: list[str] = []
    fatal: list[str] = []
    for error in report.get("errors") or []:
        if not isinstance(error, dict):
            continue
        message = " ".join(str(error.get("message") or error.get("type") or "unknown error").split())[:400]
        path = error.get("path")
        if path:
            not_analysed.append(f"{path}: {message}")
        elif str(error.get("level", "error")).lower() == "error":
            fatal.append(message)
    if fatal:
        raise ToolError("semgrep could not run its rules: " + "; ".join(fatal))
    findings = []
    for index, result in enumerate(report["results"]):
        try:
            check_id = str(result["check_id"])
            path = str(result["path"]).removeprefix("./")
            line = int(result["start"]["line"])
            extra = result.get("extra") or {}
        except (KeyError, TypeError, ValueError) as exc:
            raise ToolError(f"semgrep report: result #{index} lacks {exc} or has the wrong type") from exc
        findings.append(
            finding(
                "semgrep",
                _bare_rule_id(check_id, known),
                extra.get("severity"),
                f"{path}:{line}",
                " ".join(str(extra.get("message") or "").split()),
            )
        )
    scanned = tuple(str(p).removeprefix("./") for p in (report.get("paths") or {}).get("scanned") or [])
    return SastReport(sort_findings(findings), ("semgrep",), scanned, tuple(not_analysed))


def _bare_rule_id(check_id: str, known: set[str]) -> str:
    """semgrep prefixes rule ids with the rules folder's path unless told not to; waivers name the bare id."""
    if check_id in known:
        return check_id
    return next((rule for rule in known if check_id.endswith("." + rule)), check_id)


def run_semgrep(
    source_dir: str | Path,
    *,
    rules_dir: str | Path = SEMGREP_RULES_DIR,
    tools_base: Path | None = None,
    timeout_seconds: float = SEMGREP_TIMEOUT_SECONDS,
) -> SastReport:
    """Run semgrep with the shipped rules over `source_dir` (paths in findings are relative to it)."""
    source = Path(source_dir)
    if not source.is_dir():
        raise ToolError(f"semgrep: source folder {source} does not exist")
    rules = Path(rules_dir).resolve()
    rule_ids = semgrep_rule_ids(rules)
    executable = isolated_tool("semgrep", tools_base)
    with tempfile.TemporaryDirectory(prefix="rg-semgrep-") as home:
        # semgrep writes settings and logs under ~/.semgrep; a private folder keeps parallel runs apart, and
        # SEMGREP_* from the caller (an app token, a rules URL) must not turn on anything that goes online.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEMGREP_")}
        env.update(
            SEMGREP_SEND_METRICS="off",
            SEMGREP_ENABLE_VERSION_CHECK="0",
            SEMGREP_SETTINGS_FILE=str(Path(home) / "settings.yml"),
            SEMGREP_LOG_FILE=str(Path(home) / "semgrep.log"),
        )
        completed = run_tool(
            "semgrep",
            [str(executable), "scan", "--metrics=off", "--disable-version-check", "--oss-only",
             "--no-rewrite-rule-ids", "--jobs", "1", "--config", str(rules), "--json", "."],
            timeout_seconds=timeout_seconds,
            cwd=source,
            env=env,
        )
    try:
        report = parse_semgrep(completed.stdout, rule_ids)
    except ToolError as exc:
        raise ToolError(
            f"semgrep failed (exit {completed.returncode}) on {source}: {exc}; stderr: {excerpt(completed.stderr)}"
        ) from exc
    if completed.returncode not in SEMGREP_EXIT_OK:
        raise ToolError(f"semgrep exited {completed.returncode} on {source}: {excerpt(completed.stderr)}")
    return report


def from_bandit(bandit_findings: Iterable[evidence.BanditFinding]) -> list[Finding]:
    """bandit's findings (release_graph.security.evidence) as Findings; the rule is bandit's test id (B602...)."""
    return [
        finding("bandit", item.rule, item.severity, f"{item.file}:{item.line}", item.text) for item in bandit_findings
    ]


def has_python_sources(source_dir: Path) -> bool:
    return any(p.is_file() for p in Path(source_dir).rglob("*.py"))


def run_sast(
    source_dir: str | Path,
    *,
    rules_dir: str | Path = SEMGREP_RULES_DIR,
    tools_base: Path | None = None,
    timeout_seconds: float = SEMGREP_TIMEOUT_SECONDS,
) -> SastReport:
    """semgrep (every language its rules cover) and, when there is Python, bandit; one combined report."""
    source = Path(source_dir)
    report = run_semgrep(source, rules_dir=rules_dir, tools_base=tools_base, timeout_seconds=timeout_seconds)
    if not has_python_sources(source):
        return report
    bandit_findings, raw = evidence.run_bandit(source, "LOW", timeout_seconds=timeout_seconds)
    return SastReport(
        findings=sort_findings([*report.findings, *from_bandit(bandit_findings)]),
        tools=(*report.tools, "bandit"),
        scanned_files=report.scanned_files,
        not_analysed=(*report.not_analysed, *evidence.bandit_errors(raw)),
    )
