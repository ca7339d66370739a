"""The demo fleet's whole graph is a reviewed artefact: keys, deps, groups, checks, kinds, automation.

If this fails after an intended change, look at the diff, then run `make snapshot` and commit the file.
"""

from __future__ import annotations

import difflib
import importlib
import socket
import sys
from pathlib import Path

import pytest

from release_graph.snapshot import fleet_snapshot, snapshot_text

DEMO_FLEET = Path(__file__).resolve().parents[3] / "examples" / "shop" / "fleet.yaml"
SNAPSHOT_FILE = Path(__file__).resolve().parents[1] / "graph_snapshot.json"


def demo_snapshot() -> dict:
    return fleet_snapshot(DEMO_FLEET)


def test_the_demo_graph_matches_the_committed_snapshot():
    current = snapshot_text(DEMO_FLEET)
    committed = SNAPSHOT_FILE.read_text()
    if current != committed:
        diff = "".join(difflib.unified_diff(committed.splitlines(True), current.splitlines(True),
                                            "committed", "current", n=2))
        pytest.fail(f"the asset graph changed; if intended, run `make snapshot`:\n{diff[:6000]}")


def test_only_the_sensor_or_a_person_builds_an_image():
    assets = demo_snapshot()["assets"]
    images = {k: v for k, v in assets.items() if k.endswith("/image")}
    assert images and all(v["automation"] is None for v in images.values())
    assert all(v["execution"] == "observable" for k, v in assets.items() if k.endswith("/source"))


def test_groups_are_per_service_and_fleet_assets_sit_in_the_fleet_group():
    assets = demo_snapshot()["assets"]
    for key, node in assets.items():
        first = key.split("/")[0]
        assert node["group"] == ("fleet" if first == "fleet" else first.replace("-", "_"))


def test_loading_the_definitions_does_no_network_io(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network I/O at import time")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    monkeypatch.setenv("RELEASE_GRAPH_FLEET", str(DEMO_FLEET))
    monkeypatch.delitem(sys.modules, "release_graph.definitions", raising=False)
    module = importlib.import_module("release_graph.definitions")
    graph = module.defs.resolve_asset_graph()
    assert len(graph.get_all_asset_keys()) > 10
