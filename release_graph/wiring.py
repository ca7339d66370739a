"""The fleet's Definitions: every service's release, the fleet assets, the sensors and the adapters."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from release_graph.assets.automation import AUTOMATION_INTERVAL_SECONDS, automation_sensors
from release_graph.assets.fleet import build_fleet_assets
from release_graph.assets.service import build_service_release
from release_graph.fleet import Fleet, ManifestError, load_fleet, resolve_fleet_path
from release_graph.fleet.references import ECR_HOST
from resources.state import state_dir


def scanner_resource(fleet: Fleet | None):
    """The `scanner` resource as the manifest's `security:` configures it (backend none without a fleet)."""
    from resources.scanners import VulnerabilityScanner

    security = fleet.security if fleet is not None else None
    if security is None or security.scanner == "none":
        return VulnerabilityScanner(backend="none")
    if security.scanner == "ecr" and security.ecr is not None:
        ecr = security.ecr
        return VulnerabilityScanner(backend="ecr", ecr_region=ecr.region,
                                    ecr_endpoint_url=ecr.resolved_endpoint_url(), ecr_registry_id=ecr.registry_id)
    if security.scanner == "osv" and security.osv is not None:
        return VulnerabilityScanner(backend="osv", osv_database=str(security.osv.database))
    return VulnerabilityScanner(backend=security.scanner)


AWS_ENDPOINT_URL_VARIABLE = "RELEASE_GRAPH_AWS_ENDPOINT_URL"
# The Git sensor ticks every second (the daemon evaluates sensors at most every 5 s, its own loop) and reads the
# push spool each tick; it asks every tracked branch once per poll interval (docs/operations.md, "Push triggers").
GIT_TICK_SECONDS = 1
GIT_POLL_SECONDS = 10
# Polling is the fallback of push triggers; a fleet without webhooks can ask more often. `make demo` (local
# repos, nothing to spare) polls at every look of the daemon: 4 s, below its 5 s loop.
GIT_POLL_VARIABLE = "RELEASE_GRAPH_GIT_POLL_SECONDS"


# How often each service's automation sensor evaluates its stages (release_graph/assets/automation.py says why
# 4 s by default). A large fleet on few cores may trade a few seconds per stage for CPU (docs/benchmarks.md (f)).
AUTOMATION_VARIABLE = "RELEASE_GRAPH_AUTOMATION_SECONDS"


def git_poll_seconds() -> float:
    """How often the Git sensor asks every tracked branch: $RELEASE_GRAPH_GIT_POLL_SECONDS, else 10 s."""
    return _seconds_from(GIT_POLL_VARIABLE, GIT_POLL_SECONDS)


def automation_seconds() -> int:
    """The automation sensors' interval: $RELEASE_GRAPH_AUTOMATION_SECONDS, else 4 s (whole seconds: Dagster's
    sensor intervals are)."""
    return int(_seconds_from(AUTOMATION_VARIABLE, AUTOMATION_INTERVAL_SECONDS, whole=True))


def _seconds_from(variable: str, default: float, *, whole: bool = False) -> float:
    value = os.environ.get(variable, "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 1 <= seconds <= 3600 or (whole and not seconds.is_integer()):
        raise ValueError(f"{variable}={value!r}: expected a {'whole ' if whole else ''}number of seconds from 1 to "
                         "3600")
    return seconds


def registry_resource(fleet: Fleet | None):
    """The `registry` resource, logged into the fleet's registry as its `registry_auth:` says: where the
    credentials are kept, never their value (resource config is stored with every run). An ECR registry with no
    `registry_auth:` logs in through ECR itself (region and account from its host)."""
    from resources.registry import Registry

    aws_endpoint_url = os.environ.get(AWS_ENDPOINT_URL_VARIABLE) or None
    if fleet is None:
        return Registry()
    settings = fleet.registry_auth
    host = fleet.registry_host
    if settings is None:
        ecr_host = ECR_HOST.match(host)
        if not ecr_host:
            return Registry()
        return Registry(auth_registry=host, ecr_region=ecr_host.group("region"), ecr_endpoint_url=aws_endpoint_url,
                        ecr_registry_id=ecr_host.group("account"))
    if settings.ecr is not None:
        return Registry(auth_registry=host, ecr_region=settings.ecr.region,
                        ecr_endpoint_url=settings.ecr.resolved_endpoint_url(),
                        ecr_registry_id=settings.ecr.registry_id)
    if settings.docker_config is not None:
        return Registry(auth_registry=host, docker_config=str(settings.docker_config))
    return Registry(auth_registry=host, auth_username=settings.username,
                    auth_password_secret=settings.password.describe() if settings.password else None,
                    aws_endpoint_url=aws_endpoint_url)


KUBECONFIG_VARIABLE = "RELEASE_GRAPH_KUBECONFIG"
KUBERNETES_API_VARIABLE = "RELEASE_GRAPH_KUBERNETES_API"
KUBERNETES_ROLLOUT_TIMEOUT_VARIABLE = "RELEASE_GRAPH_KUBERNETES_ROLLOUT_TIMEOUT"
KUBERNETES_CANARY_REPLICAS_VARIABLE = "RELEASE_GRAPH_KUBERNETES_CANARY_REPLICAS"
OTLP_ENDPOINT_VARIABLE = "RELEASE_GRAPH_OTLP_ENDPOINT"
TRACE_FILE_VARIABLE = "RELEASE_GRAPH_TRACE_FILE"


def tracer_resource():
    """The `release_tracer` resource from the environment (docs/operations.md, "Tracing"): an OTLP/HTTP collector
    (`$RELEASE_GRAPH_OTLP_ENDPOINT`), a JSON-lines file (`$RELEASE_GRAPH_TRACE_FILE`), both, or neither: off.
    A setting that cannot work is an error now, naming the variable, not a trace silently lost later."""
    from resources.tracing import ReleaseTracer

    tracer = ReleaseTracer(otlp_endpoint=os.environ.get(OTLP_ENDPOINT_VARIABLE) or None,
                           trace_file=os.environ.get(TRACE_FILE_VARIABLE) or None,
                           otlp_endpoint_source=OTLP_ENDPOINT_VARIABLE, trace_file_source=TRACE_FILE_VARIABLE)
    tracer.check()
    return tracer


def kubernetes_target_config():
    """The kubernetes target's configuration from the environment (docs/operations.md, "Kubernetes target"): a
    kubeconfig file (`$RELEASE_GRAPH_KUBECONFIG`; each environment's `kubernetes.context` picks its context) or an
    API URL reached without credentials (`$RELEASE_GRAPH_KUBERNETES_API`: `kubectl proxy`, an emulator). Neither:
    None, and kubernetes environments are refused naming these variables."""
    from resources.targets import KubernetesTargetConfig

    kubeconfig = os.environ.get(KUBECONFIG_VARIABLE) or None
    api_host = os.environ.get(KUBERNETES_API_VARIABLE) or None
    if kubeconfig is None and api_host is None:
        return None
    timeout = os.environ.get(KUBERNETES_ROLLOUT_TIMEOUT_VARIABLE)
    try:
        extra = {"rollout_timeout_seconds": float(timeout)} if timeout else {}
    except ValueError:
        raise ValueError(f"${KUBERNETES_ROLLOUT_TIMEOUT_VARIABLE} must be a number of seconds, "
                         f"not {timeout!r}") from None
    canary = os.environ.get(KUBERNETES_CANARY_REPLICAS_VARIABLE)
    if canary:
        if not canary.isdigit() or int(canary) < 2:
            raise ValueError(f"${KUBERNETES_CANARY_REPLICAS_VARIABLE} must be a whole number of pods, at least 2, "
                             f"not {canary!r}")
        extra["canary_replicas"] = int(canary)
    return KubernetesTargetConfig(api_host=api_host, kubeconfig=kubeconfig, **extra)


def default_resources(fleet: Fleet | None = None) -> dict:
    """The adapters, each configured in this one place from the environment (and, for the scanner, from the
    fleet's manifest); none does I/O on creation."""
    from resources.containers import ContainerEngine
    from resources.events import EventSinks
    from resources.git import GitResource
    from resources.notify import Notifier
    from resources.secrets import SecretsResource
    from resources.targets import DeployTargets, DockerTargetConfig

    engine = ContainerEngine()
    return {
        "git": GitResource(mirror_dir=str(state_dir() / "git-mirrors")),
        "engine": engine,
        "registry": registry_resource(fleet),
        "scanner": scanner_resource(fleet),
        # The docker target runs its containers on the same engine; haproxy state for published ports must be
        # the same folder for the UI, the daemon and every run.
        "deploy_targets": DeployTargets(
            engine=engine, docker=DockerTargetConfig(state_dir=str(state_dir() / "targets")),
            kubernetes=kubernetes_target_config(),
        ),
        "secrets": SecretsResource(aws_endpoint_url=os.environ.get(AWS_ENDPOINT_URL_VARIABLE) or None),
        # Channels are the manifest's (the sensor passes them); their secrets are read when a message is sent.
        "notifier": Notifier(),
        # Sinks are the manifest's `events:` (the sensor passes them); a sink's URL is read when an event is sent.
        "event_sinks": EventSinks(),
        "release_tracer": tracer_resource(),
    }


def build_definitions(
    fleet: Fleet, resources: dict | None = None, manifest_problem: str | None = None
) -> dg.Definitions:
    from sensors.branch_promotion import build_branch_promotion_sensor
    from sensors.dead_runs import build_dead_run_sensor
    from sensors.deployment_events import build_deployment_events_sensor
    from sensors.drift import build_drift_sensor
    from sensors.git_commits import build_git_commit_sensor
    from sensors.notifications import build_notification_sensor
    from sensors.transient_retries import build_transient_retry_sensor

    assets, checks = build_fleet_assets(fleet)
    for service in fleet.services.values():
        release = build_service_release(fleet, service)
        assets += release.assets
        checks += release.checks
    git_sensor = build_git_commit_sensor(fleet, minimum_interval_seconds=GIT_TICK_SECONDS,
                                         poll_interval_seconds=git_poll_seconds())
    sensors = [git_sensor, *automation_sensors(fleet, automation_seconds()), build_drift_sensor(fleet),
               manifest_sensor(fleet, manifest_problem), build_transient_retry_sensor(fleet), build_dead_run_sensor()]
    if any(environment.branch for environment in fleet.environments.values()):
        sensors.append(build_branch_promotion_sensor(fleet))
    if fleet.notifies:
        sensors.append(build_notification_sensor(fleet))
    if fleet.events is not None:
        sensors.append(build_deployment_events_sensor(fleet))
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        sensors=sensors,
        resources=resources if resources is not None else default_resources(fleet),
        # Release steps mostly wait on the engine; a process per step would cost ~1.8 s each (measured).
        executor=dg.in_process_executor,
    )


def _last_valid_copy(path) -> Path:
    """Where the last manifest that loaded at `path` is kept (one per manifest path, in the state folder)."""
    name = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]
    return state_dir() / "manifests" / f"{name}.yaml"


def load_definitions(fleet_path: str | None = None) -> dg.Definitions:
    """Reads the manifest (a local file: no network I/O) and builds everything from it.

    A manifest broken while the instance runs does not stop the releases: the last manifest that loaded keeps
    driving them, and the `fleet_manifest` sensor shows what is wrong (the UI's Automation page; every CLI
    command reports the error itself). A manifest that never loaded is an error at once.
    """
    path = resolve_fleet_path(fleet_path)
    copy = _last_valid_copy(path)
    try:
        fleet = load_fleet(path)
    except ManifestError as exc:
        if not copy.is_file():
            raise
        fleet = load_fleet(path, text=copy.read_text(encoding="utf-8"))
        saved = datetime.fromtimestamp(copy.stat().st_mtime, UTC).isoformat(timespec="seconds")
        return build_definitions(fleet, manifest_problem=f"{exc}\nReleases run on the last manifest that loaded "
                                                         f"({saved}); fix {path} and reload the code location.")
    copy.parent.mkdir(parents=True, exist_ok=True)
    tmp = copy.with_suffix(".tmp")
    tmp.write_text(Path(path).read_text(encoding="utf-8"), encoding="utf-8")
    tmp.replace(copy)
    return build_definitions(fleet)


def manifest_sensor(fleet: Fleet, problem: str | None) -> dg.SensorDefinition:
    """Says, on every tick, whether the manifest in use is the one on disk or the last valid one."""

    @dg.sensor(name="fleet_manifest", minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
               description="Whether releases run on the manifest as written (a broken one is shown here).")
    def fleet_manifest(context: dg.SensorEvaluationContext):
        if problem:
            context.log.error(f"{fleet.source_file}: {problem}")
            return dg.SkipReason(f"BROKEN MANIFEST: {problem}")
        return dg.SkipReason(f"{fleet.source_file} loaded: {len(fleet.services)} services, "
                             f"environments {', '.join(fleet.environments)}")

    return fleet_manifest
