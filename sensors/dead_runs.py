"""A run whose process ended with nobody to report it stays "started" for ever: when the code server that
launched it, or `dagster dev` itself, is killed or restarted, nothing is left to see the run's process go.
Such a run keeps its pool slot (one deployment per <service>/<environment>), so every later deployment there
would wait behind it without a word. This sensor fails it with the cause; Dagster's run retries
(`dagster.yaml` run_retries; runs carry dagster/max_retries) then run it again, and run monitoring frees its
slot. Only runs executed on this host are judged (`why.gone_process`): another launcher's runs are watched by
that launcher's own run monitoring.
"""

from __future__ import annotations

import dagster as dg

from release_graph.release.why import UNWATCHED_DEATH, gone_process

RUNS_LOOKED_AT = 50  # started runs at once: more than max_concurrent_runs plus the CLI's own


def build_dead_run_sensor(minimum_interval_seconds: int = 30) -> dg.SensorDefinition:
    @dg.sensor(
        name="dead_runs",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Fails a run that still says started although its process ended with nobody to report it "
        "(its code server or dagster dev stopped), so Dagster runs it again and its slot is freed.",
    )
    def dead_runs(context: dg.SensorEvaluationContext):
        instance = context.instance
        started = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]),
                                    limit=RUNS_LOOKED_AT)
        failed = []
        for run in started:
            pid = gone_process(instance, run.run_id)
            if pid is None:
                continue
            # read again after looking at the process: a run that ended normally reported it before it exited
            run = instance.get_run_by_id(run.run_id)
            if run is None or run.status != dg.DagsterRunStatus.STARTED:
                continue
            message = UNWATCHED_DEATH.format(pid=pid) + "): not the commit's fault, Dagster runs it again"
            instance.report_engine_event(message, run)  # what `release-graph why` reads back
            instance.report_run_failed(run, message)
            context.log.info(f"run {run.run_id}: {message}")
            failed.append(run.run_id[:8])
        if failed:
            return dg.SkipReason(f"failed {len(failed)} run(s) whose process had ended unseen: {', '.join(failed)}")
        return dg.SkipReason(f"{len(started)} started run(s), each with its process alive or watched elsewhere")

    return dead_runs
