"""Bursts of commits, not in `make test` (a burst takes minutes even small): `make burst` runs 20 commits over 4
services, `make bench` (section (g)) the full size: 200 commits over 20 services within a minute, with the daemon
killed in the middle and started again, on the orchestrator as the production setups run it (code server,
webserver and daemon as separate processes, Postgres storage).

The fleet: 20 copies of the demo's inventory, each in its own git repository, with the demo's security checks,
dev and staging ungated and prod gated, and no integration stage (inventory's integration tests call it by
its own name). Every service's head image is put in the registry first (a tiny
manifest), so the Git sensor's first tick records the heads and builds nothing: the burst is the only work.

At the end every service runs its newest commit in dev and staging, no commit was built twice, every commit not
built is named by the build that coalesced it (on its run), no run failed and the run queue is empty. The figures
go to the JSON file `$RELEASE_GRAPH_BURST_REPORT` names, which `make bench` writes into docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from release_graph import demo
from release_graph.release import history
from release_graph.release.keys import environment_key, image_key, source_key
from release_graph.release.tags import SERVICE_TAG, SHA_TAG, SUPERSEDED_BY_TAG

pytestmark = [pytest.mark.engine, pytest.mark.burst, pytest.mark.xdist_group("live-burst")]

SERVICES = int(os.environ.get("RELEASE_GRAPH_BURST_SERVICES", "20"))
COMMITS = int(os.environ.get("RELEASE_GRAPH_BURST_COMMITS", "200"))
BURST_SECONDS = 60  # the commits are spread over this long, round after round over every service
DAEMON_KILLED_AT = 0.4  # the share of the burst after which the daemon is killed
DAEMON_AWAY_SECONDS = 10
SETTLE_SECONDS = 3600  # every service in staging at its newest commit, on a 2-core host
IN_PROGRESS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
               dg.DagsterRunStatus.STARTED]


@pytest.fixture
def live_harness(orchestrator_on_postgres):
    return orchestrator_on_postgres


def stock_fleet(live, count: int) -> list[str]:
    """The demo copy turned into `count` copies of inventory (`stock-00` ...), each its own repository, with the
    demo's security checks; dev and staging ungated (staging without the blue/green hold), prod gated."""
    services_dir = live.fleet_dir / "services"
    manifest = yaml.safe_load((live.fleet_dir / "fleet.yaml").read_text())
    template = manifest["services"]["inventory"]
    names = [f"stock-{index:02d}" for index in range(count)]
    for name in names:
        shutil.copytree(services_dir / "inventory", services_dir / name)
    demo.sync_repos(services_dir, live.fleet_dir / ".repos")
    # the fleet's waivers name the owners of every demo service: each copy carries them all, so they stay valid
    owners = sorted({owner for entry in manifest["services"].values() for owner in entry.get("owners", [])})
    # no integration stage: inventory's integration tests call it by its own name (http://inventory:8080)
    build = {key: value for key, value in template["build"].items() if key != "integration_target"}
    manifest["services"] = {name: {**template, "repo": f".repos/{name}", "owners": owners, "build": build,
                                   "description": f"inventory copy {name}"} for name in names}
    for key in ("e2e", "integration"):
        manifest.pop(key, None)
    for environment in manifest["environments"].values():
        for key in ("publish", "secrets", "rollout"):
            environment.pop(key, None)
    (live.fleet_dir / "fleet.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return names


def head(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def _runs_newest(instance, service: str, sha: str) -> bool:
    """Dev and staging both run `sha`, as their latest deployments recorded it."""
    for environment in ("dev", "staging"):
        record = history.latest(instance, environment_key(service, environment))
        if record is None or record.git_sha != sha:
            return False
    return True


def test_200_commits_over_20_services_in_a_minute_with_the_daemon_restarted_end_at_every_newest_commit(
        live, monkeypatch):
    from benchmarks.orchestrator_memory import put_tiny_image

    names = stock_fleet(live, SERVICES)
    repos = live.fleet_dir / ".repos"
    fleet = live.fleet
    for name in names:  # the heads are released already: the first tick builds nothing
        put_tiny_image(fleet.services[name].image_repository(fleet), head(repos / name))
    monkeypatch.setenv("DAGSTER_HOME", str(live.home))
    for variable, value in live.postgres.env(live.fleet_name.lower()).items():
        monkeypatch.setenv(variable, value)
    live.start()
    figures: dict[str, object] = {"services": SERVICES, "commits": COMMITS}
    with dg.DagsterInstance.get() as instance:
        live.wait_for("the Git sensor's first tick", lambda: all(
            history.observations(instance, source_key(name), limit=1) for name in names), 300, instance)
        assert not instance.get_runs(limit=1), "the first tick requested builds: the heads' images were not found"

        # When 200 commits land over a minute, round after round over every service
        commits: dict[str, list[str]] = {name: [] for name in names}
        rounds = max(1, COMMITS // SERVICES)

        def commit_burst() -> None:
            started = time.monotonic()
            for index in range(rounds):
                for name in names:
                    commits[name].append(demo.commit_change(name, repos, message=f"{name}: change {index}").sha)
                time.sleep(max(0.0, started + (index + 1) * BURST_SECONDS / rounds - time.monotonic()))

        committer = threading.Thread(target=commit_burst, name="burst")
        burst_started = time.monotonic()
        committer.start()
        # and the daemon is killed in the middle of it, and started again while the commits go on
        time.sleep(BURST_SECONDS * DAEMON_KILLED_AT)
        live.kill_daemon()
        time.sleep(DAEMON_AWAY_SECONDS)
        live.start_daemon()
        committer.join()
        burst_ended = time.monotonic()
        figures["burst_seconds"] = round(burst_ended - burst_started, 1)

        # Then every service runs its newest commit in dev and staging
        def settled() -> bool:
            return all(_runs_newest(instance, name, commits[name][-1]) for name in names)

        live.wait_for("every service's newest commit in dev and staging", settled, SETTLE_SECONDS, instance)
        figures["settled_after_last_commit_seconds"] = round(time.monotonic() - burst_ended, 1)
        live.wait_for("the run queue to drain", lambda: not instance.get_runs(
            filters=dg.RunsFilter(statuses=IN_PROGRESS), limit=1), 300, instance)
        figures["queue_drained_after_last_commit_seconds"] = round(time.monotonic() - burst_ended, 1)

        # and every commit was built at most once, or coalesced into a newer one that was (its run names it)
        runs = instance.get_runs(limit=5000)
        builds = [r for r in runs if any(k.path[-1] == "image" for k in r.asset_selection or ())]
        unaccounted, built_twice, built = {}, {}, 0
        for name in names:
            for sha in commits[name]:
                outcome = history.commit_outcome(instance, name, image_key(name), sha)
                if outcome is None:
                    unaccounted[f"{name}@{sha[:12]}"] = [r.status.value for r in builds if r.tags.get(SHA_TAG) == sha]
                ran = [r for r in builds if r.tags.get(SHA_TAG) == sha and r.tags.get(SERVICE_TAG) == name
                       and r.status != dg.DagsterRunStatus.CANCELED]
                engine_builds = sum(live.builds_in(instance, r.run_id, name) for r in ran)
                built += engine_builds
                if len(ran) > 1 or engine_builds > 1:
                    built_twice[f"{name}@{sha[:12]}"] = [r.run_id[:8] for r in ran]
        assert not unaccounted, unaccounted
        assert not built_twice, built_twice
        # and no run failed: a build cancelled while queued says which newer commit took it over
        failed = {r.run_id[:8]: live.failure_reasons(instance, r.run_id) for r in runs
                  if r.status not in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.CANCELED)}
        assert not failed, failed
        cancelled = [r for r in runs if r.status == dg.DagsterRunStatus.CANCELED]
        assert all(SUPERSEDED_BY_TAG in r.tags for r in cancelled), [r.run_id[:8] for r in cancelled]
        figures.update({
            "runs": len(runs), "build_runs": len(builds), "engine_builds": built,
            "superseded_while_queued": len(cancelled),
            "coalesced": sum(len(commits[n]) for n in names) - built,
            "deploy_runs": len([r for r in runs if r.tags.get("release/env")]),
        })
    print("burst figures: " + json.dumps(figures))
    report = os.environ.get("RELEASE_GRAPH_BURST_REPORT")
    if report:
        Path(report).write_text(json.dumps(figures, indent=2))
