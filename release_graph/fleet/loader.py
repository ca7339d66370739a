"""The fleet manifest: one YAML file, validated as a whole into the typed, immutable models of
release_graph.fleet.model.

Every problem is collected and reported at once, each naming the file, line, service and field, before
any Dagster object exists, so a broken manifest never yields half a graph. The field reference lives
in docs/manifest.md; later capabilities add their fields here and there. Plain Python: no Dagster, no
subprocess (the compliance rule ids are checked against the installed tools by `release-graph validate`
and by the compliance check: release_graph.security.compliance.rule_id_problems).
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

import yaml

from release_graph.fleet.dependencies import find_hard_cycles
from release_graph.fleet.model import (
    AWS_ENDPOINT_URL_VARIABLE,
    CHANNEL_TYPES,
    GIT_URL,
    LINUX_CAPABILITIES,
    METRIC_PROVIDERS,
    NOTIFICATION_EVENTS,
    ON_INCONCLUSIVE,
    SCANNERS,
    SECRET_DELIVERIES,
    SECRETS_DIR_IN_CONTAINER,
    STRATEGIES,
    Analysis,
    Build,
    CDEventsSink,
    CloudWatchSettings,
    DeploymentEvents,
    E2ETests,
    EcrSettings,
    Edge,
    Environment,
    Fleet,
    Hardening,
    KubernetesCluster,
    NotificationChannel,
    Notifications,
    OsvSettings,
    PrometheusSettings,
    ProvenanceSettings,
    RegistryAuth,
    ReleaseMetricsSettings,
    Resources,
    Rollout,
    RolloutStep,
    SecretRef,
    Security,
    Service,
    capability_name,
)
from release_graph.fleet.references import ECR_HOST, is_image_reference, is_image_repository
from release_graph.fleet.yaml_lines import LineDict, empty_line_dict, load_single

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
TEAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TEAM = re.compile(r"^team:[A-Za-z0-9][A-Za-z0-9_.-]*$")
GIT_BRANCH = re.compile(r"^(?!/|.*(?:\.\.|//|@\{|\.lock$|/$))[A-Za-z0-9._/-]+$")

RESERVED_SERVICE_NAMES = {"fleet"}
RESERVED_ENVIRONMENT_NAMES = {"source", "image", "integration"}
TARGETS = ("docker", "kubernetes")
APPROVAL_MODES = ("required",)


class ManifestError(Exception):
    """A manifest that cannot be used; `problems` lists every reason, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"invalid fleet manifest ({count}):\n" + "\n".join(f"  - {p}" for p in problems))


def resolve_fleet_path(explicit: str | os.PathLike | None = None) -> Path:
    """`--fleet`, then `$RELEASE_GRAPH_FLEET`, then `./fleet.yaml`."""
    chosen = explicit or os.environ.get("RELEASE_GRAPH_FLEET") or "fleet.yaml"
    return Path(chosen).expanduser().resolve()


# --- validation --------------------------------------------------------------------------------------


class _Problems:
    def __init__(self, file: Path):
        self.file_label = file.name
        self.items: list[str] = []

    def add(self, line: int | None, where: str, message: str) -> None:
        location = f"{self.file_label}:{line}" if line else self.file_label
        self.items.append(f"{location}: {where}: {message}")


def _where(service: str | None = None, field_name: str | None = None, environment: str | None = None) -> str:
    parts = []
    if service is not None:
        parts.append(f"service '{service}'")
    if environment is not None:
        parts.append(f"environment '{environment}'")
    if field_name is not None:
        parts.append(f"field '{field_name}'")
    return ", ".join(parts) or "manifest"


def _line(mapping: Any, key: str) -> int | None:
    if isinstance(mapping, LineDict):
        return mapping.line_of(key)
    return None


def _check_keys(problems: _Problems, mapping: LineDict, allowed: set[str], **where: str | None) -> None:
    for key in mapping:
        if key not in allowed:
            problems.add(
                _line(mapping, key),
                _where(field_name=key, **where),
                f"unknown key (expected one of: {', '.join(sorted(allowed))})",
            )


def _is_str(value: Any) -> bool:
    return isinstance(value, str) and value != ""


SERVICE_KEYS = {
    "repo", "branch", "path", "build", "image", "port", "health", "depends_on", "owners",
    "description", "language", "infrastructure", "deploy_unit", "env", "entrypoint", "command", "secrets_as",
    "hardening", "resources",
}
RESOURCES_KEYS = {"requests", "limits"}
RESOURCE_KEYS = {"cpu", "memory"}
# Kubernetes quantities: CPU in cores ("0.5") or millicores ("250m"); memory in bytes with a suffix ("256Mi", "1G")
RESOURCE_QUANTITY = {"cpu": re.compile(r"^(\d+(\.\d+)?|\d+m)$"),
                     "memory": re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")}
KUBERNETES_KEYS = {"namespace", "context", "version"}
KUBERNETES_VERSION = re.compile(r"^1\.(\d+)$")
HARDENING_KEYS = {"tmpfs", "writable_root", "run_as_root", "privilege_escalation", "capabilities"}
CAPABILITIES_KEYS = {"add", "reason"}
BUILD_KEYS = {"context", "dockerfile", "target", "test_target", "integration_target", "args"}
E2E_KEYS = {"context", "dockerfile", "target"}
EDGE_KEYS = {"name", "soft", "startup_only", "evidence"}
ENVIRONMENT_KEYS = {
    "target", "approval", "approvers", "author_cannot_approve", "approvals_required", "approval_expires_after_hours",
    "branch", "publish", "config", "secrets", "scan_threshold", "rollout", "notifications", "kubernetes",
}
ROLLOUT_KEYS = {"strategy", "steps", "bake_seconds", "hold_seconds", "analysis"}
STEP_KEYS = {"weight", "pause_seconds", "manual"}
ANALYSIS_KEYS = {
    "providers", "max_error_rate", "max_p95_ms", "min_requests", "interval_seconds", "on_inconclusive",
    "failure_limit", "inconclusive_limit", "consecutive_error_limit", "prometheus", "cloudwatch",
}
PROMETHEUS_KEYS = {"url", "error_rate_query", "p95_query", "requests_query"}
CLOUDWATCH_KEYS = {"region", "endpoint_url", "alarms", "namespace"}
HTTP_URL = re.compile(r"^https?://[^\s/]+")
SCAN_THRESHOLDS = ("CRITICAL", "HIGH", "MEDIUM", "LOW")
ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TOP_KEYS = {"fleet", "registry", "registry_auth", "services", "environments", "sast_threshold", "e2e", "security",
            "notifications", "events", "teams", "integration"}
INTEGRATION_KEYS = {"secrets"}
SAST_THRESHOLDS = ("LOW", "MEDIUM", "HIGH")


def load_fleet(path: str | os.PathLike, *, check_files: bool = True, text: str | None = None) -> Fleet:
    """Read and validate a manifest. Raises ManifestError listing every problem found.

    `check_files=False` skips the Dockerfile/build-context checks of local repos (used when a manifest is
    read away from its sources; the same checks then run at build time with the same message). `text`: the
    manifest's content as it was at `path` earlier (relative paths still resolve against `path`'s folder).
    """
    source_file = Path(path).expanduser().resolve()
    problems = _Problems(source_file)
    if text is None and not source_file.is_file():
        raise ManifestError([f"{source_file}: manifest file not found"])
    try:
        document, duplicates = load_single(text if text is not None else source_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError([f"{source_file.name}{line}: not valid YAML: {problem}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError([f"{source_file.name}: cannot read: {exc}"]) from None

    for key, line, first_line in duplicates:
        problems.add(line, f"key '{key}'", f"defined twice in the same mapping (first at line {first_line}); "
                     "the second definition is ignored until the duplicate is removed")
    if not isinstance(document, LineDict):
        problems.add(None, "manifest", "expected a mapping with keys fleet, registry, services, environments")
        raise ManifestError(problems.items)

    _check_keys(problems, document, TOP_KEYS)
    fleet_name = document.get("fleet")
    if not (_is_str(fleet_name) and DNS_LABEL.match(fleet_name)):
        problems.add(_line(document, "fleet"), _where(field_name="fleet"),
                     f"expected a DNS label (lowercase letters, digits, '-'), got {fleet_name!r}")
    registry = document.get("registry")
    if not (_is_str(registry) and is_image_repository(registry)):
        problems.add(_line(document, "registry"), _where(field_name="registry"),
                     f"expected an image repository such as 127.0.0.1:5000/shop, got {registry!r}")

    sast_threshold = document.get("sast_threshold", "medium")
    if not (isinstance(sast_threshold, str) and sast_threshold.upper() in SAST_THRESHOLDS):
        problems.add(_line(document, "sast_threshold"), _where(field_name="sast_threshold"),
                     f"expected one of low, medium, high, got {sast_threshold!r}")
        sast_threshold = "medium"

    e2e = _parse_e2e(problems, document, source_file.parent, check_files)
    registry_auth = _parse_registry_auth(problems, document, source_file.parent, check_files,
                                         registry if _is_str(registry) else None)
    security = _parse_security(problems, document, source_file.parent, check_files)
    raw_services = document.get("services")
    services: dict[str, Service] = {}
    if not isinstance(raw_services, dict) or not raw_services:
        problems.add(_line(document, "services"), _where(field_name="services"),
                     "expected a mapping of at least one service name to its settings")
        raw_services = {}
    for name, raw in raw_services.items():
        service = _parse_service(problems, source_file.parent, raw_services, name, raw, check_files)
        if service is not None:
            services[name] = service

    notifications = _parse_notifications(problems, document, None, None)
    events = _parse_events(problems, document)
    teams = _parse_teams(problems, document)
    environments = _parse_environments(problems, document, set(raw_services), notifications, teams)
    integration_secrets = _parse_integration(problems, document, set(raw_services))
    _check_edges(problems, raw_services, services)

    if problems.items:
        raise ManifestError(problems.items)
    return Fleet(
        name=fleet_name,
        registry=registry,
        services=MappingProxyType(services),
        environments=MappingProxyType(environments),
        source_file=source_file,
        sast_threshold=sast_threshold.upper(),
        e2e=e2e,
        security=security,
        notifications=notifications,
        events=events,
        registry_auth=registry_auth,
        teams=MappingProxyType(teams),
        integration_secrets=MappingProxyType(integration_secrets),
    )


def _parse_integration(problems: _Problems, document: LineDict, service_names: set[str]) -> dict:
    """Top-level `integration: {secrets: {<service>: {<NAME>: {env: <VARIABLE>} or {aws: <id>}}}}`: the secrets
    each service receives in an integration environment (none unless named here)."""
    raw = document.get("integration")
    if raw is None:
        return {}
    if not isinstance(raw, LineDict):
        problems.add(_line(document, "integration"), _where(field_name="integration"),
                     "expected a mapping such as {secrets: {<service>: {<NAME>: {env: <VARIABLE>}}}}")
        return {}
    for key in raw:
        if key not in INTEGRATION_KEYS:
            problems.add(_line(raw, key), _where(field_name=f"integration.{key}"),
                         f"unknown key (expected one of: {', '.join(sorted(INTEGRATION_KEYS))})")
    secrets_raw = raw.get("secrets") or {}
    if not isinstance(secrets_raw, dict):
        problems.add(_line(raw, "secrets"), _where(field_name="integration.secrets"),
                     "expected a mapping of service name to {<NAME>: {env: <VARIABLE>} or {aws: <secret id>}}")
        return {}
    result = {}
    for service, refs in secrets_raw.items():
        if service not in service_names:
            problems.add(_line(secrets_raw, service), _where(field_name=f"integration.secrets.{service}"),
                         f"'{service}' is not a service of this fleet")
            continue
        result[service] = _parse_secret_refs(problems, None, service, secrets_raw, refs,
                                             prefix="integration.secrets")
    return result


def _parse_e2e(problems: _Problems, document: LineDict, root: Path, check_files: bool) -> E2ETests | None:
    raw = document.get("e2e")
    if raw is None:
        return None
    if not isinstance(raw, LineDict) or not _is_str(raw.get("context")):
        problems.add(_line(document, "e2e"), _where(field_name="e2e"),
                     "expected {context: <folder beside this file>, dockerfile: Dockerfile}")
        return None
    _check_keys(problems, raw, E2E_KEYS)
    e2e = E2ETests(context=raw["context"], dockerfile=raw.get("dockerfile", "Dockerfile"), target=raw.get("target"))
    if check_files and not (root / e2e.context / e2e.dockerfile).is_file():
        problems.add(_line(raw, "context"), _where(field_name="e2e.context"),
                     f"Dockerfile '{Path(e2e.context) / e2e.dockerfile}' does not exist in {root}")
    return e2e


SECURITY_KEYS = {"waivers", "scanner", "ecr", "osv", "compliance_blocking", "sbom", "provenance"}
PROVENANCE_KEYS = {"signing_key"}
OSV_KEYS = {"database"}
ECR_KEYS = {"region", "endpoint_url", "registry_id"}
AWS_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")
AWS_ACCOUNT_ID = re.compile(r"^[0-9]{12}$")
DEFAULT_WAIVERS_FILE = "waivers.yaml"


def _parse_security(problems: _Problems, document: LineDict, root: Path, check_files: bool) -> Security:
    """The top-level `security:` block; absent, everything that needs setup is off (and a `waivers.yaml`
    beside the manifest is still used)."""
    raw = document.get("security")
    default_waivers = root / DEFAULT_WAIVERS_FILE
    if raw is None:
        return Security(waivers=default_waivers if default_waivers.is_file() else None)
    if not isinstance(raw, LineDict):
        problems.add(_line(document, "security"), _where(field_name="security"),
                     "expected a mapping such as {scanner: ecr, waivers: waivers.yaml, sbom: true}")
        return Security()

    def report(key: str, message: str, mapping: LineDict = raw) -> None:
        problems.add(_line(mapping, key), _where(field_name=f"security.{key}"), message)

    for key in raw:
        if key not in SECURITY_KEYS:
            report(key, f"unknown key (expected one of: {', '.join(sorted(SECURITY_KEYS))})")

    waivers: Path | None = default_waivers if default_waivers.is_file() else None
    if "waivers" in raw:
        value = raw["waivers"]
        if value is None:
            waivers = None  # `waivers: null` turns the default file off
        elif not _is_str(value) or Path(value).is_absolute() or ".." in Path(value).parts:
            report("waivers", f"expected a path relative to this file (e.g. waivers.yaml), got {value!r}")
        elif check_files and not (root / value).is_file():
            report("waivers", f"waivers file '{value}' does not exist in {root}")
        else:
            waivers = (root / value).resolve()

    scanner = raw.get("scanner", "none")
    if scanner not in SCANNERS:
        report("scanner", f"expected one of {', '.join(SCANNERS)}, got {scanner!r}")
        scanner = "none"

    def scanner_settings(name: str, usage: str):
        """The block of settings only scanner `name` reads: the block when that scanner is chosen, else None
        (a block written for another scanner, or that scanner without its block, is reported)."""
        block = raw.get(name)
        if block is not None and scanner != name:
            report(name, f"{name.upper()} settings only apply with scanner: {name} (scanner is {scanner!r})")
        elif scanner == name and not isinstance(block, LineDict):
            report(name if name in raw else "scanner", f"scanner: {name} needs {name}: {usage}")
        elif scanner == name:
            return block
        return None

    ecr_raw = scanner_settings("ecr", "{region: <AWS region>} (endpoint_url and registry_id are optional)")
    ecr = _parse_ecr(problems, ecr_raw) if ecr_raw is not None else None
    osv_raw = scanner_settings("osv", "{database: <folder of OSV JSON records, or an OSV all.zip, beside this file>}")
    osv = _parse_osv(problems, osv_raw, root, check_files) if osv_raw is not None else None

    compliance_blocking, compliance_blocking_at = None, ""
    if "compliance_blocking" in raw:
        compliance_blocking = _parse_compliance_blocking(problems, raw)
        compliance_blocking_at = f"{problems.file_label}:{_line(raw, 'compliance_blocking')}"

    sbom = raw.get("sbom", True)
    if not isinstance(sbom, bool):
        report("sbom", f"expected true or false, got {sbom!r}")
        sbom = True
    provenance = _parse_provenance(problems, raw) if "provenance" in raw else None
    return Security(waivers=waivers, scanner=scanner, ecr=ecr, osv=osv, compliance_blocking=compliance_blocking,
                    sbom=sbom, provenance=provenance, compliance_blocking_at=compliance_blocking_at)


def _parse_provenance(problems: _Problems, security: LineDict) -> ProvenanceSettings | None:
    """`security.provenance: {signing_key: {env: VARIABLE} | {aws: <secret id>}}`: where the ed25519 key that
    signs each image's provenance is kept. What is written there is never echoed (it may be the key itself)."""
    raw = security["provenance"]
    if not isinstance(raw, LineDict):
        problems.add(_line(security, "provenance"), _where(field_name="security.provenance"),
                     "expected {signing_key: {env: <VARIABLE holding an ed25519 PEM private key>}} "
                     "(or {aws: <Secrets Manager secret id>})")
        return None
    for key in raw:
        if key not in PROVENANCE_KEYS:
            problems.add(_line(raw, key), _where(field_name=f"security.provenance.{key}"),
                         f"unknown key (expected one of: {', '.join(sorted(PROVENANCE_KEYS))})")
    ref = raw.get("signing_key")
    if not (isinstance(ref, LineDict) and len(ref) == 1 and next(iter(ref)) in ("aws", "env")
            and _is_str(next(iter(ref.values())))):
        problems.add(_line(raw, "signing_key") if "signing_key" in raw else _line(security, "provenance"),
                     _where(field_name="security.provenance.signing_key"),
                     "the signing key is a secret: name where it is kept, {env: <VARIABLE of the orchestrator>} "
                     "or {aws: <Secrets Manager secret id>}, never the key itself")
        return None
    (source, name), = ref.items()
    if source == "env" and not ENV_VAR_NAME.match(name):
        problems.add(_line(raw, "signing_key"), _where(field_name="security.provenance.signing_key"),
                     "expected an environment variable name (letters, digits, '_')")
        return None
    return ProvenanceSettings(signing_key=SecretRef(source=source, name=name))


def _parse_osv(problems: _Problems, raw: LineDict, root: Path, check_files: bool) -> OsvSettings | None:
    """Where the OSV database is; its records are read (and their problems reported) by the scan itself."""
    def report(key: str, message: str) -> None:
        problems.add(_line(raw, key), _where(field_name=f"security.osv.{key}"), message)

    for key in raw:
        if key not in OSV_KEYS:
            report(key, f"unknown key (expected one of: {', '.join(sorted(OSV_KEYS))})")
    value = raw.get("database")
    if not _is_str(value) or Path(value).is_absolute() or ".." in Path(value).parts:
        report("database", "expected a path relative to this file: a folder of OSV JSON records or an OSV "
               f"all.zip (e.g. osv or osv/PyPI-all.zip), got {value!r}")
        return None
    path = (root / value).resolve()
    if check_files and not (path.is_dir() or (path.is_file() and path.suffix == ".zip")):
        what = "is neither a folder nor a .zip file" if path.exists() else "does not exist"
        report("database", f"OSV database '{value}' {what} in {root}")
        return None
    return OsvSettings(database=path)


def _parse_ecr(problems: _Problems, raw: LineDict, prefix: str = "security.ecr") -> EcrSettings | None:
    def report(key: str, message: str) -> None:
        problems.add(_line(raw, key), _where(field_name=f"{prefix}.{key}"), message)

    for key in raw:
        if key not in ECR_KEYS:
            report(key, f"unknown key (expected one of: {', '.join(sorted(ECR_KEYS))})")
    region = raw.get("region")
    ok = True
    if not (_is_str(region) and AWS_REGION.match(region)):
        report("region", f"expected an AWS region such as eu-west-1, got {region!r}")
        ok = False
    endpoint_url = raw.get("endpoint_url")
    if endpoint_url is not None and not (_is_str(endpoint_url) and re.match(r"^https?://[^\s/]+", endpoint_url)):
        report("endpoint_url", f"expected an http(s) URL such as http://127.0.0.1:5001, got {endpoint_url!r} "
               f"(leave it out to use ${AWS_ENDPOINT_URL_VARIABLE}, else AWS itself)")
        ok = False
    registry_id = raw.get("registry_id")
    if isinstance(registry_id, int) and not isinstance(registry_id, bool):
        registry_id = f"{registry_id:012d}"  # YAML reads an unquoted account id as a number
    if registry_id is not None and not (isinstance(registry_id, str) and AWS_ACCOUNT_ID.match(registry_id)):
        report("registry_id", f"expected a 12-digit AWS account id, got {raw.get('registry_id')!r}")
        ok = False
    return EcrSettings(region=region, endpoint_url=endpoint_url, registry_id=registry_id) if ok else None


REGISTRY_AUTH_KEYS = {"username", "password", "docker_config", "ecr"}
REGISTRY_AUTH_SHAPES = ("{username: <name>, password: {env: <VARIABLE>} or {aws: <Secrets Manager secret id>}}, "
                        "{docker_config: <path to a Docker config.json>} or {ecr: {region: <AWS region>}}")


def _parse_registry_auth(problems: _Problems, document: LineDict, root: Path, check_files: bool,
                         registry: str | None) -> RegistryAuth | None:
    """The top-level `registry_auth:` block: where the credentials for the fleet's registry are kept. A value is
    never written here and never echoed by an error (what was written may be the password itself)."""
    raw = document.get("registry_auth")
    if raw is None:
        return None
    if not isinstance(raw, LineDict) or not raw:
        problems.add(_line(document, "registry_auth"), _where(field_name="registry_auth"),
                     f"expected one of {REGISTRY_AUTH_SHAPES}")
        return None

    def report(key: str, message: str, mapping: LineDict = raw, field_name: str | None = None) -> None:
        problems.add(_line(mapping, key), _where(field_name=field_name or f"registry_auth.{key}"), message)

    for key in raw:
        if key not in REGISTRY_AUTH_KEYS:
            report(key, f"unknown key (expected one of: {', '.join(sorted(REGISTRY_AUTH_KEYS))})")
    kinds = [kind for kind, keys in (("username/password", ("username", "password")),
                                     ("docker_config", ("docker_config",)), ("ecr", ("ecr",)))
             if any(k in raw for k in keys)]
    if len(kinds) > 1:
        report(next(iter(raw)), f"give one way to log in, not {' and '.join(kinds)}", field_name="registry_auth")
        return None
    if not kinds:
        return None  # only unknown keys, reported above

    if kinds[0] == "username/password":
        username, password = raw.get("username"), raw.get("password")
        ok = True
        if not (_is_str(username) and not any(c.isspace() or c == ":" for c in username)):
            report("username" if "username" in raw else "password",
                   "expected the user name the registry knows (text without spaces or ':')",
                   field_name="registry_auth.username")
            ok = False
        if not (isinstance(password, LineDict) and len(password) == 1 and next(iter(password)) in ("aws", "env")
                and _is_str(next(iter(password.values())))):
            # Never echoed: a string here is most likely the password itself.
            report("password" if "password" in raw else "username",
                   "the password is a secret: name where it is kept, {env: <VARIABLE of the orchestrator>} or "
                   "{aws: <Secrets Manager secret id>}, never the value itself",
                   field_name="registry_auth.password")
            ok = False
        elif next(iter(password)) == "env" and not ENV_VAR_NAME.match(next(iter(password.values()))):
            report("password", "expected an environment variable name (letters, digits, '_')")
            ok = False
        if not ok:
            return None
        (source, name), = password.items()
        return RegistryAuth(username=username, password=SecretRef(source=source, name=name))

    if kinds[0] == "docker_config":
        value = raw["docker_config"]
        if not _is_str(value):
            report("docker_config", f"expected the path of a Docker config.json, got {value!r}")
            return None
        path = Path(value).expanduser()
        path = path if path.is_absolute() else (root / path)
        if check_files and not path.is_file():
            report("docker_config", f"Docker config file '{value}' does not exist (looked at {path})")
            return None
        return RegistryAuth(docker_config=path.resolve())

    ecr_raw = raw["ecr"]
    host_match = ECR_HOST.match(registry.split("/", 1)[0]) if registry else None
    if ecr_raw is None and host_match:
        ecr_raw = empty_line_dict(_line(raw, "ecr") or 0)
    if not isinstance(ecr_raw, LineDict):
        report("ecr", "expected {region: <AWS region>} (endpoint_url and registry_id are optional; with an ECR "
               "registry such as 123456789012.dkr.ecr.eu-west-1.amazonaws.com/shop both come from its host)")
        return None
    if host_match and "region" not in ecr_raw:
        derived = empty_line_dict(ecr_raw.line)
        derived.update(ecr_raw)
        derived.key_lines = dict(getattr(ecr_raw, "key_lines", {}))
        derived["region"] = host_match.group("region")
        derived.setdefault("registry_id", host_match.group("account"))
        ecr_raw = derived
    ecr = _parse_ecr(problems, ecr_raw, prefix="registry_auth.ecr")
    return RegistryAuth(ecr=ecr) if ecr is not None else None


def _parse_compliance_blocking(problems: _Problems, raw: LineDict) -> tuple[str, ...] | None:
    """The list's shape only: which ids the installed tools know is checked by
    release_graph.security.compliance.rule_id_problems (`release-graph validate`, the compliance check)."""
    field_name = "security.compliance_blocking"
    line = _line(raw, "compliance_blocking")
    rules = raw["compliance_blocking"]
    if rules is None:
        rules = []
    if not isinstance(rules, list):
        problems.add(line, _where(field_name=field_name),
                     f"expected a list of rule ids such as [DL3007, CKV_DOCKER_3], got {rules!r}")
        return None
    bad_types = [r for r in rules if not isinstance(r, str) or not r.strip()]
    if bad_types:
        problems.add(line, _where(field_name=field_name),
                     f"rule ids must be text such as DL3007 or CKV_DOCKER_2, got {bad_types!r}")
        return None
    return tuple(dict.fromkeys(rules))


def _parse_service(
    problems: _Problems, root: Path, parent: LineDict, name: Any, raw: Any, check_files: bool
) -> Service | None:
    line = _line(parent, name)
    if not (isinstance(name, str) and DNS_LABEL.match(name)):
        problems.add(line, _where(service=str(name)),
                     "service names must be DNS labels (lowercase letters, digits, '-', at most 63)")
    elif name in RESERVED_SERVICE_NAMES:
        problems.add(line, _where(service=name), f"'{name}' is reserved (the fleet-level asset group)")
    if raw is None:
        raw = empty_line_dict(line or 0)
    if not isinstance(raw, LineDict):
        problems.add(line, _where(service=str(name)), "expected a mapping of service settings")
        return None
    where = {"service": str(name)}
    _check_keys(problems, raw, SERVICE_KEYS, **where)

    repo, build_raw, image = raw.get("repo"), raw.get("build"), raw.get("image")
    infrastructure = raw.get("infrastructure", False)
    if not isinstance(infrastructure, bool):
        problems.add(_line(raw, "infrastructure"), _where(field_name="infrastructure", **where),
                     f"expected true or false, got {infrastructure!r}")
    if image is not None and (build_raw is not None or repo is not None):
        problems.add(_line(raw, "image"), _where(field_name="image", **where),
                     "a service is either built (repo + build) or prebuilt (image), not both")
    elif image is None and build_raw is None:
        problems.add(raw.line, _where(field_name="build", **where),
                     "missing: give build (with repo) to build the service, or image for a prebuilt one")
    elif image is not None and not (_is_str(image) and is_image_reference(image)):
        problems.add(_line(raw, "image"), _where(field_name="image", **where),
                     f"not a valid image reference: {image!r}")
    if infrastructure is True and image is None:
        problems.add(_line(raw, "infrastructure"), _where(field_name="infrastructure", **where),
                     "infrastructure services are prebuilt: give an image")

    repo_url = None
    if build_raw is not None:
        if not _is_str(repo):
            problems.add(_line(raw, "repo") or raw.line, _where(field_name="repo", **where),
                         "a built service needs repo: a local path (relative to this file) or a git URL")
        elif GIT_URL.match(repo):
            repo_url = repo
        else:
            repo_url = str((root / repo).resolve())
    branch = raw.get("branch", "main")
    if not (_is_str(branch) and GIT_BRANCH.match(branch)):
        problems.add(_line(raw, "branch"), _where(field_name="branch", **where),
                     f"not a valid git branch name: {branch!r}")
    path = raw.get("path", ".")
    if not _is_str(path) or Path(path).is_absolute() or ".." in Path(path).parts:
        problems.add(_line(raw, "path"), _where(field_name="path", **where),
                     f"expected a folder inside the repo (relative, no '..'), got {path!r}")
        path = "."

    build = None
    if build_raw is not None:
        build = _parse_build(problems, raw, build_raw, where)
    if build is not None and check_files and repo_url is not None and not GIT_URL.match(repo):
        problem = build_files_problem(Path(repo_url), path, build)
        if problem:
            problems.add(_line(raw, "build"), _where(field_name="build", **where), problem)

    port = raw.get("port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
        problems.add(_line(raw, "port"), _where(field_name="port", **where),
                     f"expected a port number between 1 and 65535, got {port!r}")
    health = raw.get("health", "/healthz")
    if health is not None and not (_is_str(health) and health.startswith("/")):
        problems.add(_line(raw, "health"), _where(field_name="health", **where),
                     f"expected an HTTP path starting with '/' (or null for none), got {health!r}")

    owners = raw.get("owners", [])
    if not isinstance(owners, list):
        problems.add(_line(raw, "owners"), _where(field_name="owners", **where), "expected a list")
        owners = []
    for owner in owners:
        if not (isinstance(owner, str) and (EMAIL.match(owner) or TEAM.match(owner))):
            problems.add(_line(raw, "owners"), _where(field_name="owners", **where),
                         f"owner {owner!r} is neither an email address nor team:<name>")

    for key in ("description", "language", "deploy_unit"):
        value = raw.get(key)
        if value is not None and not _is_str(value):
            problems.add(_line(raw, key), _where(field_name=key, **where), f"expected text, got {value!r}")
    deploy_unit = raw.get("deploy_unit")
    if _is_str(deploy_unit) and not DNS_LABEL.match(deploy_unit):
        problems.add(_line(raw, "deploy_unit"), _where(field_name="deploy_unit", **where),
                     "expected a DNS label naming the unit")

    env = _string_map(problems, raw, "env", where)
    secrets_as = raw.get("secrets_as", "file")
    if secrets_as not in SECRET_DELIVERIES:
        problems.add(_line(raw, "secrets_as"), _where(field_name="secrets_as", **where),
                     f"expected file (the default: each secret a read-only file under {SECRETS_DIR_IN_CONTAINER}, "
                     f"its path in <NAME>_FILE) or env (environment variables, shown by the engine's inspect), "
                     f"got {secrets_as!r}")
        secrets_as = "file"
    entrypoint = _argument_list(problems, raw, "entrypoint", where)
    command = _argument_list(problems, raw, "command", where)
    edges = _parse_edges(problems, raw, where)
    hardening = _parse_hardening(problems, raw, where)
    resources = _parse_resources(problems, raw, where)

    # A service with problems is still returned so edges and cycles can be checked; the problems
    # make load_fleet raise, so it never reaches a graph.
    return Service(
        name=str(name),
        repo=repo,
        repo_url=repo_url,
        branch=branch,
        path=path,
        build=build,
        image=image,
        port=port,
        health=health,
        depends_on=edges,
        owners=tuple(owners),
        description=raw.get("description") or "",
        language=raw.get("language"),
        infrastructure=infrastructure,
        deploy_unit=deploy_unit,
        env=env,
        entrypoint=entrypoint,
        command=command,
        secrets_as=secrets_as,
        hardening=hardening,
        resources=resources,
    )


def _parse_resources(problems: _Problems, raw: LineDict, where: dict) -> Resources:
    """`resources: {requests: {cpu, memory}, limits: {cpu, memory}}`, each a Kubernetes quantity; a request above
    its limit is refused (the cluster would refuse the Deployment)."""
    value = raw.get("resources")
    if value is None:
        return Resources()
    if not isinstance(value, LineDict):
        problems.add(_line(raw, "resources"), _where(field_name="resources", **where),
                     "expected a mapping such as {requests: {cpu: 100m, memory: 128Mi}, limits: {memory: 256Mi}}")
        return Resources()
    _check_keys(problems, value, RESOURCES_KEYS, service=where["service"])
    found: dict[str, str] = {}
    for kind in RESOURCES_KEYS & set(value):
        amounts = value[kind]
        if not isinstance(amounts, LineDict):
            problems.add(_line(value, kind), _where(field_name=f"resources.{kind}", **where),
                         "expected a mapping of cpu and/or memory to a quantity")
            continue
        _check_keys(problems, amounts, RESOURCE_KEYS, service=where["service"])
        for resource in RESOURCE_KEYS & set(amounts):
            amount = str(amounts[resource]) if isinstance(amounts[resource], (int, float, str)) else None
            if isinstance(amounts[resource], bool) or not amount or not RESOURCE_QUANTITY[resource].match(amount):
                example = "250m or 0.5 (cores)" if resource == "cpu" else "256Mi or 1Gi"
                problems.add(_line(amounts, resource), _where(field_name=f"resources.{kind}.{resource}", **where),
                             f"expected a quantity such as {example}, got {amounts[resource]!r}")
                continue
            found[f"{resource}_{kind.removesuffix('s')}"] = amount
    for resource in RESOURCE_KEYS:
        request, limit = found.get(f"{resource}_request"), found.get(f"{resource}_limit")
        if request and limit and _quantity(request) > _quantity(limit):
            problems.add(_line(value, "requests"), _where(field_name=f"resources.requests.{resource}", **where),
                         f"the request {request} is above the limit {limit}")
    return Resources(**found)


def _quantity(amount: str) -> float:
    """A Kubernetes quantity as a number (cores, or bytes), to compare a request with its limit."""
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix in sorted(units, key=len, reverse=True):
        if amount.endswith(suffix):
            return float(amount[: -len(suffix)]) * units[suffix]
    return float(amount)


def _parse_kubernetes(problems: _Problems, name: str, raw: LineDict, target: str) -> KubernetesCluster | None:
    """`kubernetes: {namespace, version, context}`: required with `target: kubernetes`, refused otherwise."""
    value = raw.get("kubernetes")

    def report(key: str, message: str) -> None:
        problems.add(_line(value if key != "kubernetes" else raw, key),
                     _where(environment=name, field_name="kubernetes" + (f".{key}" if key != "kubernetes" else "")),
                     message)

    if target != "kubernetes":
        if value is not None:
            report("kubernetes", f"only applies with target: kubernetes (this environment's target is {target})")
        return None
    if not isinstance(value, LineDict):
        report("kubernetes", "target: kubernetes needs {namespace: <namespace>, version: <the cluster's version, "
                             "e.g. '1.30'>} and optionally context: <kube context>")
        return None
    reported = len(problems.items)
    _check_keys(problems, value, KUBERNETES_KEYS, environment=name)
    namespace, version, context = value.get("namespace"), value.get("version"), value.get("context")
    if not (isinstance(namespace, str) and DNS_LABEL.match(namespace)):
        report("namespace", f"expected a Kubernetes namespace (a DNS label), got {namespace!r}")
    supported = _kubernetes_versions()
    if not (isinstance(version, str) and KUBERNETES_VERSION.match(version)):
        report("version", f"expected the cluster's version as a quoted string such as '1.30', got {version!r}")
    elif version not in supported:
        report("version", f"no schemas for Kubernetes {version} (objects are validated against them before any "
                          f"API call); known: {supported[0]} to {supported[-1]}")
    if context is not None and not _is_str(context):
        report("context", f"expected the name of a kube context, got {context!r}")
    if len(problems.items) > reported:
        return None
    return KubernetesCluster(namespace=namespace, version=version, context=context)


def _kubernetes_versions() -> list[str]:
    """The cluster versions whose schemas kubernetes-validate holds, as 1.N."""
    from kubernetes_validate.utils import all_versions

    versions = {".".join(v.split(".")[:2]) for v in all_versions()}
    return sorted(versions, key=lambda v: int(v.split(".")[1]))


def _parse_hardening(problems: _Problems, raw: LineDict, where: dict) -> Hardening:
    """`hardening:` — the folders a service may write to, and its opt-outs of immutability, each with a reason."""
    value = raw.get("hardening")
    if value is None:
        return Hardening()
    if not isinstance(value, LineDict):
        problems.add(_line(raw, "hardening"), _where(field_name="hardening", **where),
                     "expected a mapping such as {tmpfs: [/var/cache/app]} or {writable_root: <why it must write>}")
        return Hardening()
    _check_keys(problems, value, HARDENING_KEYS, service=where["service"])
    tmpfs = value.get("tmpfs", [])
    if not isinstance(tmpfs, list) or not all(_is_str(path) and PurePosixPath(path).is_absolute()
                                              and ".." not in PurePosixPath(path).parts and path != "/"
                                              for path in tmpfs):
        problems.add(_line(value, "tmpfs"), _where(field_name="hardening.tmpfs", **where),
                     f"expected a list of absolute folders inside the container, such as [/var/cache/app], "
                     f"got {tmpfs!r}")
        tmpfs = []
    reasons = {}
    for key in ("writable_root", "run_as_root", "privilege_escalation"):
        reason = value.get(key)
        if reason is not None and not (_is_str(reason) and reason.strip()):
            problems.add(_line(value, key), _where(field_name=f"hardening.{key}", **where),
                         f"expected the reason this service needs it (text), got {reason!r}")
            reason = None
        reasons[key] = reason
    capabilities, capabilities_reason = (), None
    granted = value.get("capabilities")
    if granted is not None:
        if not isinstance(granted, LineDict):
            problems.add(_line(value, "capabilities"), _where(field_name="hardening.capabilities", **where),
                         "expected {add: [NET_BIND_SERVICE], reason: <why it needs them>}")
        else:
            _check_keys(problems, granted, CAPABILITIES_KEYS, service=where["service"])
            names = granted.get("add", [])
            if not isinstance(names, list) or not names or not all(_is_str(n) for n in names):
                problems.add(_line(granted, "add"), _where(field_name="hardening.capabilities.add", **where),
                             f"expected a list of Linux capabilities such as [NET_BIND_SERVICE], got {names!r}")
                names = []
            names = [capability_name(n) for n in names]
            unknown = sorted(set(names) - LINUX_CAPABILITIES)
            if unknown:
                problems.add(_line(granted, "add"), _where(field_name="hardening.capabilities.add", **where),
                             f"unknown Linux capabilities {unknown} (capabilities(7), e.g. NET_BIND_SERVICE)")
            capabilities_reason = granted.get("reason")
            if not (_is_str(capabilities_reason) and capabilities_reason.strip()):
                problems.add(_line(granted, "reason") or _line(value, "capabilities"),
                             _where(field_name="hardening.capabilities.reason", **where),
                             "expected the reason this service needs these capabilities (text)")
                capabilities_reason = None
            capabilities = tuple(sorted(set(names) & LINUX_CAPABILITIES))
    return Hardening(tmpfs=tuple(dict.fromkeys(tmpfs)), capabilities=capabilities,
                     capabilities_reason=capabilities_reason, **reasons)


def _argument_list(problems: _Problems, raw: LineDict, key: str, where: dict) -> tuple[str, ...] | None:
    """`entrypoint` / `command`: a list of arguments, run without a shell (write ["sh", "-c", "..."] for one)."""
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str | int | float) and not isinstance(item, bool)
                                              for item in value):
        problems.add(_line(raw, key), _where(field_name=key, **where),
                     f"expected a list of arguments (text), such as [\"serve\", \"--port\", \"8080\"], got {value!r}")
        return None
    return tuple(str(item) for item in value)


def build_files_problem(repo_dir: Path, path: str, build: Build) -> str | None:
    """The same message at validation (local repos) and at build time (the exported commit)."""
    context = repo_dir / path / build.context
    if not context.is_dir():
        return f"build context '{Path(path) / build.context}' does not exist in {repo_dir}"
    if not (context / build.dockerfile).is_file():
        return f"Dockerfile '{Path(path) / build.context / build.dockerfile}' does not exist in {repo_dir}"
    return None


def _parse_build(problems: _Problems, raw: LineDict, build_raw: Any, where: dict) -> Build | None:
    if not isinstance(build_raw, LineDict):
        problems.add(_line(raw, "build"), _where(field_name="build", **where),
                     "expected a mapping such as {dockerfile: Dockerfile, test_target: test}")
        return None
    _check_keys(problems, build_raw, BUILD_KEYS, service=where["service"])
    values = {}
    for key, default in (("context", "."), ("dockerfile", "Dockerfile")):
        value = build_raw.get(key, default)
        if not _is_str(value) or Path(value).is_absolute() or ".." in Path(value).parts:
            problems.add(_line(build_raw, key), _where(field_name=f"build.{key}", **where),
                         f"expected a relative path inside the repo, got {value!r}")
            value = default
        values[key] = value
    for key, default in (("target", None), ("test_target", "test"), ("integration_target", None)):
        value = build_raw.get(key, default)
        if value is not None and not _is_str(value):
            problems.add(_line(build_raw, key), _where(field_name=f"build.{key}", **where),
                         f"expected a Dockerfile stage name or null, got {value!r}")
            value = default
        values[key] = value
    args = _string_map(problems, build_raw, "args", where, label="build.args")
    return Build(args=args, **values)


def _string_map(problems: _Problems, raw: LineDict, key: str, where: dict, label: str | None = None):
    value = raw.get(key, {})
    label = label or key
    if value is None:
        value = {}
    if not isinstance(value, dict):
        problems.add(_line(raw, key), _where(field_name=label, **where), "expected a mapping of names to values")
        return MappingProxyType({})
    result = {}
    for name, item in value.items():
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            problems.add(_line(value, name), _where(field_name=f"{label}.{name}", **where),
                         f"expected a text or number value, got {item!r}")
        else:
            result[str(name)] = str(item)
    return MappingProxyType(result)


def _parse_edges(problems: _Problems, raw: LineDict, where: dict) -> tuple[Edge, ...]:
    items = raw.get("depends_on", [])
    if items is None:
        return ()
    if not isinstance(items, list):
        problems.add(_line(raw, "depends_on"), _where(field_name="depends_on", **where),
                     "expected a list of service names or {name: ..., soft: true}")
        return ()
    edges = []
    line = _line(raw, "depends_on")
    for item in items:
        if isinstance(item, str):
            edges.append(Edge(name=item))
            continue
        if not isinstance(item, LineDict) or not _is_str(item.get("name")):
            problems.add(line, _where(field_name="depends_on", **where),
                         f"expected a service name or a mapping with 'name', got {item!r}")
            continue
        _check_keys(problems, item, EDGE_KEYS, service=where["service"])
        flags = {}
        for flag in ("soft", "startup_only"):
            value = item.get(flag, False)
            if not isinstance(value, bool):
                problems.add(_line(item, flag), _where(field_name=f"depends_on.{flag}", **where),
                             f"expected true or false, got {value!r}")
                value = False
            flags[flag] = value
        evidence = item.get("evidence", [])
        if isinstance(evidence, str):
            evidence = [evidence]
        if not isinstance(evidence, list) or not all(isinstance(e, str) for e in evidence):
            problems.add(_line(item, "evidence"), _where(field_name="depends_on.evidence", **where),
                         "expected a list of texts")
            evidence = []
        edges.append(Edge(name=item["name"], evidence=tuple(evidence), **flags))
    return tuple(edges)


def _parse_teams(problems: _Problems, document: LineDict) -> dict[str, tuple[str, ...]]:
    """Top-level `teams:`: who `team:<name>` is in an environment's approvers, each member an email."""
    raw = document.get("teams")
    if raw is None:
        return {}
    if not isinstance(raw, LineDict):
        problems.add(_line(document, "teams"), _where(field_name="teams"),
                     "expected a mapping of team name to a list of member emails, "
                     "such as {release: [ann@shop.example]}")
        return {}
    teams = {}
    for name, members in raw.items():
        def report(message: str, name=name) -> None:
            problems.add(_line(raw, name), _where(field_name=f"teams.{name}"), message)

        if not (isinstance(name, str) and TEAM_NAME.match(name)):
            report("a team name is letters, digits, '.', '_' and '-'")
            continue
        if not isinstance(members, list) or not members:
            report("expected a list of at least one member email")
            continue
        bad = [m for m in members if not (isinstance(m, str) and EMAIL.match(m))]
        for member in bad:
            report(f"member {member!r} is not an email address (a team lists people, not other teams)")
        if not bad:
            teams[name] = tuple(members)
    return teams


def _parse_environments(problems: _Problems, document: LineDict, service_names: set,
                        notifications: Notifications | None,
                        teams: dict[str, tuple[str, ...]] | None = None) -> dict[str, Environment]:
    raw_envs = document.get("environments")
    if not isinstance(raw_envs, dict) or not raw_envs:
        problems.add(_line(document, "environments"), _where(field_name="environments"),
                     "expected a mapping of at least one environment (in promotion order)")
        return {}
    environments = {}
    for name, raw in raw_envs.items():
        line = _line(raw_envs, name)
        if isinstance(name, str) and (name in RESERVED_ENVIRONMENT_NAMES or name.endswith("_approval")):
            problems.add(line, _where(environment=name),
                         f"'{name}' is reserved (it names a stage of every service's release)")
            continue
        if not (isinstance(name, str) and DNS_LABEL.match(name)):
            problems.add(line, _where(environment=str(name)), "environment names must be DNS labels")
            continue
        if raw is None:
            raw = LineDict()
            raw.line, raw.key_lines = line or 0, {}
        if not isinstance(raw, LineDict):
            problems.add(line, _where(environment=name), "expected a mapping such as {target: docker}")
            continue
        environments[name] = _parse_environment(problems, name, raw, service_names, notifications, teams or {})
    return environments


def _parse_environment(problems: _Problems, name: str, raw: LineDict, service_names: set,
                       fleet_notifications: Notifications | None = None,
                       teams: dict[str, tuple[str, ...]] | None = None) -> Environment:
    def report(key: str, message: str) -> None:
        problems.add(_line(raw, key), _where(environment=name, field_name=key), message)

    _check_keys(problems, raw, ENVIRONMENT_KEYS, environment=name)
    target = raw.get("target", "docker")
    if target not in TARGETS:
        report("target", f"expected one of {', '.join(TARGETS)}, got {target!r}")
    approval = raw.get("approval")
    if approval is not None and approval not in APPROVAL_MODES:
        report("approval", f"expected 'required' or no approval key, got {approval!r}")
    approvers = raw.get("approvers", [])
    if not isinstance(approvers, list):
        report("approvers", "expected a list of emails or team:<name>")
        approvers = []
    for approver in approvers:
        if not (isinstance(approver, str) and (EMAIL.match(approver) or TEAM.match(approver))):
            report("approvers", f"approver {approver!r} is neither an email address nor team:<name>")
    if approvers and approval is None:
        report("approvers", "approvers only apply with approval: required")
    author_cannot_approve = raw.get("author_cannot_approve", False)
    if not isinstance(author_cannot_approve, bool):
        report("author_cannot_approve", f"expected true or false, got {author_cannot_approve!r}")
    eligible, resolved = _eligible_approvers(report, approvers, teams or {})
    approvals_required = raw.get("approvals_required", 1)
    if _number(report, "approvals_required", approvals_required, minimum=1, integer=True) is None:
        approvals_required = 1
    elif approval is None and "approvals_required" in raw:
        report("approvals_required", "approvals_required only applies with approval: required")
    elif approvers and resolved and len(eligible) < approvals_required:
        report("approvals_required", f"{approvals_required} distinct approvals are required but the approvers "
               f"resolve to {len(eligible)} "
               f"({', '.join(eligible) or 'nobody'}): the environment could never deploy")
    expires_after = raw.get("approval_expires_after_hours")
    if expires_after is not None:
        if _number(report, "approval_expires_after_hours", expires_after, minimum=0.01) is None:
            expires_after = None
        elif approval is None:
            report("approval_expires_after_hours", "approval_expires_after_hours only applies with approval: required")
    branch = raw.get("branch")
    if branch is not None and not (_is_str(branch) and GIT_BRANCH.match(branch)):
        report("branch", f"not a valid git branch name: {branch!r}")
    scan_threshold = raw.get("scan_threshold")
    if scan_threshold is not None:
        if isinstance(scan_threshold, str) and scan_threshold.upper() in SCAN_THRESHOLDS:
            scan_threshold = scan_threshold.upper()
        else:
            report("scan_threshold", f"expected one of critical, high, medium, low, got {scan_threshold!r}")

    def per_service(key: str) -> dict:
        value = raw.get(key, {}) or {}
        if not isinstance(value, dict):
            report(key, "expected a mapping of service name to settings")
            return {}
        for service in value:
            if service not in service_names:
                problems.add(_line(value, service), _where(environment=name, field_name=f"{key}.{service}"),
                             f"'{service}' is not a service of this fleet")
        return {k: v for k, v in value.items() if k in service_names}

    publish = {}
    for service, port in per_service("publish").items():
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            problems.add(_line(raw["publish"], service), _where(environment=name, field_name=f"publish.{service}"),
                         f"expected a host port between 1 and 65535, got {port!r}")
        else:
            publish[service] = port
    config = {}
    for service in per_service("config"):
        config[service] = _string_map(problems, raw["config"], service, {"environment": name},
                                      label=f"config.{service}")
    secrets = {}
    for service, refs in per_service("secrets").items():
        secrets[service] = _parse_secret_refs(problems, name, service, raw["secrets"], refs)
    rollout = _parse_rollout(problems, name, raw)
    _check_rollout_measured_on(problems, name, raw, target, rollout)
    return Environment(
        name=name,
        target=target,
        approval=approval,
        approvers=tuple(a for a in approvers if isinstance(a, str)),
        author_cannot_approve=author_cannot_approve is True,
        eligible_approvers=eligible,
        approvals_required=approvals_required,
        approval_expires_after_hours=expires_after,
        branch=branch,
        publish=MappingProxyType(publish),
        config=MappingProxyType(config),
        secrets=MappingProxyType(secrets),
        scan_threshold=scan_threshold,
        rollout=rollout,
        notifications=_parse_notifications(problems, raw, name, fleet_notifications),
        kubernetes=_parse_kubernetes(problems, name, raw, target),
    )


NOTIFICATIONS_KEYS = {"channels", "events", "waiting_limit_minutes", "ui_url"}
CHANNEL_KEYS = {
    "sns": {"type", "topic_arn", "region", "endpoint_url"},
    "slack": {"type", "url_env"},
    "webhook": {"type", "url_env", "hmac_key_env"},
}
SNS_TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z]{2}(-[a-z]+)+-[0-9]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$")
# Keys that would hold a secret itself: the manifest names the variable that holds it instead.
SECRET_IN_MANIFEST = {"url": "url_env", "hmac_key": "hmac_key_env", "webhook_url": "url_env", "secret": "hmac_key_env"}


def _parse_notifications(problems: _Problems, parent: LineDict, environment: str | None,
                         base: Notifications | None) -> Notifications | None:
    """The `notifications:` block at the top (`environment` None) or of one environment, where each key given
    replaces the top-level one (`channels` as a whole) and the others are inherited from `base`."""
    raw = parent.get("notifications")
    if raw is None:
        return base

    def report(mapping: LineDict, key: str, field_name: str, message: str) -> None:
        problems.add(_line(mapping, key) or _line(parent, "notifications"),
                     _where(environment=environment, field_name=field_name), message)

    if not isinstance(raw, LineDict):
        report(parent, "notifications", "notifications", "expected a mapping such as "
               "{channels: {team-chat: {type: slack, url_env: SLACK_WEBHOOK_URL}}, events: [failed]}")
        return base
    for key in raw:
        if key not in NOTIFICATIONS_KEYS:
            report(raw, key, f"notifications.{key}",
                   f"unknown key (expected one of: {', '.join(sorted(NOTIFICATIONS_KEYS))})")
    settings = base or Notifications()
    values: dict[str, Any] = {}
    if "channels" in raw:
        values["channels"] = _parse_channels(problems, raw, environment, report)
    elif base is None:
        report(raw, "notifications", "notifications.channels",
               "missing: at least one channel, e.g. {team-chat: {type: slack, url_env: SLACK_WEBHOOK_URL}}"
               + ("" if environment is None else " (here or in the top-level notifications)"))
    if "events" in raw:
        events = raw["events"]
        if not isinstance(events, list) or any(e not in NOTIFICATION_EVENTS for e in events):
            report(raw, "events", "notifications.events",
                   f"expected a list of {', '.join(NOTIFICATION_EVENTS)} (or [] for none), got {events!r}")
        else:
            values["events"] = tuple(dict.fromkeys(events))
    if "waiting_limit_minutes" in raw:
        limit = raw["waiting_limit_minutes"]
        if isinstance(limit, bool) or not isinstance(limit, int | float) or not limit > 0:
            report(raw, "waiting_limit_minutes", "notifications.waiting_limit_minutes",
                   f"expected a number of minutes greater than 0 (a stage waiting longer is notified), got {limit!r}")
        else:
            values["waiting_limit_minutes"] = float(limit)
    if "ui_url" in raw:
        ui_url = raw["ui_url"]
        if not (_is_str(ui_url) and HTTP_URL.match(ui_url)):
            report(raw, "ui_url", "notifications.ui_url",
                   f"expected the Dagster UI's http(s) URL such as http://127.0.0.1:3000, got {ui_url!r}")
        else:
            values["ui_url"] = ui_url.rstrip("/")
    return replace(settings, **values)


def _parse_channels(problems: _Problems, raw: LineDict, environment: str | None, report) -> tuple:
    channels_raw = raw["channels"]
    if not isinstance(channels_raw, LineDict) or not channels_raw:
        report(raw, "channels", "notifications.channels",
               "expected a mapping of channel name to its settings, e.g. "
               "{team-chat: {type: slack, url_env: SLACK_WEBHOOK_URL}}")
        return ()
    channels = []
    for name, settings in channels_raw.items():
        field_name = f"notifications.channels.{name}"
        if not (isinstance(name, str) and DNS_LABEL.match(name)):
            report(channels_raw, name, field_name, "channel names must be DNS labels (lowercase letters, digits, '-')")
            continue
        if not isinstance(settings, LineDict):
            report(channels_raw, name, field_name,
                   "expected a mapping such as {type: webhook, url_env: AUDIT_WEBHOOK_URL, "
                   "hmac_key_env: AUDIT_WEBHOOK_KEY}")
            continue
        channel = _parse_channel(problems, channels_raw, name, settings, environment, report)
        if channel is not None:
            channels.append(channel)
    return tuple(channels)


def _parse_channel(problems: _Problems, parent: LineDict, name: str, raw: LineDict, environment: str | None,
                   report) -> NotificationChannel | None:
    prefix = f"notifications.channels.{name}"
    kind = raw.get("type")
    if kind is None:
        report(parent, name, f"{prefix}.type", f"missing: the channel's type, one of {', '.join(CHANNEL_TYPES)}")
        return None
    if kind not in CHANNEL_TYPES:
        report(raw, "type", f"{prefix}.type",
               f"unknown channel type {kind!r} (expected one of {', '.join(CHANNEL_TYPES)})")
        return None
    ok = True
    for key in raw:
        if key in CHANNEL_KEYS[kind]:
            continue
        ok = False
        if key in SECRET_IN_MANIFEST and SECRET_IN_MANIFEST[key] in CHANNEL_KEYS[kind]:
            # Never echoed: what was written here is the secret itself.
            report(raw, key, f"{prefix}.{key}", f"a {kind} channel's {key} is a secret: put it in an environment "
                   f"variable of the orchestrator and name that variable in {SECRET_IN_MANIFEST[key]}")
        else:
            report(raw, key, f"{prefix}.{key}", f"unknown key for a {kind} channel "
                   f"(expected one of: {', '.join(sorted(CHANNEL_KEYS[kind]))})")
    values: dict[str, Any] = {}
    needed = {"slack": ("url_env",), "webhook": ("url_env", "hmac_key_env"), "sns": ()}[kind]
    what = {"url_env": "the webhook URL", "hmac_key_env": "the key that signs each message (HMAC-SHA256)"}
    for key in needed:
        value = raw.get(key)
        if value is None:
            report(raw, key, f"{prefix}.{key}", f"missing: the name of the environment variable that holds "
                   f"{what[key]} (a secret, never written in the manifest)")
            ok = False
        elif not (isinstance(value, str) and ENV_VAR_NAME.match(value)):
            # Not echoed: a pasted URL or key is the likely mistake.
            report(raw, key, f"{prefix}.{key}", "expected the name of an environment variable (letters, digits, "
                   f"'_'), which holds {what[key]}")
            ok = False
        else:
            values[key] = value
    if kind == "sns":
        topic_arn = raw.get("topic_arn")
        if topic_arn is None:
            report(raw, "type", f"{prefix}.topic_arn",
                   "missing: the topic's ARN, e.g. arn:aws:sns:eu-west-1:123456789012:releases")
            ok = False
        elif not (isinstance(topic_arn, str) and SNS_TOPIC_ARN.match(topic_arn)):
            report(raw, "topic_arn", f"{prefix}.topic_arn",
                   f"expected an SNS topic ARN such as arn:aws:sns:eu-west-1:123456789012:releases, got {topic_arn!r}")
            ok = False
        else:
            values["topic_arn"] = topic_arn
        region = raw.get("region")
        if region is not None and not (_is_str(region) and AWS_REGION.match(region)):
            report(raw, "region", f"{prefix}.region", f"expected an AWS region such as eu-west-1, got {region!r}")
            ok = False
        elif region is not None:
            values["region"] = region
        endpoint_url = raw.get("endpoint_url")
        if endpoint_url is not None and not (_is_str(endpoint_url) and HTTP_URL.match(endpoint_url)):
            report(raw, "endpoint_url", f"{prefix}.endpoint_url",
                   f"expected an http(s) URL such as http://127.0.0.1:5001, got {endpoint_url!r} "
                   f"(leave it out to use ${AWS_ENDPOINT_URL_VARIABLE}, else AWS itself)")
            ok = False
        elif endpoint_url is not None:
            values["endpoint_url"] = endpoint_url
    return NotificationChannel(name=name, type=kind, **values) if ok else None


EVENTS_KEYS = {"cdevents", "cloudwatch"}
CDEVENTS_KEYS = {"sink_url_env", "source"}
RELEASE_METRICS_KEYS = {"namespace", "region", "endpoint_url"}
# CloudWatch's own rule for a namespace; AWS/ is reserved for AWS's services.
CLOUDWATCH_NAMESPACE = re.compile(r"^[0-9A-Za-z.\-_/#:]{1,255}$")
URI_REFERENCE = re.compile(r"^[^\s<>\"{}|\\^`]+$")


def _parse_events(problems: _Problems, document: LineDict) -> DeploymentEvents | None:
    """The top-level `events:` block: the CDEvents sink and the CloudWatch release metrics (at least one)."""
    raw = document.get("events")
    if raw is None:
        return None

    def report(mapping: LineDict, key: str, field_name: str, message: str) -> None:
        problems.add(_line(mapping, key) or _line(document, "events"), _where(field_name=field_name), message)

    if not isinstance(raw, LineDict) or not raw:
        report(document, "events", "events", "expected a mapping with cdevents, cloudwatch or both, e.g. "
               "{cdevents: {sink_url_env: CDEVENTS_SINK_URL}, cloudwatch: {namespace: ReleaseGraph}}")
        return None
    for key in raw:
        if key not in EVENTS_KEYS:
            report(raw, key, f"events.{key}", f"unknown key (expected one of: {', '.join(sorted(EVENTS_KEYS))})")
    cdevents = _parse_cdevents(raw, report) if "cdevents" in raw else None
    cloudwatch = _parse_release_metrics(raw, report) if "cloudwatch" in raw else None
    if cdevents is None and cloudwatch is None:
        return None  # each problem is reported already (or only unknown keys were given)
    return DeploymentEvents(cdevents=cdevents, cloudwatch=cloudwatch)


def _parse_cdevents(parent: LineDict, report) -> CDEventsSink | None:
    raw = parent["cdevents"]
    if not isinstance(raw, LineDict):
        report(parent, "cdevents", "events.cdevents", "expected a mapping such as {sink_url_env: CDEVENTS_SINK_URL}")
        return None
    ok = True
    for key in raw:
        if key in CDEVENTS_KEYS:
            continue
        ok = False
        if key in ("sink_url", "url"):
            # Never echoed: what was written here is the URL itself, which may carry the sink's token.
            report(raw, key, f"events.cdevents.{key}", "the sink's URL may carry a token: put it in an environment "
                   "variable of the orchestrator and name that variable in sink_url_env")
        else:
            report(raw, key, f"events.cdevents.{key}",
                   f"unknown key (expected one of: {', '.join(sorted(CDEVENTS_KEYS))})")
    variable = raw.get("sink_url_env")
    if variable is None:
        report(parent, "cdevents", "events.cdevents.sink_url_env", "missing: the name of the environment variable "
               "that holds the sink's URL (it may carry a token, so it is never written in the manifest)")
        ok = False
    elif not (isinstance(variable, str) and ENV_VAR_NAME.match(variable)):
        # Not echoed: a pasted URL is the likely mistake.
        report(raw, "sink_url_env", "events.cdevents.sink_url_env",
               "expected the name of an environment variable (letters, digits, '_'), which holds the sink's URL")
        ok = False
    source = raw.get("source")
    if source is not None and not (_is_str(source) and URI_REFERENCE.match(source)):
        report(raw, "source", "events.cdevents.source",
               f"expected a URI-reference such as /release-graph/shop (no spaces), got {source!r}")
        ok = False
    return CDEventsSink(sink_url_env=variable, source=source) if ok else None


def _parse_release_metrics(parent: LineDict, report) -> ReleaseMetricsSettings | None:
    raw = parent["cloudwatch"]
    if raw is None:  # `cloudwatch:` alone: every default
        return ReleaseMetricsSettings()
    if not isinstance(raw, LineDict):
        report(parent, "cloudwatch", "events.cloudwatch",
               "expected a mapping such as {namespace: ReleaseGraph, region: eu-west-1} (or {} for the defaults)")
        return None
    ok = True
    for key in raw:
        if key not in RELEASE_METRICS_KEYS:
            report(raw, key, f"events.cloudwatch.{key}",
                   f"unknown key (expected one of: {', '.join(sorted(RELEASE_METRICS_KEYS))})")
            ok = False
    values: dict[str, Any] = {}
    namespace = raw.get("namespace")
    if namespace is not None:
        if not (_is_str(namespace) and CLOUDWATCH_NAMESPACE.match(namespace)) or namespace.startswith("AWS/"):
            report(raw, "namespace", "events.cloudwatch.namespace",
                   "expected a CloudWatch namespace (letters, digits and . - _ / # :, at most 255, not starting "
                   f"with AWS/) such as ReleaseGraph, got {namespace!r}")
            ok = False
        else:
            values["namespace"] = namespace
    region = raw.get("region")
    if region is not None:
        if not (_is_str(region) and AWS_REGION.match(region)):
            report(raw, "region", "events.cloudwatch.region",
                   f"expected an AWS region such as eu-west-1, got {region!r}")
            ok = False
        else:
            values["region"] = region
    endpoint_url = raw.get("endpoint_url")
    if endpoint_url is not None:
        if not (_is_str(endpoint_url) and HTTP_URL.match(endpoint_url)):
            report(raw, "endpoint_url", "events.cloudwatch.endpoint_url",
                   f"expected an http(s) URL such as http://127.0.0.1:5001, got {endpoint_url!r} "
                   f"(leave it out to use ${AWS_ENDPOINT_URL_VARIABLE}, else AWS itself)")
            ok = False
        else:
            values["endpoint_url"] = endpoint_url
    return ReleaseMetricsSettings(**values) if ok else None


def _number(report, key: str, value: Any, *, minimum: float = 0, maximum: float | None = None,
            integer: bool = False):
    """`value` if it is a number in range (an int when `integer`), else None after reporting it."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum or (
            maximum is not None and value > maximum):
        bounds = f"between {minimum:g} and {maximum:g}" if maximum is not None else f"of at least {minimum:g}"
        report(key, f"expected {'a whole number' if integer else 'a number'} {bounds}, got {value!r}")
        return None
    return value


def _eligible_approvers(report, approvers: list, teams: dict[str, tuple[str, ...]]) -> tuple[tuple[str, ...], bool]:
    """Everyone `approvers` names, each `team:<name>` replaced by its members from `teams:`, in order, once each
    (emails compared case-insensitively); and whether every entry resolved. A team that `teams:` does not
    define is a problem: an approvers list that silently means nobody (or, as before, anybody who types the
    team's name) is what this replaces."""
    people: list[str] = []
    resolved = True
    for approver in approvers:
        if not isinstance(approver, str):
            continue
        if TEAM.match(approver):
            team = approver.removeprefix("team:")
            if team not in teams:
                defined = ", ".join(sorted(teams)) or "none"
                report("approvers", f"team {team!r} is not defined in the manifest's teams: section "
                       f"(defined: {defined})")
                resolved = False
                continue
            people += teams[team]
        elif EMAIL.match(approver):
            people.append(approver)
        else:
            resolved = False
    unique: dict[str, str] = {}
    for person in people:
        unique.setdefault(person.casefold(), person)
    return tuple(unique.values()), resolved


def _parse_rollout(problems: _Problems, env: str, raw: LineDict) -> Rollout:
    """The `rollout:` block of one environment; every problem is reported with its field path."""
    block = raw.get("rollout")
    if block is None:
        return Rollout()

    def reporter(mapping, prefix: str):
        def report(key: str, message: str) -> None:
            problems.add(_line(mapping, key) or _line(raw, "rollout"),
                         _where(environment=env, field_name=f"{prefix}.{key}"), message)
        return report

    if not isinstance(block, LineDict):
        problems.add(_line(raw, "rollout"), _where(environment=env, field_name="rollout"),
                     "expected a mapping such as {strategy: canary, steps: [{weight: 10, pause_seconds: 30}]}")
        return Rollout()
    _check_keys(problems, block, ROLLOUT_KEYS, environment=env)
    report = reporter(block, "rollout")
    strategy = block.get("strategy", "replace")
    if strategy not in STRATEGIES:
        report("strategy", f"expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
        strategy = "replace"
    bake = _number(report, "bake_seconds", block.get("bake_seconds", 0)) or 0
    hold = _number(report, "hold_seconds", block.get("hold_seconds", 0)) or 0
    if "hold_seconds" in block and strategy != "blue-green":
        report("hold_seconds", "only a blue-green rollout keeps the previous color (strategy: blue-green)")
    steps = []
    raw_steps = block.get("steps")
    if raw_steps is not None and strategy != "canary":
        report("steps", "only a canary rollout has steps (strategy: canary)")
    elif strategy == "canary":
        if not isinstance(raw_steps, list) or not raw_steps:
            report("steps", "a canary needs steps, e.g. [{weight: 10, pause_seconds: 30}, {weight: 50}]")
            raw_steps = []
        previous = 0
        for index, raw_step in enumerate(raw_steps):
            where = f"steps[{index}]"
            if not isinstance(raw_step, LineDict):
                report("steps", f"{where}: expected a mapping such as {{weight: 10, pause_seconds: 30}}")
                continue
            _check_keys(problems, raw_step, STEP_KEYS, environment=env)
            step_report = reporter(raw_step, f"rollout.{where}")
            weight = _number(step_report, "weight", raw_step.get("weight"), minimum=1, maximum=100, integer=True)
            pause = _number(step_report, "pause_seconds", raw_step.get("pause_seconds", 0))
            manual = raw_step.get("manual", False)
            if not isinstance(manual, bool):
                step_report("manual", f"expected true or false, got {manual!r}")
                manual = False
            if weight is not None and weight <= previous:
                step_report("weight", f"weights must grow step by step: {weight} follows {previous}")
            if weight is not None and pause is not None:
                steps.append(RolloutStep(weight=weight, pause_seconds=pause, manual=manual))
                previous = weight
    return Rollout(strategy=strategy, steps=tuple(steps), bake_seconds=bake, hold_seconds=hold,
                   analysis=_parse_analysis(problems, env, block, reporter))


def _string_settings(problems: _Problems, env: str, analysis: LineDict, name: str, keys: set[str], what: str,
                     reporter, *, example: str, other_keys: frozenset[str] = frozenset()) -> dict[str, str]:
    """The string fields of the `rollout.analysis.<name>:` block (a key ending in `url` must be an http(s) URL);
    {} when the block is absent or not a mapping (reported)."""
    raw = analysis.get(name)
    if raw is None:
        return {}
    if not isinstance(raw, LineDict):
        reporter(analysis, "rollout.analysis")(name, f"expected a mapping such as {example}")
        return {}
    _check_keys(problems, raw, keys | other_keys, environment=env)
    report = reporter(raw, f"rollout.analysis.{name}")
    settings = {}
    for key in sorted(keys):
        if key in raw:
            value = raw[key]
            if key.endswith("url") and not (_is_str(value) and HTTP_URL.match(value)):
                report(key, f"expected an http(s) URL, got {value!r}")
            elif not _is_str(value):
                report(key, f"expected {what}, got {value!r}")
            else:
                settings[key] = value
    return settings


def _check_rollout_measured_on(problems: _Problems, env: str, raw: LineDict, target: str, rollout: Rollout) -> None:
    """haproxy counts the docker target's switch: on kubernetes a rollout that measures (a pause, a bake or a hold)
    with it would find no counters and roll back after `consecutive_error_limit` measurements."""
    measures = (rollout.bake_seconds > 0 or rollout.hold_seconds > 0
                or any(step.pause_seconds > 0 for step in rollout.steps))
    if target == "kubernetes" and rollout.progressive and measures and "haproxy" in rollout.analysis.providers:
        block = raw.get("rollout")
        analysis = block.get("analysis") if isinstance(block, LineDict) else None
        line = _line(analysis, "providers") or _line(block, "analysis") or _line(raw, "rollout")
        problems.add(line, _where(environment=env, field_name="rollout.analysis.providers"),
                     "haproxy measures the docker target's switch; a kubernetes environment's rollout is measured "
                     "by prometheus or cloudwatch (e.g. providers: [prometheus] with its queries)")


def _parse_analysis(problems: _Problems, env: str, rollout: LineDict, reporter) -> Analysis:
    block = rollout.get("analysis")
    if block is None:
        return Analysis()
    if not isinstance(block, LineDict):
        reporter(rollout, "rollout")("analysis", "expected a mapping such as {max_error_rate: 0.01}")
        return Analysis()
    _check_keys(problems, block, ANALYSIS_KEYS, environment=env)
    report = reporter(block, "rollout.analysis")
    providers = block.get("providers", ["haproxy"])
    if not isinstance(providers, list) or not providers or any(p not in METRIC_PROVIDERS for p in providers):
        report("providers", f"expected a list of {', '.join(METRIC_PROVIDERS)}, got {providers!r}")
        providers = ["haproxy"]
    defaults = Analysis()
    values = {}
    for key, kwargs in (("max_error_rate", {"maximum": 1}), ("max_p95_ms", {}), ("interval_seconds", {"minimum": 0.1}),
                        ("min_requests", {"integer": True}), ("failure_limit", {"integer": True}),
                        ("inconclusive_limit", {"integer": True, "minimum": 1}),
                        ("consecutive_error_limit", {"integer": True, "minimum": 1})):
        if key in block:
            value = block[key]
            if value is None and key in ("max_error_rate", "max_p95_ms"):
                values[key] = None  # the condition is off
                continue
            checked = _number(report, key, value, **kwargs)
            if checked is not None:
                values[key] = checked
    on_inconclusive = block.get("on_inconclusive", defaults.on_inconclusive)
    if on_inconclusive not in ON_INCONCLUSIVE:
        report("on_inconclusive", f"expected one of {', '.join(ON_INCONCLUSIVE)}, got {on_inconclusive!r}")
        on_inconclusive = defaults.on_inconclusive
    prometheus = PrometheusSettings(**_string_settings(
        problems, env, block, "prometheus", PROMETHEUS_KEYS, "a PromQL query", reporter,
        example="{url: http://127.0.0.1:9090}"))
    cloudwatch_settings = _string_settings(
        problems, env, block, "cloudwatch", CLOUDWATCH_KEYS - {"alarms"}, "a non-empty string", reporter,
        example="{region: eu-west-1, alarms: [orders-5xx]}", other_keys=frozenset({"alarms"}))
    raw_cloudwatch = block.get("cloudwatch")
    alarms = raw_cloudwatch.get("alarms", []) if isinstance(raw_cloudwatch, LineDict) else []
    if not isinstance(alarms, list) or not all(_is_str(a) for a in alarms):
        reporter(raw_cloudwatch, "rollout.analysis.cloudwatch")("alarms",
                                                               f"expected a list of alarm names, got {alarms!r}")
        alarms = []
    cloudwatch = CloudWatchSettings(alarms=tuple(alarms), **cloudwatch_settings)
    if "cloudwatch" in providers and raw_cloudwatch is None:
        report("providers", "the cloudwatch provider needs a cloudwatch: block (alarms and/or a namespace)")
    return Analysis(providers=tuple(providers), on_inconclusive=on_inconclusive, prometheus=prometheus,
                    cloudwatch=cloudwatch, **values)


def _parse_secret_refs(problems: _Problems, env: str | None, service: str, parent: LineDict, refs: Any,
                       prefix: str = "secrets"):
    where = {"environment": env}
    if not isinstance(refs, dict):
        problems.add(_line(parent, service), _where(field_name=f"{prefix}.{service}", **where),
                     "expected a mapping of variable name to {aws: <secret id>} or {env: <VARIABLE>}")
        return MappingProxyType({})
    result = {}
    for variable, ref in refs.items():
        field_name = f"{prefix}.{service}.{variable}"
        if not (isinstance(variable, str) and ENV_VAR_NAME.match(variable)):
            problems.add(_line(refs, variable), _where(field_name=field_name, **where),
                         "expected an environment variable name (letters, digits, '_')")
            continue
        if not (isinstance(ref, dict) and len(ref) == 1 and next(iter(ref)) in ("aws", "env")
                and _is_str(next(iter(ref.values())))):
            problems.add(_line(refs, variable), _where(field_name=field_name, **where),
                         "expected {aws: <Secrets Manager secret id>} or {env: <VARIABLE of the orchestrator>}")
            continue
        (source, secret_name), = ref.items()
        result[variable] = SecretRef(source=source, name=secret_name)
    return MappingProxyType(result)


def _check_edges(problems: _Problems, raw_services: dict, services: dict[str, Service]) -> None:
    known = set(raw_services)
    for service in services.values():
        line = _line(raw_services.get(service.name), "depends_on")
        seen = set()
        for edge in service.depends_on:
            where = _where(service=service.name, field_name="depends_on")
            if edge.name == service.name:
                problems.add(line, where, "a service cannot depend on itself")
            elif edge.name not in known:
                problems.add(line, where, f"depends on '{edge.name}', which is not a service of this fleet")
            if edge.name in seen:
                problems.add(line, where, f"'{edge.name}' is listed twice")
            seen.add(edge.name)
    for cycle in find_hard_cycles(services):
        first = cycle[0]
        problems.add(
            _line(raw_services.get(first), "depends_on"),
            _where(service=first, field_name="depends_on"),
            "cycle of hard edges: " + " -> ".join([*cycle, first])
            + " (mark one edge soft: true, or give the services one deploy_unit)",
        )

