"""A run whose process ended with nobody to report it (its code server, or `dagster dev`, was killed) is failed
with the cause by the `dead_runs` sensor, so Dagster runs it again instead of the run holding its
<service>/<environment> slot for ever. The run here is a real process executing a real job on a real instance;
it is killed with SIGKILL, the way a stopped `dagster dev` leaves its runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import dagster as dg
import pytest

from release_graph.release.why import gone_process, process_death
from sensors.dead_runs import build_dead_run_sensor

JOB_MODULE = textwrap.dedent("""\
    import time

    import dagster as dg


    @dg.op
    def deploy_slowly():
        time.sleep(300)


    @dg.job(executor_def=dg.in_process_executor)
    def slow_release():
        deploy_slowly()
    """)

RUNNER = textwrap.dedent("""\
    import sys

    import dagster as dg

    sys.path.insert(0, sys.argv[1])
    import slow_release_job

    with dg.DagsterInstance.get() as instance:
        dg.execute_job(dg.reconstructable(slow_release_job.slow_release), instance=instance,
                       tags={"dagster/max_retries": "1", "release/service": "inventory"})
    """)


@pytest.fixture
def home(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "slow_release_job.py").write_text(JOB_MODULE)
    return tmp_path


def start_run(home) -> subprocess.Popen:
    env = {**os.environ, "DAGSTER_HOME": str(home / "home")}
    return subprocess.Popen([sys.executable, "-c", RUNNER, str(home / "code")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_started_step(instance, timeout: float = 60) -> dg.DagsterRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
            if instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_START).records:
                return run
        time.sleep(0.2)
    raise AssertionError(f"no run reached its step within {timeout} s")


def tick(instance) -> str:
    result = build_dead_run_sensor()(dg.build_sensor_context(instance=instance))
    return result.skip_message


def test_a_run_whose_process_was_killed_unseen_is_failed_with_its_cause_once_and_a_live_one_is_left_alone(home):
    with dg.DagsterInstance.from_config(str(home / "home")) as instance:
        # Given two runs deploying: one will be killed, the other keeps running
        victim_process, survivor_process = start_run(home), None
        try:
            victim = wait_for_started_step(instance)
            survivor_process = start_run(home)
            deadline = time.monotonic() + 60
            while len(instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))) < 2:
                assert time.monotonic() < deadline, "the second run never started"
                time.sleep(0.2)
            # While both processes live, the sensor fails nothing
            assert tick(instance).startswith("2 started run(s), each with its process alive")
            assert gone_process(instance, victim.run_id) is None

            # When the victim's process is killed with nobody watching it (no code server to see it go)
            victim_process.send_signal(signal.SIGKILL)
            victim_process.wait(10)
            assert instance.get_run_by_id(victim.run_id).status == dg.DagsterRunStatus.STARTED  # stuck, as before

            # Then the next tick fails it, naming the process and that it is not the commit's fault
            assert tick(instance) == f"failed 1 run(s) whose process had ended unseen: {victim.run_id[:8]}"
            failed = instance.get_run_by_id(victim.run_id)
            assert failed.status == dg.DagsterRunStatus.FAILURE
            death = process_death(instance, victim.run_id)
            assert death and f"process {victim_process.pid} ended with nobody to report it" in death, death
            assert "not the commit's fault" in death
            failure = instance.get_records_for_run(victim.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
            assert len(failure) == 1 and str(victim_process.pid) in failure[0].event_log_entry.dagster_event.message
            # the run keeps its retry budget: Dagster's run retries (dagster.yaml) run it again
            assert failed.tags["dagster/max_retries"] == "1"

            # and a later tick fails nothing more: once per dead run, and the live run is untouched
            assert tick(instance).startswith("1 started run(s), each with its process alive")
            survivor = [r for r in instance.get_runs() if r.run_id != victim.run_id][0]
            assert survivor.status == dg.DagsterRunStatus.STARTED
        finally:
            for process in (victim_process, survivor_process):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait(10)
