"""Fixtures shared by every test: a per-run prefix and the real container engine and registry.

Everything a test creates in the engine or the registry carries the run prefix and the label
`release-graph.test-run=<run id>`, so parallel runs on one machine never collide, and the session
cleans up whatever a failed test left behind.

Local images are never removed while tests run: removing one while a parallel build looks up its cache
breaks that build in Podman ("layer not known"). The session removes every image of its own prefix once all
of its workers have finished (`pytest_sessionfinish` below, in the controlling process).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

# The controlling pytest process picks the session's id; xdist workers inherit it through the environment
# and add their own number, so one session's prefix covers all of its workers.
SESSION_ENV = "RELEASE_GRAPH_TEST_SESSION"
SESSION_ID = os.environ.setdefault(SESSION_ENV, f"rgt{uuid.uuid4().hex[:6]}")
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
RUN_ID = f"{SESSION_ID}{WORKER.removeprefix('gw') or 'm'}"
TEST_RUN_LABEL = "release-graph.test-run"
REPO_ROOT = Path(__file__).resolve().parents[1]


# The stories on the real daemon take 5 to 11 minutes each. They go first, so each starts at once on a worker of
# its own while the rest of the suite shares the other workers; behind them come the quick tests (xdist gives
# every worker a second unit of work at the start, which waits behind its story). The Makefile runs xdist with
# --no-loadscope-reorder, which keeps this order instead of sorting groups by size.
LONG_STORIES = "tests/stories/"


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: 0 if item.nodeid.startswith(LONG_STORIES) else 1)  # stable: the rest keep order


def pytest_sessionfinish(session, exitstatus):
    """After the last worker: remove every local image tagged or labelled with this session's prefix."""
    if WORKER or not os.environ.get("DOCKER_HOST"):
        return
    import docker

    try:
        api = docker.APIClient(base_url=os.environ["DOCKER_HOST"], timeout=120)
        images = api.images()  # the list's own fields: inspecting every image of a busy engine takes minutes
    except docker.errors.DockerException as exc:
        print(f"\nsession clean-up: the engine did not answer, images of {SESSION_ID} stay: {exc}")
        return
    for image in images:
        tags = [tag for tag in image.get("RepoTags") or [] if tag != "<none>:<none>"]
        ours = [tag for tag in tags if SESSION_ID in tag]
        for tag in ours:  # untag: an image another name still holds (a base image a test tagged) stays
            with contextlib.suppress(docker.errors.APIError):
                api.remove_image(tag)
        if len(ours) < len(tags):
            continue
        # Only this session's names (or none, e.g. pulled by digest): the image itself goes, with its digests.
        labelled = (image.get("Labels") or {}).get(TEST_RUN_LABEL, "").startswith(SESSION_ID)
        if ours or labelled or any(SESSION_ID in digest for digest in image.get("RepoDigests") or []):
            with contextlib.suppress(docker.errors.APIError):
                api.remove_image(image["Id"], force=True)
    api.close()


@pytest.fixture(scope="session")
def run_id() -> str:
    """A short prefix unique to this pytest process (xdist workers each get their own), `SESSION_ID` + worker."""
    return RUN_ID


@pytest.fixture(scope="session")
def registry_addr() -> str:
    return os.environ.get("RG_REGISTRY", "127.0.0.1:5000")


@pytest.fixture
def local_tags(docker_client):
    """Local tags a test adds to the engine; removed at teardown."""
    tags: list[str] = []
    yield tags
    for tag in tags:
        try:
            docker_client.images.remove(tag)
        except Exception as exc:  # noqa: BLE001 - teardown reports, never masks the test's own failure
            print(f"teardown: could not remove {tag}: {exc}")


@pytest.fixture
def busybox_as(docker_client, registry_addr, local_tags):
    """busybox_as(repository, tag) -> "repository:tag": an image of the test's own, busybox plus a label naming
    it, for a push; removed at teardown.

    Never another name on the shared busybox image: Podman rewrites an image's list of names as a whole, so
    workers tagging and untagging one image at once lose each other's names (podman#17515), and a push then
    answers 404 for an image tagged a moment before. The label makes the image, and its digest, the test's own.
    """
    import io

    def build_as(repository: str, tag: str) -> str:
        reference = f"{repository}:{tag}"
        dockerfile = (f"FROM {registry_addr}/base/busybox:latest\n"
                      f"LABEL {TEST_RUN_LABEL}={RUN_ID} release-graph.test-image={reference}\n")
        docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=reference, pull=False, rm=True)
        local_tags.append(reference)
        return reference
    return build_as


@pytest.fixture(scope="session")
def user_code_image():
    """The user-code image, built as docs/operations.md says (`scripts/build_user_code_image.py`, about 3 min
    without build cache), once per test session: every xdist worker that needs it takes one lock, and the first
    builds it. It goes at the session's end with this session's other tags; whoever starts containers of it
    removes them."""
    import fcntl
    import tempfile

    import docker

    tag = f"127.0.0.1:5000/{SESSION_ID}/user-code:test"
    with open(Path(tempfile.gettempdir()) / f"{SESSION_ID}-user-code-image.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker.from_env().images.get(tag)
                return tag  # another worker of this session built it
            started = time.monotonic()
            built = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "build_user_code_image.py"),
                                    "--tag", tag], capture_output=True, text=True, timeout=1800)
            # the reason is the first and the last line of stderr, the build log's tail between them
            assert built.returncode == 0, (built.stderr if len(built.stderr) < 5000 else
                                           built.stderr[:1500] + "\n[...]\n" + built.stderr[-3500:]
                                           ) + built.stdout[-2000:]
            print(f"\nuser-code image built in {time.monotonic() - started:.0f} s:\n{built.stdout}")
            return tag
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def docker_client():
    """The engine `scripts/setup_host.sh` started (DOCKER_HOST). A missing engine fails, never skips."""
    import docker

    if not os.environ.get("DOCKER_HOST"):
        pytest.fail("DOCKER_HOST is not set: run the tests with `make test` (it runs scripts/setup_host.sh)")
    client = docker.from_env(timeout=300)
    client.ping()
    yield client
    label = f"{TEST_RUN_LABEL}={RUN_ID}"
    for container in client.containers.list(all=True, filters={"label": label}):
        container.remove(force=True)
    for network in client.networks.list(filters={"label": label}):
        network.remove()
    client.close()


@contextmanager
def moto_server_process(env: dict[str, str] | None = None):
    """A real `moto_server` on a free loopback port, with `env` added to its environment; yields its URL.

    Stopped (terminate, then kill) when the block ends, whatever happened in it.
    """
    import sys
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    executable = Path(sys.executable).parent / "moto_server"
    url = f"http://127.0.0.1:{port}"
    # Its request log goes to a file: a pipe nobody reads would fill up and stall the server.
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [str(executable), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + 30
        try:
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    pytest.fail(f"moto_server exited with {process.returncode}: {log.read().decode()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        pytest.fail(f"moto_server did not answer on {url} within 30 s")
                    time.sleep(0.1)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture(scope="session")
def moto_server():
    """A real `moto_server` (AWS APIs) on a free loopback port; yields its endpoint URL for boto3's endpoint_url.

    One per pytest process, so xdist workers never share state. Clients still need credentials: any values do
    (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the test).
    """
    with moto_server_process() as url:
        yield url


@pytest.fixture
def start_moto_server():
    """`moto_server_process(env)`, for a test that needs a server of its own (other settings, fresh state)."""
    return moto_server_process


DOCKER_REGISTRY = "/usr/bin/docker-registry"


def htpasswd_line(username: str, password: str) -> str:
    """An htpasswd entry the registry accepts (it takes bcrypt only): `user:$2b$...`, hashed by the C library's
    crypt(3) (libxcrypt's bcrypt) through the standard library, so no htpasswd binary or package is needed."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # `crypt` leaves the standard library in 3.13
        import crypt

        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=2**5))
    assert hashed and hashed.startswith("$2"), "this C library's crypt(3) has no bcrypt"
    return f"{username}:{hashed}"


@contextmanager
def _throwaway_registry(folder: Path, port: int, *, delete_enabled: bool = True,
                        htpasswd: dict[str, str] | None = None, token: dict[str, str] | None = None):
    """A real distribution registry on 127.0.0.1:<port> with its own config and storage under `folder`;
    with `htpasswd` ({user: password}) it wants HTTP basic auth from those users (its `auth.htpasswd`); with
    `token` ({realm, service, issuer, rootcertbundle}) it wants a token from that realm (`auth.token`)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "registry.yml"
    auth = ""
    if htpasswd:
        (folder / "htpasswd").write_text("".join(htpasswd_line(u, p) + "\n" for u, p in htpasswd.items()))
        auth = f"auth:\n  htpasswd: {{realm: release-graph-test, path: {folder / 'htpasswd'}}}\n"
    elif token:
        auth = "auth:\n  token:\n" + "".join(f"    {key}: {value}\n" for key, value in token.items())
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage:\n  filesystem: {{rootdirectory: {folder / 'storage'}}}\n"
        f"  delete: {{enabled: {'true' if delete_enabled else 'false'}}}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n" + auth
    )
    log = open(folder / "registry.log", "wb")  # noqa: SIM115 - closed in finally, after the process
    process = subprocess.Popen([DOCKER_REGISTRY, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)

    def stop() -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
                break
            except urllib.error.HTTPError as exc:  # an htpasswd registry answers, with 401
                if exc.code == 401:
                    break
                raise
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log_text = (folder / "registry.log").read_text()
                    pytest.fail(f"throwaway registry on port {port} did not start: {log_text}")
                time.sleep(0.05)
        yield stop
    finally:
        stop()
        log.close()


@pytest.fixture
def throwaway_registry():
    """`with throwaway_registry(folder, port) as stop:` a real registry on 127.0.0.1:<port>; `stop()` stops it
    for real (the "registry is down" stories); it is stopped at the end of the block in any case."""
    return _throwaway_registry


@pytest.fixture
def browser():
    """Headless Chromium from the Debian `chromium` package (scripts/setup_host.sh installs it), driven by
    Playwright. Never `playwright install`: that downloads a browser, and test hosts have no outside network.
    A missing browser fails, never skips. One per test: Playwright's event loop stays out of other tests."""
    import shutil

    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is not installed: run `make host` (scripts/setup_host.sh installs the Debian package)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


class HttpReceiver:
    """A real HTTP server on 127.0.0.1 that records every POST (path, headers, body) and answers `status`.

    `start()` and `stop()` are real: a stopped receiver refuses connections on its port, and starts again on
    the same port (how a channel that was down comes back).
    """

    def __init__(self, port: int, *, status: int = 200, answer: bytes = b"ok"):
        self.port, self.status, self.answer = port, status, answer
        self.received: list[dict] = []
        self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HttpReceiver:
        import http.server
        import threading

        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the standard library's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                          "at": time.time()})
                self.send_response(receiver.status)
                self.send_header("Content-Length", str(len(receiver.answer)))
                self.end_headers()
                self.wfile.write(receiver.answer)

            def log_message(self, *args):  # the test's output stays the test's
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def http_receiver():
    """`http_receiver(port=None, status=200)`: an HttpReceiver on a free loopback port (or `port`), not yet
    started; every one is stopped at the end of the test."""
    made: list[HttpReceiver] = []

    def make(port: int | None = None, **kwargs) -> HttpReceiver:
        if port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        made.append(HttpReceiver(port, **kwargs))
        return made[-1]

    yield make
    for receiver in made:
        receiver.stop()


class OtlpReceiver:
    """A real OTLP/HTTP trace receiver on a loopback port: what an OpenTelemetry collector's `otlp` receiver does
    with POST /v1/traces (protobuf ExportTraceServiceRequest, gzip or not), answering an empty
    ExportTraceServiceResponse. `spans()` decodes everything received so far."""

    def __init__(self, http: HttpReceiver):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

        self.http = http
        http.answer = ExportTraceServiceResponse().SerializeToString()

    @property
    def endpoint(self) -> str:
        """The base address, as RELEASE_GRAPH_OTLP_ENDPOINT takes it."""
        return self.http.url

    def spans(self) -> list[dict]:
        """Every span received, flattened: ids as hex, times in ns, attributes and the resource's as plain dicts."""
        import gzip

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        def plain(attributes) -> dict:
            return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in attributes}

        spans = []
        for post in self.http.received:
            assert post["path"] == "/v1/traces", post["path"]
            body = post["body"]
            if post["headers"].get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                resource = plain(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        spans.append({
                            "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex() or None, "name": span.name,
                            "start_ns": span.start_time_unix_nano, "end_ns": span.end_time_unix_nano,
                            "attributes": plain(span.attributes), "resource": resource,
                            "status": {0: "UNSET", 1: "OK", 2: "ERROR"}[span.status.code],
                        })
        return spans


@pytest.fixture
def otlp_receiver(http_receiver) -> OtlpReceiver:
    """An OtlpReceiver, started on a free loopback port and stopped at the end of the test."""
    return OtlpReceiver(http_receiver().start())
