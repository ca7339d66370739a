"""A release manager at the terminal: status, approve, deploy (and roll back), build a given commit.

The CLI runs the same assets as the UI against the instance in $DAGSTER_HOME, so its runs show in the UI.
"""

from __future__ import annotations

import json

import dagster as dg
import pytest

from release_graph.cli.main import main as cli
from release_graph.release import history

ENVIRONMENTS = """\
  dev: {target: docker}
  prod: {target: docker, approval: required}
"""


def key(*path: str) -> dg.AssetKey:
    return dg.AssetKey(list(path))


@pytest.fixture
def released(release_world_factory, first_release_for_the_cli):
    """inventory built and running in dev; the CLI pointed at this world's manifest and instance."""
    return first_release_for_the_cli(release_world_factory(["inventory"], environments=ENVIRONMENTS,
                                                           integration=False))


@pytest.mark.engine
def test_status_approve_deploy_and_rollback_from_the_terminal(released, capsys, docker_client):
    world = released
    first = world.latest(key("inventory", "dev"))
    capsys.readouterr()
    # status: one row per service, one column per environment
    assert cli(["status"]) == 0
    out = capsys.readouterr().out
    assert "SERVICE" in out and "inventory" in out and first.git_sha[:12] in out

    # approving a digest dev does not run is refused, with the reason
    assert cli(["approve", "inventory", "--env", "prod", "--by", "rm@shop.example",
                "--digest", "sha256:" + "1" * 64]) == 1
    assert "refused approval" in capsys.readouterr().out
    # approving what dev runs, then deploying prod
    assert cli(["approve", "inventory", "--env", "prod", "--by", "rm@shop.example", "--ticket", "CHG-7"]) == 0
    assert cli(["deploy", "inventory", "--env", "prod"]) == 0
    prod = world.latest(key("inventory", "prod"))
    assert prod.digest == first.digest and prod.value("approval_ticket") == "CHG-7"
    # the same approval does not release twice
    assert cli(["deploy", "inventory", "--env", "prod"]) == 1
    assert "already been used" in capsys.readouterr().out

    # a new commit reaches dev; rolling dev back to the first digest works because it passed its stage
    world.commit("inventory")
    (request,) = world.tick("git_commits").run_requests
    assert world.execute(request).success
    world.automate()
    assert world.latest(key("inventory", "dev")).digest != first.digest
    assert cli(["deploy", "inventory", "--env", "dev", "--digest", first.digest]) == 0
    assert world.latest(key("inventory", "dev")).digest == first.digest
    # a digest that never passed the previous stage is refused
    assert cli(["deploy", "inventory", "--env", "dev", "--digest", "sha256:" + "2" * 64]) == 1
    assert "never passed inventory/image" in capsys.readouterr().out

    # status --json, then drift: a container stopped by hand makes status exit 1
    capsys.readouterr()
    assert cli(["status", "--json"]) == 0
    cells = {(c["service"], c["environment"]): c for c in json.loads(capsys.readouterr().out)}
    assert cells[("inventory", "prod")]["approved_by"] == "rm@shop.example"
    running = world.target().running(world.fleet.name, "dev", "inventory")
    docker_client.containers.get(running.container_id).stop(timeout=1)
    assert cli(["status"]) == 1
    assert "drift: inventory/dev" in capsys.readouterr().out


@pytest.mark.engine
def test_build_a_given_commit_by_its_short_sha_and_refuse_an_unknown_one(released, capsys, engine_builds):
    world = released
    sha = world.latest(key("inventory", "image")).git_sha
    builds = len(engine_builds)
    # the image of that commit exists: recorded again, nothing built
    assert cli(["build", "inventory", "--sha", sha[:8]]) == 0
    assert len(engine_builds) == builds
    assert world.latest(key("inventory", "image")).git_sha == sha
    assert cli(["build", "inventory", "--sha", "deadbeef"]) == 2
    err = capsys.readouterr().err
    assert "no commit 'deadbeef'" in err and "Traceback" not in err


@pytest.mark.engine
def test_status_json_exits_1_and_names_the_drift_when_a_container_was_stopped_by_hand(released, capsys,
                                                                                        docker_client):
    world = released
    recorded = world.latest(key("inventory", "dev")).digest
    capsys.readouterr()
    assert cli(["status", "--json"]) == 0
    cells = {(c["service"], c["environment"]): c for c in json.loads(capsys.readouterr().out)}
    assert cells[("inventory", "dev")]["drift"] == ""

    running = world.target().running(world.fleet.name, "dev", "inventory")
    docker_client.containers.get(running.container_id).stop(timeout=1)
    assert cli(["status", "--json"]) == 1
    # still one JSON document (scripts parse it), with the drift in the cell that drifted
    cells = {(c["service"], c["environment"]): c for c in json.loads(capsys.readouterr().out)}
    drift = cells[("inventory", "dev")]["drift"]
    assert drift.startswith(f"recorded {recorded} but its container") and running.container_name in drift
    assert cells[("inventory", "prod")]["drift"] == ""


@pytest.mark.engine
def test_environments_lists_what_runs_and_teardown_removes_it_also_for_another_instance(
    released, capsys, docker_client, monkeypatch, tmp_path
):
    world = released
    capsys.readouterr()
    # Given inventory running in dev: environments lists it, with the instance that deployed it
    assert cli(["environments", "--json"]) == 0
    reports = {r["environment"]: r for r in json.loads(capsys.readouterr().out)}
    (container,) = reports["dev"]["containers"]
    assert container["service"] == "inventory" and container["status"] == "running" and container["instance"]
    assert reports["prod"]["containers"] == []
    # When another instance (another checkout: another state folder) tears dev down
    monkeypatch.setenv("RELEASE_GRAPH_STATE", str(tmp_path / "another-instance"))
    assert cli(["teardown", "--env", "dev"]) == 0
    out = capsys.readouterr().out
    assert "removed 1 containers, 2 networks, 1 proxies" in out  # the environment's network and inventory's
    # and the history records the removal (the deployment events' service.removed)
    assert f"{world.fleet.name}/dev: recorded the removal of inventory" in out
    assert [r.value("event") for r in history.observations(world.instance, key("inventory", "dev"))] == ["removed"]
    # then nothing of dev is left: no container, and the first instance's proxy is stopped too
    assert not docker_client.containers.list(all=True, filters={"label": [
        f"io.release-graph.fleet={world.fleet.name}", "io.release-graph.environment=dev"]})
    assert cli(["environments"]) == 0
    assert f"{world.fleet.name}/dev: nothing runs" in capsys.readouterr().out
    # and teardown without an environment is refused with what to give
    assert cli(["teardown"]) == 2
