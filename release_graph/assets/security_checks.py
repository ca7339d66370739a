"""Security evidence as asset checks: SAST, the vulnerability scan, the SBOM and compliance of `<service>/image`,
and the hardening of the container that runs `<service>/<environment>`.

The decisions are made by the plain modules in `release_graph.security` (one `evaluate_gate` for checks and
deploy steps alike); this module runs the tools on exactly what was released and turns their results into
check results and metadata. Each image check reads the commit and digest of the image's latest
materialization and records `digest`, which is how the deploy step finds the evaluation of a digest.

"The check could not run" (a tool missing, a scanner down, an unusable waivers file, an expired waiver)
raises: Dagster shows an error, never a pass. "The check ran and found problems" is `passed=False`.
"""


import dataclasses
import os
import tempfile
import time
from collections.abc import Iterable
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg

from release_graph.assets.common import rows_table
from release_graph.assets.image import export_build_context
from release_graph.assets.image_checks import hadolint_once, image_under_check
from release_graph.assets.stage_tracing import check_stage, traced_stage
from release_graph.fleet import Environment, Fleet, Service
from release_graph.release import history
from release_graph.release import metadata as M
from release_graph.release.errors import ReleaseStepError
from release_graph.release.keys import environment_key, image_key
from release_graph.security import compliance, evidence, sast, sbom
from release_graph.security.evidence import EvidenceError
from release_graph.security.findings import SEVERITIES, Finding, count_by_severity, parse_threshold
from release_graph.security.gate import GateResult, evaluate_gate
from release_graph.security.least_privilege import review_hardening
from release_graph.security.waivers import Waiver, WaiverError, fleet_owners, load_waivers
from resources import labels as L
from resources.containers import ContainerEngine, ContainerEngineError
from resources.git import GitResource
from resources.registry import Registry
from resources.scanners import VulnerabilityScanner
from resources.targets import DeployTarget

FINDING_COLUMNS = ("status", "severity", "rule", "location", "tool", "message", "fixed_version")
WAIVER_COLUMNS = ("finding", "severity", "rule", "service", "location", "owner", "reason", "expires", "source")
ENVIRONMENT_COLUMNS = ("environment", "threshold", "verdict", "blocking", "waived", "without_waivers")
TOP_FINDINGS = 20
VULNERABILITY_SCAN = "vulnerability_scan"


def today() -> date:
    """Waivers are valid through their expiry day, counted in UTC on every host."""
    return datetime.now(UTC).date()


# --- tables ------------------------------------------------------------------------------------------------


def gate_metadata(result: GateResult) -> dict[str, object]:
    """A gate's evidence for the UI: counts, the threshold, the top findings and every waiver used as tables."""
    plain = result.metadata()
    metadata: dict[str, object] = {
        key: value for key, value in plain.items() if key not in ("top_findings", "waivers_used", "service")
    }
    metadata["threshold"] = f"{result.threshold.text} ({result.threshold.describe()})"
    metadata["findings"] = rows_table(plain["top_findings"], FINDING_COLUMNS)
    metadata["waivers_used"] = rows_table(plain["waivers_used"], WAIVER_COLUMNS)
    return metadata


# --- waivers -----------------------------------------------------------------------------------------------


def load_fleet_waivers(fleet: Fleet) -> list[Waiver]:
    """The fleet's waivers, validated against its owners and services; WaiverError for an unusable file."""
    path = fleet.security.waivers
    if path is None:
        return []
    return load_waivers(path, known_owners=fleet_owners(fleet), known_services=fleet.services)


def fleet_waivers(fleet: Fleet, service: Service, what: str) -> list[Waiver]:
    """load_fleet_waivers for a check: an unusable file is the check's error, naming the service."""
    try:
        return load_fleet_waivers(fleet)
    except WaiverError as exc:
        raise ReleaseStepError(f"service '{service.name}': {what} cannot run: {exc}") from None


def judge(findings: Iterable[Finding], limit, waivers: list[Waiver], service: Service, what: str) -> GateResult:
    """evaluate_gate, with an expired waiver turned into the step's error (it names file, line and owner)."""
    try:
        return evaluate_gate(findings, limit, waivers, today(), service.name, table_limit=TOP_FINDINGS)
    except WaiverError as exc:
        raise ReleaseStepError(f"service '{service.name}': {what} cannot run: {exc}") from None


def waivers_label(fleet: Fleet) -> str:
    return str(fleet.security.waivers) if fleet.security.waivers else "none"


# --- SAST --------------------------------------------------------------------------------------------------


def check_sast(context, fleet: Fleet, service: Service, git) -> dg.AssetCheckResult:
    sha, digest = image_under_check(context, service)
    threshold = parse_threshold(fleet.sast_threshold, f"{fleet.source_file.name}: field 'sast_threshold'")
    waivers = fleet_waivers(fleet, service, "SAST")  # before the tools run: a bad file fails fast
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"rg-sast-{service.name}-") as tmp:
        export_build_context(git, service, sha, Path(tmp))
        try:
            report = sast.run_sast(Path(tmp) / service.path)
        except EvidenceError as exc:
            raise ReleaseStepError(f"service '{service.name}': SAST could not run at {sha[:12]}: {exc}") from None
    seconds = round(time.monotonic() - started, 2)
    result = judge(report.findings, threshold, waivers, service, "SAST")
    return dg.AssetCheckResult(
        passed=result.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            M.GIT_SHA: sha,
            M.DIGEST: digest,
            "tools": ", ".join(report.tools),
            **gate_metadata(result),
            "waivers_file": waivers_label(fleet),
            "scanned_files": len(report.scanned_files),
            "not_analysed": dg.MetadataValue.md("\n".join(f"- {p}" for p in report.not_analysed) or "none"),
            "duration_seconds": dg.MetadataValue.float(seconds),
        },
        description=f"SAST ({', '.join(report.tools)}) {result.summary()}",
    )


# --- vulnerability scan ------------------------------------------------------------------------------------


def reports_dir(context) -> Path:
    """`<instance root>/reports/<run id>`: the run's reports, beside the instance's storage (DAGSTER_HOME)."""
    return Path(context.instance.root_directory) / "reports" / context.run.run_id


def check_vulnerability_scan(context, fleet: Fleet, service: Service, scanner: VulnerabilityScanner,
                             registry: Registry, engine: ContainerEngine) -> dg.AssetCheckResult:
    sha, digest = image_under_check(context, service)
    waivers = fleet_waivers(fleet, service, "the vulnerability scan")
    if scanner.backend != fleet.security.scanner:
        raise ReleaseStepError(f"service '{service.name}': the scanner resource runs '{scanner.backend}', but the "
                               f"manifest's security.scanner is '{fleet.security.scanner}' "
                               "(release_graph/wiring.py scanner_resource configures it from the manifest)")
    folder = reports_dir(context)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        report = scanner.scan_image(
            service.image_repository(fleet), digest, registry=registry, tag=sha,
            report_path=str(folder / f"{service.name}-{scanner.backend}.json"), engine=engine,
            container_labels={L.SERVICE: service.name, L.STEP: VULNERABILITY_SCAN},
            container_name=f"rg-scan-{service.name}-{digest[7:19]}-{context.run.run_id[:8]}")
    except EvidenceError as exc:  # ScannerMissing, ScanError: the scan could not run
        raise ReleaseStepError(f"service '{service.name}': the vulnerability scan ({fleet.security.scanner}) of "
                               f"{digest} could not run: {exc}") from None
    seconds = round(time.monotonic() - started, 2)
    # Thresholds are per environment: the check records the verdict of each, the deploy steps enforce them.
    verdicts, waived_rows, blocked_in = [], {}, []
    for environment in fleet.environments.values():
        if environment.scan_threshold is None:
            continue
        threshold = parse_threshold(environment.scan_threshold)
        result = judge(report.findings, threshold, waivers, service, "the vulnerability scan")
        # What the threshold alone would do: shows which environment a waiver is what lets the image in.
        bare = evaluate_gate(report.findings, threshold, [], today(), service.name)
        verdicts.append({"environment": environment.name, "threshold": f"{threshold.text} ({threshold.describe()})",
                         "verdict": "passes" if result.passed else "blocked", "blocking": len(result.blocking),
                         "waived": len(result.waived),
                         "without_waivers": "passes" if bare.passed else f"blocked ({len(bare.blocking)})"})
        waived_rows.update({(row["finding"], row["source"]): row for row in result.waiver_rows})
        if not result.passed:
            blocked_in.append(environment.name)
    counts = count_by_severity(report.findings)
    top = judge(report.findings, parse_threshold("none"), waivers, service, "the vulnerability scan")
    worst = ", ".join(f"{level} {counts[level]}" for level in SEVERITIES if counts[level]) or "no findings"
    return dg.AssetCheckResult(
        passed=not blocked_in,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            M.GIT_SHA: sha,
            M.DIGEST: digest,
            "scanner": report.tool,
            "image": report.image,
            **{f"{level.lower()}_findings": counts[level] for level in SEVERITIES},
            "total_findings": len(report.findings),
            "top_findings": rows_table(top.table, FINDING_COLUMNS),
            "environments": rows_table(verdicts, ENVIRONMENT_COLUMNS),
            "waivers_used": rows_table(waived_rows.values(), WAIVER_COLUMNS),
            # Every finding, so the deploy step of each environment judges exactly this scan.
            "all_findings": dg.MetadataValue.json([f.as_row() for f in report.findings]),
            "scan_details": dg.MetadataValue.json(dict(report.details)),
            "waivers_file": waivers_label(fleet),
            "duration_seconds": dg.MetadataValue.float(seconds),
        },
        description=f"{report.tool} scan: {worst}"
        + (f"; above the threshold of {', '.join(blocked_in)}" if blocked_in else "; within every threshold"),
    )


def findings_from_metadata(rows: object) -> list[Finding]:
    """The findings a vulnerability_scan evaluation recorded (`all_findings`)."""
    if not isinstance(rows, list):
        raise ValueError("the vulnerability_scan evaluation has no `all_findings` list")
    return [
        Finding(tool=row["tool"], rule=row["rule"], severity=row["severity"], location=row["location"],
                message=row.get("message", ""), fixed_version=row.get("fixed_version") or None)
        for row in rows
    ]


# --- SBOM --------------------------------------------------------------------------------------------------


def check_sbom(context, fleet: Fleet, service: Service, engine, registry: Registry) -> dg.AssetCheckResult:
    sha, digest = image_under_check(context, service)
    repository = service.image_repository(fleet)
    folder = reports_dir(context)
    started = time.monotonic()
    try:
        summary = sbom.generate_sbom(
            engine.client(), repository, digest, folder,
            labels={L.SERVICE: service.name, L.STEP: "sbom"},
            container_name=f"rg-sbom-{service.name}-{digest[7:19]}-{context.run.run_id[:8]}",
            # the engine names a pushed image by another digest: it is pulled, with the registry's credentials
            pull=lambda reference: engine.pull(reference, registry=registry),
        )
    except (sbom.SbomError, ContainerEngineError) as exc:
        raise ReleaseStepError(f"service '{service.name}': {exc}") from None
    path = folder / f"{service.name}-sbom.cdx.json"
    os.replace(summary.path, path)
    summary = dataclasses.replace(summary, path=path)
    components = sbom_components(path)
    runtime = [f"{c['name']} {c['version']}" for c in components if c["kind"] == "deb" and c["name"] == "python3"]
    pypi = [f"{c['name']} {c['version']}" for c in components if c["kind"] == "pypi"]
    return dg.AssetCheckResult(
        passed=True,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            M.GIT_SHA: sha,
            M.DIGEST: digest,
            **summary.metadata(),
            "sbom": dg.MetadataValue.path(str(path)),
            "python_runtime": ", ".join(runtime) or "none",
            "python_distributions": ", ".join(pypi) or "none",
            "duration_seconds": dg.MetadataValue.float(round(time.monotonic() - started, 2)),
        },
        description=f"CycloneDX SBOM: {summary.components} components "
        + ", ".join(f"{n} {kind}" for kind, n in sorted(summary.counts.items())),
    )


def sbom_components(path: Path) -> list[dict[str, str]]:
    import json

    document = json.loads(path.read_text(encoding="utf-8"))
    return [
        {"name": c["name"], "version": c["version"], "kind": c["purl"].split(":", 1)[1].split("/", 1)[0]}
        for c in document.get("components", [])
    ]


# --- compliance --------------------------------------------------------------------------------------------


def check_compliance(context, fleet: Fleet, service: Service, git) -> dg.AssetCheckResult:
    # The manifest's rule ids are checked against the installed tools here and by `release-graph validate`.
    unknown = compliance.rule_id_problems(fleet)
    if unknown:
        raise ReleaseStepError(f"service '{service.name}': the compliance check cannot run: " + "; ".join(unknown))
    sha, digest = image_under_check(context, service)
    rules = fleet.security.compliance_blocking or ()
    policy = compliance.CompliancePolicy(frozenset(rules), ", ".join(rules))
    waivers = fleet_waivers(fleet, service, "the compliance check")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"rg-compliance-{service.name}-") as tmp:
        context_dir = export_build_context(git, service, sha, Path(tmp))
        service_dir = Path(tmp) / service.path
        try:
            dockerfile = context_dir / service.build.dockerfile
            linted = hadolint_once(context, service, sha, lambda: evidence.hadolint_report(dockerfile))
            findings = compliance.from_hadolint(linted, dockerfile, relative_to=service_dir)
            hadolint_seconds = time.monotonic() - started
            # The service's folder: its Dockerfile and any Kubernetes manifests it ships.
            findings += compliance.run_checkov([service_dir], root=service_dir)
        except EvidenceError as exc:
            raise ReleaseStepError(
                f"service '{service.name}': the compliance check could not run at {sha[:12]}: {exc}"
            ) from None
    seconds = time.monotonic() - started
    result = judge(findings, policy, waivers, service, "the compliance check")
    by_tool = {tool: sum(1 for f in findings if f.tool == tool) for tool in ("hadolint", "checkov")}
    return dg.AssetCheckResult(
        passed=result.passed,
        severity=dg.AssetCheckSeverity.ERROR if rules else dg.AssetCheckSeverity.WARN,
        metadata={
            M.GIT_SHA: sha,
            M.DIGEST: digest,
            "tools": "hadolint, checkov",
            "blocking_rules": ", ".join(rules) or "none (the policy blocks no rule)",
            **gate_metadata(result),
            "hadolint_findings": by_tool["hadolint"],
            "checkov_findings": by_tool["checkov"],
            "rules_found": ", ".join(sorted({f.rule for f in findings})) or "none",
            "waivers_file": waivers_label(fleet),
            "hadolint_seconds": dg.MetadataValue.float(round(hadolint_seconds, 2)),
            "checkov_seconds": dg.MetadataValue.float(round(seconds - hadolint_seconds, 2)),
        },
        description=f"compliance ({policy.describe()}): {len(result.blocking)} blocking, "
        f"{result.total} finding(s) in all" + (f", {len(result.waived)} waived" if result.waived else ""),
    )


# --- hardening of the running container ----------------------------------------------------------------------


def check_hardening(context, fleet: Fleet, service: Service, environment: Environment, target: DeployTarget,
                    engine: ContainerEngine, digest: str | None = None) -> dg.AssetCheckResult:
    if digest is None:
        record = history.latest(context.instance, environment_key(service, environment))
        if record is None:
            raise ReleaseStepError(
                f"service '{service.name}', environment '{environment.name}': nothing deployed yet")
        digest = record.digest
    actual = target.running(fleet.name, environment.name, service.name)
    if actual is None:
        raise ReleaseStepError(f"service '{service.name}', environment '{environment.name}': no container runs, "
                               "so its hardening cannot be inspected")
    inspect = engine.client().api.inspect_container(actual.container_id)
    findings, waived = review_hardening(inspect, service.hardening)
    host = inspect.get("HostConfig") or {}
    rows = [{"status": "reported", **f.as_row()} for f in findings]
    rows += [{"status": f"waived: {reason}", **f.as_row()} for f, reason in waived]
    exceptions = "; ".join(f"{f.rule} ({reason})" for f, reason in waived)
    description = "; ".join(f"{f.rule}: {f.message}" for f in findings) or (
        f"hardened except where the manifest says why: {exceptions}" if waived
        else "non-root, read-only, no capabilities, no privilege escalation")
    return dg.AssetCheckResult(
        check_name="hardening",
        passed=not findings,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            M.DIGEST: digest,
            "container": actual.container_name,
            "user": (inspect.get("Config") or {}).get("User") or "(image default: root)",
            "read_only_root_filesystem": bool(host.get("ReadonlyRootfs")),
            "privileged": bool(host.get("Privileged")),
            "added_capabilities": ", ".join(host.get("CapAdd") or []) or "none",
            "no_new_privileges": not any(f.rule == "RG_CONTAINER_PRIVILEGE_ESCALATION"
                                         for f in [*findings, *(f for f, _ in waived)]),
            "writable_folders": ", ".join(sorted(host.get("Tmpfs") or {})) or "none",
            "findings": rows_table(rows, FINDING_COLUMNS),
        },
        description=description,
    )


def image_scan_key(service: Service) -> dg.AssetCheckKey:
    return dg.AssetCheckKey(image_key(service), VULNERABILITY_SCAN)


def security_check_definitions(fleet: Fleet, service: Service) -> list:
    """The security evidence of a built service: SAST, and what `security:` turns on (vulnerability scan, SBOM,
    compliance) on its image. (The hardening of its containers is evidence of each deployment.)"""
    image = image_key(service)
    settings = fleet.security
    checks = []

    @dg.asset_check(asset=image, name="sast", blocking=True,
                    description=f"Static analysis: semgrep (the rules shipped with release-graph) and, for Python, "
                    f"bandit; findings at or above {fleet.sast_threshold} block unless waived.",
)
    @traced_stage(fleet, service, check_stage(service, "sast"))
    def sast(context: dg.AssetCheckExecutionContext, git: GitResource) -> dg.AssetCheckResult:
        return check_sast(context, fleet, service, git)

    checks.append(sast)
    if settings.scanner != "none":

        @dg.asset_check(asset=image, name=VULNERABILITY_SCAN, blocking=False,
                        description=f"Image vulnerability scan ({settings.scanner}): counts per severity and the "
                        "top findings. Each environment's deploy step refuses findings above its scan_threshold.")
        @traced_stage(fleet, service, check_stage(service, VULNERABILITY_SCAN))
        def vulnerability_scan(context: dg.AssetCheckExecutionContext, scanner: VulnerabilityScanner,
                               registry: Registry, engine: ContainerEngine) -> dg.AssetCheckResult:
            return check_vulnerability_scan(context, fleet, service, scanner, registry, engine)

        checks.append(vulnerability_scan)
    if settings.sbom:

        @dg.asset_check(asset=image, name="sbom", blocking=False,
                        description="CycloneDX SBOM of the image (Debian packages, Python distributions), "
                        "stored with the run's reports.")
        @traced_stage(fleet, service, check_stage(service, "sbom"))
        def sbom(context: dg.AssetCheckExecutionContext, engine: ContainerEngine,
                 registry: Registry) -> dg.AssetCheckResult:
            return check_sbom(context, fleet, service, engine, registry)

        checks.append(sbom)
    if settings.compliance_blocking is not None:
        rules = ", ".join(settings.compliance_blocking) or "none"

        @dg.asset_check(asset=image, name="compliance", blocking=bool(settings.compliance_blocking),
                        description=f"hadolint and checkov on the Dockerfile and Kubernetes manifests; blocking "
                        f"rules: {rules}.")
        @traced_stage(fleet, service, check_stage(service, "compliance"))
        def compliance(context: dg.AssetCheckExecutionContext, git: GitResource) -> dg.AssetCheckResult:
            return check_compliance(context, fleet, service, git)

        checks.append(compliance)

    return checks
