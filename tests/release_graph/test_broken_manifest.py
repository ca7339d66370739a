"""A manifest broken while the instance runs: the last manifest that loaded keeps driving the releases, and
what is wrong is said on every tick of the `fleet_manifest` sensor (and by every CLI command)."""

import textwrap

import dagster as dg
import pytest

from release_graph.fleet import ManifestError
from release_graph.wiring import load_definitions

FLEET = """\
fleet: shop
registry: 127.0.0.1:5000/shop
services:
  inventory:
    repo: repos/inventory
    build: {dockerfile: Dockerfile}
environments:
  dev: {target: docker}
"""


@pytest.fixture
def manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("RELEASE_GRAPH_STATE", str(tmp_path / "state"))
    (tmp_path / "repos" / "inventory").mkdir(parents=True)
    (tmp_path / "repos" / "inventory" / "Dockerfile").write_text("FROM scratch\n")
    path = tmp_path / "fleet.yaml"
    path.write_text(textwrap.dedent(FLEET))
    return path


def tick_manifest_sensor(defs: dg.Definitions) -> str:
    sensor = defs.resolve_sensor_def("fleet_manifest")
    with dg.instance_for_test() as instance:
        result = sensor(dg.build_sensor_context(instance=instance))
    return result.skip_message


def test_a_manifest_broken_while_running_keeps_the_last_valid_graph_and_says_what_is_wrong(manifest):
    # Given the instance loaded the manifest once
    loaded = load_definitions(str(manifest))
    keys = set(loaded.resolve_asset_graph().get_all_asset_keys())
    assert "loaded" in tick_manifest_sensor(loaded)
    # When someone breaks it (an unknown key) and the code location reloads
    manifest.write_text(manifest.read_text().replace("  dev: {target: docker}", "  dev: {target: docker, colour: red}"))
    reloaded = load_definitions(str(manifest))
    # then the releases keep their graph and sensors (no commit is lost: the Git sensor still runs)
    assert set(reloaded.resolve_asset_graph().get_all_asset_keys()) == keys
    assert reloaded.resolve_sensor_def("git_commits") is not None
    # and the manifest sensor says what is wrong, naming file, line and field, on every tick
    message = tick_manifest_sensor(reloaded)
    assert message.startswith("BROKEN MANIFEST") and "fleet.yaml:8" in message and "colour" in message
    assert "last manifest that loaded" in message
    # Once fixed, the manifest as written is used again
    manifest.write_text(textwrap.dedent(FLEET).replace("services:", "sast_threshold: high\nservices:"))
    assert "loaded" in tick_manifest_sensor(load_definitions(str(manifest)))


def test_a_manifest_that_never_loaded_is_an_error_at_once(manifest):
    manifest.write_text("fleet: shop\n")
    with pytest.raises(ManifestError, match="services"):
        load_definitions(str(manifest))
