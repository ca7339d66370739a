"""The deploy-target interface: what every target (docker, kubernetes) does, and the values it
speaks in.

A target makes a digest serve a service in an environment (`deploy`), says what actually runs there
(`running`, `running_services`: what the drift check and sensor compare with the recorded deployment),
asks a service for its health (`probe`), removes an environment or what killed runs left behind
(`teardown_environment`, `reap`), runs a test image against a deployed environment (`run_tests`) and
opens a private environment for one integration run (`ephemeral_environment`).

The release steps and sensors are written against `DeployTarget` only; `resources/targets/registry.py`
is the one place where an environment's `target:` picks the implementation.

Rules every implementation keeps:
- only images pinned by digest are deployed (`pinned_reference`), and a spec is checked (`validate_spec`)
  before anything changes;
- a failed deployment leaves whatever served before serving (`DeploymentFailed`);
- secret values never reach labels, logs, results or errors, nor (delivered as files, the default) the
  engine's `inspect`.
"""

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from release_graph.fleet.model import (
    SECRET_DELIVERIES,
    SECRETS_DIR_IN_CONTAINER,
    Environment,
    Fleet,
    Hardening,
    Resources,
    Service,
)
from release_graph.fleet.references import SHA256_DIGEST
from resources import labels as L
from resources.containers import RunResult
from resources.registry import parse_image_reference

LOG_TAIL_LINES = 30

DNS_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --- errors ---------------------------------------------------------------------------------------------


class TargetError(Exception):
    """The target could not do what was asked (engine not answering, bad input, a proxy that won't start)."""


class TargetNotConfigured(TargetError):
    """An environment names a target (`target:` in the manifest) that this instance has no implementation of."""


class InvalidDeploymentSpec(TargetError, ValueError):
    """A deployment asked for something that cannot be (bad name, port, health path, env name, label)."""


class ImageNotPinned(InvalidDeploymentSpec):
    """A deployment named an image by tag (or not at all): only `repo@sha256:<64 hex>` is deployed."""


class DeploymentFailed(TargetError):
    """The new version did not take over; whatever served before still serves.

    The message names the service, environment and image, says why, and ends with the new container's last
    log lines when there was a container.
    """

    def __init__(
        self, message: str, *, service: str, environment: str, image: str, logs_tail: str = ""
    ):
        self.service = service
        self.environment = environment
        self.image = image
        self.logs_tail = logs_tail
        if logs_tail:
            message += f"\nlast {LOG_TAIL_LINES} log lines of the new container:\n{logs_tail}"
        super().__init__(message)


class ImageUnavailable(DeploymentFailed):
    """The engine could not get the image (registry down, digest not in the registry)."""


class PortUnavailable(DeploymentFailed):
    """The host port to publish on is taken by something else."""


class ProxyError(TargetError):
    """The environment's traffic switch (the docker target's haproxy) could not be started, reloaded or switched."""


# --- values ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeploymentSpec:
    """What one deployment should leave running.

    `image` must be `repo@sha256:<64 hex>` (a tag in front of the digest is accepted and ignored).
    `port` is the container port (None: nothing to reach); `health` an HTTP path answered with 2xx when
    healthy (None: "running" is healthy; needs `port` otherwise). `env` is plain config; `secrets` are
    never logged, labelled or returned: with `secrets_as="file"` (the default) each is a read-only file
    `/run/secrets/<NAME>` on an in-memory mount, its path in the variable `<NAME>_FILE`, so the engine's
    `inspect` never shows a value; with `secrets_as="env"` (a service's opt-in) they are environment variables.
    `publish` is a host port on the target's `publish_address` (None: not published). `labels` are added to
    the container. `calls` names the services it calls (its declared edges): a target reaches those through
    its switch, so replacing a provider is invisible to its consumers. `callers` names the services that declare
    an edge to it: the only ones the network lets call it (release_graph/fleet/network.py). `entrypoint` and
    `command` replace the image's ENTRYPOINT and CMD (None: the image's own). `hardening` locks the container
    down (immutable by default: read-only root, writable in-memory folders only, no capabilities, no privilege
    escalation).
    `resources` are the requests and limits of its containers (the kubernetes target sends them; the docker target
    does not apply them). `published_anywhere` says whether some environment of the fleet publishes it: with
    `callers`, the network rule the kubernetes target applies as the service's NetworkPolicy
    (release_graph.fleet.network).
    `tested_end_to_end` says whether the fleet runs end-to-end tests (`e2e:`), which call every service: the
    kubernetes target's NetworkPolicy admits their pods too.
    `rollout_strategy` is the environment's `rollout.strategy`: the kubernetes target moves a rollout's traffic by
    switching its Service for `blue-green` and by replica ratio otherwise (the docker target's switch does both by
    weight, and ignores it).
    """

    fleet: str
    environment: str
    service: str
    image: str
    port: int | None = None
    health: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    publish: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    calls: tuple[str, ...] = ()
    callers: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    command: tuple[str, ...] | None = None
    secrets_as: str = "file"
    hardening: Hardening = field(default_factory=Hardening)
    resources: Resources = field(default_factory=Resources)
    published_anywhere: bool = False
    tested_end_to_end: bool = False
    rollout_strategy: str = "replace"


def deployment_spec(fleet: Fleet, service: Service, environment: Environment, *, image: str, git_sha: str = "",
                    secrets: Mapping[str, str] | None = None) -> DeploymentSpec:
    """The one place a service's deployment to an environment is derived from the manifest: what the deploy step
    hands any target, and what `release-graph validate` renders for a kubernetes environment. `image` is
    `repo@sha256:...`; `git_sha` rides along as the variable GIT_SHA (for /version: the build argument alone is
    not reliable on every engine) and as a label; `secrets` are the resolved values."""
    return DeploymentSpec(
        fleet=fleet.name,
        environment=environment.name,
        service=service.name,
        image=image,
        port=service.port,
        health=service.health,
        env={**environment.service_env(service), **({"GIT_SHA": git_sha} if git_sha else {})},
        secrets=dict(secrets or {}),
        publish=environment.publish.get(service.name),
        labels={L.GIT_SHA: git_sha},
        # Every service it calls (hard and soft edges) is reached through the environment's switch.
        calls=tuple(edge.name for edge in service.depends_on),
        callers=fleet.callers_of(service.name),
        entrypoint=service.entrypoint,
        command=service.command,
        secrets_as=service.secrets_as,
        hardening=service.hardening,
        resources=service.resources,
        published_anywhere=any(service.name in env.publish for env in fleet.environments.values()),
        tested_end_to_end=fleet.e2e is not None,
        rollout_strategy=environment.rollout.strategy,
    )


def secret_file_variables(spec: DeploymentSpec) -> dict[str, str]:
    """`<NAME>_FILE` -> `/run/secrets/<NAME>` for each secret delivered as a file (none with `secrets_as="env"`):
    plain configuration, the path is not secret."""
    if spec.secrets_as != "file":
        return {}
    return {f"{name}_FILE": f"{SECRETS_DIR_IN_CONTAINER}/{name}" for name in spec.secrets}


def container_environment(spec: DeploymentSpec) -> dict[str, str]:
    """The environment variables a container of `spec` is created with: its config, and its secrets only when
    it opted in to receive them as variables (otherwise where their files are)."""
    if spec.secrets_as == "env":
        return {**spec.env, **spec.secrets}
    return {**spec.env, **secret_file_variables(spec)}


@dataclass(frozen=True)
class DeploymentResult:
    """What a deployment left running. `changed=False`: the digest already served healthy, nothing moved."""

    container_name: str
    container_id: str
    digest: str
    image: str
    started_at: str  # ISO 8601, when the serving container started
    url_inside: str | None  # http://<service>:<port> on the environment's network
    published_url: str | None  # http://<publish_address>:<publish> on this host
    changed: bool
    health_seconds: float  # time to healthy (new container) or of the confirming probe (no-op)
    network: str
    replaced: tuple[str, ...] = ()  # names of the containers this deployment stopped and removed


@dataclass(frozen=True)
class RunningService:
    """What actually runs for a service in an environment, as the engine reports it.

    `digest` is the digest label release-graph put on the container (None on a container started by hand);
    `image_digests` are the digests the engine records for the image the container really runs
    (`RepoDigests`), so a container replaced by hand with another image shows `digest_matches == False`.
    `serving` is True when the container is running and holds the service name on the network.
    """

    fleet: str
    environment: str
    service: str
    container_name: str
    container_id: str
    status: str  # the engine's word: running, exited, created, paused, ...
    serving: bool
    digest: str | None
    image: str | None
    image_id: str
    image_digests: tuple[str, ...]
    started_at: str | None
    url_inside: str | None
    published_url: str | None
    address: str | None
    healthy: bool | None = None  # None unless asked for (`probe=True`)

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def digest_matches(self) -> bool:
        """The labelled digest is one the engine records for the image the container runs."""
        return self.digest is not None and self.digest in self.image_digests


@dataclass(frozen=True)
class HealthProbe:
    """One health question to the container that serves a service: `detail` says what was asked and seen."""

    healthy: bool
    detail: str
    status_code: int | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class ReapReport:
    containers: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    proxies: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnvironmentContainer:
    """One container of an environment as `release-graph environments` lists it."""

    name: str
    service: str
    status: str
    digest: str | None
    instance: str | None  # the state folder of the release-graph instance that deployed it


@dataclass(frozen=True)
class RefusedCalls:
    """Calls from one service to another that the network rule refused: in all (since the switch started), and in
    the last `window_seconds` (what the `network_policy` check judges: a refusal stops counting against a
    deployment once it is that old)."""

    total: int
    recent: int
    window_seconds: int

    def line(self) -> str:
        return (f"{self.total} call{'s' if self.total != 1 else ''}, {self.recent} in the last "
                f"{self.window_seconds // 60} min")


@dataclass(frozen=True)
class EnvironmentReport:
    """What runs in one environment, whoever started it: containers, the switch (proxy) and its ports."""

    fleet: str
    environment: str
    network: str | None
    containers: tuple[EnvironmentContainer, ...] = ()
    proxy: str | None = None  # where this instance's switch keeps its state, when it has one
    proxy_running: bool = False
    published: dict[str, int] = field(default_factory=dict)  # service -> host port
    switched: dict[str, str] = field(default_factory=dict)  # service -> gateway:port its consumers call
    # Calls the network rule refused, "caller -> callee" -> how many (since the switch last started, and lately).
    refused_calls: dict[str, RefusedCalls] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.containers and not self.proxy_running and self.network is None


@dataclass(frozen=True)
class StartedService:
    """A service started inside an ephemeral environment."""

    service: str
    container_name: str
    container_id: str
    address: str
    url_inside: str | None
    health_seconds: float


# --- checking a spec (the same rules for every target) ----------------------------------------------------


def pinned_reference(image: str) -> tuple[str, str]:
    """(`repo@sha256:...`, `sha256:...`) for an image pinned by digest; ImageNotPinned otherwise."""
    try:
        ref = parse_image_reference(image)
    except ValueError as exc:
        raise ImageNotPinned(f"{exc}; deployments take repo@sha256:<digest>") from exc
    if not ref.digest:
        raise ImageNotPinned(
            f"image {image!r} is not pinned by digest: deployments take repo@sha256:<64 hex> "
            "(a tag can move; the digest is what passed the previous stage)"
        )
    if not SHA256_DIGEST.match(ref.digest):
        raise ImageNotPinned(f"image {image!r}: only sha256 digests are deployed")
    name = image.split("@", 1)[0]
    if ref.tag:
        name = name[: -(len(ref.tag) + 1)]
    return f"{name}@{ref.digest}", ref.digest


def check_name(kind: str, value: str) -> None:
    if not isinstance(value, str) or not DNS_LABEL.match(value):
        raise InvalidDeploymentSpec(
            f"{kind} {value!r} is not a DNS label (lowercase letters, digits and '-', at most 63 characters)"
        )


def _check_port(what: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536):
        raise InvalidDeploymentSpec(f"{what} {value!r} is not a port number (1-65535)")


def validate_spec(spec: DeploymentSpec) -> None:
    """InvalidDeploymentSpec naming the service, environment and field, for anything a target cannot do."""
    where = f"{spec.service} in {spec.environment}"
    check_name("fleet", spec.fleet)
    check_name("environment", spec.environment)
    check_name("service", spec.service)
    _check_port(f"{where}: port", spec.port)
    _check_port(f"{where}: publish", spec.publish)
    if spec.health is not None:
        if not spec.health.startswith("/"):
            raise InvalidDeploymentSpec(f"{where}: health {spec.health!r} must be an HTTP path starting with '/'")
        if spec.port is None:
            raise InvalidDeploymentSpec(f"{where}: a health path needs a port to ask")
    if spec.publish is not None and spec.port is None:
        raise InvalidDeploymentSpec(f"{where}: publish needs the container port to forward to")
    for kind, mapping in (("env", spec.env), ("secrets", spec.secrets)):
        for name, value in mapping.items():
            if not isinstance(name, str) or not ENV_NAME.match(name):
                raise InvalidDeploymentSpec(f"{where}: {kind} name {name!r} is not an environment variable name")
            if not isinstance(value, str):
                # never echo the value: it may be a secret
                raise InvalidDeploymentSpec(f"{where}: {kind} {name} must be a string, not {type(value).__name__}")
    for kind, arguments in (("entrypoint", spec.entrypoint), ("command", spec.command)):
        if arguments is not None and not all(isinstance(argument, str) for argument in arguments):
            raise InvalidDeploymentSpec(f"{where}: {kind} must be a list of text arguments")
    overlap = sorted(set(spec.env) & set(spec.secrets))
    if overlap:
        raise InvalidDeploymentSpec(f"{where}: {', '.join(overlap)} given both as plain env and as secret")
    if spec.secrets_as not in SECRET_DELIVERIES:
        raise InvalidDeploymentSpec(f"{where}: secrets_as must be one of {', '.join(SECRET_DELIVERIES)}, "
                                    f"not {spec.secrets_as!r}")
    pointers = sorted(set(spec.env) & set(secret_file_variables(spec)))
    if pointers:
        raise InvalidDeploymentSpec(f"{where}: {', '.join(pointers)} is set as plain env, but it is where a secret "
                                    "delivered as a file is found: remove it, or deliver the secrets as env")
    reserved = sorted(k for k in spec.labels if L.reserved(k))
    if reserved:
        raise InvalidDeploymentSpec(f"{where}: labels {', '.join(reserved)} are reserved for release-graph")


# --- the interface --------------------------------------------------------------------------------------


class EphemeralEnvironment(ABC):
    """Services and test runs in one private environment, gone when the run ends (integration tests)."""

    fleet: str
    network: str  # where the services answer each other by name

    @abstractmethod
    def start(
        self,
        service: str,
        image: str,
        port: int | None = None,
        health: str | None = None,
        env: Mapping[str, str] | None = None,
        *,
        secrets: Mapping[str, str] | None = None,
        timeout_seconds: float | None = None,
        entrypoint: Sequence[str] | None = None,
        command: Sequence[str] | None = None,
        secrets_as: str = "file",
        hardening: Hardening | None = None,
    ) -> StartedService:
        """Start `image` reachable as `service` here and wait until it is healthy (DeploymentFailed if not).
        `entrypoint`, `command`, `secrets_as` (how `secrets` are delivered) and `hardening` as in
        `DeploymentSpec` (None: the engine's defaults, for a test's own helper images)."""

    @abstractmethod
    def run_to_completion(
        self,
        image: str,
        command: str | list[str] | None = None,
        env: Mapping[str, str] | None = None,
        copy_out: str | None = "/reports",
        timeout_seconds: float = 600,
    ) -> RunResult:
        """Run `image` here until it exits: exit code, log tail and the files under `copy_out`."""

    @abstractmethod
    def logs(self, service: str, tail: int = LOG_TAIL_LINES) -> str:
        """The last log lines of a service started here."""


class DeployTarget(ABC):
    """Where an environment's services run, and how a new version replaces the old one."""

    # Whether `run_tests` runs where only a registry's images reach (a cluster): the end-to-end step then pushes
    # the test image it built and hands over its digest. The docker target runs the engine's local image.
    tests_pull_from_registry = False

    # Progressive rollouts (release_graph/assets/rollout.py). A target without them says so; `traffic` None
    # makes every deployment there a plain replacement.
    def traffic(self, fleet: str, environment: str, service: str):
        """How the service's traffic is split now (the docker target: its haproxy route), or None."""
        return None

    def _no_rollouts(self, service: str, environment: str):
        return TargetError(f"{service} in {environment}: this target ({type(self).__name__}) has no progressive "
                           "rollouts yet: use `rollout: {strategy: replace}` there")

    def start_candidate(self, spec: DeploymentSpec) -> DeploymentResult:
        raise self._no_rollouts(spec.service, spec.environment)

    def set_candidate_weight(self, fleet: str, environment: str, service: str, weight: int):
        raise self._no_rollouts(service, environment)

    def promote_candidate(self, fleet: str, environment: str, service: str) -> tuple[str, ...]:
        raise self._no_rollouts(service, environment)

    def abort_candidate(self, fleet: str, environment: str, service: str) -> str | None:
        return None

    def candidate_problem(self, fleet: str, environment: str, service: str) -> str | None:
        return None

    def counters(self, fleet: str, environment: str, service: str) -> dict:
        return {}

    def refused_calls(self, fleet: str, environment: str) -> dict[str, RefusedCalls]:
        """"caller -> callee" -> the calls the network rule refused in the environment, as far as this target can
        tell (the docker target counts them at its switch; a cluster's NetworkPolicies are enforced by its
        network plugin, which keeps no such count)."""
        return {}

    @abstractmethod
    def deploy(self, spec: DeploymentSpec) -> DeploymentResult:
        """Make `spec.image` serve `spec.service` in `spec.environment`, or leave what served before serving.

        Raises, before anything changed: InvalidDeploymentSpec (a ValueError; ImageNotPinned for a tag),
        ImageUnavailable, PortUnavailable, TargetError. DeploymentFailed: the new version was not healthy or
        could not take over; the previous one still serves.
        """

    @abstractmethod
    def running(self, fleet: str, environment: str, service: str, *, probe: bool = False) -> RunningService | None:
        """What runs as `service` (None: nothing at all). `probe=True` also asks its health once."""

    @abstractmethod
    def running_services(self, fleet: str, environment: str, *, probe: bool = False) -> dict[str, RunningService]:
        """`running()` for every service release-graph deployed in the environment: what drift is measured on."""

    @abstractmethod
    def probe(
        self, fleet: str, environment: str, service: str, *, port: int | None = None, path: str | None = None
    ) -> HealthProbe:
        """Ask what serves `service` for its health once (`port`/`path` default to what the deployment recorded)."""

    @abstractmethod
    def teardown_environment(self, fleet: str, environment: str) -> ReapReport:
        """Remove everything of the environment."""

    @abstractmethod
    def reap(
        self,
        fleet: str | None = None,
        *,
        keep_environments: Sequence[str] | None = None,
        min_age_seconds: float | None = None,
    ) -> ReapReport:
        """Remove what earlier runs left behind (killed integration runs, half-done deployments, environments
        not in `keep_environments`) and return what was removed. What last served is kept: it is drift."""

    @abstractmethod
    def describe_environment(self, fleet: str, environment: str) -> EnvironmentReport:
        """What runs in the environment (containers of any instance, this instance's switch and ports)."""

    @abstractmethod
    def run_tests(
        self,
        fleet: str,
        environment: str,
        image: str,
        *,
        env: Mapping[str, str] | None = None,
        copy_out: str | None = "/reports",
        timeout_seconds: float = 600,
        command: Sequence[str] | None = None,
        step: Any = None,
    ) -> RunResult:
        """Run a test image against a deployed environment (end-to-end tests), where the services answer by name.

        `command` is the image's own command (ENTRYPOINT and CMD: None lets the image run as it is, where the target
        can); `step` is the Dagster step's context, through which a target that runs the tests elsewhere (the
        kubernetes target: a pod, through Dagster Pipes) streams their output into the run. A target with
        `tests_pull_from_registry` runs `image` as the cluster pulls it: a pushed reference, pinned by digest.
        """

    @abstractmethod
    def ephemeral_environment(
        self, fleet: str, name: str, *, ttl_seconds: float = 3600
    ) -> AbstractContextManager[EphemeralEnvironment]:
        """A private environment for one integration run, removed when the block ends (also when it raises);
        `reap` removes what a killed process left once `ttl_seconds` have passed."""
