"""The container engine through the Docker Engine API (docker-py): builds, pushes, pulls and run-to-completion.

Works against whatever `DOCKER_HOST` points at, Docker or Podman's compatible service. The client is
created on first use, so importing or configuring this resource does no I/O.

Engine behaviour this module is written around (measured on Podman 4.3; docs/operations.md describes the host):
- Build and push errors arrive inside a 200 response, as `error`/`errorDetail` items of the stream.
- docker-py's `timeout` is a socket read timeout, not a deadline: a build that keeps printing never hits
  it. `build` therefore reads the stream in a worker thread and, at the deadline, shuts the socket down.
  Docker cancels the build when its client goes away; Podman lets the RUN step in progress finish, starts
  no further step and tags nothing.
- Podman decides plain HTTP versus TLS per registry from registries.conf, which its API service reads
  once. For loopback registries `push` adds Podman's `tlsVerify=false` query parameter, so a registry on
  any loopback port works without editing that file; Docker ignores the parameter and treats loopback
  registries as insecure anyway. Podman's compatible pull (`/images/create`) ignores it: `pull` uses Podman's
  own `/libpod/images/pull`, which takes it, and falls back to the compatible path on Docker (404).
- Podman 4.3 emits no `aux.Digest` on push, only a `<tag>: digest: sha256:... size: N` status line, and names
  the local image by another digest than the one the registry serves (it compresses the layers again).
- Registry credentials travel in each push's and pull's `X-Registry-Auth` header (base64url JSON, as the
  `registry` resource gives them): the engine is never logged in, and writes them to no file or log.
"""

import fcntl
import hashlib
import io
import os
import queue
import re
import signal
import tarfile
import tempfile
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import dagster as dg
import docker
import requests
from docker.errors import APIError, DockerException, NotFound
from docker.utils.json_stream import json_stream
from pydantic import Field, PrivateAttr

from resources import labels as L
from resources.registry import Registry, RegistryError, is_loopback_host, parse_image_reference

RELEASE_GRAPH_LABEL = L.MANAGED  # "1" on every container and network this engine creates
BUILD_LOG_TAIL_LINES = 30
RUN_LOG_TAIL_LINES = 100
MAX_COPY_OUT_BYTES = 100 * 1024 * 1024
# After the deadline the worker thread gets this long to notice its socket was shut down.
ABANDON_GRACE_SECONDS = 5
PUSH_DIGEST_LINE = re.compile(r"digest: (sha256:[0-9a-f]{64})")
# Words in an engine's push error that mean "the registry did not answer", as opposed to "it refused".
# What Docker and Podman say when the registry is down or goes away mid-push (its connection closed under a blob
# upload: "write tcp ...: use of closed network connection", a bare EOF).
REGISTRY_DOWN_SIGNS = ("connection refused", "no such host", "i/o timeout", "connection reset", "no route to host",
                       "use of closed network connection", "broken pipe", "unexpected eof", ": eof")
# What Docker and Podman say when the registry turned the push's credentials (or their absence) away.
REGISTRY_AUTH_SIGNS = ("unauthorized", "authentication required", "denied", "401")


class ContainerEngineError(Exception):
    """The engine could not do what was asked (it did not answer, an image is missing, ...)."""


class BuildError(ContainerEngineError):
    """A build failed or ran out of time; the message ends with the last lines of its log."""

    def __init__(self, message: str, *, tag: str, log_tail: Iterable[str] = (), timed_out: bool = False):
        self.tag = tag
        self.log_tail = list(log_tail)
        self.timed_out = timed_out
        if self.log_tail:
            message += f"\nlast {len(self.log_tail)} build log lines:\n" + "\n".join(self.log_tail)
        super().__init__(message)


class PushError(ContainerEngineError):
    """A push failed; the message names the registry and quotes the engine's error."""

    def __init__(self, message: str, *, reference: str, registry: str):
        self.reference = reference
        self.registry = registry
        super().__init__(message)


class ContainerCrashed(ContainerEngineError):
    """The container did not finish by itself (killed, out of memory, removed): there is no result.

    Distinct from a process that exited non-zero, which is a `RunResult` (a failed test run is evidence).
    """

    def __init__(self, message: str, *, name: str, logs_tail: str = ""):
        self.name = name
        self.logs_tail = logs_tail
        if logs_tail:
            message += f"\nlast log lines:\n{logs_tail}"
        super().__init__(message)


class ContainerTimeout(ContainerCrashed):
    """The container ran past its timeout and was killed by `run_to_completion`."""


@dataclass(frozen=True)
class BuiltImage:
    image_id: str
    tag: str
    size_bytes: int
    seconds: float


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    logs_tail: str
    files: dict[str, bytes] = field(default_factory=dict)  # path relative to copy_out -> content
    seconds: float = 0.0


@dataclass(frozen=True)
class PruneResult:
    containers: list[str]
    networks: list[str]


# Messages of Podman's build cache losing a layer to a concurrent build: transient, worth one retry.
ENGINE_CACHE_RACES = ("image not known", "layer not known")
CACHE_RACE_RETRIES = 3


def network_dns_options(client, network: str | None) -> dict:
    """DNS settings for a container on a user-defined network: ask that network's own resolver, briefly.

    Debian's aardvark-dns (1.4) drops queries in flight whenever a container on the host starts or stops,
    and containers list the host's resolver second, which answers NXDOMAIN for service names; with the
    default 5 s timeout one lost query costs 5 s or fails a name lookup. Asking only the network's gateway
    with a 1 s timeout and 5 attempts rides through those reloads (measured: 0 failures under churn).
    """
    if not network:
        return {}
    try:
        config = (client.networks.get(network).attrs.get("IPAM") or {}).get("Config") or []
    except (APIError, DockerException):
        return {}
    gateways = [entry["Gateway"] for entry in config if entry.get("Gateway")]
    return {"dns": gateways[:1], "dns_opt": ["timeout:1", "attempts:5"]} if gateways else {}


def _container_vanished(exc: APIError) -> bool:
    """Docker answers 404 for a removed container; Podman sometimes 500 "does not exist in database"."""
    text = str(exc).lower()
    return isinstance(exc, NotFound) or "no such container" in text or "does not exist" in text


class ContainerEngine(dg.ConfigurableResource):
    """Builds, pushes and runs images on the engine `DOCKER_HOST` (or `docker_host`) points at."""

    docker_host: str | None = Field(
        default=None,
        description="Engine address, e.g. unix:///run/release-graph-podman.sock. None: $DOCKER_HOST at use time.",
    )
    build_timeout_seconds: int = Field(default=900, description="Wall-clock deadline for one whole build.")
    push_timeout_seconds: int = Field(
        default=600, description="How long a push may go without a word from the engine before it is abandoned."
    )
    registry_timeout_seconds: float = Field(
        default=5, description="Per-request timeout when asking the registry for a digest the push did not report."
    )

    _client: Any = PrivateAttr(default=None)
    _client_lock: Any = PrivateAttr(default_factory=threading.Lock)

    # --- client -------------------------------------------------------------------------------------------

    def _engine_address(self) -> str:
        return self.docker_host or os.environ.get("DOCKER_HOST") or "the default Docker socket"

    def engine_address(self) -> str:
        """Where the engine is, for messages: `docker_host`, else $DOCKER_HOST, else the default socket."""
        return self._engine_address()

    def _client_kwargs(self) -> dict[str, Any]:
        if self.docker_host:
            return {"base_url": self.docker_host}
        # DOCKER_HOST plus its TLS settings (DOCKER_TLS_VERIFY, DOCKER_CERT_PATH), read now, not at import.
        return docker.utils.kwargs_from_env()

    def client(self) -> docker.DockerClient:
        """The shared docker-py client, created on first use."""
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = docker.DockerClient(**self._client_kwargs(), timeout=120)
                except DockerException as exc:
                    raise ContainerEngineError(
                        f"container engine at {self._engine_address()} did not answer: {exc}"
                    ) from exc
            return self._client

    def _dedicated_api(self, timeout: float) -> docker.APIClient:
        """A low-level client of its own, so one operation's socket can be shut down without the others'."""
        return docker.APIClient(**self._client_kwargs(), version=self.client().api.api_version, timeout=timeout)

    # --- build --------------------------------------------------------------------------------------------

    def build(
        self,
        context_dir: Path,
        *,
        dockerfile: str = "Dockerfile",
        tag: str,
        target: str | None = None,
        labels: Mapping[str, str] | None = None,
        buildargs: Mapping[str, str] | None = None,
        on_log: Callable[[str], None] | None = None,
        shares_layers: bool = True,
    ) -> BuiltImage:
        """Build `context_dir` into `tag` (see `_build_once`), one build at a time per engine on this host.

        Podman's build cache is not safe under concurrent builds that share layers: they fail with
        "image not known" / "layer not known" while another build commits or removes the same layer. Builds
        therefore take a host-wide lock per engine, and such a cache race, should one still happen (another
        program removing images meanwhile), is retried up to `CACHE_RACE_RETRIES` times after a short pause.
        `shares_layers=False`: an image whose layers no service build shares (the user-code image, minutes to
        build) goes without the lock, so the fleet's builds do not wait for it.
        """
        arguments = dict(dockerfile=dockerfile, tag=tag, target=target, labels=labels, buildargs=buildargs,
                         on_log=on_log)
        lock_path = Path(tempfile.gettempdir()) / (
            "release-graph-build-" + hashlib.sha1(self._engine_address().encode()).hexdigest()[:12] + ".lock"
        )
        with open(lock_path if shares_layers else os.devnull, "a") as lock:
            if shares_layers:
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                retries = 0
                while True:
                    try:
                        return self._build_once(context_dir, **arguments)
                    except BuildError as exc:
                        retries += 1
                        if exc.timed_out or retries > CACHE_RACE_RETRIES or not any(
                            race in str(exc) for race in ENGINE_CACHE_RACES
                        ):
                            raise
                        if on_log:
                            on_log(f"engine build cache race ({exc}); building again (retry {retries})")
                        time.sleep(retries)
            finally:
                if shares_layers:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    def _build_once(
        self,
        context_dir: Path,
        *,
        dockerfile: str = "Dockerfile",
        tag: str,
        target: str | None = None,
        labels: Mapping[str, str] | None = None,
        buildargs: Mapping[str, str] | None = None,
        on_log: Callable[[str], None] | None = None,
    ) -> BuiltImage:
        """Build `context_dir` into `tag`, streaming each log line to `on_log` on the caller's thread.

        Raises BuildError when the stream reports an error, when the engine refuses the request, or when the
        whole build takes longer than `build_timeout_seconds`.
        """
        context_dir = Path(context_dir)
        if not context_dir.is_dir():
            raise BuildError(f"build of {tag}: build context {context_dir} is not a directory", tag=tag)
        if not (context_dir / dockerfile).is_file():
            raise BuildError(f"build of {tag}: no Dockerfile {dockerfile!r} in build context {context_dir}", tag=tag)
        try:
            parse_image_reference(tag)
        except ValueError as exc:
            raise BuildError(f"build of {tag}: {exc}", tag=tag) from exc

        timeout = self.build_timeout_seconds
        # The socket timeout only has to outlast the deadline; the deadline itself is enforced below.
        api = self._dedicated_api(timeout=timeout + 30)
        responses: list[requests.Response] = []
        api.hooks["response"].append(lambda response, *args, **kwargs: responses.append(response))
        items: queue.Queue = queue.Queue()
        finished = object()

        def read_stream() -> None:
            try:
                for chunk in api.build(
                    path=str(context_dir),
                    dockerfile=dockerfile,
                    tag=tag,
                    target=target,
                    labels=dict(labels or {}),
                    buildargs=dict(buildargs or {}),
                    pull=False,  # base images sit in the local registry (scripts/setup_host.sh)
                    rm=True,
                    forcerm=True,
                    decode=True,
                    timeout=timeout + 30,
                ):
                    items.put(chunk)
            except Exception as exc:  # handed to the caller's thread, which decides what it means
                items.put(exc)
            finally:
                items.put(finished)

        tail: deque[str] = deque(maxlen=BUILD_LOG_TAIL_LINES)
        lines = _LineSplitter(tail, on_log)
        error: str | None = None
        failure: Exception | None = None
        image_id: str | None = None
        started = time.monotonic()
        deadline = started + timeout
        worker = threading.Thread(target=read_stream, name=f"build-stream {tag}", daemon=True)
        worker.start()
        timed_out = False
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                try:
                    item = items.get(timeout=min(remaining, 1.0))
                except queue.Empty:
                    continue
                if item is finished:
                    break
                if isinstance(item, Exception):
                    failure = item
                    continue
                if "stream" in item:
                    lines.feed(str(item["stream"]))
                elif "status" in item:  # the engine pulling a base image
                    lines.feed(f"{item['status']} {item.get('progress', '')}".rstrip() + "\n")
                if item.get("error") or item.get("errorDetail"):
                    detail = item.get("errorDetail") or {}
                    error = str(detail.get("message") or item.get("error")).strip()
                aux = item.get("aux")
                if isinstance(aux, dict) and aux.get("ID"):
                    image_id = aux["ID"]
        finally:
            lines.flush()
            # Timed out, or `on_log` raised: either way nobody reads on, so hang up on the engine.
            if worker.is_alive():
                for response in responses:
                    with suppress(Exception):
                        response.raw.shutdown()  # unblocks the worker's read; the engine sees a hang-up
                    with suppress(Exception):
                        response.close()
                worker.join(ABANDON_GRACE_SECONDS)
            api.close()
        seconds = round(time.monotonic() - started, 3)

        if timed_out:
            raise BuildError(
                f"build of {tag} timed out after {timeout} s (build_timeout_seconds) and was abandoned; "
                "nothing was tagged",
                tag=tag, log_tail=tail, timed_out=True,
            )
        if error:
            raise BuildError(f"build of {tag} failed: {error}", tag=tag, log_tail=tail)
        if failure is not None:
            raise BuildError(f"build of {tag} failed: {_describe_engine_error(failure)}", tag=tag, log_tail=tail)
        try:
            image = self.client().images.get(tag)
        except NotFound as exc:
            raise BuildError(
                f"build of {tag} reported success but the engine has no image under that tag", tag=tag, log_tail=tail
            ) from exc
        return BuiltImage(
            image_id=image.id or image_id or "", tag=tag, size_bytes=int(image.attrs.get("Size") or 0), seconds=seconds
        )

    # --- push ---------------------------------------------------------------------------------------------

    def push(self, tag: str, on_log: Callable[[str], None] | None = None, registry: Registry | None = None) -> str:
        """Push `registry/repository:tag` and return the manifest digest (`sha256:...`) the registry holds.

        `registry` (the `registry` resource) gives the credentials the engine pushes with and answers the digest
        when the engine reports none; without it the push is anonymous.
        """
        try:
            ref = parse_image_reference(tag)
        except ValueError as exc:
            raise PushError(f"cannot push {tag!r}: {exc}", reference=tag, registry="?") from exc
        if ref.digest or not ref.tag:
            raise PushError(
                f"cannot push {tag!r}: a push needs a reference with a tag and no digest",
                reference=tag, registry=ref.registry,
            )
        repository = tag[: -(len(ref.tag) + 1)]
        registry = registry or Registry(timeout_seconds=self.registry_timeout_seconds)
        try:
            engine_auth = registry.engine_auth(ref.registry)
        except RegistryError as exc:  # chained: a registry or secret store that did not answer is retried
            raise PushError(f"push of {tag}: {exc}", reference=tag, registry=ref.registry) from exc
        credentials_source = registry.credentials_source(ref.registry)
        params = {"tag": ref.tag}
        if is_loopback_host(ref.registry):
            params["tlsVerify"] = "false"
        api = self.client().api
        url = f"{api.base_url}/v{api.api_version}/images/{urllib.parse.quote(repository, safe='/:')}/push"
        tail: deque[str] = deque(maxlen=BUILD_LOG_TAIL_LINES)
        lines = _LineSplitter(tail, on_log)
        digest: str | None = None
        try:
            response = api.post(
                url, params=params, headers={"X-Registry-Auth": engine_auth}, stream=True,
                timeout=self.push_timeout_seconds,
            )
            if response.status_code >= 400:
                with response:  # the engine's words are read before the stream closes
                    refusal = _engine_message(response)
                raise PushError(
                    f"push of {tag} to registry {ref.registry} was refused by the engine "
                    f"({response.status_code}): {refusal}",
                    reference=tag, registry=ref.registry,
                )
            with response:
                for item in json_stream(response.iter_content(chunk_size=None, decode_unicode=True)):
                    if item.get("error") or item.get("errorDetail"):
                        detail = item.get("errorDetail") or {}
                        message = str(detail.get("message") or item.get("error")).strip()
                        what = _registry_problem(message, ref.registry, credentials_source)
                        raise PushError(
                            f"push of {tag} to registry {ref.registry} failed: {what}: {message}",
                            reference=tag, registry=ref.registry,
                        )
                    status = str(item.get("status") or "")
                    if status:
                        lines.feed(f"{status} {item.get('progress', '')}".rstrip() + "\n")
                    aux = item.get("aux")
                    if isinstance(aux, dict) and str(aux.get("Digest", "")).startswith("sha256:"):
                        digest = aux["Digest"]
                    elif match := PUSH_DIGEST_LINE.search(status):
                        digest = match.group(1)
        except requests.RequestException as exc:
            raise PushError(
                f"push of {tag} to registry {ref.registry}: container engine at {self._engine_address()} "
                f"stopped answering: {exc}",
                reference=tag, registry=ref.registry,
            ) from exc
        finally:
            lines.flush()
        if digest:
            return digest
        # Neither an aux item nor a status line carried it: ask the registry what it now serves.
        try:
            digest = registry.manifest_digest(repository, ref.tag)
        except RegistryError as exc:
            raise PushError(
                f"push of {tag} to registry {ref.registry} reported no digest and the registry could not be "
                f"asked: {exc}",
                reference=tag, registry=ref.registry,
            ) from exc
        if not digest:
            raise PushError(
                f"push of {tag} ended without an error, but registry {ref.registry} has no manifest for it",
                reference=tag, registry=ref.registry,
            )
        return digest

    def pull(self, reference: str, registry: Registry | None = None) -> None:
        """Pull `reference` (`host/path:tag` or `host/path@sha256:...`) into the engine, with the credentials
        `registry` (the `registry` resource) has for its host; loopback registries over plain HTTP."""
        ref = parse_image_reference(reference)
        repository, _, rest = reference.partition("@") if ref.digest else reference.rpartition(":")
        params = {"fromImage": repository, "tag": rest or "latest"}
        if is_loopback_host(ref.registry):
            params["tlsVerify"] = "false"  # Podman: loopback registries speak plain HTTP (Docker ignores it)
        registry = registry or Registry(timeout_seconds=self.registry_timeout_seconds)
        try:
            engine_auth = registry.engine_auth(ref.registry)
        except RegistryError as exc:  # chained: a registry or secret store that did not answer is retried
            raise ContainerEngineError(f"pull of {reference}: {exc}") from exc
        api = self.client().api
        headers = {"X-Registry-Auth": engine_auth}
        try:
            # Podman's compatible pull ignores tlsVerify; its own API takes it. Docker has no such path (404) and
            # treats loopback registries as plain HTTP by itself.
            libpod = {"reference": reference, **({"tlsVerify": "false"} if "tlsVerify" in params else {})}
            response = api.post(f"{api.base_url}/v4.0.0/libpod/images/pull", params=libpod, headers=headers,
                                stream=True, timeout=self.push_timeout_seconds)
            if response.status_code == 404:
                response.close()
                response = api.post(f"{api.base_url}/v{api.api_version}/images/create", params=params,
                                    headers=headers, stream=True, timeout=self.push_timeout_seconds)
            with response:
                if response.status_code >= 400:
                    raise ContainerEngineError(f"pull of {reference} was refused by the engine "
                                               f"({response.status_code}): {_engine_message(response)}")
                for item in json_stream(response.iter_content(chunk_size=None, decode_unicode=True)):
                    if item.get("error") or item.get("errorDetail"):
                        message = str((item.get("errorDetail") or {}).get("message") or item.get("error")).strip()
                        what = _registry_problem(message, ref.registry, registry.credentials_source(ref.registry))
                        raise ContainerEngineError(f"pull of {reference} from registry {ref.registry} failed: "
                                                   f"{what}: {message}")
        except requests.RequestException as exc:
            raise ContainerEngineError(f"pull of {reference}: container engine at {self._engine_address()} "
                                       f"stopped answering: {exc}") from exc

    # --- run ----------------------------------------------------------------------------------------------

    def run_to_completion(
        self,
        image: str,
        *,
        command: str | list[str] | None = None,
        env: Mapping[str, str] | None = None,
        network: str | None = None,
        labels: Mapping[str, str] | None = None,
        name: str,
        timeout_seconds: float,
        copy_out: str | None = None,
        log_tail_lines: int = RUN_LOG_TAIL_LINES,
        extra_hosts: Mapping[str, str] | None = None,
    ) -> RunResult:
        """Run `image` until it exits and return its exit code, last log lines and the files under `copy_out`.

        The container always runs with an init process and is always removed afterwards. A non-zero exit is
        a result; a container that was killed, ran out of memory or vanished raises ContainerCrashed, and one
        that outlives `timeout_seconds` is killed and raises ContainerTimeout.
        """
        client = self.client()
        try:
            container = client.containers.create(
                image,
                command=command,
                environment=dict(env or {}),
                network=network,
                labels={**(labels or {}), RELEASE_GRAPH_LABEL: "1"},
                name=name,
                init=True,  # PID 1 that forwards signals and reaps: stop/kill take effect at once
                detach=True,
                extra_hosts=dict(extra_hosts or {}),
                **network_dns_options(client, network),
            )
        except NotFound as exc:
            raise ContainerEngineError(f"cannot run container {name}: image {image} is not in the engine") from exc
        except (APIError, DockerException) as exc:
            raise ContainerEngineError(
                f"cannot create container {name} from {image}: {_describe_engine_error(exc)}"
            ) from exc

        started = time.monotonic()
        try:
            try:
                container.start()
            except APIError as exc:
                raise ContainerEngineError(
                    f"container {name} ({image}) could not start: {_describe_engine_error(exc)}"
                ) from exc
            outcome = self._wait(container, name, image, timeout_seconds, started, log_tail_lines)
            seconds = round(time.monotonic() - started, 3)
            try:
                container.reload()
            except APIError as exc:  # NotFound, or Podman's 500 "does not exist in database"
                if not _container_vanished(exc):
                    raise
                raise ContainerCrashed(
                    f"container {name} ({image}) was removed while it ran: no result", name=name
                ) from exc
            state = container.attrs.get("State") or {}
            logs = self._logs_tail(container, log_tail_lines)
            exit_code = int(state.get("ExitCode", outcome.get("StatusCode", -1)))
            if state.get("OOMKilled"):
                raise ContainerCrashed(
                    f"container {name} ({image}) ran out of memory and was killed (exit {exit_code})",
                    name=name, logs_tail=logs,
                )
            wait_error = (outcome.get("Error") or {}).get("Message") if isinstance(outcome, dict) else None
            if wait_error:
                raise ContainerCrashed(
                    f"container {name} ({image}) did not finish normally: {wait_error}", name=name, logs_tail=logs
                )
            if exit_code > 128 or exit_code < 0:
                raise ContainerCrashed(
                    f"container {name} ({image}) was {_signal_words(exit_code)} before it finished: no result",
                    name=name, logs_tail=logs,
                )
            files = self._copy_out(container, name, copy_out) if copy_out else {}
            return RunResult(exit_code=exit_code, logs_tail=logs, files=files, seconds=seconds)
        finally:
            with suppress(NotFound, APIError):
                container.remove(force=True)

    def _wait(self, container, name: str, image: str, timeout_seconds: float, started: float, tail_lines: int):
        try:
            return container.wait(timeout=timeout_seconds)
        except APIError as exc:  # NotFound, or Podman's 500 "does not exist in database"
            if not _container_vanished(exc):
                raise
            raise ContainerCrashed(
                f"container {name} ({image}) was removed while it ran: no result", name=name
            ) from exc
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as exc:
            if time.monotonic() - started < timeout_seconds * 0.9:
                raise ContainerEngineError(
                    f"container engine at {self._engine_address()} stopped answering while {name} ran: {exc}"
                ) from exc
            with suppress(NotFound, APIError):
                container.kill()
            logs = self._logs_tail(container, tail_lines)
            raise ContainerTimeout(
                f"container {name} ({image}) did not finish within {timeout_seconds:g} s and was killed",
                name=name, logs_tail=logs,
            ) from exc

    def _logs_tail(self, container, lines: int) -> str:
        try:
            # Podman's `tail=` counts partial writes as lines and can reorder them: read all, keep the end.
            raw = container.logs(stdout=True, stderr=True)
        except (NotFound, APIError):
            return ""
        return "\n".join(raw.decode("utf-8", "replace").rstrip("\n").splitlines()[-lines:])

    def _copy_out(self, container, name: str, directory: str) -> dict[str, bytes]:
        """Regular files under `directory` in the container, keyed by their path relative to it."""
        try:
            chunks, _stat = container.get_archive(directory)
            buffer = io.BytesIO()
            for chunk in chunks:
                buffer.write(chunk)
                if buffer.tell() > MAX_COPY_OUT_BYTES:
                    raise ContainerEngineError(
                        f"container {name}: {directory} holds more than {MAX_COPY_OUT_BYTES // 2**20} MiB"
                    )
        except NotFound:
            return {}  # the process never wrote there; the caller decides what a missing report means
        except (APIError, requests.RequestException) as exc:
            raise ContainerEngineError(
                f"container {name}: could not copy {directory} out of it: {_describe_engine_error(exc)}"
            ) from exc
        buffer.seek(0)
        files: dict[str, bytes] = {}
        with tarfile.open(fileobj=buffer, mode="r:") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                parts = PurePosixPath(member.name).parts
                # The archive's top entry is the directory itself (e.g. `reports/junit.xml`).
                relative = "/".join(parts[1:]) if len(parts) > 1 else parts[0]
                extracted = archive.extractfile(member)
                if extracted is not None:
                    files[relative] = extracted.read()
        return files

    # --- images, networks, clean-up ---------------------------------------------------------------------

    def local_image_exists(self, ref: str) -> bool:
        try:
            self.client().images.get(ref)
        except NotFound:  # Podman's "image not known" is a plain NotFound, Docker's an ImageNotFound
            return False
        return True

    def built_image(self, tag: str, *, revision: str) -> BuiltImage | None:
        """The image the engine holds under `tag` when its `org.opencontainers.image.revision` label is
        `revision` (a build of that commit finished here: the engine tags only finished builds); else None."""
        try:
            image = self.client().images.get(tag)
        except NotFound:
            return None
        except (APIError, DockerException, requests.RequestException) as exc:
            raise ContainerEngineError(
                f"container engine at {self._engine_address()} did not answer: {_describe_engine_error(exc)}"
            ) from exc
        if (image.labels or {}).get("org.opencontainers.image.revision") != revision:
            return None
        return BuiltImage(image_id=image.id or "", tag=tag, size_bytes=int(image.attrs.get("Size") or 0), seconds=0)

    def image_labels(self, ref: str) -> dict[str, str]:
        try:
            image = self.client().images.get(ref)
        except NotFound as exc:
            raise ContainerEngineError(f"image {ref} is not in the engine at {self._engine_address()}") from exc
        return dict(image.labels or {})

    def image_command(self, ref: str) -> tuple[str, ...]:
        """What a container of the image runs: its ENTRYPOINT followed by its CMD (empty: it declares neither)."""
        try:
            config = self.client().images.get(ref).attrs.get("Config") or {}
        except NotFound as exc:
            raise ContainerEngineError(f"image {ref} is not in the engine at {self._engine_address()}") from exc
        return tuple(config.get("Entrypoint") or ()) + tuple(config.get("Cmd") or ())

    def remove_image(self, ref: str, *, force: bool = False) -> bool:
        """Remove a local image (or one of its tags). False when the engine did not have it."""
        try:
            self.client().images.remove(ref, force=force)
        except NotFound:
            return False
        return True

    def create_network(self, name: str, *, labels: Mapping[str, str] | None = None, internal: bool = False) -> str:
        """A user-defined network (it has DNS, unlike Podman's default one); returns its id."""
        network = self.client().networks.create(
            name, labels={**(labels or {}), RELEASE_GRAPH_LABEL: "1"}, internal=internal, check_duplicate=True
        )
        return network.id

    def prune(self, label_selector: str | Iterable[str]) -> PruneResult:
        """Remove every container (running or not) and then every network carrying the label(s).

        `label_selector` is `key` or `key=value`, or several of them (all must match).
        """
        selectors = [label_selector] if isinstance(label_selector, str) else list(label_selector)
        if not selectors or not all(selectors):
            raise ValueError("prune needs at least one label (key or key=value); refusing to remove everything")
        client = self.client()
        filters = {"label": selectors}
        containers: list[str] = []
        for container in client.containers.list(all=True, ignore_removed=True, filters=filters):
            with suppress(NotFound):
                container.remove(force=True)
                containers.append(container.name)
        networks: list[str] = []
        for network in client.networks.list(filters=filters):
            with suppress(NotFound):
                network.remove()
                networks.append(network.name)
        return PruneResult(containers=containers, networks=networks)


class _LineSplitter:
    """Turns stream fragments into whole lines for the log tail and the caller's `on_log`."""

    def __init__(self, tail: deque[str], on_log: Callable[[str], None] | None):
        self._tail = tail
        self._on_log = on_log
        self._partial = ""

    def feed(self, text: str) -> None:
        self._partial += text
        *complete, self._partial = self._partial.split("\n")
        for line in complete:
            self._emit(line)

    def flush(self) -> None:
        if self._partial:
            self._emit(self._partial)
            self._partial = ""

    def _emit(self, line: str) -> None:
        line = line.rstrip("\r")
        if not line.strip():
            return
        self._tail.append(line)
        if self._on_log is not None:
            self._on_log(line)


def _describe_engine_error(exc: Exception) -> str:
    if isinstance(exc, APIError):
        return f"{exc.status_code} {exc.explanation or exc}"
    return f"{type(exc).__name__}: {exc}"


def _registry_problem(message: str, registry: str, credentials_source: str | None) -> str:
    """The words for an engine's push or pull error: the registry down, its credentials refused or missing."""
    lowered = message.lower()
    if any(sign in lowered for sign in REGISTRY_DOWN_SIGNS):
        return f"registry {registry} did not answer"
    if any(sign in lowered for sign in REGISTRY_AUTH_SIGNS):
        if credentials_source:
            return f"registry {registry} refused the credentials of {credentials_source}"
        return f"registry {registry} wants credentials and none are configured for it (the manifest's registry_auth)"
    return "the engine reported an error"


def _engine_message(response: requests.Response) -> str:
    try:
        return str(response.json().get("message") or response.text)
    except ValueError:
        return response.text.strip()[:300]


def _signal_words(exit_code: int) -> str:
    if exit_code > 128:
        try:
            return f"killed by {signal.Signals(exit_code - 128).name} (exit {exit_code})"
        except ValueError:
            pass
    return f"stopped abnormally (exit {exit_code})"
