"""Transient failures heal themselves: a stage that gave up while something outside the commit was down
(the registry, the engine's API: `release_graph/assets/retry.py` tags such runs `release/failure=transient`)
is run again once that thing answers, so a commit is never lost to an outage. Each such run is retried once
(`run_key`), and a chain of retries stops after MAX_RETRIES_AFTER_OUTAGES.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg

from release_graph.fleet import Fleet
from release_graph.release.tags import FAILURE_TAG, MAX_RETRIES_TAG, RUN_RETRIES_AFTER_A_CRASH, TRIGGER_TAG
from resources.containers import ContainerEngine
from resources.registry import Registry

RETRIES_TAG = "release/retries_after_outage"
MAX_RETRIES_AFTER_OUTAGES = 5
LOOK_BACK_SECONDS = 24 * 3600


def outage(fleet: Fleet, registry: Registry, engine: ContainerEngine) -> str | None:
    """What is still down (None: the registry and the engine both answer now)."""
    problems = []
    with_repo = next((s for s in fleet.services.values() if not s.is_prebuilt), None)
    if with_repo is not None:
        problem = registry.problem(with_repo.image_repository(fleet))
        if problem:
            problems.append(problem)
    try:
        engine.client().ping()
    except Exception as exc:  # the engine's client raises many kinds; any of them means it is not answering
        problems.append(f"the container engine did not answer: {exc}")
    return "; ".join(problems) or None


def build_transient_retry_sensor(fleet: Fleet, minimum_interval_seconds: int = 60) -> dg.SensorDefinition:
    @dg.sensor(
        name="transient_retries",
        description="Runs again, once the registry and the engine answer, every stage that gave up because one "
        "of them was down.",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def transient_retries(context: dg.SensorEvaluationContext, registry: Registry, engine: ContainerEngine):
        failed = context.instance.get_runs(filters=dg.RunsFilter(
            tags={FAILURE_TAG: "transient"}, statuses=[dg.DagsterRunStatus.FAILURE],
            created_after=datetime.now(UTC) - timedelta(seconds=LOOK_BACK_SECONDS),
        ), limit=50)
        waiting = [run for run in failed if int(run.tags.get(RETRIES_TAG, "0")) < MAX_RETRIES_AFTER_OUTAGES]
        if not waiting:
            return dg.SkipReason("no stage waits on an outage")
        down = outage(fleet, registry, engine)
        if down:
            return dg.SkipReason(f"{len(waiting)} stage(s) wait until this answers again: {down}")
        return [
            dg.RunRequest(
                run_key=f"after-outage:{run.run_id}",
                asset_selection=list(run.asset_selection or ()),
                tags={**{k: v for k, v in run.tags.items() if k.startswith("release/") and k != FAILURE_TAG},
                      TRIGGER_TAG: f"retry after an outage (run {run.run_id[:8]})",
                      MAX_RETRIES_TAG: RUN_RETRIES_AFTER_A_CRASH,
                      RETRIES_TAG: str(int(run.tags.get(RETRIES_TAG, "0")) + 1)},
            )
            for run in waiting if run.asset_selection
        ]

    return transient_retries
