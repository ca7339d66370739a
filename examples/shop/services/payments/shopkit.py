"""HTTP plumbing shared by the shop services: settings, routing, JSON, metrics, request logs.

Every shop service is its own git repository built on a bare Python image without a package index, so
each repository carries this identical file instead of importing a shared package. release-graph's
tests keep the copies byte-identical.

Settings every service reads from its environment:
  PORT              port to listen on (8080)
  HEALTHZ_STATUS    HTTP status /healthz answers (200): a deploy config or an image can break health
  ERROR_RATE        share of API requests (0..1) answered with an injected 500 (0)
  EXTRA_LATENCY_MS  delay added to every API request (0)
  GIT_SHA           commit the image was built from (baked in by the Dockerfile's GIT_SHA build arg)
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

APP_DIR = Path(__file__).resolve().parent
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
OPERATIONAL_PATHS = ("/healthz", "/version", "/metrics")
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
Reply = tuple[int, dict[str, Any]]


class ConfigError(Exception):
    """A setting the service cannot start with; the message names the variable."""


class HttpError(Exception):
    """Ends a request with this status and a JSON body {"error": message, **extra}."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.body = status, {"error": message, **extra}


def env_int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected an integer from {low} to {high}, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}: expected an integer from {low} to {high}, got {raw!r}")
    return value


def env_float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a number from {low} to {high}, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}: expected a number from {low} to {high}, got {raw!r}")
    return value


def env_url(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip() or default
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"{name}: expected an http://host[:port] URL, got {raw!r}")
    return raw.rstrip("/")


def require_fields(body: Mapping[str, Any], **types: type) -> None:
    """400 naming the first missing or mistyped field of a JSON request body."""
    for field, expected in types.items():
        value = body.get(field)
        if not isinstance(value, expected) or isinstance(value, bool):
            raise HttpError(400, f"{field}: expected {expected.__name__}, got {value!r}")


class AddressBook:
    """Host name -> the address it last resolved to, refreshed in the background.

    Podman's DNS server (aardvark-dns before 1.11) drops queries while any container on the host starts or
    stops, and each lost query costs the resolver's 5 s timeout. So once a name has resolved, requests never
    wait for DNS: they use the last address while a background lookup refreshes it, and a refused
    connection (the name moved to a new container) looks the name up again at once.
    """

    refresh_seconds = 2.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._addresses: dict[tuple[str, int], tuple[str, float]] = {}
        self._refreshing: set[tuple[str, int]] = set()

    def lookup(self, host: str, port: int) -> str:
        try:
            ipaddress.ip_address(host)
            return host
        except ValueError:
            pass
        key = (host, port)
        with self._lock:
            known = self._addresses.get(key)
            stale = known is not None and time.monotonic() - known[1] > self.refresh_seconds
            if stale and key not in self._refreshing:
                self._refreshing.add(key)
                threading.Thread(target=self._refresh, args=(key,), daemon=True).start()
        return known[0] if known else self._resolve(key)

    def prefetch(self, url: str, retry_seconds: float = 0.5) -> None:
        """Looks a URL's host up in the background, retrying until it resolves, so calls find it known."""
        parts = urllib.parse.urlsplit(url)

        def resolve_until_known() -> None:
            while True:
                try:
                    self.lookup(parts.hostname or "", parts.port or 80)
                    return
                except OSError:
                    time.sleep(retry_seconds)

        threading.Thread(target=resolve_until_known, name=f"prefetch {parts.hostname}", daemon=True).start()

    def forget(self, host: str, port: int) -> None:
        with self._lock:
            self._addresses.pop((host, port), None)

    def _resolve(self, key: tuple[str, int]) -> str:
        address = socket.getaddrinfo(*key, type=socket.SOCK_STREAM)[0][4][0]
        with self._lock:
            self._addresses[key] = (address, time.monotonic())
        return address

    def _refresh(self, key: tuple[str, int]) -> None:
        try:
            self._resolve(key)
        except OSError:
            pass  # keep the last address; the next request tries again
        finally:
            with self._lock:
                self._refreshing.discard(key)


ADDRESSES = AddressBook()


def http_request(base_url: str, method: str, path: str, body: Any = None, timeout: float = 5.0,
                 headers: Mapping[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    """One HTTP exchange with a JSON body (if any): status, raw body, headers. Raises OSError on failure."""
    parts = urllib.parse.urlsplit(base_url)
    host, port = parts.hostname or "", parts.port or 80
    payload = None if body is None else json.dumps(body).encode()
    all_headers = {"Host": parts.netloc, "Accept": "application/json", **(headers or {})}
    if payload is not None:
        all_headers["Content-Type"] = "application/json"
    for attempt in (1, 2):
        conn = http.client.HTTPConnection(ADDRESSES.lookup(host, port), port, timeout=timeout)
        try:
            try:
                conn.connect()
            except ConnectionRefusedError:
                ADDRESSES.forget(host, port)  # nothing was sent, so asking the name's new address is safe
                if attempt == 2:
                    raise
                continue
            conn.request(method, parts.path.rstrip("/") + path, body=payload, headers=all_headers)
            response = conn.getresponse()
            return response.status, response.read(), dict(response.getheaders())
        finally:
            conn.close()
    raise AssertionError("unreachable")


def request_json(base_url: str, method: str, path: str, body: Any = None, timeout: float = 5.0) -> Reply:
    """Status and decoded JSON body of one request (for tests and tools)."""
    status, raw, _headers = http_request(base_url, method, path, body, timeout=timeout)
    return status, json.loads(raw or b"{}")


def wait_until_healthy(urls: Mapping[str, str], timeout: float = 60.0) -> None:
    """Waits until every service's /healthz answers 200 (integration tests start beside their services)."""
    deadline, waiting = time.monotonic() + timeout, dict(urls)
    last: dict[str, str] = {}
    while waiting:
        for name, url in list(waiting.items()):
            try:
                status = http_request(url, "GET", "/healthz", timeout=2.0)[0]
                last[name] = f"answered {status}"
                if status == 200:
                    del waiting[name]
            except (OSError, http.client.HTTPException) as exc:
                last[name] = str(exc)
        if waiting and time.monotonic() > deadline:
            report = "; ".join(f"{name} at {url}: {last.get(name)}" for name, url in waiting.items())
            raise RuntimeError(f"not healthy after {timeout:g}s: {report}")
        if waiting:
            time.sleep(0.2)


def _json_object(raw_body: bytes) -> dict[str, Any]:
    if not raw_body:
        return {}
    try:
        body = json.loads(raw_body)
    except ValueError:
        raise HttpError(400, "request body: expected JSON") from None
    if not isinstance(body, dict):
        raise HttpError(400, "request body: expected a JSON object")
    return body


class Metrics:
    """Counters and latency histograms in memory, rendered in the Prometheus text format.

    Besides the per-route series, API requests (everything but /healthz, /version and /metrics: probes and
    scrapes are not traffic) are counted by status class in series that exist from the start at 0. A rollout
    measures a new version with increase() over a few seconds, and increase() cannot see what a counter held
    when Prometheus first saw it: a 5xx series that appeared already at 3 would hide those 3 errors.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = {}
        self._latency: dict[str, list[float]] = {}  # route -> bucket counts, then sum, then count
        self._upstream: dict[tuple[str, str], int] = {}
        self._api_requests = dict.fromkeys(STATUS_CLASSES, 0)
        self._api_latency = [0.0] * (len(LATENCY_BUCKETS) + 2)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (route, method, str(status))
            self._requests[key] = self._requests.get(key, 0) + 1
            series = [self._latency.setdefault(route, [0.0] * (len(LATENCY_BUCKETS) + 2))]
            if route not in OPERATIONAL_PATHS:
                status_class = f"{status // 100}xx"
                if status_class in self._api_requests:
                    self._api_requests[status_class] += 1
                series.append(self._api_latency)
            for counts in series:
                for i, bound in enumerate(LATENCY_BUCKETS):
                    if seconds <= bound:
                        counts[i] += 1
                counts[-2] += seconds
                counts[-1] += 1

    def observe_upstream(self, upstream: str, outcome: str) -> None:
        with self._lock:
            self._upstream[(upstream, outcome)] = self._upstream.get((upstream, outcome), 0) + 1

    def render(self, service: str, version: str, git_sha: str) -> str:
        s = f'service="{service}"'
        lines = [
            "# HELP shop_up 1 while the service is serving.",
            "# TYPE shop_up gauge",
            f"shop_up{{{s}}} 1",
            "# HELP shop_build_info The version and commit this process runs.",
            "# TYPE shop_build_info gauge",
            f'shop_build_info{{{s},version="{version}",git_sha="{git_sha}"}} 1',
            "# HELP shop_http_requests_total HTTP requests handled, by route template, method and status.",
            "# TYPE shop_http_requests_total counter",
        ]
        with self._lock:
            for (route, method, code), count in sorted(self._requests.items()):
                lines.append(
                    f'shop_http_requests_total{{{s},route="{route}",method="{method}",code="{code}"}} {count}'
                )
            lines += [
                "# HELP shop_http_request_duration_seconds Time to answer a request, by route template.",
                "# TYPE shop_http_request_duration_seconds histogram",
            ]
            for route, series in sorted(self._latency.items()):
                labels = f'{s},route="{route}"'
                for bound, count in zip(LATENCY_BUCKETS, series, strict=False):
                    lines.append(f'shop_http_request_duration_seconds_bucket{{{labels},le="{bound}"}} {count:g}')
                lines.append(f'shop_http_request_duration_seconds_bucket{{{labels},le="+Inf"}} {series[-1]:g}')
                lines.append(f"shop_http_request_duration_seconds_sum{{{labels}}} {series[-2]:.6f}")
                lines.append(f"shop_http_request_duration_seconds_count{{{labels}}} {series[-1]:g}")
            lines += [
                "# HELP shop_upstream_requests_total Calls to other services, by upstream and outcome.",
                "# TYPE shop_upstream_requests_total counter",
            ]
            for (upstream, outcome), count in sorted(self._upstream.items()):
                lines.append(f'shop_upstream_requests_total{{{s},upstream="{upstream}",outcome="{outcome}"}} {count}')
            lines += [
                "# HELP shop_api_requests_total API requests answered (probes and scrapes excluded), by status class.",
                "# TYPE shop_api_requests_total counter",
            ]
            for status_class, count in self._api_requests.items():
                lines.append(f'shop_api_requests_total{{{s},class="{status_class}"}} {count}')
            lines += [
                "# HELP shop_api_request_duration_seconds Time to answer an API request (probes and scrapes excluded).",
                "# TYPE shop_api_request_duration_seconds histogram",
            ]
            for bound, count in zip(LATENCY_BUCKETS, self._api_latency, strict=False):
                lines.append(f'shop_api_request_duration_seconds_bucket{{{s},le="{bound}"}} {count:g}')
            lines.append(f'shop_api_request_duration_seconds_bucket{{{s},le="+Inf"}} {self._api_latency[-1]:g}')
            lines.append(f"shop_api_request_duration_seconds_sum{{{s}}} {self._api_latency[-2]:.6f}")
            lines.append(f"shop_api_request_duration_seconds_count{{{s}}} {self._api_latency[-1]:g}")
        return "\n".join(lines) + "\n"


class Request:
    def __init__(self, method: str, path: str, params: dict[str, str], query: dict[str, str], body: Any) -> None:
        self.method, self.path, self.params, self.query, self.body = method, path, params, query, body


class Service:
    """One shop service: its routes plus the operational endpoints every service answers."""

    def __init__(self, name: str, env: Mapping[str, str], log_stream: TextIO | None = None) -> None:
        self.name = name
        self.port = env_int(env, "PORT", 8080, 0, 65535)
        self.health_status = env_int(env, "HEALTHZ_STATUS", 200, 100, 599)
        self.error_rate = env_float(env, "ERROR_RATE", 0.0, 0.0, 1.0)
        self.extra_latency = env_int(env, "EXTRA_LATENCY_MS", 0, 0, 60_000) / 1000
        self.git_sha = env.get("GIT_SHA", "").strip() or "unknown"
        version_file = APP_DIR / "VERSION"
        self.version = version_file.read_text().strip() if version_file.exists() else "unknown"
        self.metrics = Metrics()
        self.log_stream = log_stream or sys.stdout
        self._log_lock = threading.Lock()
        self._local = threading.local()
        self._routes: list[tuple[str, re.Pattern[str], str, Callable[[Request], Reply]]] = []
        self.upstreams: dict[str, str] = {}
        self.route("GET", "/healthz")(self._healthz)
        self.route("GET", "/version")(lambda _req: (200, self.version_info()))

    def route(self, method: str, template: str) -> Callable[[Callable[[Request], Reply]], Callable[[Request], Reply]]:
        """Registers a handler; `{name}` in the template matches one path segment into req.params."""
        pattern = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")

        def register(handler: Callable[[Request], Reply]) -> Callable[[Request], Reply]:
            self._routes.append((method, pattern, template, handler))
            return handler

        return register

    def upstream(self, name: str, url: str) -> str:
        """Declares a service this one calls (its address is looked up from the start on)."""
        self.upstreams[name] = url
        return url

    def version_info(self) -> dict[str, str]:
        return {"service": self.name, "version": self.version, "git_sha": self.git_sha}

    def _healthz(self, _req: Request) -> Reply:
        status = self.health_status
        return status, {"service": self.name, "status": "ok" if status < 400 else "failing"}

    def call(self, upstream: str, base_url: str, method: str, path: str, body: Any = None,
             timeout: float = 5.0) -> Reply:
        """Calls another service and returns its status and JSON body; 503/502 name the upstream."""
        headers = {"X-Request-Id": getattr(self._local, "request_id", "-")}
        try:
            status, raw, _headers = http_request(base_url, method, path, body, timeout=timeout, headers=headers)
        except (OSError, http.client.HTTPException) as exc:
            self.metrics.observe_upstream(upstream, "unreachable")
            raise HttpError(503, f"{upstream} unreachable at {base_url}: {exc}", upstream=upstream) from None
        self.metrics.observe_upstream(upstream, str(status))
        try:
            return status, json.loads(raw or b"{}")
        except ValueError:
            raise HttpError(502, f"{upstream} answered {status} without JSON", upstream=upstream) from None

    def handle(self, method: str, raw_path: str, raw_body: bytes, request_id: str) -> tuple[int, str, bytes]:
        """Answers one request: (status, content type, body). Also records metrics and the log line."""
        started = time.perf_counter()
        self._local.request_id = request_id
        parts = urllib.parse.urlsplit(raw_path)
        route, status = "unmatched", 404
        content_type, payload = "application/json", b""
        try:
            if parts.path == "/metrics" and method == "GET":
                route, status, content_type = "/metrics", 200, "text/plain; version=0.0.4; charset=utf-8"
                payload = self.metrics.render(self.name, self.version, self.git_sha).encode()
            else:
                route, status, body = self._dispatch(method, parts, raw_body)
                payload = json.dumps(body).encode()
        finally:
            seconds = time.perf_counter() - started
            self.metrics.observe(route, method, status, seconds)
            self.log(method=method, path=parts.path, route=route, status=status,
                     ms=round(seconds * 1000, 2), request_id=request_id)
        return status, content_type, payload

    def _dispatch(self, method: str, parts: urllib.parse.SplitResult, raw_body: bytes) -> tuple[str, int, Any]:
        allowed = []
        for route_method, pattern, template, handler in self._routes:
            match = pattern.match(parts.path)
            if not match:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            try:
                if parts.path not in OPERATIONAL_PATHS:
                    self._inject_faults()
                query = dict(urllib.parse.parse_qsl(parts.query))
                status, reply = handler(Request(method, parts.path, match.groupdict(), query, _json_object(raw_body)))
            except HttpError as exc:
                status, reply = exc.status, exc.body
            except Exception as exc:  # a bug must answer 500 and keep the server serving
                self.log(event="unhandled-error", error=repr(exc))
                status, reply = 500, {"error": f"internal error: {type(exc).__name__}"}
            return template, status, reply
        if allowed:
            return "unmatched", 405, {"error": f"{method} not allowed on {parts.path}", "allowed": allowed}
        return "unmatched", 404, {"error": f"no route for {parts.path}"}

    def _inject_faults(self) -> None:
        if self.extra_latency:
            time.sleep(self.extra_latency)
        if self.error_rate and secrets.randbelow(1_000_000) < self.error_rate * 1_000_000:
            raise HttpError(500, "injected fault (ERROR_RATE)")

    def log(self, **fields: Any) -> None:
        """One JSON line per event on stdout, so container logs can be parsed line by line."""
        ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        record = {"ts": ts, "service": self.name, **fields}
        with self._log_lock:
            self.log_stream.write(json.dumps(record) + "\n")
            self.log_stream.flush()

    def make_server(self, port: int | None = None) -> ThreadingHTTPServer:
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Small responses on keep-alive connections otherwise wait for delayed ACKs (~40 ms each).
            disable_nagle_algorithm = True

            def _answer(self) -> None:
                length = self.headers.get("Content-Length") or "0"
                if not length.isdigit():
                    self.send_error(400, "bad Content-Length")
                    return
                raw_body = self.rfile.read(int(length)) if int(length) else b""
                request_id = self.headers.get("X-Request-Id") or secrets.token_hex(8)
                status, content_type, payload = service.handle(self.command, self.path, raw_body, request_id)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("X-Request-Id", request_id)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass  # Service.handle already logged the request as one JSON line

        server = ThreadingHTTPServer(("", self.port if port is None else port), Handler)
        server.daemon_threads = True
        return server

    def start_in_background(self) -> ThreadingHTTPServer:
        """Serves on a free port in a thread (for tests); stop with server.shutdown()."""
        server = self.make_server(port=0)
        threading.Thread(target=server.serve_forever, args=(0.05,), name=f"{self.name}-http", daemon=True).start()
        return server


def _stop(_signum: int, _frame: Any) -> None:
    # As PID 1 in a container the default SIGTERM action is ignored: leave serve_forever instead.
    raise KeyboardInterrupt


def main(build: Callable[[Mapping[str, str]], Service]) -> None:
    """Entry point of a service: build it from the environment, or exit 2 naming the bad setting."""
    try:
        service = build(os.environ)
        server = service.make_server()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    signal.signal(signal.SIGTERM, _stop)
    for url in service.upstreams.values():
        ADDRESSES.prefetch(url)
    service.log(event="listening", port=server.server_address[1], **service.version_info())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        service.log(event="stopping")
    finally:
        server.server_close()


def healthcheck() -> int:
    """The image's HEALTHCHECK: 0 when this container's /healthz answers 200."""
    try:
        port = env_int(os.environ, "PORT", 8080, 1, 65535)
        return 0 if http_request(f"http://127.0.0.1:{port}", "GET", "/healthz", timeout=2.0)[0] == 200 else 1
    except (ConfigError, OSError, http.client.HTTPException):
        return 1


if __name__ == "__main__" and sys.argv[1:] == ["healthcheck"]:
    sys.exit(healthcheck())
