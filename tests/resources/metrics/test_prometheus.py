"""The Prometheus provider against a real Prometheus scraping real HTTP services.

Given two versions of one service (the demo services' own shopkit.py, served on 127.0.0.1) scraped through
the file_sd targets release-graph writes, and bounded traffic where the new version answers a share of 500s
slowly, the provider measures the new version's requests, error rate and p95 apart from the old one's; a
stopped Prometheus, a refused query and an ambiguous query are MetricsUnavailable naming what was asked.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker.errors
import pytest

from release_graph.fleet.model import PROMETHEUS_URL_VARIABLE, PrometheusSettings
from resources.metrics import MetricsUnavailable, PrometheusMetrics, ScrapeTargets, Subject, Window
from resources.metrics.prometheus import MIN_RANGE_SECONDS, ScrapeTarget, fill_query, range_for

from .conftest import instant_query, wait_until_scraped

TEST_RUN_LABEL = "release-graph.test-run"  # tests/conftest.py removes what a failed test left
STABLE = "sha256:" + "a" * 64
CANDIDATE = "sha256:" + "b" * 64


def get_path(address: str, path: str = "/orders") -> int:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0  # no answer


def steady_load(address: str, per_second: float, seconds: float, path: str = "/orders") -> list[int]:
    """GET `path` at a steady rate to one loopback address (bounded: per_second x seconds requests); the
    statuses answered. Steady, as a canary's traffic is: increase() extrapolates to the edges of its range."""
    started = time.monotonic()

    def one(index: int) -> int:
        time.sleep(max(0.0, started + index / per_second - time.monotonic()))
        return get_path(address, path)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(round(per_second * seconds))))


def labels(service: str, digest: str, role: str) -> dict[str, str]:
    return {"service": service, "digest": digest, "role": role}


def test_the_new_version_is_measured_apart_from_the_old_one(prometheus, scrape_targets, shop_service, run_id):
    fleet, environment = run_id, "prod"
    _stable, stable_address = shop_service({})
    _candidate, candidate_address = shop_service({"ERROR_RATE": "0.2", "EXTRA_LATENCY_MS": "30"})
    candidate_subject = Subject(fleet, environment, "orders", CANDIDATE)
    stable_subject = Subject(fleet, environment, "orders", STABLE, role="stable")
    scrape_targets.write(fleet, environment, [(stable_address, labels("orders", STABLE, "stable")),
                                              (candidate_address, labels("orders", CANDIDATE, "candidate"))])
    provider = PrometheusMetrics(PrometheusSettings(url=prometheus.url))
    discovered = provider.wait_until_scraped(candidate_subject)
    provider.wait_until_scraped(stable_subject)
    candidate_window, stable_window = provider.open_window(candidate_subject), provider.open_window(stable_subject)

    with ThreadPoolExecutor(2) as pool:
        candidate_load = pool.submit(steady_load, candidate_address, 50, 8)
        stable_load = pool.submit(steady_load, stable_address, 30, 8)
        candidate_statuses, stable_statuses = candidate_load.result(), stable_load.result()
    started = time.monotonic()
    candidate = provider.measure(candidate_window)
    query_seconds = time.monotonic() - started
    stable = provider.measure(stable_window)

    injected = candidate_statuses.count(500) / len(candidate_statuses)
    print(f"target scraped {discovered:.1f} s after writing; measure took {query_seconds * 1000:.0f} ms "
          f"(3 queries); candidate {candidate}; stable {stable}; injected share {injected:.3f}")
    assert set(stable_statuses) == {200} and 0.1 < injected < 0.3
    # increase() extrapolates the last scrapes to the end of the range; the error share is a ratio of two.
    assert candidate.requests == pytest.approx(len(candidate_statuses), rel=0.2)
    assert candidate.error_rate == pytest.approx(injected, abs=0.03)
    # 30 ms injected into every candidate answer: its p95 is at least the (25 ms, 50 ms] bucket's floor, and
    # above the stable version's (no upper bound: a loaded machine adds its own latency to both)
    assert candidate.p95_ms >= 25 and candidate.p95_ms > stable.p95_ms
    assert stable.requests == pytest.approx(len(stable_statuses), rel=0.2)
    assert stable.errors == 0 and stable.error_rate == 0
    assert candidate.provider == "prometheus" and 8 <= candidate.seconds < 10


def test_a_version_nobody_called_has_no_requests_and_no_error_rate(prometheus, scrape_targets, shop_service, run_id):
    _idle, address = shop_service({})
    scrape_targets.write(run_id, "staging", [(address, labels("orders", CANDIDATE, "candidate"))])
    wait_until_scraped(prometheus.url, f'fleet="{run_id}"', 1)
    provider = PrometheusMetrics(PrometheusSettings(url=prometheus.url))

    measurement = provider.measure(provider.open_window(Subject(run_id, "staging", "orders", CANDIDATE)))

    assert (measurement.requests, measurement.errors, measurement.error_rate) == (0, 0, None)


def test_a_stopped_prometheus_is_unavailable_naming_where_and_what(prometheus, run_id):
    provider = PrometheusMetrics(PrometheusSettings(url=prometheus.url), timeout_seconds=2)
    window = provider.open_window(Subject(run_id, "prod", "orders", CANDIDATE))
    prometheus.stop()

    started = time.monotonic()
    with pytest.raises(MetricsUnavailable) as caught:
        provider.measure(window)

    message = str(caught.value)
    assert time.monotonic() - started < 3
    assert f"Prometheus at {prometheus.url}: requests of orders bbbbbbbbbbbb in {run_id}/prod" in message
    assert "no answer" in message and "Connection refused" in message


def test_a_query_prometheus_refuses_or_that_gives_several_series_is_unavailable(prometheus, run_id):
    window = Window(Subject(run_id, "prod", "orders", CANDIDATE))
    broken = PrometheusMetrics(PrometheusSettings(url=prometheus.url, requests_query="sum(rate(x[{window}])"))
    several = PrometheusMetrics(PrometheusSettings(url=prometheus.url, requests_query="vector(1) or label_replace("
                                                   'vector(2), "a", "b", "", "")'))

    with pytest.raises(MetricsUnavailable) as refused:
        broken.measure(window)
    with pytest.raises(MetricsUnavailable) as ambiguous:
        several.measure(window)

    assert "answered 400" in str(refused.value) and "sum(rate(x[6s])" in str(refused.value)
    assert "returned 2 series" in str(ambiguous.value) and "sum(...)" in str(ambiguous.value)


def test_queries_take_the_subject_the_range_and_only_the_known_placeholders():
    subject = Subject("shop", "prod", "orders", 'sha256:"x', role="candidate")

    filled = fill_query('sum(x{service="{service}",digest="{digest}",role="{role}",other="{other}"}[{window}])',
                        subject, "30s")

    assert filled == 'sum(x{service="orders",digest="sha256:\\"x",role="candidate",other="{other}"}[30s])'
    opened = Window(subject, opened_at=1000.0)
    assert range_for(opened, 1000.5) == f"{MIN_RANGE_SECONDS:g}s"
    assert range_for(opened, 1042.2) == "43s"


def test_the_url_is_the_manifests_else_the_environments_else_the_default(monkeypatch):
    monkeypatch.delenv(PROMETHEUS_URL_VARIABLE, raising=False)
    assert PrometheusMetrics(PrometheusSettings()).url == "http://127.0.0.1:9090"
    monkeypatch.setenv(PROMETHEUS_URL_VARIABLE, "http://127.0.0.1:9111/")
    assert PrometheusMetrics(PrometheusSettings()).url == "http://127.0.0.1:9111"
    assert PrometheusMetrics(PrometheusSettings(url="http://10.0.0.1:9090")).url == "http://10.0.0.1:9090"


def test_scrape_targets_are_file_sd_json_per_fleet_and_environment(tmp_path):
    targets = ScrapeTargets(tmp_path / "targets")

    targets.write("shop", "prod", [("10.89.0.7:8080", labels("orders", STABLE, "stable"))])
    targets.add("shop", "prod", "10.89.0.9:8080", labels("orders", CANDIDATE, "candidate"))
    targets.add("shop", "staging", "10.89.1.2:8080", labels("orders", CANDIDATE, "stable"))
    targets.add("shop", "prod", "10.89.0.9:8080", labels("orders", CANDIDATE, "stable"))  # replaces
    targets.remove("shop", "prod", "10.89.0.7:8080")
    targets.remove("shop", "prod", "10.89.0.99:8080")  # never a target: nothing happens

    assert json.loads((tmp_path / "targets" / "shop_prod.json").read_text()) == [
        {"targets": ["10.89.0.9:8080"],
         "labels": {"fleet": "shop", "environment": "prod", **labels("orders", CANDIDATE, "stable")}}]
    assert targets.written() == [
        ScrapeTarget("shop", "prod", "10.89.0.9:8080",
                     {"fleet": "shop", "environment": "prod", **labels("orders", CANDIDATE, "stable")}),
        ScrapeTarget("shop", "staging", "10.89.1.2:8080",
                     {"fleet": "shop", "environment": "staging", **labels("orders", CANDIDATE, "stable")}),
    ]
    assert [p.name for p in (tmp_path / "targets").iterdir() if p.name.endswith(".tmp")] == []
    targets.write("shop", "staging", [])
    assert targets.read("shop", "staging") == []
    targets.clear("shop", "prod")
    assert targets.written() == []


@pytest.mark.parametrize(("address", "extra", "expected"), [
    ("http://10.0.0.1:8080", {}, "expected host:port"),
    ("10.0.0.1", {}, "expected host:port"),
    ("10.0.0.1:8080", {"bad-name": "x"}, "label 'bad-name'"),
    ("10.0.0.1:8080", {"fleet": "other"}, "label fleet='other' contradicts 'shop'"),
])
def test_a_target_prometheus_could_not_use_is_refused_before_anything_is_written(tmp_path, address, extra, expected):
    targets = ScrapeTargets(tmp_path)

    with pytest.raises(ValueError, match=expected):
        targets.write("shop", "prod", [(address, {**labels("orders", STABLE, "stable"), **extra})])

    assert targets.written() == []


def test_every_service_of_an_environment_is_one_scraped_target(prometheus, scrape_targets, shop_service, run_id):
    addresses = [shop_service({})[1] for _ in range(3)]
    scrape_targets.write(run_id, "dev", [(a, labels(f"svc{i}", STABLE, "stable")) for i, a in enumerate(addresses)])
    wait_until_scraped(prometheus.url, f'fleet="{run_id}",environment="dev"', 3)

    scrape_targets.remove(run_id, "dev", addresses[0])
    deadline = time.monotonic() + 15
    while len(instant_query(prometheus.url, f'up{{fleet="{run_id}"}}')) != 2:
        assert time.monotonic() < deadline, "a removed target is still scraped after 15 s"
        time.sleep(0.2)
    names = sorted(r["metric"]["service"] for r in instant_query(prometheus.url, f'up{{fleet="{run_id}"}}'))
    assert names == ["svc1", "svc2"]


@pytest.mark.engine
def test_a_demo_service_container_is_measured_by_its_digest(prometheus, scrape_targets, docker_client, run_id,
                                                            registry_addr, tmp_path):
    """The real thing once: the inventory service's runtime image in the engine, scraped on its container
    address as the docker target will write it, with a quarter of its answers injected 500s."""
    context = Path(__file__).resolve().parents[3] / "examples" / "shop" / "services" / "inventory"
    tag = f"{registry_addr}/{run_id}/inventory:metrics"
    started = time.monotonic()
    for attempt in (1, 2):
        try:
            # No cache: Podman may answer a cached build with an image id another test also holds, which that
            # test's cleanup then removes under this one (tests/examples/test_demo_services.py says more).
            image, _logs = docker_client.images.build(path=str(context), tag=tag, pull=False, rm=True, forcerm=True,
                                                      nocache=True, labels={TEST_RUN_LABEL: run_id})
            break
        except docker.errors.BuildError:
            if attempt == 2:  # Podman 4.3 under load sometimes loses a build container's mount: once more
                raise
    built = time.monotonic() - started
    network = docker_client.networks.create(f"{run_id}-metrics", labels={TEST_RUN_LABEL: run_id})
    container = None
    try:
        container = docker_client.containers.run(image.id, detach=True, init=True, name=f"{run_id}-metrics-inventory",
                                                 labels={TEST_RUN_LABEL: run_id}, network=network.name,
                                                 environment={"ERROR_RATE": "0.25"})
        container.reload()
        address = f"{container.attrs['NetworkSettings']['Networks'][network.name]['IPAddress']}:8080"
        deadline = time.monotonic() + 30
        while get_path(address, "/healthz") != 200:
            assert time.monotonic() < deadline, f"inventory at {address} not healthy: {container.logs().decode()}"
            time.sleep(0.2)
        subject = Subject(run_id, "staging", "inventory", CANDIDATE)
        scrape_targets.add(run_id, "staging", address, labels("inventory", CANDIDATE, "candidate"))
        provider = PrometheusMetrics(PrometheusSettings(url=prometheus.url))
        provider.wait_until_scraped(subject)
        window = provider.open_window(subject)

        statuses = steady_load(address, 40, 6, path="/stock/widget")
        measurement = provider.measure(window)
    finally:
        if container is not None:
            container.remove(force=True)
        network.remove()

    injected = statuses.count(500) / len(statuses)
    print(f"inventory image built in {built:.1f} s; {measurement}; injected share {injected:.3f}")
    assert set(statuses) <= {200, 500} and 0.15 < injected < 0.35
    assert measurement.requests == pytest.approx(len(statuses), rel=0.2)
    # (the window's edges fall between scrapes: up to a fifth of the requests may lie outside it, so the measured
    # share may differ from the whole load's by a few points either way)
    assert measurement.error_rate == pytest.approx(injected, abs=0.08)
    assert measurement.p95_ms is not None and measurement.p95_ms > 0  # a latency was measured (no timing bound)
