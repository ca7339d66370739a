"""The orchestrator run as a service, restarted: the demo (reduced to inventory) on Postgres storage, with the
code server, the webserver and the daemon as separate processes (as deploy/compose.yaml runs them, without
containers: deploy/postgres/dagster.yaml as shipped, on a private PostgreSQL).

A platform engineer's story, scripted: the daemon is killed (SIGKILL, no goodbye) while a commit's image is
being built, in the middle of the Git sensor's tick that sees the next commit, and while a deployment runs;
each time it is started again. Meanwhile the UI answers, and the runs already started go on (their processes
belong to the code server). At the end every commit reached staging, each was built once, no run failed, and
nothing was left queued or half started. The daemon killed in the middle of a burst of commits is
tests/stories/test_bursts.py (`make burst`: 20 commits over 4 services; `make bench`: 200 over 20).
"""

from __future__ import annotations

import re
import time

import dagster as dg
import pytest

from release_graph import demo
from release_graph.release import history
from release_graph.release.keys import environment_key, image_key
from release_graph.release.tags import SHA_TAG, SUPERSEDED_BY_TAG

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("live-restarts")]

SERVICE = "inventory"
FIRST_BUILD_SECONDS = 240  # three processes start, the Git sensor's first tick, the run starts
RELEASE_SECONDS = 300  # a commit from its build to staging, with the daemon away for a while
DAEMON_AWAY_SECONDS = 10
IN_PROGRESS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
               dg.DagsterRunStatus.STARTED]


def git_tick_status(instance) -> str:
    """The status of the Git sensor's newest tick (STARTED: it never ended)."""
    from dagster._core.scheduler.instigation import InstigatorType

    state = next(s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
                 if s.instigator_name == "git_commits")
    (tick,) = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
    return tick.status.value


@pytest.fixture
def live_harness(orchestrator_on_postgres):
    return orchestrator_on_postgres


def test_the_daemon_killed_mid_build_mid_tick_and_mid_deploy_loses_no_commit_and_builds_none_twice(
        live, monkeypatch):
    live.keep_only(SERVICE)
    monkeypatch.setenv("DAGSTER_HOME", str(live.home))
    for name, value in live.postgres.env(live.fleet_name.lower()).items():
        monkeypatch.setenv(name, value)  # this process reads the same instance
    # (a)'s commit is new when the daemon starts: the Git sensor's first tick builds it
    sha_a = demo.commit_change(SERVICE, live.fleet_dir / ".repos").sha
    started = time.monotonic()
    live.start()
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"

        def image_runs(sha: str) -> list[dg.DagsterRun]:
            return [r for r in instance.get_runs(filters=dg.RunsFilter(tags={SHA_TAG: sha}), limit=20)
                    if image_key(SERVICE) in (r.asset_selection or ())]

        def in_staging(sha: str) -> bool:
            image = history.latest(instance, image_key(SERVICE))
            staged = history.latest(instance, environment_key(SERVICE, "staging"))
            return bool(image and staged and image.git_sha == sha and staged.digest == image.digest)

        def ui_answers_while_the_daemon_is_away() -> int:
            """The UI's runs list, read several times while the daemon is dead; how many runs it showed."""
            shown = 0
            for _ in range(DAEMON_AWAY_SECONDS):
                assert live.daemon.poll() is not None and live.process.poll() is None
                shown = len(live.graphql("{ runsOrError { ... on Runs { results { runId status } } } }")
                            ["runsOrError"]["results"])
                time.sleep(1)
            return shown

        report = {}

        # (a) When the daemon dies while a commit's image is being built
        def build_started() -> bool:  # the build's first progress line (`[1/4] STEP 1/5: FROM ...`)
            runs = image_runs(sha_a)
            return bool(runs) and any(re.match(r"(\[\d+/\d+\] )?STEP 1/", m)
                                      for m in live.log_messages(instance, runs[0].run_id))

        live.wait_for("the build of commit a", build_started, FIRST_BUILD_SECONDS, instance)
        live.kill_daemon()
        # then the UI still answers, and the build goes on without it
        (run_a,) = image_runs(sha_a)
        assert ui_answers_while_the_daemon_is_away() >= 1
        assert instance.get_run_by_id(run_a.run_id).status in (dg.DagsterRunStatus.STARTED,
                                                              dg.DagsterRunStatus.SUCCESS)
        live.start_daemon()
        back = time.monotonic()
        # and once the daemon is back the commit goes on to staging
        live.wait_for("commit a in staging", lambda: in_staging(sha_a), RELEASE_SECONDS, instance)
        report["a: daemon killed mid-build"] = time.monotonic() - back

        # (b) When the daemon dies in the middle of the Git sensor's tick that sees a new commit: right after the
        # tick created the commit's run, before it recorded its cursor and its end
        sha_b = demo.commit_change(SERVICE, live.fleet_dir / ".repos").sha
        deadline = time.monotonic() + RELEASE_SECONDS
        while not image_runs(sha_b):
            assert time.monotonic() < deadline, "the Git sensor did not start commit b's build"
            time.sleep(0.05)
        live.kill_daemon()
        tick_left = git_tick_status(instance)
        time.sleep(DAEMON_AWAY_SECONDS)
        live.start_daemon()
        back = time.monotonic()
        live.wait_for("commit b in staging", lambda: in_staging(sha_b), RELEASE_SECONDS, instance)
        report["b: daemon killed mid-tick"] = time.monotonic() - back

        # (c) When the daemon dies while a deployment runs
        sha_c = demo.commit_change(SERVICE, live.fleet_dir / ".repos").sha
        dev = environment_key(SERVICE, "dev")
        deploying = {}

        def dev_deployment_running() -> bool:
            for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED],
                                                               tags={SHA_TAG: sha_c}), limit=10):
                started_steps = instance.get_records_for_run(run.run_id,
                                                             of_type=dg.DagsterEventType.STEP_START).records
                if any(r.event_log_entry.step_key == f"{SERVICE}__dev" for r in started_steps):
                    deploying["run"] = run.run_id
                    return True
            return False

        deadline = time.monotonic() + RELEASE_SECONDS
        while not dev_deployment_running():  # the deployment takes seconds: watch closely
            assert time.monotonic() < deadline, "commit c's dev deployment never started"
            time.sleep(0.2)
        live.kill_daemon()
        assert ui_answers_while_the_daemon_is_away() >= 1
        # then the deployment finishes without the daemon: nothing is left half done
        live.wait_for("the deployment's run to end", lambda: instance.get_run_by_id(deploying["run"]).is_finished,
                      120, instance)
        deployed = instance.get_run_by_id(deploying["run"])
        assert deployed.status == dg.DagsterRunStatus.SUCCESS, deployed.status
        assert history.latest(instance, dev).digest == history.latest(instance, image_key(SERVICE)).digest
        live.start_daemon()
        back = time.monotonic()
        live.wait_for("commit c in staging", lambda: in_staging(sha_c), RELEASE_SECONDS, instance)
        report["c: daemon killed mid-deploy"] = time.monotonic() - back

        # Then: every commit was built at most once, by one run, and no run failed or was left behind
        for sha in (sha_a, sha_b, sha_c):
            (run,) = image_runs(sha)
            assert live.builds_in(instance, run.run_id, SERVICE) == 1, (sha, run.run_id)
        live.wait_for("the run queue to drain", lambda: not instance.get_runs(
            filters=dg.RunsFilter(statuses=IN_PROGRESS), limit=1), 120, instance)
        runs = instance.get_runs(limit=100)
        failed = {f"{r.run_id[:8]} {r.tags.get(SHA_TAG, '')[:7]} {[k.to_user_string() for k in r.asset_selection]}":
                  [e.dagster_event.step_failure_data.error.message.splitlines()[0] for e in instance.all_logs(
                      r.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)]
                  for r in runs if r.status != dg.DagsterRunStatus.SUCCESS
                  and not (r.status == dg.DagsterRunStatus.CANCELED and SUPERSEDED_BY_TAG in r.tags)}
        assert not failed, failed
        staged = {r.git_sha for r in history.history(instance, environment_key(SERVICE, "staging"))}
        assert {sha_a, sha_b, sha_c} <= staged
        for what, seconds in report.items():
            print(f"{what}: in staging {seconds:.0f} s after the daemon came back")
        print(f"(b) the Git sensor's tick the kill cut short was left {tick_left}")
        print(f"story: {time.monotonic() - started:.0f} s, {len(runs)} runs, all succeeded, on Postgres")
