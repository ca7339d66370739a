"""The fleet as typed, immutable values: what a validated manifest describes (release_graph.fleet.loader reads it).

Plain Python: no Dagster, no files read, no subprocess.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType

from release_graph.fleet.references import parse_image_reference

# How a container receives its secrets: "file" (the default: a read-only file /run/secrets/<NAME> on an in-memory
# mount, the path in <NAME>_FILE; the value is in no `inspect`) or "env" (environment variables, a service's opt-in).
SECRET_DELIVERIES = ("file", "env")
SECRETS_DIR_IN_CONTAINER = "/run/secrets"
GIT_URL = re.compile(r"^(git|file|ssh|https?)://|^[\w.-]+@[\w.-]+:")
SCANNERS = ("none", "ecr", "trivy", "grype", "osv")
AWS_ENDPOINT_URL_VARIABLE = "RELEASE_GRAPH_AWS_ENDPOINT_URL"
PROMETHEUS_URL_VARIABLE = "RELEASE_GRAPH_PROMETHEUS_URL"
DEFAULT_PROMETHEUS_URL = "http://127.0.0.1:9090"


@dataclass(frozen=True)
class Edge:
    """`A depends on name`. Hard edges order deployments; soft ones are recorded as metadata only."""

    name: str
    soft: bool = False
    startup_only: bool = False  # only a start-up ordering was seen (compose depends_on), no call
    evidence: tuple[str, ...] = ()


# Linux capabilities a container may be given back after every other one is dropped (capabilities(7), without
# the CAP_ prefix).
LINUX_CAPABILITIES = frozenset({
    "AUDIT_CONTROL", "AUDIT_READ", "AUDIT_WRITE", "BLOCK_SUSPEND", "BPF", "CHECKPOINT_RESTORE", "CHOWN",
    "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "IPC_LOCK", "IPC_OWNER", "KILL", "LEASE",
    "LINUX_IMMUTABLE", "MAC_ADMIN", "MAC_OVERRIDE", "MKNOD", "NET_ADMIN", "NET_BIND_SERVICE", "NET_BROADCAST",
    "NET_RAW", "PERFMON", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYSLOG", "SYS_ADMIN", "SYS_BOOT",
    "SYS_CHROOT", "SYS_MODULE", "SYS_NICE", "SYS_PACCT", "SYS_PTRACE", "SYS_RAWIO", "SYS_RESOURCE", "SYS_TIME",
    "SYS_TTY_CONFIG", "WAKE_ALARM",
})
SCRATCH_FOLDER = "/tmp"  # every container's writable in-memory folder


def capability_name(text: object) -> str:
    """A capability as capabilities(7) names it without its prefix: `cap_net_raw` -> `NET_RAW`."""
    return str(text).upper().removeprefix("CAP_")


@dataclass(frozen=True)
class Hardening:
    """How a service's containers are locked down. By default immutable: a read-only root filesystem (writable
    only in SCRATCH_FOLDER and the declared `tmpfs` folders, in memory), every Linux capability dropped and no
    privilege escalation (setuid binaries gain nothing); the image's user must not be root. Each opt-out carries
    the reason the manifest gives, shown beside the `hardening` check's finding it waives."""

    tmpfs: tuple[str, ...] = ()  # more writable in-memory folders, absolute paths
    writable_root: str | None = None  # the reason the root filesystem stays writable
    run_as_root: str | None = None  # the reason its image may run as root
    privilege_escalation: str | None = None  # the reason setuid binaries may gain privileges
    capabilities: tuple[str, ...] = ()  # given back after dropping all (needs capabilities_reason)
    capabilities_reason: str | None = None

    @property
    def is_default(self) -> bool:
        return self == Hardening()

    @property
    def writable_folders(self) -> tuple[str, ...]:
        return (SCRATCH_FOLDER, *(path for path in self.tmpfs if path != SCRATCH_FOLDER))


@dataclass(frozen=True)
class Resources:
    """What a service's containers ask for and may use (Kubernetes `resources`): CPU as cores or millicores
    ("250m"), memory as bytes with a binary or decimal suffix ("256Mi"); None: not set."""

    cpu_request: str | None = None
    memory_request: str | None = None
    cpu_limit: str | None = None
    memory_limit: str | None = None

    def as_kubernetes(self) -> dict[str, dict[str, str]]:
        requests = {k: v for k, v in (("cpu", self.cpu_request), ("memory", self.memory_request)) if v}
        limits = {k: v for k, v in (("cpu", self.cpu_limit), ("memory", self.memory_limit)) if v}
        return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


@dataclass(frozen=True)
class KubernetesCluster:
    """Where an environment with `target: kubernetes` runs: the kube context (None: the current one), the
    namespace, and the cluster's version, which the generated objects are validated against."""

    namespace: str
    version: str
    context: str | None = None


@dataclass(frozen=True)
class Build:
    context: str = "."  # relative to the service's path inside its repo
    dockerfile: str = "Dockerfile"  # relative to the context
    target: str | None = None  # the stage that is released; None = the last stage
    test_target: str | None = "test"  # the stage whose container runs the unit tests
    integration_target: str | None = None  # the stage whose container runs the integration tests
    args: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Service:
    name: str
    repo: str | None = None
    repo_url: str | None = None
    branch: str = "main"
    path: str = "."
    build: Build | None = None
    image: str | None = None
    port: int | None = None
    health: str | None = "/healthz"
    depends_on: tuple[Edge, ...] = ()
    owners: tuple[str, ...] = ()
    description: str = ""
    language: str | None = None
    infrastructure: bool = False
    deploy_unit: str | None = None
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # What the container runs instead of the image's ENTRYPOINT and CMD (None: the image's own). Several
    # services may run one image with different commands.
    entrypoint: tuple[str, ...] | None = None
    command: tuple[str, ...] | None = None
    # How its containers receive their secrets (SECRET_DELIVERIES): files unless the service opts in to env.
    secrets_as: str = "file"
    hardening: Hardening = Hardening()
    resources: Resources = Resources()

    @property
    def group(self) -> str:
        """Dagster group names cannot hold `-`."""
        return self.name.replace("-", "_")

    @property
    def is_prebuilt(self) -> bool:
        return self.build is None

    @property
    def is_local_repo(self) -> bool:
        return self.repo is not None and not GIT_URL.match(self.repo)

    @property
    def hard_deps(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.depends_on if not e.soft)

    @property
    def soft_deps(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.depends_on if e.soft)

    def image_repository(self, fleet: Fleet) -> str:
        return f"{fleet.registry}/{self.name}"


@dataclass(frozen=True)
class SecretRef:
    """Where a secret's value lives; resolved only at deploy time, never stored or shown."""

    source: str  # "aws" (Secrets Manager secret id) or "env" (a variable of the orchestrator's process)
    name: str

    def describe(self) -> str:
        return f"{self.source}:{self.name}"


STRATEGIES = ("replace", "blue-green", "canary")
METRIC_PROVIDERS = ("haproxy", "prometheus", "cloudwatch")
ON_INCONCLUSIVE = ("wait", "rollback")


@dataclass(frozen=True)
class PrometheusSettings:
    """Where the analysis asks Prometheus, and the PromQL it asks. Queries may use {fleet}, {environment},
    {service}, {digest}, {role} and {window} (e.g. `30s`); the defaults read the demo services' metrics,
    labelled by the scrape targets release-graph writes for each environment (resources/metrics/prometheus.py)."""

    url: str | None = None  # None: $RELEASE_GRAPH_PROMETHEUS_URL at use time, else http://127.0.0.1:9090
    error_rate_query: str | None = None  # None: the default query over shop_api_requests_total
    p95_query: str | None = None  # in seconds; None: the default over shop_api_request_duration_seconds_bucket
    requests_query: str | None = None

    def resolved_url(self) -> str:
        # `make demo` starts the project's Prometheus on 9090 unless that port is taken, and says where.
        return self.url or os.environ.get(PROMETHEUS_URL_VARIABLE) or DEFAULT_PROMETHEUS_URL


@dataclass(frozen=True)
class CloudWatchSettings:
    """CloudWatch for the analysis: alarms that must not be in ALARM during the window, and optionally a
    namespace whose metrics (dimensions Service, Environment, Version) give requests, errors and p95."""

    region: str = "us-east-1"
    endpoint_url: str | None = None  # None: $RELEASE_GRAPH_AWS_ENDPOINT_URL at use time, else AWS itself
    alarms: tuple[str, ...] = ()
    namespace: str | None = None

    def resolved_endpoint_url(self) -> str | None:
        return self.endpoint_url or os.environ.get(AWS_ENDPOINT_URL_VARIABLE) or None


@dataclass(frozen=True)
class Analysis:
    """How a rollout judges the new version while it serves. Each provider measures; every condition must
    hold. Verdicts: Successful, Failed, Inconclusive (fewer than `min_requests`), Error (no answer)."""

    providers: tuple[str, ...] = ("haproxy",)
    max_error_rate: float | None = 0.01  # share of 5xx answers of the new version
    max_p95_ms: float | None = None  # haproxy has no percentiles: it compares its mean response time
    min_requests: int = 5
    interval_seconds: float = 5.0  # how often the watch window measures
    on_inconclusive: str = "wait"  # wait: measure again, up to inconclusive_limit; rollback: at once
    failure_limit: int = 0  # Failed measurements tolerated before the rollback
    inconclusive_limit: int = 3
    consecutive_error_limit: int = 3
    prometheus: PrometheusSettings = field(default_factory=PrometheusSettings)
    cloudwatch: CloudWatchSettings = field(default_factory=CloudWatchSettings)


@dataclass(frozen=True)
class RolloutStep:
    """One canary step: the new version's share of traffic, served for `pause_seconds`, then analysed;
    `manual` waits after the analysis for `release-graph rollout promote` (or the UI)."""

    weight: int
    pause_seconds: float = 0.0
    manual: bool = False


@dataclass(frozen=True)
class Rollout:
    """How a deployment takes traffic in one environment (docs/manifest.md, "rollout")."""

    strategy: str = "replace"
    steps: tuple[RolloutStep, ...] = ()  # canary only; a last step at 100 % is implied
    bake_seconds: float = 0.0  # the watch window at 100 %: the deployment finishes when it passed
    hold_seconds: float = 0.0  # blue-green: the previous color keeps running this long after the switch
    analysis: Analysis = field(default_factory=Analysis)

    @property
    def progressive(self) -> bool:
        return self.strategy != "replace" or self.bake_seconds > 0


NOTIFICATION_EVENTS = ("failed", "rolled_back", "approval_needed", "waiting_too_long")
CHANNEL_TYPES = ("sns", "slack", "webhook")
DEFAULT_UI_URL = "http://127.0.0.1:3000"


@dataclass(frozen=True)
class NotificationChannel:
    """Where release notifications go. A webhook's URL and key are secrets: the manifest names the variables of
    the orchestrator's process that hold them (`url_env`, `hmac_key_env`), read when a message is sent."""

    name: str
    type: str  # one of CHANNEL_TYPES
    url_env: str | None = None  # slack, webhook
    hmac_key_env: str | None = None  # webhook: the key of the X-Release-Graph-Signature header
    topic_arn: str | None = None  # sns
    region: str | None = None  # sns; None: the topic ARN's region
    endpoint_url: str | None = None  # sns; None: $RELEASE_GRAPH_AWS_ENDPOINT_URL at use time, else AWS itself

    def resolved_region(self) -> str:
        return self.region or (self.topic_arn or "").split(":")[3]

    def resolved_endpoint_url(self) -> str | None:
        return self.endpoint_url or os.environ.get(AWS_ENDPOINT_URL_VARIABLE) or None

    def describe(self) -> str:
        """The channel as logs may name it: never a URL or key, only where they come from."""
        if self.type == "sns":
            return f"{self.name} (sns {self.topic_arn})"
        return f"{self.name} ({self.type}, url from ${self.url_env})"


@dataclass(frozen=True)
class Notifications:
    """What is sent where (top-level `notifications:`, overridden per environment key by key)."""

    channels: tuple[NotificationChannel, ...] = ()
    events: tuple[str, ...] = NOTIFICATION_EVENTS
    waiting_limit_minutes: float = 60.0  # `waiting_too_long`: a stage waiting longer than this for anything
    ui_url: str = DEFAULT_UI_URL  # where the links of a message point (the Dagster UI)

    def channels_for(self, event: str) -> tuple[NotificationChannel, ...]:
        return self.channels if event in self.events else ()


DEFAULT_METRICS_NAMESPACE = "ReleaseGraph"


@dataclass(frozen=True)
class CDEventsSink:
    """Where the deployment events go as CDEvents (CloudEvents, structured JSON over HTTP). The sink's URL may
    carry a token: the manifest names the variable of the orchestrator's process that holds it."""

    sink_url_env: str
    source: str | None = None  # the events' `source` (a URI-reference); None: /release-graph/<fleet>


@dataclass(frozen=True)
class ReleaseMetricsSettings:
    """Where the release metrics go in CloudWatch (put_metric_data)."""

    namespace: str = DEFAULT_METRICS_NAMESPACE
    region: str = "us-east-1"
    endpoint_url: str | None = None  # None: $RELEASE_GRAPH_AWS_ENDPOINT_URL at use time, else AWS itself

    def resolved_endpoint_url(self) -> str | None:
        return self.endpoint_url or os.environ.get(AWS_ENDPOINT_URL_VARIABLE) or None


@dataclass(frozen=True)
class DeploymentEvents:
    """Top-level `events:`: every environment's deployments told to machines, as CDEvents and as metrics."""

    cdevents: CDEventsSink | None = None
    cloudwatch: ReleaseMetricsSettings | None = None


@dataclass(frozen=True)
class Environment:
    name: str
    target: str = "docker"
    approval: str | None = None
    approvers: tuple[str, ...] = ()  # as written: emails and team:<name>; empty: anyone may approve
    author_cannot_approve: bool = False
    # Everyone `approvers` names, teams resolved through the manifest's `teams:` (emails, as written there)
    eligible_approvers: tuple[str, ...] = ()
    approvals_required: int = 1  # distinct people who must approve one digest before it deploys here
    approval_expires_after_hours: float | None = None  # None: an approval stays valid until it is used
    branch: str | None = None  # git-based promotion: a new head here promotes that commit's digest
    publish: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # service -> host port
    config: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: MappingProxyType({}))
    secrets: Mapping[str, Mapping[str, SecretRef]] = field(default_factory=lambda: MappingProxyType({}))
    scan_threshold: str | None = None  # the lowest vulnerability severity that blocks a deploy here
    rollout: Rollout = field(default_factory=Rollout)
    # The fleet's notifications with this environment's overrides applied (None: nothing is sent about it)
    notifications: Notifications | None = None
    kubernetes: KubernetesCluster | None = None  # set exactly when target is kubernetes

    @property
    def requires_approval(self) -> bool:
        return self.approval == "required"

    def may_approve(self, identity: str) -> bool:
        """Whether `identity` is one of the eligible approvers: the whole email, case-insensitive (never a part of
        one); anyone when the environment names no approvers."""
        if not self.approvers:
            return True
        wanted = identity.strip().casefold()
        return any(wanted == person.casefold() for person in self.eligible_approvers)

    def service_env(self, service: Service) -> dict[str, str]:
        """Plain configuration for one service here: the service's own, then this environment's."""
        return {**service.env, **self.config.get(service.name, {})}


@dataclass(frozen=True)
class E2ETests:
    """The fleet's end-to-end tests: an image built from a folder beside the manifest, run per environment."""

    context: str  # relative to the manifest's folder
    dockerfile: str = "Dockerfile"
    target: str | None = None




@dataclass(frozen=True)
class EcrSettings:
    """Where the ECR scanner asks: the region, an endpoint (None: $RELEASE_GRAPH_AWS_ENDPOINT_URL at use time,
    else AWS itself) and the registry's account id (None: the caller's)."""

    region: str = "us-east-1"
    endpoint_url: str | None = None
    registry_id: str | None = None

    def resolved_endpoint_url(self) -> str | None:
        return self.endpoint_url or os.environ.get(AWS_ENDPOINT_URL_VARIABLE) or None


@dataclass(frozen=True)
class OsvSettings:
    """The offline OSV database the osv scanner matches each image's SBOM against: a folder of OSV JSON records
    or an OSV `all.zip`, beside the manifest (release_graph/security/osv.py reads it)."""

    database: Path  # absolute


@dataclass(frozen=True)
class ProvenanceSettings:
    """Signed build provenance (`security.provenance`): every image built gets an in-toto/SLSA statement
    signed with `signing_key` (an ed25519 PEM private key held in the secret store; the manifest names it,
    never holds it), and every deployment verifies it with the key's public half."""

    signing_key: SecretRef


@dataclass(frozen=True)
class Security:
    """The fleet's security gates (top-level `security:`); the defaults turn off everything that needs setup."""

    waivers: Path | None = None  # absolute; None: no waivers file
    scanner: str = "none"  # none, ecr, trivy, grype, osv
    ecr: EcrSettings | None = None  # only with scanner: ecr
    osv: OsvSettings | None = None  # only with scanner: osv
    # None: no compliance check (dockerfile_lint still runs); () : the check runs and blocks nothing.
    compliance_blocking: tuple[str, ...] | None = None
    sbom: bool = True
    provenance: ProvenanceSettings | None = None  # None: only "built by <service>/image" is checked
    # Where compliance_blocking is written (`fleet.yaml:12`): its rule ids are checked against the installed
    # tools by `release-graph validate` and by the compliance check, not while the manifest loads.
    compliance_blocking_at: str = field(default="", compare=False)


@dataclass(frozen=True)
class RegistryAuth:
    """How the fleet's registry is logged into (top-level `registry_auth:`): exactly one of a username with a
    password held in the secret store (`password` names it, never holds it), a Docker `config.json` (its `auths`
    or credential helpers), or ECR's `get_authorization_token`. Only the fleet's registry host gets them."""

    username: str | None = None
    password: SecretRef | None = None
    docker_config: Path | None = None  # absolute (a relative path is resolved against the manifest's folder)
    ecr: EcrSettings | None = None

    @property
    def kind(self) -> str:
        if self.ecr is not None:
            return "ecr"
        if self.docker_config is not None:
            return "docker_config"
        return "password"


@dataclass(frozen=True)
class Fleet:
    name: str
    registry: str
    services: Mapping[str, Service]
    environments: Mapping[str, Environment]
    source_file: Path
    sast_threshold: str = "MEDIUM"  # the lowest static-analysis severity that blocks a release
    e2e: E2ETests | None = None
    security: Security = Security()
    notifications: Notifications | None = None  # top-level `notifications:`; stages outside an environment
    events: DeploymentEvents | None = None  # top-level `events:`; None: no deployment events are sent
    # top-level `registry_auth:`; None: anonymous, except an ECR registry, which is logged into through ECR itself
    registry_auth: RegistryAuth | None = None

    @property
    def registry_host(self) -> str:
        """`host[:port]` of the fleet's registry (docker.io when `registry:` names no host)."""
        return parse_image_reference(self.registry).registry
    # top-level `teams:`: team name -> member emails, what `team:<name>` stands for in an environment's approvers
    teams: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    # top-level `integration: {secrets: ...}`: what each service receives in an integration environment (its own
    # declared secrets, never an environment's); a service not named there receives none
    integration_secrets: Mapping[str, Mapping[str, SecretRef]] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def root(self) -> Path:
        return self.source_file.parent

    @property
    def built_services(self) -> tuple[Service, ...]:
        return tuple(s for s in self.services.values() if not s.is_prebuilt)

    @cached_property
    def _edges_in(self) -> Mapping[str, tuple[tuple[str, Edge], ...]]:
        """callee -> (caller, its edge) for every edge of the fleet, built once: asking it per service stays linear
        in the fleet's size (a scan of every service per service was quadratic)."""
        edges: dict[str, list[tuple[str, Edge]]] = {}
        for caller in self.services.values():
            for edge in caller.depends_on:
                edges.setdefault(edge.name, []).append((caller.name, edge))
        return MappingProxyType({name: tuple(sorted(found, key=lambda pair: pair[0]))
                                 for name, found in edges.items()})

    def callers_of(self, name: str, *, hard_only: bool = False) -> tuple[str, ...]:
        """The services that declare an edge to `name` (only hard edges: those whose deployments wait for it),
        sorted."""
        return tuple(caller for caller, edge in self._edges_in.get(name, ()) if not (hard_only and edge.soft))

    def edge(self, caller: str, callee: str) -> Edge | None:
        return next((edge for who, edge in self._edges_in.get(callee, ()) if who == caller), None)

    @property
    def production(self) -> Environment:
        """The last environment: each promotes from the one before, so the last one is what users get."""
        return list(self.environments.values())[-1]

    def notifications_for(self, environment: str | None) -> Notifications | None:
        """The settings for a stage in `environment` (None: the image and integration stages)."""
        if environment is None:
            return self.notifications
        return self.environments[environment].notifications

    @property
    def notifies(self) -> bool:
        return self.notifications is not None or any(e.notifications for e in self.environments.values())
