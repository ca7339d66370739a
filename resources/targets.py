"""Deploy targets: where an environment's services run, and how a new version replaces the old one.

`DockerTarget` runs environments on one host through any Docker Engine API (Docker, or Podman's
compatible service). Each (fleet, environment) gets its own user-defined network
`<prefix>-<fleet>-<environment>`; a service is reachable there by its name, which is a network alias held by
exactly one healthy container. A deployment:

1. refuses an image that is not pinned by digest (`repo@sha256:...`): what runs must be what was tested;
2. is a no-op when that digest already serves the service with the same config and secrets and is healthy;
3. starts the new container next to the old one, on the network but *without* the service name, and waits
   for its health endpoint (HTTP GET from this host to the container's address);
4. only then moves the service name: the new container is reconnected with the alias, the host port
   switches to it (see below), the old container gets `drain_seconds` for requests in flight, then it is
   stopped and removed. A failed health check removes the new container and leaves the old one serving.

Published ports: a host port cannot move between containers without a gap, so they are not published by
the engine. Each environment that publishes anything gets a host `haproxy` (master-worker, admin socket in
the state folder) listening on `publish_address:<port>`; a deployment points the backend at the new
container with the runtime API (`set server be_<svc>/app addr <ip> port <port>`), which needs no reload
and drops no request. The config file is rewritten with every change, so a reload or a restart (reboot)
serves the same addresses. This needs this host to reach container addresses, which holds for a local
engine (Podman's netavark and Docker's bridge route to the host); a remote engine would need engine-side
publishing instead.

Engine behaviour this module is written around (Podman 4.3, measured; see notes/host-facts.md):
- Bridge-network container addresses answer from the host, internal networks included.
- The compat API moves an alias by disconnect + connect with `aliases=[...]` (the address changes).
  While both containers hold the alias, DNS answers both addresses; stopping a container removes its
  entries. On *internal* networks a disconnect breaks aardvark-dns for the rest of the network, so
  ephemeral (internal) environments set aliases at creation and never reconnect anything.
- A stopped container keeps its network membership and aliases in `inspect`, without an address.
- A locally built image's `RepoDigests` holds a local digest, not the one the registry serves: the
  deployment pulls by digest, which records the registry's digest on the image.

Nothing here touches the engine, the file system or a process at import or construction time.
"""

import fcntl
import hashlib
import http.client
import json
import logging
import os
import re
import secrets as _random
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import docker
import requests
from docker.errors import APIError, DockerException, NotFound
from docker.utils.json_stream import json_stream
from pydantic import Field, PrivateAttr

from resources.containers import ContainerEngine, RunResult, network_dns_options
from resources.registry import is_loopback_host, parse_image_reference

log = logging.getLogger(__name__)

RELEASE_GRAPH_LABEL = "release-graph"
FLEET_LABEL = "release-graph.fleet"
ENVIRONMENT_LABEL = "release-graph.environment"
SERVICE_LABEL = "release-graph.service"
DIGEST_LABEL = "release-graph.digest"
IMAGE_LABEL = "release-graph.image"
PORT_LABEL = "release-graph.port"
HEALTH_LABEL = "release-graph.health"
CONFIG_LABEL = "release-graph.config"  # fingerprint of port, health, publish, plain env and secret *names*
EPHEMERAL_LABEL = "release-graph.ephemeral"  # value: the ephemeral network's name
EXPIRES_LABEL = "release-graph.expires-at"  # epoch seconds after which `reap` may remove an ephemeral network
RESERVED_LABEL_PREFIX = "release-graph."

LOG_TAIL_LINES = 30
HEALTH_POLL_SECONDS = 0.25
HEALTH_REQUEST_TIMEOUT_SECONDS = 2.0
# A service without an HTTP health check counts as healthy once it has stayed up this long.
RUNNING_SETTLE_SECONDS = 1.0
# After the alias moves, the new address must answer within this long (it is the same process, new interface).
REATTACH_SECONDS = 10.0
PULL_TIMEOUT_SECONDS = 600
UNIX_SOCKET_PATH_MAX = 107

DNS_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SHA256_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


# --- errors ---------------------------------------------------------------------------------------------


class TargetError(Exception):
    """The target could not do what was asked (engine not answering, bad input, a proxy that won't start)."""


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
    """The environment's haproxy could not be started, reloaded or switched."""


# --- values ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeploymentSpec:
    """What one deployment should leave running.

    `image` must be `repo@sha256:<64 hex>` (a tag in front of the digest is accepted and ignored).
    `port` is the container port (None: nothing to reach); `health` an HTTP path answered with 2xx when
    healthy (None: "running" is healthy; needs `port` otherwise). `env` is plain config; `secrets` are
    injected as environment variables at start and never logged, labelled or returned. `publish` is a host
    port on the target's `publish_address` (None: not published). `labels` are added to the container.
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
class StartedService:
    """A service started inside an ephemeral environment."""

    service: str
    container_name: str
    container_id: str
    address: str
    url_inside: str | None
    health_seconds: float


@dataclass(frozen=True)
class _Route:
    publish: int
    address: str
    port: int


# --- helpers --------------------------------------------------------------------------------------------


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


def _check_name(kind: str, value: str) -> None:
    if not isinstance(value, str) or not DNS_LABEL.match(value):
        raise InvalidDeploymentSpec(
            f"{kind} {value!r} is not a DNS label (lowercase letters, digits and '-', at most 63 characters)"
        )


def _check_port(what: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536):
        raise InvalidDeploymentSpec(f"{what} {value!r} is not a port number (1-65535)")


def _validate_spec(spec: DeploymentSpec) -> None:
    where = f"{spec.service} in {spec.environment}"
    _check_name("fleet", spec.fleet)
    _check_name("environment", spec.environment)
    _check_name("service", spec.service)
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
    overlap = sorted(set(spec.env) & set(spec.secrets))
    if overlap:
        raise InvalidDeploymentSpec(f"{where}: {', '.join(overlap)} given both as plain env and as secret")
    reserved = sorted(k for k in spec.labels if k == RELEASE_GRAPH_LABEL or k.startswith(RESERVED_LABEL_PREFIX))
    if reserved:
        raise InvalidDeploymentSpec(f"{where}: labels {', '.join(reserved)} are reserved for release-graph")


def _config_fingerprint(spec: DeploymentSpec) -> str:
    """What, besides the digest, makes a running container the one this spec asks for. No secret values."""
    material = {
        "port": spec.port,
        "health": spec.health,
        "publish": spec.publish,
        "env": dict(sorted(spec.env.items())),
        "secret_names": sorted(spec.secrets),
        "labels": dict(sorted(spec.labels.items())),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def _iso(engine_time: str | None) -> str | None:
    """The engine's RFC 3339 time (nanoseconds, `Z`) as a Python ISO string in UTC; None for "never"."""
    if not engine_time or engine_time.startswith("0001-01-01"):
        return None
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?", engine_time)
    if not match:
        return engine_time
    base, fraction, zone = match.groups()
    text = base + (f".{fraction[:6].ljust(6, '0')}" if fraction else "") + ("+00:00" if zone in (None, "Z") else zone)
    return datetime.fromisoformat(text).astimezone(UTC).isoformat()


def _epoch(engine_time: str | None) -> float:
    iso = _iso(engine_time)
    return datetime.fromisoformat(iso).timestamp() if iso else 0.0


def _http_status(address: str, port: int, path: str, timeout: float) -> tuple[int | None, str]:
    """(status, problem) of one GET; status None when there was no HTTP answer."""
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "release-graph-health", "Connection": "close"})
        response = conn.getresponse()
        response.read(4096)
        return response.status, f"GET {path} answered {response.status}"
    except (OSError, http.client.HTTPException) as exc:
        return None, f"GET {path} got no answer ({type(exc).__name__}: {exc})"
    finally:
        conn.close()


def _network_entry(container, network: str) -> dict[str, Any]:
    return ((container.attrs.get("NetworkSettings") or {}).get("Networks") or {}).get(network) or {}


def _address(container, network: str) -> str | None:
    return _network_entry(container, network).get("IPAddress") or None


def _holds_alias(container, network: str, alias: str) -> bool:
    return alias in (_network_entry(container, network).get("Aliases") or [])


def _status(container) -> str:
    return str((container.attrs.get("State") or {}).get("Status") or container.status or "unknown")


def _logs_tail(container, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` log lines. Read as a stream and cut here: Podman 4.3's `tail=` counts each partial
    write as a line and returns them out of order (a Python `print` to stderr is several writes)."""
    tail: deque[bytes] = deque(maxlen=lines)
    pending = b""
    try:
        for chunk in container.logs(stdout=True, stderr=True, stream=True, follow=False):
            pending += chunk
            *complete, pending = pending.split(b"\n")
            tail.extend(complete)
    except (NotFound, APIError, requests.RequestException):
        return ""
    if pending:
        tail.append(pending)
    return b"\n".join(tail).decode("utf-8", "replace").rstrip("\n")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, APIError):
        return f"{exc.status_code} {exc.explanation or exc}"
    return f"{type(exc).__name__}: {exc}"


# --- the Docker target ----------------------------------------------------------------------------------


class DockerTarget(dg.ConfigurableResource):
    """Environments on one host through the Docker Engine API: one network per environment, service-name
    DNS, digest-pinned containers, health-gated switches, published ports through a per-environment haproxy.

    Public API: `deploy`, `running`, `running_services`, `probe`, `teardown_environment`, `reap`,
    `ephemeral_environment` (with `EphemeralEnvironment.start` / `.run_to_completion`), `network_name`.
    """

    docker_host: str | None = Field(
        default=None,
        description="Engine address, e.g. unix:///run/release-graph-podman.sock. None: $DOCKER_HOST at use time.",
    )
    name_prefix: str = Field(default="rg", description="First part of every container and network name.")
    health_timeout_seconds: float = Field(
        default=60, description="How long a new container may take to answer its health path with 2xx."
    )
    drain_seconds: float = Field(
        default=1.0,
        description="After the switch, how long the old container keeps running for requests in flight.",
    )
    stop_timeout_seconds: int = Field(default=10, description="SIGTERM grace before the engine kills a container.")
    publish_address: str = Field(default="127.0.0.1", description="Host address published ports listen on.")
    state_dir: str | None = Field(
        default=None,
        description="Folder of the per-environment haproxy state. Default: $RELEASE_GRAPH_STATE/targets, "
        "else ./.dagster_home/targets, resolved on first use.",
    )
    haproxy_binary: str = Field(default="haproxy", description="haproxy executable (2.4 or newer).")
    extra_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels added to every container and network this target creates."
    )

    _client: Any = PrivateAttr(default=None)
    _client_lock: Any = PrivateAttr(default_factory=threading.Lock)

    # --- plumbing ---------------------------------------------------------------------------------------

    def _engine_address(self) -> str:
        return self.docker_host or os.environ.get("DOCKER_HOST") or "the default Docker socket"

    def _docker(self) -> docker.DockerClient:
        with self._client_lock:
            if self._client is None:
                kwargs = {"base_url": self.docker_host} if self.docker_host else docker.utils.kwargs_from_env()
                try:
                    self._client = docker.DockerClient(**kwargs, timeout=120)
                except DockerException as exc:
                    raise TargetError(f"container engine at {self._engine_address()} did not answer: {exc}") from exc
            return self._client

    @contextmanager
    def _engine(self, what: str) -> Iterator[None]:
        """Engine failures as TargetError naming the engine and the operation."""
        try:
            yield
        except (TargetError, NotFound):
            raise
        except (DockerException, requests.RequestException) as exc:
            raise TargetError(f"{what}: container engine at {self._engine_address()}: {_describe(exc)}") from exc

    def network_name(self, fleet: str, environment: str) -> str:
        return f"{self.name_prefix}-{fleet}-{environment}"

    def _state_root(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir).expanduser().resolve()
        state = os.environ.get("RELEASE_GRAPH_STATE")
        if state:
            return Path(state).expanduser().resolve() / "targets"
        return Path.cwd() / ".dagster_home" / "targets"

    def _router(self, fleet: str, environment: str) -> "_HaproxyRouter":
        return _HaproxyRouter(
            self._state_root() / self.network_name(fleet, environment),
            binary=self.haproxy_binary,
            bind_address=self.publish_address,
            title=f"{fleet}/{environment}",
        )

    def _labels(self, **labels: str) -> dict[str, str]:
        return {**self.extra_labels, RELEASE_GRAPH_LABEL: "1", **labels}

    def _ensure_network(self, fleet: str, environment: str):
        client = self._docker()
        name = self.network_name(fleet, environment)
        with self._engine(f"network {name}"):
            try:
                return client.networks.get(name)
            except NotFound:
                pass
            labels = self._labels(**{FLEET_LABEL: fleet, ENVIRONMENT_LABEL: environment})
            try:
                return client.networks.create(name, driver="bridge", labels=labels, check_duplicate=True)
            except APIError as exc:
                if exc.status_code == 409:  # another deployment in this environment created it meanwhile
                    return client.networks.get(name)
                raise

    def _ensure_image(self, reference: str, *, what: str, spec: DeploymentSpec | None = None) -> None:
        """Have `reference` in the engine, pulling it when missing. Failures raise ImageUnavailable."""
        client = self._docker()
        try:
            client.images.get(reference)
            return
        except NotFound:
            pass
        except (DockerException, requests.RequestException) as exc:
            raise TargetError(f"{what}: engine at {self._engine_address()}: {_describe(exc)}") from exc
        ref = parse_image_reference(reference)
        repository, _, rest = reference.partition("@") if ref.digest else reference.rpartition(":")
        params = {"fromImage": repository, "tag": rest or "latest"}
        if is_loopback_host(ref.registry):
            params["tlsVerify"] = "false"  # Podman: loopback registries speak plain HTTP (Docker ignores it)
        api = client.api
        problem: str | None = None
        try:
            response = api.post(
                f"{api.base_url}/v{api.api_version}/images/create",
                params=params,
                headers={"X-Registry-Auth": "e30="},
                stream=True,
                timeout=PULL_TIMEOUT_SECONDS,
            )
            with response:
                if response.status_code >= 400:
                    problem = f"engine refused the pull ({response.status_code}): {response.text.strip()[:300]}"
                else:
                    for item in json_stream(response.iter_content(chunk_size=None, decode_unicode=True)):
                        if item.get("error") or item.get("errorDetail"):
                            detail = item.get("errorDetail") or {}
                            problem = str(detail.get("message") or item.get("error")).strip()
        except requests.RequestException as exc:
            problem = f"engine at {self._engine_address()} stopped answering: {exc}"
        if problem is None:
            try:
                client.images.get(reference)
                return
            except NotFound:
                problem = "the pull ended without the image"
        raise ImageUnavailable(
            f"{what}: cannot get image {reference} from registry {ref.registry}: {problem}; nothing was changed",
            service=spec.service if spec else "",
            environment=spec.environment if spec else "",
            image=reference,
        )

    def _service_containers(self, fleet: str, environment: str, service: str | None = None) -> list:
        """Labelled containers of an environment (any state), oldest first."""
        labels = [f"{FLEET_LABEL}={fleet}", f"{ENVIRONMENT_LABEL}={environment}"]
        if service:
            labels.append(f"{SERVICE_LABEL}={service}")
        client = self._docker()
        with self._engine(f"listing containers of {fleet}/{environment}"):
            found = client.containers.list(all=True, ignore_removed=True, filters={"label": labels})
        return sorted(found, key=lambda c: _epoch(c.attrs.get("Created")))

    def _network_members(self, network: str) -> list:
        client = self._docker()
        with self._engine(f"listing containers on network {network}"):
            return client.containers.list(all=True, ignore_removed=True, filters={"network": network})

    def _pick(self, candidates: Sequence, network: str, service: str):
        """The container that is (or was last) the service: the running alias holder, else any alias
        holder (stopped by hand), else the newest labelled one."""
        holders = [c for c in candidates if _holds_alias(c, network, service)]
        running = [c for c in holders if _status(c) == "running"]
        for group in (running, holders, list(candidates)):
            if group:
                return max(group, key=lambda c: _epoch(c.attrs.get("Created")))
        return None

    def _image_digests(self, image_id: str) -> tuple[str, ...]:
        try:
            image = self._docker().images.get(image_id)
        except NotFound:
            return ()
        digests = {entry.split("@", 1)[1] for entry in image.attrs.get("RepoDigests") or [] if "@" in entry}
        return tuple(sorted(digests))

    # --- deploy -----------------------------------------------------------------------------------------

    def deploy(self, spec: DeploymentSpec) -> DeploymentResult:
        """Make `spec.image` serve `spec.service` in `spec.environment`; see the module docstring.

        Raises, before anything changed: InvalidDeploymentSpec (a ValueError; ImageNotPinned for a tag),
        ImageUnavailable, PortUnavailable, TargetError (engine not answering). DeploymentFailed: the new
        version was not healthy or could not take over; the previous one still serves.
        """
        reference, digest = pinned_reference(spec.image)
        _validate_spec(spec)
        where = f"{spec.service} in {spec.fleet}/{spec.environment}"
        network = self._ensure_network(spec.fleet, spec.environment)
        net = network.name
        fingerprint = _config_fingerprint(spec)
        router = self._router(spec.fleet, spec.environment)

        current = self._serving(spec.fleet, spec.environment, spec.service)
        if current is not None:
            unchanged = self._unchanged_result(current, spec, reference, digest, fingerprint, net, router)
            if unchanged is not None:
                return unchanged

        if spec.publish is not None:
            router.check_port(spec.service, spec.publish, where=where)
        self._ensure_image(reference, what=f"deploying {where}", spec=spec)

        labels = {
            **self._labels(),
            **spec.labels,
            FLEET_LABEL: spec.fleet,
            ENVIRONMENT_LABEL: spec.environment,
            SERVICE_LABEL: spec.service,
            DIGEST_LABEL: digest,
            IMAGE_LABEL: reference,
            CONFIG_LABEL: fingerprint,
        }
        if spec.port is not None:
            labels[PORT_LABEL] = str(spec.port)
        if spec.health is not None:
            labels[HEALTH_LABEL] = spec.health
        base_name = f"{net}-{spec.service}-{digest[7:19]}"
        container = self._create_unique(
            base_name,
            image=reference,
            environment={**spec.env, **spec.secrets},
            labels=labels,
            network=net,
            init=True,  # PID 1 forwards SIGTERM and reaps: stop takes effect at once
            detach=True,
            what=f"deploying {where}",
            **network_dns_options(self._docker(), net),
        )
        try:
            with self._engine(f"starting {container.name} for {where}"):
                container.start()
            health_seconds = self._wait_healthy(
                container, net, spec.port, spec.health,
                service=spec.service, environment=spec.environment, where=where, image=reference,
            )
            address = self._move_alias(network, container, spec, where=where, image=reference)
        except BaseException:
            with suppress(DockerException, requests.RequestException):
                container.remove(force=True)
            raise
        log.info("%s: %s healthy after %.2f s", where, container.name, health_seconds)

        old_route = router.route_of(spec.service)
        try:
            if spec.publish is not None and spec.port is not None:
                router.set_route(spec.service, _Route(spec.publish, address, spec.port))
            elif old_route is not None:
                router.remove_route(spec.service)
        except ProxyError as exc:
            with suppress(DockerException, requests.RequestException):
                container.remove(force=True)  # stopping it removes its DNS entry: the old container serves alone
            with suppress(ProxyError):
                if old_route is not None:
                    router.set_route(spec.service, old_route)
            raise DeploymentFailed(
                f"{where}: {container.name} was healthy but the published port could not switch to it: {exc}; "
                "the previous version keeps serving",
                service=spec.service, environment=spec.environment, image=reference,
            ) from exc

        replaced = self._retire(spec, keep=container.id)
        container.reload()
        return DeploymentResult(
            container_name=container.name,
            container_id=container.id,
            digest=digest,
            image=reference,
            started_at=_iso((container.attrs.get("State") or {}).get("StartedAt")) or "",
            url_inside=f"http://{spec.service}:{spec.port}" if spec.port else None,
            published_url=f"http://{self.publish_address}:{spec.publish}" if spec.publish else None,
            changed=True,
            health_seconds=round(health_seconds, 3),
            network=net,
            replaced=replaced,
        )

    def _serving(self, fleet: str, environment: str, service: str):
        """The running container holding the service name, if any."""
        net = self.network_name(fleet, environment)
        candidates = self._service_containers(fleet, environment, service)
        holders = [c for c in candidates if _status(c) == "running" and _holds_alias(c, net, service)]
        return max(holders, key=lambda c: _epoch(c.attrs.get("Created"))) if holders else None

    def _unchanged_result(
        self, current, spec: DeploymentSpec, reference: str, digest: str, fingerprint: str, net: str, router
    ) -> DeploymentResult | None:
        labels = current.attrs.get("Config", {}).get("Labels") or {}
        if labels.get(DIGEST_LABEL) != digest or labels.get(CONFIG_LABEL) != fingerprint:
            return None
        if digest not in self._image_digests(current.attrs.get("Image", "")):
            return None  # labels say so, the image does not: someone swapped it
        actual_env = set(current.attrs.get("Config", {}).get("Env") or [])
        # Compared in memory only: a rotated secret value must redeploy, and the engine holds it anyway.
        if any(f"{k}={v}" not in actual_env for k, v in {**spec.env, **spec.secrets}.items()):
            return None
        address = _address(current, net)
        if not address:
            return None
        started = time.monotonic()
        if spec.health is not None and spec.port is not None:
            status, _ = _http_status(address, spec.port, spec.health, HEALTH_REQUEST_TIMEOUT_SECONDS)
            if status is None or not 200 <= status < 300:
                return None
        probe_seconds = time.monotonic() - started
        where = f"{spec.service} in {spec.fleet}/{spec.environment}"
        wanted = _Route(spec.publish, address, spec.port) if spec.publish and spec.port else None
        if router.route_of(spec.service) != wanted or (wanted is not None and not router.alive()):
            # The container is right; only the published port is not (first publish, proxy gone after reboot).
            if wanted is not None:
                router.check_port(spec.service, spec.publish, where=where)
                router.set_route(spec.service, wanted)
            else:
                router.remove_route(spec.service)
        return DeploymentResult(
            container_name=current.name,
            container_id=current.id,
            digest=digest,
            image=reference,
            started_at=_iso((current.attrs.get("State") or {}).get("StartedAt")) or "",
            url_inside=f"http://{spec.service}:{spec.port}" if spec.port else None,
            published_url=f"http://{self.publish_address}:{spec.publish}" if spec.publish else None,
            changed=False,
            health_seconds=round(probe_seconds, 3),
            network=net,
        )

    def _create_unique(self, base_name: str, *, what: str, **kwargs):
        client = self._docker()
        name = base_name
        for _attempt in range(5):
            with self._engine(what):
                try:
                    client.containers.get(name)
                    name = f"{base_name}-{_random.token_hex(2)}"
                    continue
                except NotFound:
                    pass
                try:
                    return client.containers.create(name=name, **kwargs)
                except APIError as exc:
                    if exc.status_code != 409:
                        raise
                    name = f"{base_name}-{_random.token_hex(2)}"
        raise TargetError(f"{what}: no free container name after 5 tries starting from {base_name}")

    def _wait_healthy(
        self,
        container,
        network: str,
        port: int | None,
        health: str | None,
        *,
        service: str,
        environment: str,
        where: str,
        image: str,
        timeout: float | None = None,
    ) -> float:
        """Seconds until `container` answered `health` with 2xx (or stayed running); DeploymentFailed if not."""
        timeout = self.health_timeout_seconds if timeout is None else timeout
        started = time.monotonic()
        deadline = started + timeout
        running_since: float | None = None
        problem = "it did not start"
        while True:
            with self._engine(f"watching {container.name} for {where}"):
                container.reload()
            state = container.attrs.get("State") or {}
            status = _status(container)
            now = time.monotonic()
            if status in ("exited", "dead", "removing", "stopped"):
                raise DeploymentFailed(
                    f"{where}: new container {container.name} ({image}) exited with code {state.get('ExitCode')} "
                    "before it became healthy; the previous version keeps serving",
                    service=service, environment=environment, image=image, logs_tail=_logs_tail(container),
                )
            if status == "running":
                running_since = running_since or now
                address = _address(container, network)
                if health is None:
                    if now - running_since >= RUNNING_SETTLE_SECONDS:
                        return now - started
                    problem = "it had not stayed up yet"
                elif address and port:
                    answer, problem = _http_status(
                        address, port, health, min(HEALTH_REQUEST_TIMEOUT_SECONDS, max(deadline - now, 0.2))
                    )
                    if answer is not None and 200 <= answer < 300:
                        return time.monotonic() - started
                else:
                    problem = f"it has no address on network {network}"
            if time.monotonic() >= deadline:
                raise DeploymentFailed(
                    f"{where}: new container {container.name} ({image}) was not healthy within {timeout:g} s: "
                    f"{problem}; the previous version keeps serving",
                    service=service, environment=environment, image=image, logs_tail=_logs_tail(container),
                )
            time.sleep(HEALTH_POLL_SECONDS)

    def _move_alias(self, network, container, spec: DeploymentSpec, *, where: str, image: str) -> str:
        """Give `container` the service name (reconnecting it) and return its new address.

        Until the old container stops, DNS answers both addresses; both are healthy, and clients that try
        every address (getaddrinfo order) never see a refusal.
        """
        what = f"moving the name {spec.service} to {container.name} ({where})"
        with self._engine(what):
            network.disconnect(container)
            network.connect(container, aliases=[spec.service])
        deadline = time.monotonic() + REATTACH_SECONDS
        problem = "no address after reconnecting"
        while time.monotonic() < deadline:
            with self._engine(what):
                container.reload()
            address = _address(container, network.name)
            if address and _holds_alias(container, network.name, spec.service):
                if spec.health is None or spec.port is None:
                    return address
                answer, problem = _http_status(address, spec.port, spec.health, HEALTH_REQUEST_TIMEOUT_SECONDS)
                if answer is not None and 200 <= answer < 300:
                    return address
            time.sleep(HEALTH_POLL_SECONDS)
        raise DeploymentFailed(
            f"{where}: {container.name} was healthy but did not answer after it took the service name: {problem}; "
            "the previous version keeps serving",
            service=spec.service, environment=spec.environment, image=image, logs_tail=_logs_tail(container),
        )

    def _retire(self, spec: DeploymentSpec, *, keep: str) -> tuple[str, ...]:
        """Stop and remove every other container of the service: the previous version and leftovers."""
        others = [c for c in self._service_containers(spec.fleet, spec.environment, spec.service) if c.id != keep]
        if any(_status(c) == "running" for c in others) and self.drain_seconds > 0:
            time.sleep(self.drain_seconds)
        removed = []
        for container in others:
            with suppress(NotFound), self._engine(f"removing {container.name}"):
                if _status(container) == "running":
                    container.stop(timeout=self.stop_timeout_seconds)
                container.remove(force=True)
                removed.append(container.name)
        return tuple(removed)

    # --- what runs --------------------------------------------------------------------------------------

    def running(self, fleet: str, environment: str, service: str, *, probe: bool = False) -> RunningService | None:
        """What runs as `service` (None: no container at all). `probe=True` also asks its health path once."""
        net = self.network_name(fleet, environment)
        candidates = {c.id: c for c in self._service_containers(fleet, environment, service)}
        # A container started by hand with the service name but without our labels still is what serves.
        for member in self._network_members(net) if self._network_exists(net) else []:
            if _holds_alias(member, net, service):
                candidates.setdefault(member.id, member)
        chosen = self._pick(list(candidates.values()), net, service)
        return None if chosen is None else self._describe_running(chosen, fleet, environment, service, probe)

    def running_services(self, fleet: str, environment: str, *, probe: bool = False) -> dict[str, RunningService]:
        """`running()` for every service that has a labelled container in the environment."""
        net = self.network_name(fleet, environment)
        by_service: dict[str, list] = {}
        for container in self._service_containers(fleet, environment):
            service = (container.attrs.get("Config", {}).get("Labels") or {}).get(SERVICE_LABEL)
            if service:
                by_service.setdefault(service, []).append(container)
        members = self._network_members(net) if self._network_exists(net) else []
        result = {}
        for service, containers in sorted(by_service.items()):
            candidates = {c.id: c for c in containers}
            for member in members:
                if _holds_alias(member, net, service):
                    candidates.setdefault(member.id, member)
            chosen = self._pick(list(candidates.values()), net, service)
            if chosen is not None:
                result[service] = self._describe_running(chosen, fleet, environment, service, probe)
        return result

    def probe(
        self, fleet: str, environment: str, service: str, *, port: int | None = None, path: str | None = None
    ) -> HealthProbe:
        """Ask the container that serves `service` for its health once, from this host.

        `port`/`path` default to what the deployment recorded; a service without a health path is healthy
        while it runs. Not healthy: nothing holds the name, the container is not running, or a non-2xx answer.
        """
        net = self.network_name(fleet, environment)
        current = self._serving(fleet, environment, service) if self._network_exists(net) else None
        if current is None:
            actual = self.running(fleet, environment, service)
            detail = "no container runs it"
            if actual is not None:
                detail = f"container {actual.container_name} is {actual.status}"
            return HealthProbe(False, f"{service} in {fleet}/{environment}: {detail}")
        labels = current.attrs.get("Config", {}).get("Labels") or {}
        if port is None and labels.get(PORT_LABEL, "").isdigit():
            port = int(labels[PORT_LABEL])
        return self._probe_container(current, net, port, path if path is not None else labels.get(HEALTH_LABEL))

    def _probe_container(self, container, network: str, port: int | None, path: str | None) -> HealthProbe:
        status = _status(container)
        address = _address(container, network)
        if status != "running" or not address:
            return HealthProbe(False, f"container {container.name} is {status}")
        if not path or not port:
            return HealthProbe(True, f"container {container.name} is running (no HTTP health check)")
        started = time.monotonic()
        answer, detail = _http_status(address, port, path, HEALTH_REQUEST_TIMEOUT_SECONDS)
        seconds = round(time.monotonic() - started, 3)
        healthy = answer is not None and 200 <= answer < 300
        return HealthProbe(healthy, f"{container.name}: {detail} in {seconds:g} s", answer, seconds)

    def _network_exists(self, name: str) -> bool:
        with self._engine(f"network {name}"):
            try:
                self._docker().networks.get(name)
                return True
            except NotFound:
                return False

    def _describe_running(self, container, fleet: str, environment: str, service: str, probe: bool) -> RunningService:
        net = self.network_name(fleet, environment)
        labels = container.attrs.get("Config", {}).get("Labels") or {}
        status = _status(container)
        address = _address(container, net) if status == "running" else None
        port = int(labels[PORT_LABEL]) if labels.get(PORT_LABEL, "").isdigit() else None
        route = self._router(fleet, environment).route_of(service)
        serving = status == "running" and _holds_alias(container, net, service)
        healthy = self._probe_container(container, net, port, labels.get(HEALTH_LABEL)).healthy if probe else None
        return RunningService(
            fleet=fleet,
            environment=environment,
            service=service,
            container_name=container.name,
            container_id=container.id,
            status=status,
            serving=serving,
            digest=labels.get(DIGEST_LABEL),
            image=labels.get(IMAGE_LABEL) or container.attrs.get("Config", {}).get("Image"),
            image_id=container.attrs.get("Image", ""),
            image_digests=self._image_digests(container.attrs.get("Image", "")),
            started_at=_iso((container.attrs.get("State") or {}).get("StartedAt")),
            url_inside=f"http://{service}:{port}" if port else None,
            published_url=f"http://{self.publish_address}:{route.publish}" if route else None,
            address=address,
            healthy=healthy,
        )

    # --- clean-up -----------------------------------------------------------------------------------------

    def teardown_environment(self, fleet: str, environment: str) -> ReapReport:
        """Remove every container of the environment (and anything else on its network), the network and
        its haproxy."""
        _check_name("fleet", fleet)
        _check_name("environment", environment)
        net = self.network_name(fleet, environment)
        containers = {c.id: c for c in self._service_containers(fleet, environment)}
        if self._network_exists(net):
            containers.update({c.id: c for c in self._network_members(net)})
        removed = []
        for container in containers.values():
            with suppress(NotFound), self._engine(f"removing {container.name}"):
                container.remove(force=True)
                removed.append(container.name)
        networks = []
        with suppress(NotFound), self._engine(f"removing network {net}"):
            self._docker().networks.get(net).remove()
            networks.append(net)
        router = self._router(fleet, environment)
        proxies = [net] if router.exists() else []
        router.destroy()
        return ReapReport(tuple(removed), tuple(networks), tuple(proxies))

    def reap(
        self,
        fleet: str | None = None,
        *,
        keep_environments: Sequence[str] | None = None,
        min_age_seconds: float | None = None,
    ) -> ReapReport:
        """Remove what earlier runs left behind and return what was removed.

        - ephemeral networks (and their containers) whose expiry passed: an integration run that was killed;
        - per service, containers that neither serve nor are the last one that did (a deployment that died
          halfway, a previous version that was not removed), once older than `min_age_seconds` (default:
          long enough for any deployment in progress to finish: health timeout + drain + stop + 60 s);
        - with `fleet` and `keep_environments`: whole environments of that fleet not in the list;
        - haproxy state of environments whose network is gone.
        A container stopped by hand that last served is kept: it is drift, for the drift check to report.
        """
        if keep_environments is not None and fleet is None:
            raise TargetError("reap: keep_environments needs a fleet (environments are per fleet)")
        if min_age_seconds is None:
            min_age_seconds = self.health_timeout_seconds + self.drain_seconds + self.stop_timeout_seconds + 60
        client = self._docker()
        now = time.time()
        containers: list[str] = []
        networks: list[str] = []
        proxies: list[str] = []
        base = [f"{RELEASE_GRAPH_LABEL}=1"] + ([f"{FLEET_LABEL}={fleet}"] if fleet else [])

        with self._engine("reap: listing ephemeral networks"):
            ephemeral = client.networks.list(filters={"label": [*base, EPHEMERAL_LABEL]})
        for network in ephemeral:
            labels = network.attrs.get("Labels") or {}
            try:
                expires = float(labels.get(EXPIRES_LABEL, "0"))
            except ValueError:
                expires = 0.0
            if expires <= now:
                found = self._remove_ephemeral(network.name)
                containers.extend(found[0])
                networks.extend(found[1])

        with self._engine("reap: listing containers"):
            labelled = client.containers.list(all=True, ignore_removed=True, filters={"label": [*base, SERVICE_LABEL]})
        groups: dict[tuple[str, str, str], list] = {}
        for container in labelled:
            labels = container.attrs.get("Config", {}).get("Labels") or {}
            if EPHEMERAL_LABEL in labels or not labels.get(ENVIRONMENT_LABEL):
                continue
            key = (labels.get(FLEET_LABEL, ""), labels[ENVIRONMENT_LABEL], labels[SERVICE_LABEL])
            groups.setdefault(key, []).append(container)
        for (group_fleet, environment, service), members in groups.items():
            if keep_environments is not None and environment not in keep_environments:
                continue  # the whole environment goes below
            keep = self._pick(members, self.network_name(group_fleet, environment), service)
            for container in members:
                if container is keep or now - _epoch(container.attrs.get("Created")) < min_age_seconds:
                    continue
                with suppress(NotFound), self._engine(f"reap: removing {container.name}"):
                    container.remove(force=True)
                    containers.append(container.name)

        if keep_environments is not None and fleet is not None:
            with self._engine("reap: listing environment networks"):
                env_networks = client.networks.list(filters={"label": [*base, ENVIRONMENT_LABEL]})
            stale = {
                (n.attrs.get("Labels") or {}).get(ENVIRONMENT_LABEL)
                for n in env_networks
                if EPHEMERAL_LABEL not in (n.attrs.get("Labels") or {})
            }
            stale |= {env for (f, env, _s) in groups if f == fleet}
            for environment in sorted(e for e in stale if e and e not in keep_environments):
                report = self.teardown_environment(fleet, environment)
                containers.extend(report.containers)
                networks.extend(report.networks)
                proxies.extend(report.proxies)

        root = self._state_root()
        if root.is_dir():
            prefix = f"{self.name_prefix}-{fleet}-" if fleet else f"{self.name_prefix}-"
            for folder in sorted(root.iterdir()):
                if folder.is_dir() and folder.name.startswith(prefix) and not self._network_exists(folder.name):
                    router = _HaproxyRouter(folder, binary=self.haproxy_binary, bind_address=self.publish_address,
                                            title=folder.name)
                    router.destroy()
                    proxies.append(folder.name)
        return ReapReport(tuple(containers), tuple(networks), tuple(proxies))

    def run_tests(
        self,
        fleet: str,
        environment: str,
        image: str,
        *,
        env: Mapping[str, str] | None = None,
        copy_out: str | None = "/reports",
        timeout_seconds: float = 600,
    ) -> RunResult:
        """Run a test image on a deployed environment's network (end-to-end tests), then remove it.

        The services answer by name there (`http://<service>:<port>`), exactly as they call each other.
        """
        net = self.network_name(fleet, environment)
        if not self._network_exists(net):
            raise TargetError(f"environment '{environment}' of fleet '{fleet}' has no network {net}: nothing is "
                              "deployed there")
        engine = ContainerEngine(docker_host=self.docker_host)
        return engine.run_to_completion(
            image,
            env=dict(env or {}),
            network=net,
            labels=self._labels(**{FLEET_LABEL: fleet}),
            name=f"{net}-tests-{_random.token_hex(3)}",
            timeout_seconds=timeout_seconds,
            copy_out=copy_out,
        )

    # --- ephemeral environments ---------------------------------------------------------------------------

    @contextmanager
    def ephemeral_environment(
        self, fleet: str, name: str, *, ttl_seconds: float = 3600
    ) -> Iterator["EphemeralEnvironment"]:
        """A private internal network `<prefix>-<fleet>-<name>-<random>` for one integration run.

        Everything started in it is removed when the block ends, also when it raises. `reap` removes what a
        killed process left once `ttl_seconds` have passed.
        """
        _check_name("fleet", fleet)
        _check_name("ephemeral environment name", name)
        net = f"{self.name_prefix}-{fleet}-{name}-{_random.token_hex(3)}"
        labels = self._labels(
            **{FLEET_LABEL: fleet, EPHEMERAL_LABEL: net, EXPIRES_LABEL: str(int(time.time() + ttl_seconds))}
        )
        with self._engine(f"creating network {net}"):
            # internal: no way out of the host, and DNS still works (aardvark answers on the gateway)
            self._docker().networks.create(net, driver="bridge", internal=True, labels=labels, check_duplicate=True)
        environment = EphemeralEnvironment(self, fleet=fleet, network=net)
        try:
            yield environment
        except BaseException as exc:
            try:
                self._remove_ephemeral(net)
            except TargetError as cleanup:
                exc.add_note(f"also: tearing down {net} failed: {cleanup}")
            raise
        self._remove_ephemeral(net)

    def _remove_ephemeral(self, net: str) -> tuple[list[str], list[str]]:
        client = self._docker()
        members = {}
        with self._engine(f"tearing down {net}"):
            labelled = client.containers.list(
                all=True, ignore_removed=True, filters={"label": f"{EPHEMERAL_LABEL}={net}"}
            )
            members.update({c.id: c for c in labelled})
            try:
                network = client.networks.get(net)
            except NotFound:
                network = None
            if network is not None:
                attached = client.containers.list(all=True, ignore_removed=True, filters={"network": net})
                members.update({c.id: c for c in attached})
        removed = []
        for container in members.values():
            with suppress(NotFound), self._engine(f"tearing down {net}: removing {container.name}"):
                container.remove(force=True)
                removed.append(container.name)
        networks = []
        if network is not None:
            with suppress(NotFound), self._engine(f"tearing down {net}: removing the network"):
                network.remove()
                networks.append(net)
        return removed, networks


class EphemeralEnvironment:
    """Services and test runs on one private network; made by `DockerTarget.ephemeral_environment`."""

    def __init__(self, target: DockerTarget, *, fleet: str, network: str):
        self.target = target
        self.fleet = fleet
        self.network = network

    def _labels(self, **more: str) -> dict[str, str]:
        return self.target._labels(**{FLEET_LABEL: self.fleet, EPHEMERAL_LABEL: self.network, **more})

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
    ) -> StartedService:
        """Start `image` reachable as `service` on this network and wait for it to be healthy.

        Any image reference works here (a test may run a locally built image); a missing one is pulled.
        A service that does not become healthy raises DeploymentFailed with its last log lines.
        """
        _check_name("service", service)
        spec = DeploymentSpec(self.fleet, "ephemeral", service, image, port, health, dict(env or {}),
                              dict(secrets or {}))
        _validate_spec(spec)
        target = self.target
        where = f"{service} in {self.network}"
        target._ensure_image(image, what=f"starting {where}", spec=spec)
        client = target._docker()
        labels = self._labels(**{SERVICE_LABEL: service, IMAGE_LABEL: image})
        if port is not None:
            labels[PORT_LABEL] = str(port)
        with target._engine(f"starting {where}"):
            container = client.containers.create(
                image,
                name=f"{self.network}-{service}",
                environment={**spec.env, **spec.secrets},
                labels=labels,
                network=self.network,
                # Aliases at creation: reconnecting on an internal network breaks its DNS (module docstring).
                networking_config={self.network: client.api.create_endpoint_config(aliases=[service])},
                init=True,
                detach=True,
                **network_dns_options(client, self.network),
            )
            container.start()
        seconds = target._wait_healthy(
            container, self.network, port, health,
            service=service, environment=self.network, where=where, image=image, timeout=timeout_seconds,
        )
        container.reload()
        return StartedService(
            service=service,
            container_name=container.name,
            container_id=container.id,
            address=_address(container, self.network) or "",
            url_inside=f"http://{service}:{port}" if port else None,
            health_seconds=round(seconds, 3),
        )

    def run_to_completion(
        self,
        image: str,
        command: str | list[str] | None = None,
        env: Mapping[str, str] | None = None,
        copy_out: str | None = "/reports",
        timeout_seconds: float = 600,
    ) -> RunResult:
        """Run `image` on this network until it exits; exit code, log tail and the files under `copy_out`.

        Delegates to `ContainerEngine.run_to_completion` (same engine): a non-zero exit is a result,
        a crash or a timeout raises `ContainerCrashed` / `ContainerTimeout`.
        """
        self.target._ensure_image(image, what=f"running {image} in {self.network}")
        engine = ContainerEngine(docker_host=self.target.docker_host)
        return engine.run_to_completion(
            image,
            command=command,
            env=dict(env or {}),
            network=self.network,
            labels=self._labels(),
            name=f"{self.network}-run-{_random.token_hex(3)}",
            timeout_seconds=timeout_seconds,
            copy_out=copy_out,
        )

    def logs(self, service: str, tail: int = LOG_TAIL_LINES) -> str:
        """The last log lines of a service started here."""
        with self.target._engine(f"logs of {service} in {self.network}"):
            container = self.target._docker().containers.get(f"{self.network}-{service}")
        return _logs_tail(container, tail)


# --- haproxy ----------------------------------------------------------------------------------------------


class _HaproxyRouter:
    """One haproxy per environment: a frontend per published service, switched with the runtime API.

    State folder: `routes.json` (the truth), `haproxy.cfg` (rendered from it), `haproxy.pid` (master),
    `master.sock` (master CLI: reload), `admin.sock` (worker: `set server`), `lock`.
    """

    def __init__(self, directory: Path, *, binary: str, bind_address: str, title: str):
        self.directory = directory
        self.binary = binary
        self.bind_address = bind_address
        self.title = title

    # files
    @property
    def routes_file(self) -> Path:
        return self.directory / "routes.json"

    @property
    def config_file(self) -> Path:
        return self.directory / "haproxy.cfg"

    @property
    def pid_file(self) -> Path:
        return self.directory / "haproxy.pid"

    @property
    def admin_socket(self) -> Path:
        return self.directory / "admin.sock"

    @property
    def master_socket(self) -> Path:
        return self.directory / "master.sock"

    def exists(self) -> bool:
        return self.directory.is_dir()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        if len(str(self.admin_socket)) > UNIX_SOCKET_PATH_MAX:
            raise ProxyError(
                f"haproxy state folder {self.directory} is too long for a unix socket path; set a shorter state_dir"
            )
        with open(self.directory / "lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def routes(self) -> dict[str, _Route]:
        try:
            raw = json.loads(self.routes_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ProxyError(f"haproxy of {self.title}: cannot read {self.routes_file}: {exc}") from exc
        return {name: _Route(**value) for name, value in raw.items()}

    def route_of(self, service: str) -> _Route | None:
        return self.routes().get(service)

    def _write(self, routes: Mapping[str, _Route]) -> None:
        payload = {name: asdict(route) for name, route in sorted(routes.items())}
        tmp = self.routes_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        tmp.replace(self.routes_file)
        cfg = self.config_file.with_suffix(".tmp")
        cfg.write_text(self._render(routes))
        cfg.replace(self.config_file)

    def _render(self, routes: Mapping[str, _Route]) -> str:
        lines = [
            f"# Published ports of {self.title}, written by release-graph from routes.json: edit that, not this.",
            "global",
            "    master-worker",
            f"    stats socket {self.admin_socket} mode 600 level admin expose-fd listeners",
            "defaults",
            "    mode http",
            "    timeout connect 2s",
            "    timeout client 60s",
            "    timeout server 60s",
            "    timeout http-keep-alive 10s",
            # Clients keep their connections; haproxy opens a new server connection per request, so no pooled
            # connection to an old container outlives a switch of the server address.
            "    option http-server-close",
            # A request that meets a closing old container is replayed on a fresh connection (new address).
            "    retries 3",
            "    option redispatch",
            "    retry-on all-retryable-errors",
        ]
        for name, route in sorted(routes.items()):
            lines += [
                f"frontend fe_{name}",
                f"    bind {self.bind_address}:{route.publish}",
                f"    default_backend be_{name}",
                f"backend be_{name}",
                f"    server app {route.address}:{route.port}",
            ]
        return "\n".join(lines) + "\n"

    # process
    def _master_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace")
        except OSError:
            return None
        # The pid file may be stale and the number reused: only our haproxy with our config counts.
        return pid if "haproxy" in cmdline and str(self.config_file) in cmdline else None

    def alive(self) -> bool:
        return self._master_pid() is not None and self.admin_socket.exists()

    def _command(self, sock: Path, command: str, timeout: float = 5.0) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(sock))
            # The master CLI keeps its connection open unless told to quit.
            conn.sendall((command + (";quit" if sock == self.master_socket else "") + "\n").encode())
            chunks = []
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")

    def _worker_pid(self) -> int | None:
        try:
            info = self._command(self.admin_socket, "show info", timeout=2)
        except OSError:
            return None
        match = re.search(r"^Pid: (\d+)$", info, re.MULTILINE)
        return int(match.group(1)) if match else None

    def _check_config(self) -> None:
        result = subprocess.run(
            [self.binary, "-c", "-q", "-f", str(self.config_file)], capture_output=True, text=True, timeout=30
        )
        if result.returncode != 0:
            raise ProxyError(f"haproxy of {self.title}: config {self.config_file} is invalid: {result.stderr.strip()}")

    def _start(self) -> None:
        for stale in (self.admin_socket, self.master_socket):
            with suppress(FileNotFoundError):
                stale.unlink()
        try:
            result = subprocess.run(
                [self.binary, "-W", "-D", "-f", str(self.config_file), "-p", str(self.pid_file),
                 "-S", str(self.master_socket)],
                capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ProxyError(f"haproxy of {self.title} could not be started: {exc}") from exc
        if result.returncode != 0:
            alerts = [line for line in result.stderr.splitlines() if "ALERT" in line] or result.stderr.splitlines()
            raise ProxyError(f"haproxy of {self.title} did not start: {' '.join(alerts[-3:])}")
        self._wait_for_worker(previous=None)

    def _wait_for_worker(self, previous: int | None, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self._worker_pid()
            if pid is not None and pid != previous:
                return
            time.sleep(0.05)
        raise ProxyError(f"haproxy of {self.title}: no {'new ' if previous else ''}worker answered on "
                         f"{self.admin_socket} within {timeout:g} s")

    def _reload(self) -> None:
        previous = self._worker_pid()
        before = self._failed_reloads()
        try:
            self._command(self.master_socket, "reload")
        except OSError as exc:
            raise ProxyError(f"haproxy of {self.title}: reload via {self.master_socket} failed: {exc}") from exc
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pid = self._worker_pid()
            if pid is not None and pid != previous:
                return
            failed = self._failed_reloads()
            if failed is not None and before is not None and failed > before:
                raise ProxyError(f"haproxy of {self.title}: the reload failed (port taken?); the old config serves")
            time.sleep(0.05)
        raise ProxyError(f"haproxy of {self.title}: no new worker within 10 s of the reload")

    def _failed_reloads(self) -> int | None:
        try:
            text = self._command(self.master_socket, "show proc", timeout=2)
        except OSError:
            return None
        match = re.search(r"master\s+\d+\s+\[failed: (\d+)\]", text)
        return int(match.group(1)) if match else None

    def _apply(self, old: Mapping[str, _Route], new: Mapping[str, _Route], changed: str) -> None:
        """Make haproxy serve `new`: runtime API when only an address moved, else reload (or start/stop)."""
        self._write(new)
        try:
            if not new:
                self._stop()
                return
            self._check_config()
            if not self.alive():
                self._start()
                return
            same_frontends = {k: v.publish for k, v in old.items()} == {k: v.publish for k, v in new.items()}
            if same_frontends and changed in new:
                route = new[changed]
                answer = self._command(
                    self.admin_socket, f"set server be_{changed}/app addr {route.address} port {route.port}"
                )
                if "changed" not in answer and "no need to change" not in answer.lower():
                    raise ProxyError(f"haproxy of {self.title}: switching {changed} failed: {answer.strip()}")
                return
            self._reload()
        except BaseException:
            self._write(old)  # the files describe what runs, never what failed
            raise

    def check_port(self, service: str, publish: int, *, where: str) -> None:
        """PortUnavailable unless `publish` is already this service's port here or free on this host."""
        routes = self.routes()
        for name, route in routes.items():
            if route.publish == publish:
                if name == service and self.alive():
                    return
                if name != service:
                    raise PortUnavailable(
                        f"{where}: port {publish} is already published for {name} in the same environment",
                        service=service, environment=self.title.rsplit("/", 1)[-1], image="",
                    )
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.bind_address, publish))
            except OSError as exc:
                raise PortUnavailable(
                    f"{where}: cannot publish on {self.bind_address}:{publish}: {exc.strerror}; nothing was changed",
                    service=service, environment=self.title.rsplit("/", 1)[-1], image="",
                ) from exc

    def set_route(self, service: str, route: _Route) -> None:
        with self._locked():
            old = self.routes()
            self._apply(old, {**old, service: route}, service)

    def remove_route(self, service: str) -> None:
        with self._locked():
            old = self.routes()
            if service in old:
                self._apply(old, {k: v for k, v in old.items() if k != service}, service)

    def _stop(self) -> None:
        pid = self._master_pid()
        if pid is None:
            return
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        for leftover in (self.admin_socket, self.master_socket, self.pid_file):
            with suppress(FileNotFoundError):
                leftover.unlink()

    def destroy(self) -> None:
        """Stop haproxy and delete the state folder."""
        if not self.directory.is_dir():
            return
        self._stop()
        for entry in self.directory.iterdir():
            with suppress(FileNotFoundError, IsADirectoryError):
                entry.unlink()
        with suppress(OSError):
            self.directory.rmdir()


__all__ = [
    "DeploymentFailed",
    "DeploymentResult",
    "DeploymentSpec",
    "DockerTarget",
    "EphemeralEnvironment",
    "ImageNotPinned",
    "InvalidDeploymentSpec",
    "HealthProbe",
    "ImageUnavailable",
    "PortUnavailable",
    "ProxyError",
    "ReapReport",
    "RunningService",
    "StartedService",
    "TargetError",
    "pinned_reference",
]
