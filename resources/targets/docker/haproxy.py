"""Published ports and service-to-service calls of one environment: a host haproxy per environment, switched
without a reload.

A host port cannot move between containers without a gap, so the docker target does not let the engine
publish ports. Each environment that publishes anything gets a host `haproxy` (master-worker, admin socket
in the state folder) listening on `publish_address:<port>`; a deployment points the backend at the new
container with the runtime API (`set server be_<svc>/app addr <ip> port <port>`), which needs no reload and
drops no request (0 failed of 2,000 requests across two switches, keep-alive clients included; nginx
reloads dropped idle keep-alive connections). The config file is rewritten with every change, so a reload
or a restart (reboot) serves the same addresses. This needs this host to reach container addresses, which
holds for a local engine; a remote engine would need engine-side publishing instead.

Service-to-service calls take the same switch, so a provider's replacement is invisible to its consumers:
the same haproxy also listens on the environment network's gateway (an address of this host that every
container of the network reaches), one frontend per service port, and routes each HTTP request by its Host
header to `bi_<service>`. Consumers are created with `<provider> -> <gateway>` in their /etc/hosts, so the
address they resolve (and may cache) never changes; a deployment moves `bi_<provider>` with the same
runtime API call as the published port. A new server connection per request means nothing keeps talking to
the old container once it is switched. Only HTTP services (those with a health path) are switched this way;
others keep the network's DNS name.

The network rule (release_graph/fleet/network.py): each service lives on a network of its own that no other
service's container is on, so the switch is the only way in, and the switch admits a request to `bi_<service>`
only from the networks of its declared callers (`Route.sources`, address ranges). Any other caller gets a 403
whose body names it, the callee and the declared callers, and the refusal is counted in the stick table
`refused_calls` under `caller>callee` (`refused_calls()` reads it; callers are named from `callers.map`, each
service's network range -> its name).

Nothing here starts a process or touches the file system at import or construction time.
"""

import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

from resources.targets.interface import PortUnavailable, ProxyError

UNIX_SOCKET_PATH_MAX = 107
REFUSALS_WINDOW_SECONDS = 600  # a refusal counts as recent this long (then only in the total)


@dataclass(frozen=True)
class Route:
    """Where a service's container answers, and how it is reached through this haproxy: on a published host
    port (`publish`), and from the environment's own containers through its gateway (`gateway`)."""

    publish: int | None
    address: str
    port: int
    gateway: str | None = None  # the network gateway consumers reach the switch on; None: not switched inside
    # A new version beside the one at `address` (a canary, or the other color): its address and its share of
    # the traffic in percent. Both live in every backend as servers `app` and `next`, so moving traffic is
    # a runtime API call (`set weight`), never a reload.
    candidate: str | None = None
    candidate_weight: int = 0
    candidate_name: str | None = None  # the candidate's container: not yet what serves the service
    # The network rule: the address ranges allowed to call it through the switch (its declared callers' networks
    # and the environment's own, where the fleet's end-to-end tests run), their names for the refusal's message,
    # and this service's own network range (how a refusal names it when it is the caller). Empty `sources`:
    # anyone on the host may call it (a route written before the rule).
    sources: tuple[str, ...] = ()
    callers: tuple[str, ...] = ()
    subnet: str | None = None

    @classmethod
    def from_json(cls, value: Mapping) -> "Route":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})


def _frontends(routes: Mapping[str, Route]) -> dict:
    """What the listening sockets are: a change here needs a reload; anything else is a runtime API call."""
    published = {name: route.publish for name, route in routes.items() if route.publish is not None}
    internal = {name: (route.gateway, route.port) for name, route in routes.items() if route.gateway}
    rules = {name: (route.sources, route.callers) for name, route in routes.items() if route.gateway}
    return {"published": published, "internal": internal, "rules": rules, "names": _caller_names(routes)}


def _caller_names(routes: Mapping[str, Route]) -> list[str]:
    """`callers.map`'s lines: each switched service's network range -> its name."""
    return sorted(f"{route.subnet} {name}" for name, route in routes.items() if route.subnet)


def _network_rule(name: str, route: Route, names_file: Path) -> list[str]:
    """The lines of `bi_<name>` that refuse every caller but its declared ones, naming both and counting it."""
    if not route.sources:
        return []
    declared = ", ".join(route.callers) or "none"
    return [
        f"    acl declared_caller src {' '.join(route.sources)}",
        f"    http-request set-var(txn.caller) src,map_ip({names_file},unknown)",
        f"    http-request track-sc0 var(txn.caller),concat(>{name}) table refused_calls unless declared_caller",
        f'    http-request deny deny_status 403 content-type text/plain lf-string "network_policy: %[var(txn.caller)] '
        f'(%[src]) may not call {name}: no edge from it in the manifest (declared callers: {declared})\\n" '
        "unless declared_caller",
    ]


def _backends(name: str, route: Route) -> list[str]:
    return ([f"be_{name}"] if route.publish is not None else []) + ([f"bi_{name}"] if route.gateway else [])


def _servers(route: Route) -> list[str]:
    """The two server lines of a backend: the serving version and the candidate slot (weight 0 when empty)."""
    weight = route.candidate_weight if route.candidate else 0
    return [f"    server app {route.address}:{route.port} weight {100 - weight}",
            f"    server next {route.candidate or route.address}:{route.port} weight {weight}"]


@dataclass(frozen=True)
class ServerCounters:
    """haproxy's cumulative counters of one server slot, summed over the service's backends."""

    requests: int = 0  # stot: sessions (one request each: http-server-close)
    errors: int = 0  # hrsp_5xx
    mean_ms: float | None = None  # rtime: mean response time over the last 1,024 requests


class HaproxyRouter:
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
    def names_file(self) -> Path:
        return self.directory / "callers.map"

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

    def routes(self) -> dict[str, Route]:
        try:
            raw = json.loads(self.routes_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ProxyError(f"haproxy of {self.title}: cannot read {self.routes_file}: {exc}") from exc
        return {name: Route.from_json(value) for name, value in raw.items()}

    def route_of(self, service: str) -> Route | None:
        return self.routes().get(service)

    def _write(self, routes: Mapping[str, Route]) -> None:
        payload = {name: asdict(route) for name, route in sorted(routes.items())}
        tmp = self.routes_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        tmp.replace(self.routes_file)
        names = self.names_file.with_suffix(".tmp")
        names.write_text("".join(line + "\n" for line in _caller_names(routes)))
        names.replace(self.names_file)
        cfg = self.config_file.with_suffix(".tmp")
        cfg.write_text(self._render(routes))
        cfg.replace(self.config_file)

    def _render(self, routes: Mapping[str, Route]) -> str:
        lines = [
            f"# Published ports of {self.title}, written by release-graph from routes.json: edit that, not this.",
            "global",
            "    master-worker",
            f"    stats socket {self.admin_socket} mode 600 level admin expose-fd listeners",
            "defaults",
            "    mode http",
            # Containers are on this host: a connection not answered in 0.5 s met a SYN the engine dropped while
            # it rewired the network (a container started or stopped); it is retried at once, not after 2 s.
            "    timeout connect 500ms",
            "    timeout client 60s",
            "    timeout server 60s",
            "    timeout http-keep-alive 10s",
            # Clients keep their connections; haproxy opens a new server connection per request, so no pooled
            # connection to an old container outlives a switch of the server address.
            "    option http-server-close",
            # A request that meets a closing old container is replayed on a fresh connection (new address).
            # Only failures where no server answered: a 5xx is the version's own answer (a canary's errors must
            # reach its analysis, and replaying a request a server did process could run it twice).
            "    retries 5",
            "    option redispatch",
            "    retry-on conn-failure empty-response response-timeout",
        ]
        for name, route in sorted(routes.items()):
            if route.publish is None:
                continue
            lines += [
                f"frontend fe_{name}",
                f"    bind {self.bind_address}:{route.publish}",
                f"    default_backend be_{name}",
                f"backend be_{name}",
                *_servers(route),
            ]
        listeners = sorted({(route.gateway, route.port) for route in routes.values() if route.gateway})
        for gateway, port in listeners:
            lines += [
                f"frontend fi_{gateway.replace('.', '_').replace(':', '_')}_{port}",
                f"    bind {gateway}:{port}",
                # The callee is the Host header's name (without the port); no such service here answers 503.
                "    http-request set-var(txn.callee) req.hdr(host),field(1,:),lower",
                "    use_backend bi_%[var(txn.callee)]",
            ]
        if any(route.gateway and route.sources for route in routes.values()):
            lines += ["backend refused_calls",
                      f"    stick-table type string len 200 size 10k store http_req_cnt,"
                      f"http_req_rate({REFUSALS_WINDOW_SECONDS}s)"]
        for name, route in sorted(routes.items()):
            if route.gateway:
                lines += [f"backend bi_{name}", *_network_rule(name, route, self.names_file), *_servers(route)]
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

    def _apply(self, old: Mapping[str, Route], new: Mapping[str, Route], changed: str) -> None:
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
            if _frontends(old) == _frontends(new) and changed in new and self._switch_at_runtime(changed, new[changed]):
                return
            self._reload()
        except BaseException:
            self._write(old)  # the files describe what runs, never what failed
            raise

    def _switch_at_runtime(self, name: str, route: Route) -> bool:
        """Point both server slots and their weights at `route` over the runtime API. False: this worker's
        config predates the `next` slot (started by an older release-graph): the caller reloads instead."""
        weight = route.candidate_weight if route.candidate else 0
        for backend in _backends(name, route):
            # The candidate's address first, then the weights: no request meets a slot not yet pointed.
            weights = [f"set weight {backend}/next {weight}", f"set weight {backend}/app {100 - weight}"]
            if weight < 100 - weight:
                weights.reverse()  # the larger weight first (>= 50): never a moment with no server to take a request
            commands = [f"set server {backend}/next addr {route.candidate or route.address} port {route.port}",
                        f"set server {backend}/app addr {route.address} port {route.port}", *weights]
            for command in commands:
                answer = self._command(self.admin_socket, command).strip()
                if "no such server" in answer.lower():
                    return False
                if answer and "changed" not in answer and "no need to change" not in answer.lower():
                    raise ProxyError(f"haproxy of {self.title}: {command!r} failed: {answer}")
        return True

    def counters(self, service: str) -> dict[str, ServerCounters]:
        """Per slot (`app`: the serving version, `next`: the candidate), the service's cumulative counters
        over its backends, read from `show stat`. Empty when haproxy does not run. They restart at zero when
        haproxy reloads: a reader compares with what it read before and treats a drop as a restart."""
        route = self.route_of(service)
        if route is None or not self.alive():
            return {}
        try:
            text = self._command(self.admin_socket, "show stat", timeout=2)
        except OSError as exc:
            raise ProxyError(f"haproxy of {self.title}: cannot read its counters: {exc}") from exc
        lines = text.lstrip("# ").splitlines()
        if not lines:
            return {}
        header = lines[0].split(",")
        backends = set(_backends(service, route))
        totals: dict[str, dict] = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") in backends and row.get("svname") in ("app", "next"):
                slot = totals.setdefault(row["svname"], {"requests": 0, "errors": 0, "time": 0.0})
                requests = int(row.get("stot") or 0)
                slot["requests"] += requests
                slot["errors"] += int(row.get("hrsp_5xx") or 0)
                slot["time"] += float(row.get("rtime") or 0) * requests
        return {name: ServerCounters(t["requests"], t["errors"], round(t["time"] / t["requests"], 2)
                                     if t["requests"] else None) for name, t in totals.items()}

    def refused_calls(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(caller, callee) -> how many calls the network rule refused since haproxy last (re)started, and how
        many of them in the last `REFUSALS_WINDOW_SECONDS`."""
        if not self.alive() or not any(route.sources for route in self.routes().values()):
            return {}
        try:
            text = self._command(self.admin_socket, "show table refused_calls", timeout=2)
        except OSError as exc:
            raise ProxyError(f"haproxy of {self.title}: cannot read its refused calls: {exc}") from exc
        refused = {}
        for key, count, recent in re.findall(r"key=(\S+) .*?http_req_cnt=(\d+) http_req_rate\(\d+\)=(\d+)", text):
            caller, _, callee = key.partition(">")
            refused[(caller, callee)] = (int(count), int(recent))
        return refused

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
                environment = self.title.rsplit("/", 1)[-1]
                raise PortUnavailable(
                    f"{where}: cannot publish on {self.bind_address}:{publish}: {exc.strerror}; nothing was changed. "
                    "If an earlier release-graph instance (another checkout, or before `make clean`) still serves "
                    f"this environment, `release-graph environments` shows it and `release-graph teardown --env "
                    f"{environment}` removes it",
                    service=service, environment=self.title.rsplit("/", 1)[-1], image="",
                ) from exc

    def can_listen(self, address: str, port: int) -> bool:
        """Whether this host can listen on address:port (or this haproxy already does)."""
        if any(r.gateway == address and r.port == port for r in self.routes().values()) and self.alive():
            return True
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError:
                return False
        return True

    def switched_names(self) -> dict[str, str]:
        """Service name -> gateway, for every service reached through this switch from inside the network."""
        return {name: route.gateway for name, route in self.routes().items() if route.gateway}

    def set_route(self, service: str, route: Route) -> None:
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
