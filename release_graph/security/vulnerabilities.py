"""Image vulnerability reports from every scanner backend, read into `Finding`s.

Parsers for the documented JSON of each backend, so the same code reads a live answer and a stored report:
- Amazon ECR `describe_image_scan_findings` pages: basic scanning (`imageScanFindings.findings[]`) and
  enhanced scanning by Amazon Inspector (`imageScanFindings.enhancedFindings[]`);
- Trivy `--format json` (schema 2): `Results[].Vulnerabilities[]`;
- Grype `-o json`: `matches[]` with `vulnerability` and `artifact`.
The backends themselves (boto3, the CLIs) are resources in `resources/scanners.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from release_graph.security.findings import Finding, count_by_severity, finding, sort_findings, top_rows
from release_graph.security.tools import ToolError, ToolMissing, excerpt


class ScannerMissing(ToolMissing):
    """The scanner a backend needs is not installed (the message names it and how to get it)."""


class ScanError(ToolError):
    """A scan that produced no usable report: failed, unsupported image, timed out, unreadable output."""


@dataclass(frozen=True)
class ScanReport:
    tool: str  # ecr, trivy, grype
    image: str  # the reference that was scanned (repository@digest)
    digest: str | None
    findings: list[Finding]
    details: dict[str, str] = field(default_factory=dict)  # backend facts: scan time, database age, status

    @property
    def counts(self) -> dict[str, int]:
        return count_by_severity(self.findings)

    def top(self, limit: int = 20) -> list[dict[str, str]]:
        return top_rows(self.findings, limit)


def _load(tool: str, text: str | bytes, origin: str) -> Any:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not text or not text.strip():
        raise ScanError(f"{tool} report {origin} is empty")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ScanError(f"{tool} report {origin} is not JSON ({exc}): {excerpt(text)}") from exc


def _dedupe(findings: Iterable[Finding]) -> list[Finding]:
    return sort_findings(dict.fromkeys(findings))


# --- Trivy ---------------------------------------------------------------------------------------------------


def parse_trivy(text: str | bytes, origin: str = "(output)") -> list[Finding]:
    """Findings of a Trivy JSON report (`trivy image --format json`): one per vulnerability and package."""
    report = _load("trivy", text, origin)
    if not isinstance(report, dict) or "Results" not in report and "SchemaVersion" not in report:
        raise ScanError(f"trivy report {origin} is not a Trivy JSON report (no `Results` or `SchemaVersion`)")
    results = report.get("Results") or []
    if not isinstance(results, list):
        raise ScanError(f"trivy report {origin}: `Results` is not a list")
    findings = []
    for r_index, result in enumerate(results):
        if not isinstance(result, dict):
            raise ScanError(f"trivy report {origin}: Results[{r_index}] is not an object")
        target = str(result.get("Target") or "")
        for v_index, vuln in enumerate(result.get("Vulnerabilities") or []):
            try:
                vuln_id = str(vuln["VulnerabilityID"])
                package = str(vuln["PkgName"])
                installed = str(vuln.get("InstalledVersion") or "")
            except (KeyError, TypeError) as exc:
                raise ScanError(
                    f"trivy report {origin}: Results[{r_index}].Vulnerabilities[{v_index}] lacks {exc}"
                ) from exc
            title = str(vuln.get("Title") or vuln.get("Description") or "").strip().splitlines()
            message = (title[0] if title else vuln_id) + (f" [{target}]" if target else "")
            findings.append(
                finding("trivy", vuln_id, vuln.get("Severity"), f"{package}@{installed}", message,
                        vuln.get("FixedVersion"))
            )
    return _dedupe(findings)


# --- Grype ---------------------------------------------------------------------------------------------------


def parse_grype(text: str | bytes, origin: str = "(output)") -> list[Finding]:
    """Findings of a Grype JSON report (`grype <image> -o json`): one per match."""
    report = _load("grype", text, origin)
    if not isinstance(report, dict) or not isinstance(report.get("matches"), list):
        raise ScanError(f"grype report {origin} is not a Grype JSON report (no `matches` list)")
    findings = []
    for index, match in enumerate(report["matches"]):
        try:
            vuln = match["vulnerability"]
            artifact = match["artifact"]
            vuln_id = str(vuln["id"])
            location = f"{artifact['name']}@{artifact.get('version') or ''}"
        except (KeyError, TypeError) as exc:
            raise ScanError(f"grype report {origin}: matches[{index}] lacks {exc}") from exc
        fix = vuln.get("fix") or {}
        versions = [str(v) for v in fix.get("versions") or []] if fix.get("state", "fixed") == "fixed" else []
        description = str(vuln.get("description") or "").strip().splitlines()
        message = description[0] if description else vuln_id
        if artifact.get("type"):
            message += f" [{artifact['type']}]"
        findings.append(finding("grype", vuln_id, vuln.get("severity"), location, message, ", ".join(versions)))
    return _dedupe(findings)


# --- Amazon ECR (basic) and Amazon Inspector (enhanced) ------------------------------------------------------


def parse_ecr_findings(pages: Iterable[dict[str, Any]], origin: str = "describe_image_scan_findings") -> list[Finding]:
    """Findings from `describe_image_scan_findings` answers (one dict per page)."""
    findings = []
    for page_index, page in enumerate(pages):
        body = page.get("imageScanFindings") if isinstance(page, dict) else None
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ScanError(f"{origin}: page {page_index}: imageScanFindings is not an object")
        for index, item in enumerate(body.get("findings") or []):
            try:
                name = str(item["name"])
            except (KeyError, TypeError) as exc:
                raise ScanError(f"{origin}: page {page_index}: findings[{index}] lacks {exc}") from exc
            attributes = {a.get("key"): a.get("value") for a in item.get("attributes") or [] if isinstance(a, dict)}
            package = attributes.get("package_name") or "?"
            version = attributes.get("package_version") or ""
            description = str(item.get("description") or item.get("uri") or name).strip().splitlines()
            findings.append(finding("ecr", name, item.get("severity"), f"{package}@{version}", description[0]))
        for index, item in enumerate(body.get("enhancedFindings") or []):
            try:
                details = item["packageVulnerabilityDetails"]
                vuln_id = str(details["vulnerabilityId"])
            except (KeyError, TypeError) as exc:
                raise ScanError(f"{origin}: page {page_index}: enhancedFindings[{index}] lacks {exc}") from exc
            title = str(item.get("title") or item.get("description") or vuln_id).strip().splitlines()[0]
            packages = details.get("vulnerablePackages") or [{}]
            for package in packages:
                location = f"{package.get('name') or '?'}@{_inspector_version(package)}"
                findings.append(
                    finding("ecr", vuln_id, item.get("severity"), location, title, package.get("fixedInVersion"))
                )
    return _dedupe(findings)


def _inspector_version(package: dict[str, Any]) -> str:
    version = str(package.get("version") or "")
    if package.get("epoch"):
        version = f"{package['epoch']}:{version}"
    if package.get("release"):
        version = f"{version}-{package['release']}"
    return version


def parse_report_file(path: str | Path, tool: str | None = None) -> list[Finding]:
    """Read a stored Trivy or Grype report; `tool` None guesses from the document's shape."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScanError(f"scan report {source}: cannot read: {exc}") from exc
    if tool is None:
        document = _load("scanner", text, str(source))
        tool = "grype" if isinstance(document, dict) and "matches" in document else "trivy"
    if tool == "trivy":
        return parse_trivy(text, str(source))
    if tool == "grype":
        return parse_grype(text, str(source))
    raise ValueError(f"unknown scanner {tool!r} (expected trivy or grype)")
