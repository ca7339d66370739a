"""Why a stage is where it is: running, up to date, waiting (and for what), blocked or failed, in words.

One answer for `release-graph why`, the `waiting_for` column of the environment matrix and what
`release-graph approve` says happens next. The waiting reasons are the promotion rules' own
(`promotion.waiting_reason`), so what the automation gate decides and what a person reads never disagree.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import dagster as dg

from release_graph.fleet import Fleet, Service
from release_graph.release import history
from release_graph.release.keys import environment_key, integration_key
from release_graph.release.promotion import waiting_reason

RUNNING, UP_TO_DATE, WAITING, BLOCKED, FAILED = "running", "up to date", "waiting", "blocked", "failed"
IN_PROGRESS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
               dg.DagsterRunStatus.STARTED]
# Dagster's words when a run's process died under it (dagster._utils.get_run_crash_explanation), which go on to
# guess "out of memory" for every SIGKILL; and the tag it sets on a failed run it is going to run again.
PROCESS_DIED = re.compile(r"Run execution process for \S+ (?:was terminated by signal \d+ \((?P<signal>\w+)\)"
                          r"|unexpectedly exited with code (?P<code>-?\d+))")
# What the `dead_runs` sensor records when it fails a run whose process ended with nobody to report it.
UNWATCHED_DEATH = "the run's process {pid} ended with nobody to report it (its code server or `dagster dev` stopped"
UNWATCHED_DEATH_PATTERN = re.compile(r"the run's process (?P<pid>\d+) ended with nobody to report it")
WILL_RETRY_TAG = "dagster/will_retry"
RETRY_NUMBER_TAG, PARENT_RUN_TAG = "dagster/retry_number", "dagster/parent_run_id"  # on the run that retries


@dataclass(frozen=True)
class StageStatus:
    stage: str  # e.g. orders/staging
    state: str  # one of RUNNING, UP_TO_DATE, WAITING, BLOCKED, FAILED
    reason: str  # a sentence for a release manager
    run_id: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return f"{self.stage}: {self.state}: {self.reason}" + (f" (run {self.run_id})" if self.run_id else "")


def failure_reason(error) -> str:
    """The cause a release manager should read first, from a step's error: Dagster's own wrapper ("Error
    occurred while executing op ...") is skipped for the error it wraps, and the exception's module and class
    are dropped (`ReleaseStepError: x` -> `x`)."""
    while error is not None and error.cause is not None and "DagsterExecutionStepExecutionError" in (
            (error.cls_name or "") + (error.message or "")):
        error = error.cause
    message = (error.message or "").strip() if error is not None else ""
    if not message:
        return "the step failed"
    first = message.splitlines()[0]
    head, separator, rest = first.partition(": ")
    return rest if separator and (head.endswith(("Error", "Failure", "Exception", "Failed")) or "." in head) else first


def _failure_message(instance, run_id: str) -> str:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE, limit=1).records
    if not records:
        return process_death(instance, run_id) or "the run failed"
    return failure_reason(records[0].event_log_entry.dagster_event.step_failure_data.error)


def process_death(instance, run_id: str) -> str | None:
    """How the run's process died, when it died before its steps finished (killed, crashed), else None.

    Not the commit's fault, and not necessarily memory, whatever Dagster's message guesses.
    """
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records:
        match = PROCESS_DIED.search(record.event_log_entry.dagster_event.message or "")
        if match:
            how = f"killed by {match['signal']}" if match["signal"] else f"ended with exit code {match['code']}"
            return f"the run's process was {how} before its steps finished (not the commit's fault)"
        match = UNWATCHED_DEATH_PATTERN.search(record.event_log_entry.dagster_event.message or "")
        if match:
            return (f"the run's process {match['pid']} ended with nobody to report it, before its steps finished "
                    "(its code server or `dagster dev` stopped: not the commit's fault)")
    return None


def gone_process(instance, run_id: str) -> int | None:
    """The pid of a started run's process when that process ran on this host and runs no more (killed with no
    chance to report it), else None. Only judged when runs execute on this host (the default run launcher, or
    in the CLI's own process): another launcher's pids live elsewhere, and its run monitoring fails such runs."""
    from dagster._core.launcher import DefaultRunLauncher

    if not isinstance(instance.run_launcher, DefaultRunLauncher):
        return None
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_START, limit=1).records
    event = records[0].event_log_entry.dagster_event if records else None
    pid = event.pid if event is not None else None
    if not pid:
        return None
    started = _process_started_at(pid)
    # a process with that pid that started after the run did is another one: the kernel reused the pid
    if started is not None and started <= records[0].timestamp + 1:
        return None
    return pid


def _process_started_at(pid: int) -> float | None:
    """When the process `pid` on this host started (epoch seconds), None when there is no such process."""
    try:
        # field 22 of /proc/<pid>/stat, in clock ticks since boot; the name (field 2) may hold spaces: split after it
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def stage_status(instance, fleet: Fleet, service: Service, stage: str) -> StageStatus:
    """`stage` is `integration` or an environment name."""
    key = integration_key(service) if stage == "integration" else environment_key(service, stage)
    name = key.to_user_string()
    running = history.runs_holding(instance, service.name, key, IN_PROGRESS)
    if running:
        run = running[0].dagster_run
        pid = gone_process(instance, run.run_id)
        if pid is not None:
            return StageStatus(name, FAILED, f"its run still says started, but its process {pid} runs no more "
                               "(killed): terminate the run in the UI, then `release-graph retry` (a rollout it "
                               "left half-way: `release-graph rollout abort`)", run.run_id)
        reason = "a run is deploying it now" if stage != "integration" else "the integration tests are running"
        if not history.stage_started(instance, run, key):  # a release's run holding its earlier stages too
            earlier = [k.to_user_string() for k in run.asset_selection if k != key and k.path[0] == service.name]
            reason = f"its release's run does it after {', '.join(sorted(earlier))}"
        earlier_attempt = _attempt_before(instance, service, key, running[0])
        if earlier_attempt:
            reason += f", again after run {earlier_attempt[:8]}: {_failure_message(instance, earlier_attempt)}"
        return StageStatus(name, RUNNING, reason, run.run_id)
    latest = history.latest(instance, key)
    failed = history.failed_attempt_since(instance, service.name, key, latest.timestamp if latest else None)
    if failed is not None:
        run = failed.dagster_run
        reason = _failure_message(instance, run.run_id)
        if run.tags.get(WILL_RETRY_TAG) == "true":  # Dagster runs it again (dagster.yaml run_retries)
            return StageStatus(name, WAITING, f"waiting for Dagster to run it again: {reason}", run.run_id)
        return StageStatus(name, FAILED, reason, run.run_id)
    reason = waiting_reason(instance, fleet, service, key)
    if reason:
        return StageStatus(name, BLOCKED if reason.startswith("blocked") else WAITING, reason)
    if latest is not None and latest.digest:
        return StageStatus(name, UP_TO_DATE, f"runs {latest.digest}"
                           + (f" ({latest.git_sha[:7]})" if latest.git_sha else ""))
    return StageStatus(name, WAITING, "will be requested at the next automation tick")


def _attempt_before(instance, service: Service, key: dg.AssetKey, record: dg.RunRecord) -> str | None:
    """The failed run that the running run (`record`) tries the stage again after, or None. Dagster's retry
    names its parent; a run requested anew (by the automation, or by hand) after a failed attempt since the
    stage's last deployment is another try too: either way a release manager sees why it is done again."""
    run = record.dagster_run
    if run.tags.get(RETRY_NUMBER_TAG) and run.tags.get(PARENT_RUN_TAG):
        return run.tags[PARENT_RUN_TAG]
    latest = history.latest(instance, key)
    failed = history.failed_attempt_since(instance, service.name, key, latest.timestamp if latest else None)
    if failed is None or failed.create_timestamp > record.create_timestamp:  # a later run's failure: not before
        return None
    return failed.dagster_run.run_id


def waiting_for(instance, fleet: Fleet, service: Service, stage: str) -> str:
    """'' when the stage is up to date; otherwise its state and reason, for the matrix."""
    status = stage_status(instance, fleet, service, stage)
    return "" if status.state == UP_TO_DATE else f"{status.state}: {status.reason}"
