"""A real Prometheus per test (its own free port, config, storage and scrape-target folder) and real HTTP
services for it to scrape: the demo services' own shopkit.py, served in-process on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import io
import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from resources.metrics.prometheus import ScrapeTargets
from resources.metrics.prometheus_server import PrometheusServer

SHOPKIT = Path(__file__).resolve().parents[3] / "examples" / "shop" / "services" / "orders" / "shopkit.py"


def load_shopkit():
    spec = importlib.util.spec_from_file_location("metrics_test_shopkit", SHOPKIT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shopkit = load_shopkit()


@pytest.fixture
def prometheus(tmp_path: Path, free_port: int):
    """A started PrometheusServer on 127.0.0.1:<free port>; stopped afterwards."""
    server = PrometheusServer(tmp_path / "prometheus", port=free_port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def scrape_targets(prometheus) -> ScrapeTargets:
    return ScrapeTargets(prometheus.targets_dir)


@pytest.fixture
def shop_service():
    """shop_service(env) -> (Service, address): a shopkit service with one API route, serving on 127.0.0.1."""
    servers = []

    def start(env: dict[str, str]):
        service = shopkit.Service("orders", env, log_stream=io.StringIO())
        service.route("GET", "/orders")(lambda _req: (200, {"orders": []}))
        server = service.start_in_background()
        servers.append(server)
        return service, f"127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def instant_query(url: str, promql: str) -> list[dict]:
    query = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=5) as response:
        return json.loads(response.read())["data"]["result"]


def wait_until_scraped(url: str, selector: str, targets: int, timeout: float = 20.0) -> float:
    """Waits until Prometheus has scraped `targets` targets matching `selector` successfully; returns the wait."""
    started = time.monotonic()
    while True:
        result = instant_query(url, f"count(up{{{selector}}} == 1)")
        if result and int(float(result[0]["value"][1])) >= targets:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            pytest.fail(f"Prometheus at {url} did not scrape {targets} targets of {{{selector}}} in {timeout:g} s")
        time.sleep(0.2)
