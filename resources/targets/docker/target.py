"""The docker target: environments on one host through any Docker Engine API (Docker, or Podman's
compatible service).

Each (fleet, environment) has a user-defined network `<prefix>-<fleet>-<environment>` (where the fleet's end-to-end
tests run), and each service there a network of its own, `<prefix>-<fleet>-<environment>.<service>`, where its
name is a network alias held by exactly one healthy container. No other service's container is on it, and
nothing is forwarded into it from another network (`isolation.py`), so a caller reaches a service only through
the environment's switch, which admits its declared callers only (the network rule: release_graph/fleet/
network.py, haproxy.py). A deployment:

1. refuses an image that is not pinned by digest (`repo@sha256:...`): what runs must be what was tested;
2. is a no-op when that digest already serves the service with the same config and secrets and is healthy;
3. starts the new container next to the old one, on the network but *without* the service name (read-only
   root filesystem with in-memory scratch folders, no capabilities, no privilege escalation: `hardening.py`),
   and waits for its health endpoint (HTTP GET from this host to the container's address; `health.py`);
4. only then moves the service name: the new container is reconnected with the alias, the environment's
   switch (`haproxy.py`: the published port, and the address its consumers call it on) moves to it, the old
   container gets `drain_seconds` for requests in flight, then it is stopped and removed. A failed health
   check removes the new container and leaves the old one serving.

Consumers reach an HTTP provider through the switch: a container is created with `<callee> -> <gateway>`
in /etc/hosts for each service it calls (`DeploymentSpec.calls`) that the switch serves, so the address it
resolves never changes when the provider is replaced. A provider the switch does not serve (no health path) is
reached by its name on its own network, which its declared callers' containers join.

The engine client is the `engine` resource's (`resources/containers.py`): one client per engine, with its
120 s per-call timeout; a pull gets its own `PULL_TIMEOUT_SECONDS`.

Engine behaviour this module is written around (Podman 4.3, measured; see notes/host-facts.md):
- Bridge-network container addresses answer from the host, internal networks included.
- The compat API moves an alias by disconnect + connect with `aliases=[...]` (the address changes).
  While both containers hold the alias, DNS answers both addresses; stopping a container removes its
  entries. On *internal* networks a disconnect breaks aardvark-dns for the rest of the network, so
  ephemeral (internal) environments set aliases at creation and never reconnect anything (`ephemeral.py`).
- A stopped container keeps its network membership and aliases in `inspect`, without an address.
- A locally built image's `RepoDigests` holds a local digest, not the one the registry serves: the
  deployment pulls by digest, which records the registry's digest on the image.

Nothing here touches the engine, the file system or a process at import or construction time.
"""

import hashlib
import json
import logging
import os
import secrets as _random
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import dagster as dg
import docker
import requests
from docker.errors import APIError, DockerException, NotFound
from docker.utils.json_stream import json_stream
from pydantic import Field

from resources import labels as L
from resources.containers import ContainerEngine, ContainerEngineError, RunResult, network_dns_options
from resources.registry import is_loopback_host, parse_image_reference
from resources.targets.docker import bridge, health, inspect, isolation, reaper, secret_files
from resources.targets.docker.ephemeral import DockerEphemeralEnvironment, container_arguments
from resources.targets.docker.haproxy import REFUSALS_WINDOW_SECONDS, HaproxyRouter, Route
from resources.targets.docker.hardening import hardened
from resources.targets.interface import (
    DeploymentFailed,
    DeploymentResult,
    DeploymentSpec,
    DeployTarget,
    EnvironmentContainer,
    EnvironmentReport,
    HealthProbe,
    ImageUnavailable,
    ProxyError,
    ReapReport,
    RefusedCalls,
    RunningService,
    TargetError,
    check_name,
    container_environment,
    pinned_reference,
    validate_spec,
)

log = logging.getLogger(__name__)

# After the alias moves, the new address must answer within this long (it is the same process, new interface).
REATTACH_SECONDS = 10.0
PULL_TIMEOUT_SECONDS = 600


class DockerTargetConfig(dg.Config):
    """How the docker target runs environments (the engine itself is the `engine` resource)."""

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
    secrets_dir: str = Field(
        default=secret_files.DEFAULT_ROOT,
        description="Host folder (on a tmpfs) of the secret files mounted into containers as /run/secrets/<NAME>; "
        "one 0700 folder per container, removed with it.",
    )


def config_fingerprint(spec: DeploymentSpec) -> str:
    """What, besides the digest, makes a running container the one this spec asks for. No secret values."""
    material = {
        "port": spec.port,
        "health": spec.health,
        "publish": spec.publish,
        "env": dict(sorted(spec.env.items())),
        "secret_names": sorted(spec.secrets),
        "labels": dict(sorted(spec.labels.items())),
    }
    if spec.secrets and spec.secrets_as == "file":
        material["secrets_as"] = "file"  # a container given its secrets as variables is replaced by one with files
    # Only when set, so that containers deployed before these fields existed keep their fingerprint.
    for key in ("entrypoint", "command"):
        if getattr(spec, key) is not None:
            material[key] = list(getattr(spec, key))
    if not spec.hardening.is_default:
        material["hardening"] = asdict(spec.hardening)
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


# What `call_from` runs in a caller's container: one GET, as "<status> <first line of the body>" or the error.
CALL_SCRIPT = """
import sys, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1], headers={"Host": sys.argv[2]} if sys.argv[2] else {})
try:
    answer = urllib.request.urlopen(request, timeout=3)
    status, body = answer.status, answer.read()
except urllib.error.HTTPError as exc:
    status, body = exc.code, exc.read()
except Exception as exc:
    status, body = "refused:", str(exc).encode()
print(status, (body.decode(errors="replace").splitlines() or [""])[0])
"""


class DockerTarget(DeployTarget):
    """Environments on one host through the Docker Engine API: one network per environment, service-name
    DNS, digest-pinned containers, health-gated switches, published ports through a per-environment haproxy.

    Made by `DeployTargets.for_environment("docker")`, or directly from an engine and a config.
    """

    def __init__(self, engine: ContainerEngine, config: DockerTargetConfig | None = None):
        self.engine = engine
        self.config = config if config is not None else DockerTargetConfig()

    def with_config(self, **changes) -> "DockerTarget":
        """The same target (same engine) with some settings changed."""
        return DockerTarget(self.engine, self.config.model_copy(update=changes))

    # --- plumbing ---------------------------------------------------------------------------------------

    @property
    def publish_address(self) -> str:
        return self.config.publish_address

    def _engine_address(self) -> str:
        return self.engine.engine_address()

    def _docker(self) -> docker.DockerClient:
        try:
            return self.engine.client()
        except ContainerEngineError as exc:
            raise TargetError(str(exc)) from exc

    def _engine(self, what: str):
        """Engine failures as TargetError naming the engine and the operation."""
        return inspect.engine_errors(self._engine_address(), what)

    def network_name(self, fleet: str, environment: str, service: str | None = None) -> str:
        """The environment's network, or with `service` that service's own (see the module docstring)."""
        name = f"{self.config.name_prefix}-{fleet}-{environment}"
        return f"{name}.{service}" if service else name

    def _state_root(self) -> Path:
        if self.config.state_dir:
            return Path(self.config.state_dir).expanduser().resolve()
        state = os.environ.get("RELEASE_GRAPH_STATE")
        if state:
            return Path(state).expanduser().resolve() / "targets"
        return Path.cwd() / ".dagster_home" / "targets"

    def publish_scrape_targets(self, fleet: str, environment: str) -> None:
        """Tell Prometheus (file_sd, `<state>/prometheus/targets`, beside this target's state) what to scrape in
        the environment: every running container with a port, labelled by service and digest, so the analysis
        tells a candidate from the version it replaces. Never fails a deployment: a problem is logged."""
        from resources.metrics.prometheus import ScrapeTargets

        try:
            targets = []
            for container in self._service_containers(fleet, environment):
                labels = inspect.container_labels(container)
                net = self._home(container, fleet, environment, L.read(labels, L.SERVICE) or "")
                port, address = L.read(labels, L.PORT), inspect.address(container, net)
                if inspect.status(container) == "running" and port and address:
                    targets.append((f"{address}:{port}", {"service": L.read(labels, L.SERVICE) or "",
                                                          "digest": L.read(labels, L.DIGEST) or ""}))
            ScrapeTargets(self._state_root().parent / "prometheus" / "targets").write(fleet, environment, targets)
        except Exception as exc:  # the metrics are for the analysis; the deployment itself went well
            log.warning("%s/%s: could not write Prometheus' scrape targets: %s", fleet, environment, exc)

    def _router_at(self, directory: Path, title: str) -> HaproxyRouter:
        return HaproxyRouter(directory, binary=self.config.haproxy_binary, bind_address=self.config.publish_address,
                             title=title)

    def _router(self, fleet: str, environment: str) -> HaproxyRouter:
        return self._router_at(self._state_root() / self.network_name(fleet, environment), f"{fleet}/{environment}")

    def _labels(self, **labels: str) -> dict[str, str]:
        return {**self.config.extra_labels, L.MANAGED: "1", **labels}

    def _list_containers(self, what: str, *selectors: str | tuple[str, str]) -> list:
        """Containers (any state) with all these labels, written in today's namespace or the legacy one."""
        client = self._docker()
        found: dict[str, object] = {}
        with self._engine(what):
            for labels in L.selectors(*selectors):
                for container in client.containers.list(all=True, ignore_removed=True, filters={"label": labels}):
                    found.setdefault(container.id, container)
        return list(found.values())

    def _list_networks(self, what: str, *selectors: str | tuple[str, str]) -> list:
        client = self._docker()
        found: dict[str, object] = {}
        with self._engine(what):
            for labels in L.selectors(*selectors):
                for network in client.networks.list(filters={"label": labels}):
                    found.setdefault(network.id, network)
        return list(found.values())

    def _ensure_network(self, fleet: str, environment: str, service: str | None = None):
        """The environment's network, or a service's own: created when missing, and isolated from the others."""
        network = self._network(fleet, environment, service)
        subnet = self._subnet(network)
        if subnet and self._engine_is_local():
            try:
                isolated = isolation.isolate(subnet)
            except (OSError, subprocess.SubprocessError) as exc:
                raise TargetError(f"network {network.name}: cannot isolate {subnet} on this host: {exc}") from exc
            if not isolated:
                log.warning("network %s: this process cannot change the host's firewall (not root, or no iptables): "
                            "only the engine's own isolation keeps services from calling each other by address "
                            "(Docker's default; Podman has none); the switch still refuses undeclared callers",
                            network.name)
        return network

    def _network(self, fleet: str, environment: str, service: str | None):
        client = self._docker()
        name = self.network_name(fleet, environment, service)
        with self._engine(f"network {name}"):
            try:
                return client.networks.get(name)
            except NotFound:
                pass
            labels = self._labels(**{L.FLEET: fleet, L.ENVIRONMENT: environment, **({L.SERVICE: service} if service
                                                                                      else {})})
            try:
                return client.networks.create(name, driver="bridge", labels=labels, check_duplicate=True)
            except APIError as exc:
                if exc.status_code == 409:  # another deployment in this environment created it meanwhile
                    return client.networks.get(name)
                raise

    @staticmethod
    def _subnet(network) -> str | None:
        config = (network.attrs.get("IPAM") or {}).get("Config") or []
        return next((entry["Subnet"] for entry in config if entry.get("Subnet")), None)

    def _ensure_image(self, reference: str, *, what: str, spec: DeploymentSpec | None = None) -> None:
        """Have `reference` in the engine, pulling it when missing. Failures raise ImageUnavailable."""
        client = self._docker()
        try:
            client.images.get(reference)
            return
        except NotFound:
            pass
        except (DockerException, requests.RequestException) as exc:
            raise TargetError(f"{what}: engine at {self._engine_address()}: {inspect.describe(exc)}") from exc
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
        """Labelled containers of an environment (any state, either label namespace), oldest first."""
        selectors: list[str | tuple[str, str]] = [(L.FLEET, fleet), (L.ENVIRONMENT, environment)]
        if service:
            selectors.append((L.SERVICE, service))
        found = self._list_containers(f"listing containers of {fleet}/{environment}", *selectors)
        return sorted(found, key=inspect.created)

    def _network_members(self, network: str) -> list:
        client = self._docker()
        with self._engine(f"listing containers on network {network}"):
            return client.containers.list(all=True, ignore_removed=True, filters={"network": network})

    def _network_exists(self, name: str) -> bool:
        with self._engine(f"network {name}"):
            try:
                self._docker().networks.get(name)
                return True
            except NotFound:
                return False

    def _home(self, container, fleet: str, environment: str, service: str) -> str:
        """The network `container` holds (or would hold) the service's name on: the service's own, or, for a
        container deployed before each service had one, the environment's."""
        own = self.network_name(fleet, environment, service)
        legacy = self.network_name(fleet, environment)
        return legacy if not inspect.network_entry(container, own) and inspect.network_entry(container, legacy) else own

    def _holds_name(self, container, fleet: str, environment: str, service: str) -> bool:
        return inspect.holds_alias(container, self._home(container, fleet, environment, service), service)

    def _pick(self, candidates: Sequence, fleet: str, environment: str, service: str):
        """The container that is (or was last) the service: the running alias holder, else any alias
        holder (stopped by hand), else the newest labelled one."""
        holders = [c for c in candidates if self._holds_name(c, fleet, environment, service)]
        running = [c for c in holders if inspect.status(c) == "running"]
        for group in (running, holders, list(candidates)):
            if group:
                return max(group, key=inspect.created)
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
        validate_spec(spec)
        where = f"{spec.service} in {spec.fleet}/{spec.environment}"
        self._ensure_network(spec.fleet, spec.environment)  # the environment's own: its end-to-end tests run there
        network = self._ensure_network(spec.fleet, spec.environment, spec.service)
        net = network.name
        fingerprint = config_fingerprint(spec)
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
            L.FLEET: spec.fleet,
            L.ENVIRONMENT: spec.environment,
            L.SERVICE: spec.service,
            L.DIGEST: digest,
            L.IMAGE: reference,
            L.CONFIG: fingerprint,
            L.INSTANCE: str(self._state_root()),
        }
        if spec.port is not None:
            labels[L.PORT] = str(spec.port)
        if spec.health is not None:
            labels[L.HEALTH] = spec.health
        base_name = f"{self.network_name(spec.fleet, spec.environment)}-{spec.service}-{digest[7:19]}"
        container = self._create_unique(
            base_name,
            image=reference,
            **container_arguments(spec),
            environment=container_environment(spec),
            secrets_for=spec,
            labels=labels,
            network=net,
            extra_hosts=self._switched_calls(spec, router),
            init=True,  # PID 1 forwards SIGTERM and reaps: stop takes effect at once
            **hardened(spec.hardening),
            detach=True,
            what=f"deploying {where}",
            **self._networking(network, providers := self._unswitched_providers(spec, router)),
        )
        try:
            self._join(container, providers, where=where)
            with self._engine(f"starting {container.name} for {where}"):
                container.start()
            self._pin_bridge(network)
            health_seconds = self._wait_healthy(
                container, net, spec.port, spec.health,
                service=spec.service, environment=spec.environment, where=where, image=reference,
            )
            address = self._move_alias(network, container, spec, where=where, image=reference)
            self._pin_bridge(network)  # the reconnect may have left the network without a port for a moment
        except BaseException:
            with suppress(DockerException, requests.RequestException):
                self._remove_container(container)
            raise
        log.info("%s: %s healthy after %.2f s", where, container.name, health_seconds)

        old_route = router.route_of(spec.service)
        try:
            wanted = self._route(spec, address, network, router)
            if wanted is not None:
                router.set_route(spec.service, wanted)
            elif old_route is not None:
                router.remove_route(spec.service)
        except ProxyError as exc:
            with suppress(DockerException, requests.RequestException):
                # stopping it removes its DNS entry: the old container serves alone
                self._remove_container(container)
            with suppress(ProxyError):
                if old_route is not None:
                    router.set_route(spec.service, old_route)
            raise DeploymentFailed(
                f"{where}: {container.name} was healthy but the published port could not switch to it: {exc}; "
                "the previous version keeps serving",
                service=spec.service, environment=spec.environment, image=reference,
            ) from exc

        replaced = self._retire(spec, keep=container.id)
        self.publish_scrape_targets(spec.fleet, spec.environment)
        container.reload()
        return DeploymentResult(
            container_name=container.name,
            container_id=container.id,
            digest=digest,
            image=reference,
            started_at=inspect.started_at(container) or "",
            url_inside=f"http://{spec.service}:{spec.port}" if spec.port else None,
            published_url=f"http://{self.publish_address}:{spec.publish}" if spec.publish else None,
            changed=True,
            health_seconds=round(health_seconds, 3),
            network=net,
            replaced=replaced,
        )

    def _candidate_name(self, fleet: str, environment: str, service: str) -> str | None:
        """The container of a rollout in progress (holding the name, not yet what serves), if any."""
        router = self._router(fleet, environment)
        route = router.route_of(service) if router.exists() else None
        return route.candidate_name if route is not None and route.candidate else None

    def _serving(self, fleet: str, environment: str, service: str):
        """The running container holding the service name, if any (not a rollout's candidate)."""
        rolling_out = self._candidate_name(fleet, environment, service)
        candidates = [c for c in self._service_containers(fleet, environment, service) if c.name != rolling_out]
        holders = [c for c in candidates
                   if inspect.status(c) == "running" and self._holds_name(c, fleet, environment, service)]
        return max(holders, key=inspect.created) if holders else None

    def _unchanged_result(
        self, current, spec: DeploymentSpec, reference: str, digest: str, fingerprint: str, net: str, router
    ) -> DeploymentResult | None:
        labels = inspect.container_labels(current)
        if L.read(labels, L.DIGEST) != digest or L.read(labels, L.CONFIG) != fingerprint:
            return None
        if digest not in self._image_digests(current.attrs.get("Image", "")):
            return None  # labels say so, the image does not: someone swapped it
        actual_env = set(current.attrs.get("Config", {}).get("Env") or [])
        # Compared in memory only: a rotated secret value must redeploy. Secrets given as variables are in the
        # engine's env; those given as files are read back from this host's secret folder.
        if any(f"{k}={v}" not in actual_env for k, v in container_environment(spec).items()):
            return None
        if spec.secrets and spec.secrets_as == "file" and secret_files.read(
                self.config.secrets_dir, current.attrs) != dict(spec.secrets):
            return None
        address = inspect.address(current, net)
        if not address:
            return None
        started = time.monotonic()
        if spec.health is not None and spec.port is not None and not health.answers_healthy(
            address, spec.port, spec.health
        ):
            return None
        probe_seconds = time.monotonic() - started
        where = f"{spec.service} in {spec.fleet}/{spec.environment}"
        if self._extra_hosts(current) != self._switched_calls(spec, router):
            return None  # it calls a provider the switch serves now by the provider's own address: recreate it
        wanted = self._route(spec, address, self._docker().networks.get(net), router)
        if router.route_of(spec.service) != wanted or (wanted is not None and not router.alive()):
            # The container is right; only its route is not (first publish, proxy gone after reboot).
            if wanted is not None:
                if wanted.publish is not None:
                    router.check_port(spec.service, wanted.publish, where=where)
                router.set_route(spec.service, wanted)
            else:
                router.remove_route(spec.service)
        return DeploymentResult(
            container_name=current.name,
            container_id=current.id,
            digest=digest,
            image=reference,
            started_at=inspect.started_at(current) or "",
            url_inside=f"http://{spec.service}:{spec.port}" if spec.port else None,
            published_url=f"http://{self.publish_address}:{spec.publish}" if spec.publish else None,
            changed=False,
            health_seconds=round(probe_seconds, 3),
            network=net,
        )

    def _pin_bridge(self, network) -> None:
        """Keep the environment's bridge at one MAC while containers come and go (bridge.py says why). The
        bridge exists once a container runs on the network; only a local engine's bridge is this host's."""
        if self._engine_is_local():
            bridge.pin_address(self._gateway(network))

    @staticmethod
    def _gateway(network) -> str | None:
        """The network's gateway: an address of this host that every container on the network reaches."""
        config = (network.attrs.get("IPAM") or {}).get("Config") or []
        return next((entry["Gateway"] for entry in config if entry.get("Gateway")), None)

    def _route(self, spec: DeploymentSpec, address: str, network, router: HaproxyRouter) -> Route | None:
        """How the switch should reach this deployment: its published port, and (for an HTTP service) the
        gateway address its consumers call it on. None: the switch has nothing to do for it."""
        if spec.port is None:
            return None
        gateway = self._gateway(network) if spec.health is not None else None
        if gateway is not None and not router.can_listen(gateway, spec.port):
            log.warning("%s in %s/%s: cannot listen on %s:%s for its consumers; they call it by its DNS name",
                        spec.service, spec.fleet, spec.environment, gateway, spec.port)
            gateway = None
        if spec.publish is None and gateway is None:
            return None
        if gateway is None:
            return Route(spec.publish, address, spec.port)
        return Route(spec.publish, address, spec.port, gateway, subnet=self._subnet(network),
                     sources=self._allowed_sources(spec), callers=tuple(sorted(spec.callers)))

    def _allowed_sources(self, spec: DeploymentSpec) -> tuple[str, ...]:
        """The address ranges the switch admits calls to spec's service from: its declared callers' networks
        (created here when a caller is not deployed yet: a provider deploys first) and the environment's own.
        Their firewall rules are not this deployment's business: each caller's deployment isolates its network
        before a container joins it, and this one isolated the environment's."""
        networks = [self._network(spec.fleet, spec.environment, caller) for caller in sorted(spec.callers)]
        networks.append(self._network(spec.fleet, spec.environment, None))
        return tuple(subnet for subnet in (self._subnet(n) for n in networks) if subnet)

    def _unswitched_providers(self, spec: DeploymentSpec, router: HaproxyRouter) -> list:
        """The own networks of the providers spec's service calls that the switch does not serve (no health
        path): a new container joins them, so the provider's name answers there; only declared callers do."""
        names = [self.network_name(spec.fleet, spec.environment, provider)
                 for provider in sorted(set(spec.calls) - set(router.switched_names()))]
        with self._engine(f"networks of the providers of {spec.service}"):
            return [self._docker().networks.get(name) for name in names if self._network_exists(name)]

    def _networking(self, network, providers: Sequence) -> dict:
        """Where a new container asks for names: its own network's resolver, then its unswitched providers'."""
        options = network_dns_options(self._docker(), network.name)
        extra = [self._gateway(provider) for provider in providers]
        if options and extra:
            options = {**options, "dns": [*options["dns"], *(g for g in extra if g)]}
        return options

    def _join(self, container, providers: Sequence, *, where: str) -> None:
        for provider in providers:
            with self._engine(f"connecting {container.name} to {provider.name} ({where})"):
                provider.connect(container)

    @staticmethod
    def _switched_calls(spec: DeploymentSpec, router: HaproxyRouter) -> dict[str, str]:
        """/etc/hosts entries of a new container: each service it calls that the switch serves -> gateway."""
        switched = router.switched_names()
        return {name: switched[name] for name in sorted(spec.calls) if name in switched}

    @staticmethod
    def _extra_hosts(container) -> dict[str, str]:
        entries = container.attrs.get("HostConfig", {}).get("ExtraHosts") or []
        return dict(entry.split(":", 1) for entry in entries if ":" in entry)

    def _create_unique(self, base_name: str, *, what: str, secrets_for: DeploymentSpec | None = None, **kwargs):
        """Create a container named `base_name` (or that with a suffix when taken). `secrets_for`: the spec whose
        secrets it receives as files (`_secret_mounts`), when it asks for that."""
        client = self._docker()
        name = base_name
        folder, mounts = self._secret_mounts(secrets_for, what=what) if secrets_for is not None else (None, [])
        if mounts:
            kwargs["mounts"] = [*kwargs.get("mounts", []), *mounts]
        try:
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
        except BaseException:
            secret_files.discard(self.config.secrets_dir, folder)
            raise

    def _secret_mounts(self, spec: DeploymentSpec, *, what: str) -> tuple[Path | None, list]:
        """The folder of `spec`'s secret files on this host and their read-only mounts at /run/secrets/<NAME>
        (none when it has no secrets or receives them as variables); `secret_files.py` says why."""
        if not spec.secrets or spec.secrets_as != "file":
            return None, []
        if not self._engine_is_local():
            raise TargetError(f"{what}: secrets are delivered as files mounted from this host, and the engine "
                              f"({self.engine.docker_host or os.environ.get('DOCKER_HOST')}) is not on it: "
                              "use a local engine (a unix socket), or give the service `secrets_as: env`")
        return secret_files.write(self.config.secrets_dir, spec.secrets)

    def _engine_is_local(self) -> bool:
        host = self.engine.docker_host or os.environ.get("DOCKER_HOST") or "unix://"  # unset: the default socket
        return host.startswith("unix://")

    def _remove_container(self, container) -> None:
        """Remove a container (forced) and the folder of its secret files on this host."""
        secret_files.remove(self.config.secrets_dir, container)

    def sweep_secret_files(self) -> list[Path]:
        """Remove the secret folders of containers that are gone without us (removed by hand, a killed run)."""
        with self._engine("listing containers for their secret files"):
            containers = self._docker().containers.list(all=True, ignore_removed=True)
        return secret_files.sweep(self.config.secrets_dir, [c.attrs for c in containers])

    def _wait_healthy(
        self,
        container,
        network: str,
        port: int | None,
        health_path: str | None,
        *,
        service: str,
        environment: str,
        where: str,
        image: str,
        timeout: float | None = None,
    ) -> float:
        """Seconds until `container` answered `health_path` with 2xx (or stayed running); DeploymentFailed if not."""
        return health.wait_healthy(
            container, network, port, health_path,
            service=service, environment=environment, where=where, image=image,
            timeout=self.config.health_timeout_seconds if timeout is None else timeout,
            engine_address=self._engine_address(),
        )

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
            address = inspect.address(container, network.name)
            if address and inspect.holds_alias(container, network.name, spec.service):
                if spec.health is None or spec.port is None:
                    return address
                answer, problem = health.http_status(
                    address, spec.port, spec.health, health.HEALTH_REQUEST_TIMEOUT_SECONDS
                )
                if answer is not None and 200 <= answer < 300:
                    return address
            time.sleep(health.HEALTH_POLL_SECONDS)
        raise DeploymentFailed(
            f"{where}: {container.name} was healthy but did not answer after it took the service name: {problem}; "
            "the previous version keeps serving",
            service=spec.service, environment=spec.environment, image=image, logs_tail=inspect.logs_tail(container),
        )

    def _retire(self, spec: DeploymentSpec, *, keep: str) -> tuple[str, ...]:
        """Stop and remove every other container of the service: the previous version and leftovers."""
        others = [c for c in self._service_containers(spec.fleet, spec.environment, spec.service) if c.id != keep]
        return self._remove_containers(others)

    def _remove_containers(self, containers: Sequence) -> tuple[str, ...]:
        """Stop (after `drain_seconds` for requests in flight, when any runs) and remove these containers."""
        if any(inspect.status(c) == "running" for c in containers) and self.config.drain_seconds > 0:
            time.sleep(self.config.drain_seconds)
        removed = []
        for container in containers:
            with suppress(NotFound), self._engine(f"removing {container.name}"):
                if inspect.status(container) == "running":
                    container.stop(timeout=self.config.stop_timeout_seconds)
                self._remove_container(container)
                removed.append(container.name)
        return tuple(removed)

    # --- progressive rollouts -----------------------------------------------------------------------------
    # A rollout starts the new version beside the serving one (`start_candidate`), moves the switch's traffic
    # to it in steps (`set_candidate_weight`: haproxy weights over the runtime API, for the published port and
    # for service-to-service calls alike), then makes it what serves (`promote_candidate`) or takes it away
    # (`abort_candidate`). The rollout's state is the route (routes.json): a run killed half-way leaves a
    # state `traffic()` reads back and the next rollout or `abort_candidate` settles.

    def traffic(self, fleet: str, environment: str, service: str) -> Route | None:
        """The switch's route of the service: who serves, the candidate and its share (None: not switched)."""
        router = self._router(fleet, environment)
        return router.route_of(service) if router.exists() else None

    def start_candidate(self, spec: DeploymentSpec) -> DeploymentResult:
        """Start spec's version beside the serving one and wait until it is healthy, with 0 % of the traffic.

        It holds the service name from creation (only the switch decides its traffic; a reconnect later would
        change its address under the switch). An earlier candidate (a rollout killed half-way) is taken away
        first. Raises DeploymentFailed when it is not healthy (it is removed; the serving version never moved)
        and TargetError when the service is not behind the switch or nothing serves it yet.
        """
        reference, digest = pinned_reference(spec.image)
        validate_spec(spec)
        where = f"{spec.service} in {spec.fleet}/{spec.environment}"
        route = self.traffic(spec.fleet, spec.environment, spec.service)
        if route is None or self._serving(spec.fleet, spec.environment, spec.service) is None:
            raise TargetError(f"{where}: a progressive rollout needs a serving version behind the environment's "
                              "switch (an HTTP service with a port and a health path, deployed once)")
        if route.candidate:
            self.abort_candidate(spec.fleet, spec.environment, spec.service)
        network = self._ensure_network(spec.fleet, spec.environment, spec.service)
        router = self._router(spec.fleet, spec.environment)
        self._ensure_image(reference, what=f"deploying {where}", spec=spec)
        client = self._docker()
        container = self._create_unique(
            f"{self.network_name(spec.fleet, spec.environment)}-{spec.service}-{digest[7:19]}",
            image=reference,
            **container_arguments(spec),
            environment=container_environment(spec),
            secrets_for=spec,
            labels={**self._labels(), **spec.labels, L.FLEET: spec.fleet, L.ENVIRONMENT: spec.environment,
                    L.SERVICE: spec.service, L.DIGEST: digest, L.IMAGE: reference,
                    L.CONFIG: config_fingerprint(spec), L.INSTANCE: str(self._state_root()),
                    **({L.PORT: str(spec.port)} if spec.port is not None else {}),
                    **({L.HEALTH: spec.health} if spec.health is not None else {})},
            network=network.name,
            networking_config={network.name: client.api.create_endpoint_config(aliases=[spec.service])},
            extra_hosts=self._switched_calls(spec, router),
            init=True,
            **hardened(spec.hardening),
            detach=True,
            what=f"deploying {where}",
            **self._networking(network, providers := self._unswitched_providers(spec, router)),
        )
        try:
            self._join(container, providers, where=where)
            with self._engine(f"starting {container.name} for {where}"):
                container.start()
            self._pin_bridge(network)
            health_seconds = self._wait_healthy(container, network.name, spec.port, spec.health,
                                                service=spec.service, environment=spec.environment, where=where,
                                                image=reference)
            with self._engine(f"reading the address of {container.name}"):
                container.reload()
            address = inspect.address(container, network.name)
            if not address:
                raise DeploymentFailed(f"{where}: {container.name} has no address on {network.name}",
                                       service=spec.service, environment=spec.environment, image=reference)
            # Only this service's deployment (one per service and environment: its pool) changes its route.
            current = router.route_of(spec.service) or route
            router.set_route(spec.service, replace(current, candidate=address, candidate_weight=0,
                                                   candidate_name=container.name))
        except BaseException:
            with suppress(DockerException, requests.RequestException):
                self._remove_container(container)
            raise
        log.info("%s: candidate %s healthy after %.2f s", where, container.name, health_seconds)
        self.publish_scrape_targets(spec.fleet, spec.environment)
        return DeploymentResult(
            container_name=container.name, container_id=container.id, digest=digest, image=reference,
            started_at=inspect.started_at(container) or "",
            url_inside=f"http://{spec.service}:{spec.port}" if spec.port else None,
            published_url=f"http://{self.publish_address}:{spec.publish}" if spec.publish else None,
            changed=True, health_seconds=round(health_seconds, 3), network=network.name,
        )

    def set_candidate_weight(self, fleet: str, environment: str, service: str, weight: int) -> Route:
        """Give the candidate `weight` percent of the service's traffic (0..100); the serving version the rest."""
        if not 0 <= weight <= 100:
            raise ValueError(f"weight must be 0..100, got {weight}")
        router = self._router(fleet, environment)
        route = router.route_of(service)
        if route is None or not route.candidate:
            raise TargetError(f"{service} in {fleet}/{environment}: no rollout in progress (no candidate)")
        changed = replace(route, candidate_weight=weight)
        router.set_route(service, changed)
        return changed

    def counters(self, fleet: str, environment: str, service: str) -> dict:
        """haproxy's cumulative counters per slot: `app` (serving version) and `next` (candidate)."""
        router = self._router(fleet, environment)
        return router.counters(service) if router.exists() else {}

    def candidate_problem(self, fleet: str, environment: str, service: str) -> str | None:
        """Why the rollout's candidate is not healthy now (its container stopped, its health path not 2xx);
        None when it is, or when no rollout is in progress."""
        route = self.traffic(fleet, environment, service)
        if route is None or not route.candidate_name:
            return None
        found = [c for c in self._service_containers(fleet, environment, service) if c.name == route.candidate_name]
        if not found or inspect.status(found[0]) != "running":
            return f"{route.candidate_name} is {inspect.status(found[0]) if found else 'gone'}"
        health_path = L.read(inspect.container_labels(found[0]), L.HEALTH)
        if not health_path:
            return None
        status, problem = health.http_status(route.candidate, route.port, health_path,
                                             health.HEALTH_REQUEST_TIMEOUT_SECONDS)
        if status is not None and 200 <= status < 300:
            return None
        return f"{route.candidate_name} answered {health_path} with {status or problem}"

    def promote_candidate(self, fleet: str, environment: str, service: str) -> tuple[str, ...]:
        """The candidate becomes what serves (100 % of the traffic) and every other container of the service
        is stopped after `drain_seconds`. Returns the names of the containers removed."""
        router = self._router(fleet, environment)
        route = router.route_of(service)
        if route is None or not route.candidate:
            raise TargetError(f"{service} in {fleet}/{environment}: no rollout in progress (no candidate)")
        keep = route.candidate_name
        router.set_route(service, replace(route, address=route.candidate, candidate=None, candidate_weight=0,
                                          candidate_name=None))
        others = [c for c in self._service_containers(fleet, environment, service) if c.name != keep]
        removed = self._remove_containers(others)
        self.publish_scrape_targets(fleet, environment)
        return removed

    def abort_candidate(self, fleet: str, environment: str, service: str) -> str | None:
        """All traffic back to the version that served before, and the candidate's container removed.
        Returns the candidate's container name (None: there was no rollout in progress)."""
        router = self._router(fleet, environment)
        route = router.route_of(service)
        if route is None or not route.candidate:
            return None
        router.set_route(service, replace(route, candidate=None, candidate_weight=0, candidate_name=None))
        gone = [c for c in self._service_containers(fleet, environment, service) if c.name == route.candidate_name]
        self._remove_containers(gone)  # after drain_seconds: its requests in flight finish
        self.publish_scrape_targets(fleet, environment)
        return route.candidate_name

    # --- what runs --------------------------------------------------------------------------------------

    def running(self, fleet: str, environment: str, service: str, *, probe: bool = False) -> RunningService | None:
        """What runs as `service` (None: no container at all). `probe=True` also asks its health path once."""
        candidates = {c.id: c for c in self._service_containers(fleet, environment, service)}
        # A container started by hand with the service name but without our labels still is what serves.
        for member in self._name_holders(fleet, environment, [service])[service]:
            candidates.setdefault(member.id, member)
        rolling_out = self._candidate_name(fleet, environment, service)
        chosen = self._pick([c for c in candidates.values() if c.name != rolling_out], fleet, environment, service)
        return None if chosen is None else self._describe_running(chosen, fleet, environment, service, probe)

    def running_services(self, fleet: str, environment: str, *, probe: bool = False) -> dict[str, RunningService]:
        """`running()` for every service that has a labelled container in the environment."""
        by_service: dict[str, list] = {}
        for container in self._service_containers(fleet, environment):
            service = L.read(inspect.container_labels(container), L.SERVICE)
            if service:
                by_service.setdefault(service, []).append(container)
        result = {}
        holders = self._name_holders(fleet, environment, list(by_service))
        for service, containers in sorted(by_service.items()):
            candidates = {c.id: c for c in containers}
            for member in holders[service]:
                candidates.setdefault(member.id, member)
            rolling_out = self._candidate_name(fleet, environment, service)
            chosen = self._pick([c for c in candidates.values() if c.name != rolling_out], fleet, environment,
                                service)
            if chosen is not None:
                result[service] = self._describe_running(chosen, fleet, environment, service, probe)
        return result

    def _name_holders(self, fleet: str, environment: str, services: Sequence[str]) -> dict[str, list]:
        """Per service, the containers holding its name on its network (or, deployed before, on the environment's),
        read with two calls whatever the number of services: the drift sensor asks every tick."""
        env_net = self.network_name(fleet, environment)
        networks = [n.name for n in self._list_networks(f"listing the networks of {fleet}/{environment}",
                                                        (L.FLEET, fleet), (L.ENVIRONMENT, environment))
                    if n.name == env_net or n.name.startswith(f"{env_net}.")]
        members = []
        if networks:
            with self._engine(f"listing containers on the networks of {fleet}/{environment}"):
                members = self._docker().containers.list(all=True, ignore_removed=True, filters={"network": networks})
        return {service: [m for m in members if self._holds_name(m, fleet, environment, service)]
                for service in services}

    def probe(
        self, fleet: str, environment: str, service: str, *, port: int | None = None, path: str | None = None
    ) -> HealthProbe:
        """Ask the container that serves `service` for its health once, from this host.

        `port`/`path` default to what the deployment recorded; a service without a health path is healthy
        while it runs. Not healthy: nothing holds the name, the container is not running, or a non-2xx answer.
        """
        current = self._serving(fleet, environment, service)
        if current is None:
            actual = self.running(fleet, environment, service)
            detail = "no container runs it"
            if actual is not None:
                detail = f"container {actual.container_name} is {actual.status}"
            return HealthProbe(False, f"{service} in {fleet}/{environment}: {detail}")
        labels = inspect.container_labels(current)
        recorded_port = L.read(labels, L.PORT, "")
        if port is None and recorded_port.isdigit():
            port = int(recorded_port)
        return health.probe_container(current, self._home(current, fleet, environment, service), port,
                                      path if path is not None else L.read(labels, L.HEALTH))

    def _describe_running(self, container, fleet: str, environment: str, service: str, probe: bool) -> RunningService:
        net = self._home(container, fleet, environment, service)
        labels = inspect.container_labels(container)
        status = inspect.status(container)
        address = inspect.address(container, net) if status == "running" else None
        recorded_port = L.read(labels, L.PORT, "")
        port = int(recorded_port) if recorded_port.isdigit() else None
        route = self._router(fleet, environment).route_of(service)
        serving = status == "running" and inspect.holds_alias(container, net, service)
        healthy = health.probe_container(container, net, port, L.read(labels, L.HEALTH)).healthy if probe else None
        return RunningService(
            fleet=fleet,
            environment=environment,
            service=service,
            container_name=container.name,
            container_id=container.id,
            status=status,
            serving=serving,
            digest=L.read(labels, L.DIGEST),
            image=L.read(labels, L.IMAGE) or container.attrs.get("Config", {}).get("Image"),
            image_id=container.attrs.get("Image", ""),
            image_digests=self._image_digests(container.attrs.get("Image", "")),
            started_at=inspect.started_at(container),
            url_inside=f"http://{service}:{port}" if port else None,
            published_url=f"http://{self.publish_address}:{route.publish}" if route and route.publish else None,
            address=address,
            healthy=healthy,
        )

    def call_from(self, fleet: str, environment: str, caller: str, callee: str, path: str = "/healthz",
                  port: int | None = None) -> dict[str, str]:
        """Try, from inside `caller`'s serving container, to GET `callee`'s `path` as the caller's code would: by
        name, and straight at the switch's address for it. Returns "<status> <first line of the body>" or the
        error, per way. A diagnostic of the network rule (`python -m release_graph.demo trespass`); it runs
        python3 in the caller's container, so it needs an image that has it."""
        where = f"{caller} in {fleet}/{environment}"
        container = self._serving(fleet, environment, caller)
        if container is None:
            raise TargetError(f"{where}: no container serves it, so there is nothing to call from")
        route = self.traffic(fleet, environment, callee)
        port = port or (route.port if route else None)
        if port is None:
            raise TargetError(f"{callee} in {fleet}/{environment}: no port known (not deployed behind the switch)")
        ways = {"by name": (f"http://{callee}:{port}{path}", "")}
        if route is not None and route.gateway:
            ways["through the switch"] = (f"http://{route.gateway}:{port}{path}", callee)
        answers = {}
        for way, (url, host) in ways.items():
            with self._engine(f"calling {callee} from {container.name}"):
                result = container.exec_run(["python3", "-c", CALL_SCRIPT, url, host])
            text = result.output.decode("utf-8", "replace").strip()
            if result.exit_code != 0:
                last = (text.splitlines() or ["no output"])[-1]
                raise TargetError(f"{where}: cannot call from its container {container.name}: {last}")
            answers[way] = text
        return answers

    # --- clean-up (reaper.py) -----------------------------------------------------------------------------

    def describe_environment(self, fleet: str, environment: str) -> EnvironmentReport:
        """Every container of the environment, whichever instance deployed it, and this instance's switch."""
        net = self.network_name(fleet, environment)
        containers = tuple(
            EnvironmentContainer(
                name=c.name,
                service=L.read(inspect.container_labels(c), L.SERVICE) or "",
                status=inspect.status(c),
                digest=L.read(inspect.container_labels(c), L.DIGEST),
                instance=L.read(inspect.container_labels(c), L.INSTANCE),
            )
            for c in sorted(self._service_containers(fleet, environment), key=lambda c: c.name)
        )
        router = self._router(fleet, environment)
        routes = router.routes() if router.exists() else {}
        return EnvironmentReport(
            fleet=fleet,
            environment=environment,
            network=net if self._network_exists(net) else None,
            containers=containers,
            proxy=str(router.directory) if router.exists() else None,
            proxy_running=router.exists() and router.alive(),
            published={name: r.publish for name, r in routes.items() if r.publish is not None},
            switched={name: f"{r.gateway}:{r.port}" for name, r in routes.items() if r.gateway},
            refused_calls=self.refused_calls(fleet, environment),
        )

    def refused_calls(self, fleet: str, environment: str) -> dict[str, RefusedCalls]:
        """"caller -> callee" -> the calls the network rule refused in the environment, counted at its switch
        since it last started ("unknown": an address on none of the fleet's networks)."""
        router = self._router(fleet, environment)
        if not router.exists():
            return {}
        return {f"{caller} -> {callee}": RefusedCalls(total, recent, REFUSALS_WINDOW_SECONDS)
                for (caller, callee), (total, recent) in sorted(router.refused_calls().items())}

    def teardown_environment(self, fleet: str, environment: str) -> ReapReport:
        """Remove every container of the environment (and anything else on its network), the network and
        its haproxy."""
        report = reaper.teardown_environment(self, fleet, environment)
        self.publish_scrape_targets(fleet, environment)  # nothing left to scrape there
        return report

    def reap(
        self,
        fleet: str | None = None,
        *,
        keep_environments: Sequence[str] | None = None,
        min_age_seconds: float | None = None,
    ) -> ReapReport:
        """Remove what earlier runs left behind and return what was removed; see `reaper.reap`."""
        return reaper.reap(self, fleet, keep_environments=keep_environments, min_age_seconds=min_age_seconds)

    # --- tests against environments -------------------------------------------------------------------------

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
        """Run a test image on a deployed environment's network (end-to-end tests), then remove it.

        The services answer by name there (`http://<service>:<port>`), exactly as they call each other. The
        container's output is its result's log tail (`step` is not needed: the tests run on this host).
        """
        net = self.network_name(fleet, environment)
        if not self._network_exists(net):
            raise TargetError(f"environment '{environment}' of fleet '{fleet}' has no network {net}: nothing is "
                              "deployed there")
        return self.engine.run_to_completion(
            image,
            command=list(command) if command else None,
            env=dict(env or {}),
            network=net,
            # The tests call the services as their consumers do: through the environment's switch.
            extra_hosts=self._router(fleet, environment).switched_names(),
            labels=self._labels(**{L.FLEET: fleet}),
            name=f"{net}-tests-{_random.token_hex(3)}",
            timeout_seconds=timeout_seconds,
            copy_out=copy_out,
        )

    @contextmanager
    def ephemeral_environment(
        self, fleet: str, name: str, *, ttl_seconds: float = 3600
    ) -> Iterator[DockerEphemeralEnvironment]:
        """A private internal network `<prefix>-<fleet>-<name>-<random>` for one integration run.

        Everything started in it is removed when the block ends, also when it raises. `reap` removes what a
        killed process left once `ttl_seconds` have passed.
        """
        check_name("fleet", fleet)
        check_name("ephemeral environment name", name)
        net = f"{self.config.name_prefix}-{fleet}-{name}-{_random.token_hex(3)}"
        labels = self._labels(
            **{L.FLEET: fleet, L.EPHEMERAL: net, L.EXPIRES_AT: str(int(time.time() + ttl_seconds))}
        )
        with self._engine(f"creating network {net}"):
            # internal: no way out of the host, and DNS still works (aardvark answers on the gateway)
            self._docker().networks.create(net, driver="bridge", internal=True, labels=labels, check_duplicate=True)
        environment = DockerEphemeralEnvironment(self, fleet=fleet, network=net)
        try:
            yield environment
        except BaseException as exc:
            try:
                reaper.remove_ephemeral(self, net)
            except TargetError as cleanup:
                exc.add_note(f"also: tearing down {net} failed: {cleanup}")
            raise
        reaper.remove_ephemeral(self, net)
