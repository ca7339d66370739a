"""The plumbing every shop service carries (shopkit.py) and the JUnit runner of every test stage.

Each service is its own repository, so each carries identical copies of both files; these tests keep the
copies identical and check the shared behaviour once, on the host's Python.
"""

from __future__ import annotations

import http.client
import importlib.util
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SHOP_DIR = Path(__file__).resolve().parents[2] / "examples" / "shop"
SERVICES = ("inventory", "payments", "orders", "gateway")


def load_shopkit():
    path = SHOP_DIR / "services" / "inventory" / "shopkit.py"
    spec = importlib.util.spec_from_file_location("shop_demo_shopkit", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shopkit = load_shopkit()


def serve(service):
    service.log_stream = io.StringIO()
    server = service.start_in_background()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def started():
    servers = []

    def start(service):
        server, url = serve(service)
        servers.append(server)
        return url

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_every_service_and_the_e2e_folder_carry_identical_copies_of_the_shared_files():
    kits = {service: (SHOP_DIR / "services" / service / "shopkit.py").read_bytes() for service in SERVICES}
    runners = {service: (SHOP_DIR / "services" / service / "tests" / "junit_runner.py").read_bytes()
               for service in SERVICES}
    runners["e2e"] = (SHOP_DIR / "e2e" / "junit_runner.py").read_bytes()

    assert len(set(kits.values())) == 1, "shopkit.py differs between services: copy one version to all"
    assert len(set(runners.values())) == 1, "junit_runner.py differs: copy one version to every service and e2e"
    assert len(runners["e2e"].decode().splitlines()) <= 60


def test_metrics_are_prometheus_text_with_cumulative_histogram_buckets():
    metrics = shopkit.Metrics()
    for seconds in (0.001, 0.02, 0.3, 7.0):
        metrics.observe("/orders", "POST", 201, seconds)
    metrics.observe("/orders/{order_id}", "GET", 404, 0.002)
    metrics.observe_upstream("payments", "unreachable")

    text = metrics.render("orders", "1.2.3", "abc123")

    sample = re.compile(r'^[a-z_]+\{(?:[a-z_]+="[^"]*",)*[a-z_]+="[^"]*"\} [0-9.e+-]+$')
    for line in text.splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or sample.match(line), line
    families = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    assert families == [("shop_up", "gauge"), ("shop_build_info", "gauge"),
                        ("shop_http_requests_total", "counter"),
                        ("shop_http_request_duration_seconds", "histogram"),
                        ("shop_upstream_requests_total", "counter"),
                        ("shop_api_requests_total", "counter"),
                        ("shop_api_request_duration_seconds", "histogram")]
    assert 'shop_http_requests_total{service="orders",route="/orders",method="POST",code="201"} 4' in text
    buckets = [float(v) for v in re.findall(r'_bucket\{service="orders",route="/orders",le="[^"]+"\} (\S+)', text)]
    assert buckets == sorted(buckets) and buckets[0] == 1 and buckets[-2] == 3 and buckets[-1] == 4
    assert 'shop_http_request_duration_seconds_count{service="orders",route="/orders"} 4' in text
    assert 'shop_http_request_duration_seconds_sum{service="orders",route="/orders"} 7.321000' in text
    assert 'shop_upstream_requests_total{service="orders",upstream="payments",outcome="unreachable"} 1' in text
    assert 'shop_build_info{service="orders",version="1.2.3",git_sha="abc123"} 1' in text


def test_api_requests_by_status_class_exist_from_the_start_and_leave_out_probes_and_scrapes(started):
    service = shopkit.Service("orders", {})
    service.route("GET", "/orders")(lambda req: (200, {"orders": []}))
    url = started(service)

    fresh = shopkit.http_request(url, "GET", "/metrics")[1].decode()
    for status_class in ("1xx", "2xx", "3xx", "4xx", "5xx"):
        assert f'shop_api_requests_total{{service="orders",class="{status_class}"}} 0' in fresh
    assert 'shop_api_request_duration_seconds_count{service="orders"} 0' in fresh

    service.error_rate = 1.0
    for path in ("/orders", "/orders", "/nothing", "/healthz", "/version", "/metrics"):
        shopkit.http_request(url, "GET", path)
    text = shopkit.http_request(url, "GET", "/metrics")[1].decode()

    assert 'shop_api_requests_total{service="orders",class="5xx"} 2' in text
    assert 'shop_api_requests_total{service="orders",class="4xx"} 1' in text
    assert 'shop_api_requests_total{service="orders",class="2xx"} 0' in text
    assert 'shop_api_request_duration_seconds_bucket{service="orders",le="+Inf"} 3' in text
    assert 'shop_api_request_duration_seconds_count{service="orders"} 3' in text


def test_healthz_answers_the_status_a_deploy_config_sets(started):
    url = started(shopkit.Service("inventory", {"HEALTHZ_STATUS": "503"}))

    assert shopkit.request_json(url, "GET", "/healthz") == (503, {"service": "inventory", "status": "failing"})


def test_injected_errors_hit_the_api_but_never_health_version_or_metrics(started):
    service = shopkit.Service("orders", {"ERROR_RATE": "1"})
    service.route("GET", "/orders")(lambda req: (200, {"orders": []}))
    url = started(service)

    assert shopkit.request_json(url, "GET", "/orders") == (500, {"error": "injected fault (ERROR_RATE)"})
    assert shopkit.request_json(url, "GET", "/healthz")[0] == 200
    assert shopkit.request_json(url, "GET", "/version")[0] == 200
    assert shopkit.http_request(url, "GET", "/metrics")[0] == 200


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("PORT", "http", "PORT: expected an integer from 0 to 65535, got 'http'"),
    ("PORT", "70000", "PORT: expected an integer from 0 to 65535, got '70000'"),
    ("HEALTHZ_STATUS", "ok", "HEALTHZ_STATUS: expected an integer from 100 to 599, got 'ok'"),
    ("ERROR_RATE", "2", "ERROR_RATE: expected a number from 0.0 to 1.0, got '2'"),
    ("EXTRA_LATENCY_MS", "-5", "EXTRA_LATENCY_MS: expected an integer from 0 to 60000, got '-5'"),
])
def test_a_bad_setting_names_the_variable_and_the_value(variable, value, expected):
    with pytest.raises(shopkit.ConfigError) as caught:
        shopkit.Service("orders", {variable: value})

    assert str(caught.value) == expected


def test_requests_that_match_nothing_or_carry_bad_json_are_refused(started):
    service = shopkit.Service("orders", {})
    service.route("POST", "/orders")(lambda req: (201, req.body))
    url = started(service)

    assert shopkit.request_json(url, "GET", "/nothing") == (404, {"error": "no route for /nothing"})
    assert shopkit.request_json(url, "DELETE", "/orders") == (405, {"error": "DELETE not allowed on /orders",
                                                                    "allowed": ["POST"]})
    assert _raw_post(url, "/orders", b"{not json") == (400, {"error": "request body: expected JSON"})
    assert _raw_post(url, "/orders", b"[1, 2]") == (400, {"error": "request body: expected a JSON object"})


def _raw_post(url: str, path: str, body: bytes):
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_a_bug_in_a_handler_answers_500_and_the_service_keeps_serving(started):
    service = shopkit.Service("orders", {})
    service.route("GET", "/boom")(lambda req: {}["missing"])
    url = started(service)

    assert shopkit.request_json(url, "GET", "/boom") == (500, {"error": "internal error: KeyError"})
    assert shopkit.request_json(url, "GET", "/healthz")[0] == 200
    assert '"event": "unhandled-error"' in service.log_stream.getvalue()


def test_a_request_id_travels_to_upstreams_and_into_each_log_line(started):
    upstream = shopkit.Service("inventory", {})
    upstream.route("GET", "/stock/{sku}")(lambda req: (200, {"sku": req.params["sku"]}))
    upstream_url = started(upstream)
    front = shopkit.Service("orders", {})
    front.route("GET", "/products/{sku}")(
        lambda req: front.call("inventory", upstream_url, "GET", f"/stock/{req.params['sku']}"))
    url = started(front)

    status, raw, headers = shopkit.http_request(url, "GET", "/products/widget", headers={"X-Request-Id": "rid-42"})

    assert (status, json.loads(raw), headers["X-Request-Id"]) == (200, {"sku": "widget"}, "rid-42")
    for service, route in ((front, "/products/{sku}"), (upstream, "/stock/{sku}")):
        line = json.loads(service.log_stream.getvalue().splitlines()[-1])
        assert {"route": route, "status": 200, "request_id": "rid-42", "service": service.name}.items() <= line.items()
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", line["ts"])


def test_an_unreachable_upstream_is_a_503_naming_it(started):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    front = shopkit.Service("orders", {})
    front.route("GET", "/x")(lambda req: front.call("payments", closed, "GET", "/y", timeout=2))
    url = started(front)

    status, body = shopkit.request_json(url, "GET", "/x")

    assert (status, body["upstream"]) == (503, "payments")
    assert body["error"].startswith(f"payments unreachable at {closed}: ")


class _Answer200(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def loopback_server():
    """An HTTP server on 127.0.0.1 only, so 127.0.0.2 on the same port refuses connections."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer200)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def fake_dns(monkeypatch):
    """Answers for the name `shop-test-host` from a list (an exception in it is raised); others resolve."""
    real = socket.getaddrinfo
    answers: list = []
    asked: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        if host != "shop-test-host":
            return real(host, port, *args, **kwargs)
        asked.append(host)
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answer, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    book = shopkit.AddressBook()
    monkeypatch.setattr(shopkit, "ADDRESSES", book)
    return answers, asked, book


def test_a_host_keeps_its_last_address_while_dns_fails(loopback_server, fake_dns):
    answers, asked, book = fake_dns
    book.refresh_seconds = 0
    answers += ["127.0.0.1", socket.gaierror(-3, "Temporary failure in name resolution")]
    url = f"http://shop-test-host:{loopback_server}"

    statuses = [shopkit.http_request(url, "GET", "/healthz")[0] for _ in range(3)]

    assert statuses == [200, 200, 200]
    deadline = time.monotonic() + 5
    while len(asked) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(asked) >= 2  # refreshed in the background, failed, and the last address stayed in use


def test_a_refused_connection_looks_the_name_up_again(loopback_server, fake_dns):
    answers, asked, _book = fake_dns
    answers += ["127.0.0.2", "127.0.0.1"]  # the name moved to a new container
    url = f"http://shop-test-host:{loopback_server}"

    assert shopkit.http_request(url, "GET", "/healthz")[0] == 200
    assert len(asked) == 2


def test_a_name_that_never_resolved_is_an_error(fake_dns):
    answers, _asked, _book = fake_dns
    answers.append(socket.gaierror(-2, "Name or service not known"))

    with pytest.raises(socket.gaierror):
        shopkit.http_request("http://shop-test-host:8080", "GET", "/healthz")


def test_a_service_process_stops_at_once_on_sigterm(free_port):
    service_dir = SHOP_DIR / "services" / "inventory"
    env = {**os.environ, "PORT": str(free_port), "PYTHONDONTWRITEBYTECODE": "1", "GIT_SHA": "f" * 40}
    process = subprocess.Popen([sys.executable, "app.py"], cwd=service_dir, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        shopkit.wait_until_healthy({"inventory": f"http://127.0.0.1:{free_port}"}, timeout=10)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=5)
        assert time.monotonic() - started < 2
    finally:
        process.kill()
        out, err = process.communicate()

    assert process.returncode == 0, err
    events = [json.loads(line).get("event") for line in out.splitlines()]
    assert events[0] == "listening" and events[-1] == "stopping"
    assert json.loads(out.splitlines()[0])["git_sha"] == "f" * 40


def test_a_service_with_a_bad_setting_exits_2_naming_it():
    service_dir = SHOP_DIR / "services" / "gateway"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "ORDERS_URL": "orders:8080"}
    done = subprocess.run([sys.executable, "app.py"], cwd=service_dir, env=env, capture_output=True, text=True,
                          timeout=30)

    assert (done.returncode, done.stderr) == (
        2, "configuration error: ORDERS_URL: expected an http://host[:port] URL, got 'orders:8080'\n")


RUNNER_SAMPLE = '''
import unittest

class Sample(unittest.TestCase):
    def test_passes(self):
        pass

    def test_fails(self):
        self.assertEqual(1, 2)

    def test_errors(self):
        raise RuntimeError("boom")

    @unittest.skip("not today")
    def test_skipped(self):
        pass

    def test_subtests(self):
        for i in (1, 2):
            with self.subTest(i=i):
                self.assertLess(i, 2)
'''


def run_runner(tests_dir: Path, tmp_path: Path) -> tuple[int, ET.Element]:
    xml_path = tmp_path / "reports" / "junit.xml"
    done = subprocess.run([sys.executable, "-m", "junit_runner", str(tests_dir), str(xml_path)], cwd=SHOP_DIR / "e2e",
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, capture_output=True, text=True,
                          timeout=60)
    return done.returncode, ET.parse(xml_path).getroot()


def test_the_junit_runner_reports_each_outcome_by_test_name(tmp_path):
    tests_dir = tmp_path / "tests"
    tests_dir.mkdir()
    (tests_dir / "test_sample.py").write_text(RUNNER_SAMPLE)
    (tests_dir / "test_broken_import.py").write_text("import no_such_module\n")

    exit_code, root = run_runner(tests_dir, tmp_path)

    assert exit_code == 1
    suite = root.find("testsuite")
    assert {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "7", "failures": "2", "errors": "2", "skipped": "1"}
    outcomes = {case.get("name"): [child.tag for child in case] for case in suite.iter("testcase")}
    assert outcomes == {
        "test_broken_import": ["error"],
        "test_errors": ["error"],
        "test_fails": ["failure"],
        "test_passes": [],
        "test_skipped": ["skipped"],
        "test_subtests": [],
        "test_subtests (i=2)": ["failure"],
    }
    failure = suite.find("testcase[@name='test_fails']/failure")
    assert failure.get("message") == "AssertionError: 1 != 2" and "Traceback" in failure.text


def test_the_junit_runner_fails_when_it_finds_no_tests(tmp_path):
    (tmp_path / "empty").mkdir()

    exit_code, root = run_runner(tmp_path / "empty", tmp_path)

    assert exit_code == 1
    assert root.find("testsuite").get("tests") == "0"
