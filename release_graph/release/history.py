"""Reading the release history back from Dagster's event log: the single source of truth.

Every stage records `digest` and `git_sha` in its metadata, so "which digest passed staging" or "what did
the last approval approve" is a read of materializations, never state kept on the side.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from release_graph.release import metadata as M
from release_graph.release.tags import COALESCED_COMMITS_TAG, SERVICE_TAG, SHA_TAG

HISTORY_LIMIT = 500
RUNS_LOOKED_AT = 25  # a service's latest runs with a given status; older ones no longer decide anything
PAGE = 500  # records per read when a whole period is read (DORA's 90 days)
FAILED_RUNS_LIMIT = 1000  # failed runs read for one period; a fleet failing more often has other problems


@dataclass(frozen=True)
class StageRecord:
    """One materialization of a stage: what it recorded, when, in which run."""

    key: dg.AssetKey
    digest: str | None
    git_sha: str | None
    metadata: dict
    timestamp: float
    run_id: str
    storage_id: int

    @property
    def recorded_at(self) -> str:
        return datetime.fromtimestamp(self.timestamp, UTC).isoformat(timespec="seconds")

    def value(self, name: str, default=None):
        return self.metadata.get(name, default)


def _plain(metadata) -> dict:
    return {name: getattr(value, "value", value) for name, value in (metadata or {}).items()}


def _record(key: dg.AssetKey, event_record) -> StageRecord:
    event = event_record.asset_materialization or event_record.asset_observation
    metadata = _plain(event.metadata)
    return StageRecord(
        key=key,
        digest=metadata.get(M.DIGEST),
        git_sha=metadata.get(M.GIT_SHA),
        metadata=metadata,
        timestamp=event_record.timestamp,
        run_id=event_record.run_id,
        storage_id=event_record.storage_id,
    )


def latest(instance: dg.DagsterInstance, key: dg.AssetKey) -> StageRecord | None:
    result = instance.fetch_materializations(key, limit=1)
    return _record(key, result.records[0]) if result.records else None


def latest_of(instance: dg.DagsterInstance, keys: Iterable[dg.AssetKey]) -> dict[dg.AssetKey, StageRecord]:
    """`latest` of each of `keys` that has a materialization, from one read of the asset index: `latest` per key
    is a query each, 600 of them per drift tick on a fleet of 200 services in three environments."""
    keys = list(keys)
    if not keys:
        return {}  # (no keys would read every asset's record)
    found = {}
    for asset in instance.get_asset_records(keys):
        entry = asset.asset_entry
        if entry.last_materialization_record is not None:
            found[entry.asset_key] = _record(entry.asset_key, entry.last_materialization_record)
    return found


def history(instance: dg.DagsterInstance, key: dg.AssetKey, limit: int = HISTORY_LIMIT) -> list[StageRecord]:
    """Newest first."""
    return [_record(key, r) for r in instance.fetch_materializations(key, limit=limit).records]


def _since(instance_fetch, key: dg.AssetKey, since: float) -> list:
    """Every event record of `key` from `since` (a timestamp) on, newest first, read page by page."""
    records, cursor = [], None
    while True:
        result = instance_fetch(dg.AssetRecordsFilter(asset_key=key, after_timestamp=since), limit=PAGE, cursor=cursor)
        records += result.records
        if not result.has_more:
            return records
        cursor = result.cursor


def history_since(instance: dg.DagsterInstance, key: dg.AssetKey, since: float) -> list[StageRecord]:
    """Every materialization of `key` from `since` on, newest first (`history` stops at HISTORY_LIMIT)."""
    return [_record(key, r) for r in _since(instance.fetch_materializations, key, since)]


def rollbacks(instance: dg.DagsterInstance, key: dg.AssetKey, limit: int = HISTORY_LIMIT,
              since: float | None = None) -> list[StageRecord]:
    """The rollouts that went back out of the environment `key` (its `rollback` observations), newest first:
    `digest` is the version taken away, `serving` the one that kept the traffic. `since`: every one from then on."""
    found = (_since(instance.fetch_observations, key, since) if since is not None
             else instance.fetch_observations(key, limit=limit).records)
    return [record for record in (_record(key, r) for r in found) if record.value("event") == M.ROLLBACK_EVENT]


def observations(instance: dg.DagsterInstance, key: dg.AssetKey, limit: int = HISTORY_LIMIT) -> list[StageRecord]:
    """Every observation of `key` (a rollout's `rollback`, a teardown's `removed`), newest first."""
    return [_record(key, r) for r in instance.fetch_observations(key, limit=limit).records]


@dataclass(frozen=True)
class StepFailure:
    """A step that failed for good in a run (Dagster does not run it again), as its STEP_FAILURE event says."""

    run_id: str
    step_key: str  # an asset's step: AssetKey.to_python_identifier()
    timestamp: float
    error: object  # SerializableErrorInfo, or None


def failed_runs_since(instance: dg.DagsterInstance, since: float, limit: int = FAILED_RUNS_LIMIT) -> list:
    """Run records (newest first) of the runs of every service that failed since `since` (a timestamp)."""
    return list(instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE],
                              updated_after=datetime.fromtimestamp(since, UTC)),
        limit=limit))


def step_failures(instance: dg.DagsterInstance, run_id: str) -> list[StepFailure]:
    """The steps of a run that failed (a step Dagster retries fails only once, at its last attempt)."""
    return [StepFailure(run_id=run_id, step_key=r.event_log_entry.step_key or "", timestamp=r.timestamp,
                        error=r.event_log_entry.dagster_event.step_failure_data.error)
            for r in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records]


def failed_checks(instance: dg.DagsterInstance, run_id: str) -> list[dg.AssetCheckEvaluation]:
    """The check evaluations of a run that did not pass, in the order they were recorded."""
    evaluations = (r.event_log_entry.dagster_event.event_specific_data
                   for r in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
                                                         ).records)
    return [e for e in evaluations if isinstance(e, dg.AssetCheckEvaluation) and not e.passed]


def observations_in_run(instance: dg.DagsterInstance, run_id: str) -> list[StageRecord]:
    """What a run observed (a rollout's `rollback` observation), in order."""
    return [_record(r.asset_key, r)
            for r in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_OBSERVATION).records]


def record_with_digest(instance: dg.DagsterInstance, key: dg.AssetKey, digest: str) -> StageRecord | None:
    return next((r for r in history(instance, key) if r.digest == digest), None)


def _evaluation_for(instance: dg.DagsterInstance, check_key: dg.AssetCheckKey, digest: str):
    """(passed, metadata) of the newest evaluation of `check_key` that actually executed for `digest`, or None.

    Only executed evaluations count: a check planned in a run that failed elsewhere is evidence of nothing.
    """
    records = instance.event_log_storage.get_asset_check_execution_history(
        check_key,
        limit=HISTORY_LIMIT,
        status={AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED},
    )
    for record in records:
        evaluation = record.event.dagster_event.event_specific_data if record.event else None
        metadata = _plain(getattr(evaluation, "metadata", None))
        if metadata.get(M.DIGEST) == digest:
            return record.status == AssetCheckExecutionRecordStatus.SUCCEEDED, metadata
    return None


def check_passed_for(instance: dg.DagsterInstance, check_key: dg.AssetCheckKey, digest: str) -> bool | None:
    """The newest completed evaluation of `check_key` for `digest`: True/False, or None if never evaluated."""
    found = _evaluation_for(instance, check_key, digest)
    return found[0] if found else None


def check_metadata_for(instance: dg.DagsterInstance, check_key: dg.AssetCheckKey, digest: str) -> dict | None:
    """The metadata (plain values) of the newest completed evaluation of `check_key` for `digest`, or None."""
    found = _evaluation_for(instance, check_key, digest)
    return found[1] if found else None


def runs_holding(instance: dg.DagsterInstance, service_name: str, key: dg.AssetKey, statuses) -> list:
    """Run records (newest first) of the service's latest runs with these statuses that held `key`."""
    records = instance.get_run_records(filters=dg.RunsFilter(tags={SERVICE_TAG: service_name}, statuses=statuses),
                                       limit=RUNS_LOOKED_AT)
    return [r for r in records if r.dagster_run.asset_selection and key in r.dagster_run.asset_selection]


RUNS_IN_PROGRESS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
                    dg.DagsterRunStatus.STARTED]


def run_in_progress_holding(instance: dg.DagsterInstance, key: dg.AssetKey) -> dg.DagsterRun | None:
    """A queued or running run that holds `key` (any service's, or a fleet report's), or None."""
    records = instance.get_run_records(filters=dg.RunsFilter(statuses=RUNS_IN_PROGRESS), limit=RUNS_LOOKED_AT)
    return next((r.dagster_run for r in records
                 if r.dagster_run.asset_selection and key in r.dagster_run.asset_selection), None)


def failed_attempt_since(instance: dg.DagsterInstance, service_name: str, key: dg.AssetKey, since: float | None,
                         trigger_run_id: str | None = None):
    """The newest failed run that held `key` and was created after `since` (a timestamp; None: ever), or None.
    A stage's attempt is its run: a run created after the stage's last materialization (or after its trigger)
    that failed is what the stage is stuck on. `trigger_run_id`: the run that recorded the trigger, when the
    stage may have run in that same run (a first environment deployed in its integration's run): created
    before its own trigger, it is an attempt too."""
    failed = [r for r in runs_holding(instance, service_name, key, [dg.DagsterRunStatus.FAILURE])
              if stage_started(instance, r.dagster_run, key)]
    if failed and (since is None or failed[0].create_timestamp.timestamp() > since
                   or failed[0].dagster_run.run_id == trigger_run_id):
        return failed[0]
    return None


def stage_started(instance: dg.DagsterInstance, run: dg.DagsterRun, key: dg.AssetKey) -> bool:
    """Whether `key`'s step started in `run`. A run of one stage counts whatever happened (a run that never
    started is that stage's failure too); in a run of several stages (an integration and its first environment)
    a stage whose step never started did not fail: the stage before it did."""
    if len(run.asset_selection or ()) <= 1:
        return True
    return step_started_at(instance, run.run_id, "__".join(key.path)) is not None


def step_started_at(instance: dg.DagsterInstance, run_id: str, step_key: str) -> float | None:
    """When `step_key` started in `run_id` (its latest STEP_START: a retried step starts again), or None."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_START).records
    starts = [r.timestamp for r in records if r.event_log_entry.step_key == step_key]
    return max(starts) if starts else None


def record_with_sha(instance: dg.DagsterInstance, key: dg.AssetKey, sha: str, limit: int = RUNS_LOOKED_AT
                    ) -> StageRecord | None:
    """The newest materialization of `key` that recorded commit `sha`, among its latest `limit`."""
    return next((r for r in history(instance, key, limit=limit) if r.git_sha == sha), None)


BUILD_RUNS_LOOKED_AT = 1000  # a service's build runs read to say what became of one commit (a burst's worth)


def commit_outcome(instance: dg.DagsterInstance, service_name: str, image: dg.AssetKey, sha: str) -> str | None:
    """What became of commit `sha` of a service, as its build runs record it: "built in run <id>" when a build run
    of that commit succeeded, "coalesced into <sha> (run <id>)" when a successful build run lists it among the
    commits it folds in (a newer commit of the same branch, seen in the same tick, or whose build took over the
    commit's queued one); None while neither is true (on its way, failed, or lost)."""
    builds = [r for r in instance.get_runs(filters=dg.RunsFilter(tags={SERVICE_TAG: service_name},
                                                                 statuses=[dg.DagsterRunStatus.SUCCESS]),
                                           limit=BUILD_RUNS_LOOKED_AT)
              if image in (r.asset_selection or ())]
    for run in builds:
        if run.tags.get(SHA_TAG) == sha:
            return f"built in run {run.run_id[:8]}"
    for run in builds:
        if sha[:12] in run.tags.get(COALESCED_COMMITS_TAG, "").split():
            return f"coalesced into {run.tags.get(SHA_TAG, '?')[:12]} (run {run.run_id[:8]})"
    return None
