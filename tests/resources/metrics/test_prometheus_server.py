"""The Prometheus release-graph runs: its configuration, a detached start that `make demo` can repeat, a port
that is already taken, and a stop by the recorded pid. Each test has its own folder and free ports."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from release_graph.fleet.model import PROMETHEUS_URL_VARIABLE
from resources.metrics.prometheus_server import PrometheusNotStarted, PrometheusServer, ensure, main


def config(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/api/v1/status/config", timeout=5) as response:
        return json.loads(response.read())["data"]


def test_the_configuration_scrapes_every_two_seconds_from_the_targets_folder(prometheus):
    started = time.monotonic()
    assert prometheus.ready()
    loaded = config(prometheus.url)["yaml"]

    assert "scrape_interval: 2s" in loaded and "scrape_timeout: 2s" in loaded
    assert f"- {prometheus.targets_dir}/*.json" in loaded
    assert prometheus.data_dir.is_dir() and prometheus.targets_dir.is_dir()
    assert time.monotonic() - started < 1


def test_ensure_starts_one_detached_server_and_keeps_it_on_the_next_call(tmp_path, free_port):
    home = tmp_path / "prometheus"
    try:
        started = time.monotonic()
        first = ensure(home, free_port)
        start_seconds = time.monotonic() - started
        pid = first.pid()
        again = ensure(home, free_port)

        print(f"ensure: ready in {start_seconds:.2f} s; again in {time.monotonic() - started - start_seconds:.2f} s")
        assert pid is not None and again.pid() == pid and again.url == f"http://127.0.0.1:{free_port}"
        assert (home / "prometheus.env").read_text() == f"{PROMETHEUS_URL_VARIABLE}=http://127.0.0.1:{free_port}\n"
        assert again.ready()
    finally:
        PrometheusServer(home).stop()
    assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    assert not (home / "server.json").exists()


def test_ensure_restarts_a_server_that_died_and_avoids_a_taken_port(tmp_path):
    home = tmp_path / "prometheus"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        try:
            server = ensure(home, port)
            assert server.port != port and server.ready()
            assert (home / "prometheus.env").read_text() == f"{PROMETHEUS_URL_VARIABLE}={server.url}\n"
            os.kill(server.pid(), 9)
            time.sleep(0.3)

            restarted = ensure(home, port)
            assert restarted.ready() and restarted.pid() not in (None, server.pid())
        finally:
            PrometheusServer(home).stop()


def test_the_command_line_ensures_reports_and_stops(tmp_path, free_port, capsys):
    home = tmp_path / "prometheus"
    try:
        assert main(["ensure", "--home", str(home), "--port", str(free_port)]) == 0
        assert main(["status", "--home", str(home)]) == 0
    finally:
        assert main(["stop", "--home", str(home)]) == 0
    assert main(["status", "--home", str(home)]) == 3
    out = capsys.readouterr().out
    assert f"prometheus: http://127.0.0.1:{free_port}, ready in" in out
    assert f"prometheus: running at http://127.0.0.1:{free_port}" in out
    assert "prometheus: not running" in out
    assert not (home / "prometheus.env").exists()


def test_a_taken_port_or_a_missing_binary_is_said_plainly(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(PrometheusNotStarted, match=f"127.0.0.1:{port}: the port is taken"):
            PrometheusServer(tmp_path, port=port).start()
    with pytest.raises(PrometheusNotStarted, match="installs the Debian package prometheus"):
        PrometheusServer(tmp_path, executable="no-such-prometheus").start()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
