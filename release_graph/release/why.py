"""Why a stage is where it is: running, up to date, waiting (and for what), blocked or failed, in words.

One answer for `release-graph why`, the `waiting_for` column of the environment matrix and what
`release-graph approve` says happens next. The waiting reasons are the promotion rules' own
(`promotion.waiting_reason`), so what the automation gate decides and what a person reads never disagree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import dagster as dg

from release_graph.fleet import Fleet, Service
from release_graph.release import history
from release_graph.release.keys import environment_key, integration_key
from release_graph.release.promotion import waiting_reason

RUNNING, UP_TO_DATE, WAITING, BLOCKED, FAILED = "running", "up to date", "waiting", "blocked", "failed"
IN_PROGRESS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
               dg.DagsterRunStatus.STARTED]


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
        return "the run failed"
    return failure_reason(records[0].event_log_entry.dagster_event.step_failure_data.error)


def stage_status(instance, fleet: Fleet, service: Service, stage: str) -> StageStatus:
    """`stage` is `integration` or an environment name."""
    key = integration_key(service) if stage == "integration" else environment_key(service, stage)
    name = key.to_user_string()
    running = history.runs_holding(instance, service.name, key, IN_PROGRESS)
    if running:
        return StageStatus(name, RUNNING, "a run is deploying it now" if stage != "integration"
                           else "the integration tests are running", running[0].dagster_run.run_id)
    latest = history.latest(instance, key)
    failed = history.failed_attempt_since(instance, service.name, key, latest.timestamp if latest else None)
    if failed is not None:
        run_id = failed.dagster_run.run_id
        return StageStatus(name, FAILED, _failure_message(instance, run_id), run_id)
    reason = waiting_reason(instance, fleet, service, key)
    if reason:
        return StageStatus(name, BLOCKED if reason.startswith("blocked") else WAITING, reason)
    if latest is not None and latest.digest:
        return StageStatus(name, UP_TO_DATE, f"runs {latest.digest}"
                           + (f" ({latest.git_sha[:7]})" if latest.git_sha else ""))
    return StageStatus(name, WAITING, "will be requested at the next automation tick")


def waiting_for(instance, fleet: Fleet, service: Service, stage: str) -> str:
    """'' when the stage is up to date; otherwise its state and reason, for the matrix."""
    status = stage_status(instance, fleet, service, stage)
    return "" if status.state == UP_TO_DATE else f"{status.state}: {status.reason}"
