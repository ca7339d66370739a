"""The four DORA figures of a fleet and of each of its services, from what the release already records.

Production is the fleet's last environment. A **prod change** is one attempt to change what runs there:
- a deployment that changed the running digest (a materialization of `<svc>/<prod>` with `changed` true),
  including a release manager's rollback (it carries `rolled_back_from`);
- a deploy step that failed for good (its STEP_FAILURE; a step Dagster runs again fails only at its last
  attempt), which includes a rollout the analysis rolled back (its `rollback` observation names that run).

A change **failed** when its step failed (or rolled back), or when a later rollback by hand took its digest
away again (that later deployment's `rolled_back_from`). The figures over the last `days` days:
- deployment frequency: prod changes per day;
- lead time for changes: the median time from the commit (its `committed_at`, recorded by the image step
  that built the digest) to the deployment that made it run in prod; rollbacks by hand are not counted
  (they deploy an old commit again);
- change failure rate: failed changes / prod changes;
- time to restore: the median time from a failed change to the next healthy prod change of that service
  (a deployment that did not fail); a failure not yet restored is not counted.

`figures` is a pure function over `ProdChange` records; `read_prod_changes` reads them from the instance.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

from release_graph.fleet import Fleet
from release_graph.release import history
from release_graph.release import metadata as M
from release_graph.release.keys import environment_key, image_key
from release_graph.release.why import WILL_RETRY_TAG

DAY, HOUR = 86400.0, 3600.0
WINDOWS = (7, 30, 90)  # days
DEPLOYED, FAILED, ROLLED_BACK = "deployed", "failed", "rolled back"


@dataclass(frozen=True)
class ProdChange:
    """One attempt to change what runs in production."""

    service: str
    at: float  # when it ran in prod (its materialization) or failed (its step's failure), a timestamp
    outcome: str  # DEPLOYED, FAILED or ROLLED_BACK (by the rollout's analysis)
    digest: str | None = None
    committed_at: float | None = None  # the commit's time, when the image step recorded it
    rolled_back_from: str | None = None  # a rollback by hand: the digest it took away
    run_id: str = ""


@dataclass(frozen=True)
class Figures:
    """DORA's four figures over one window; None where there is nothing to measure yet."""

    days: int
    changes: int
    failed_changes: int
    deployments_per_day: float
    lead_time_seconds: float | None
    change_failure_rate: float | None
    time_to_restore_seconds: float | None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Judged:
    change: ProdChange
    failed: bool
    restored_after: float | None  # seconds from this failed change to the next healthy one of its service


def judge(changes: Iterable[ProdChange]) -> list[_Judged]:
    """Each change with whether it failed and, for a failed one, how long until its service had a healthy
    change again. Rollbacks by hand mark the change whose digest they took away."""
    judged: list[_Judged] = []
    by_service: dict[str, list[ProdChange]] = {}
    for change in changes:
        by_service.setdefault(change.service, []).append(change)
    for service_changes in by_service.values():
        ordered = sorted(service_changes, key=lambda c: c.at)
        failed = [c.outcome != DEPLOYED for c in ordered]
        for index, change in enumerate(ordered):
            if change.rolled_back_from:
                # the newest deployment of that digest before this rollback is what went wrong
                for earlier in range(index - 1, -1, -1):
                    if ordered[earlier].outcome == DEPLOYED and ordered[earlier].digest == change.rolled_back_from:
                        failed[earlier] = True
                        break
        for index, change in enumerate(ordered):
            restored = None
            if failed[index]:
                healthy = next((c for later, c in enumerate(ordered[index + 1:], index + 1)
                                if not failed[later] and c.outcome == DEPLOYED), None)
                restored = healthy.at - change.at if healthy is not None else None
            judged.append(_Judged(change, failed[index], restored))
    return judged


def _median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def figures(changes: Iterable[ProdChange], *, now: float, days: int) -> Figures:
    """The four figures over the `days` days up to `now`, for the changes given (a service's or the fleet's)."""
    start = now - days * DAY
    inside = [j for j in judge(changes) if start < j.change.at <= now]
    failed = [j for j in inside if j.failed]
    lead_times = [j.change.at - j.change.committed_at for j in inside
                  if j.change.outcome == DEPLOYED and j.change.committed_at is not None
                  and not j.change.rolled_back_from]
    restores = [j.restored_after for j in failed if j.restored_after is not None]
    return Figures(
        days=days,
        changes=len(inside),
        failed_changes=len(failed),
        deployments_per_day=len(inside) / days,
        lead_time_seconds=_median(lead_times),
        change_failure_rate=len(failed) / len(inside) if inside else None,
        time_to_restore_seconds=_median(restores),
    )


@dataclass(frozen=True)
class Report:
    """The figures of the fleet and of every service, for each window."""

    fleet: str
    production: str  # the environment measured: the fleet's last
    computed_at: float
    windows: tuple[int, ...]
    overall: dict[int, Figures]
    services: dict[str, dict[int, Figures]]

    def as_dict(self) -> dict:
        return {
            "fleet": self.fleet,
            "production": self.production,
            "computed_at": datetime.fromtimestamp(self.computed_at, UTC).isoformat(timespec="seconds"),
            "windows_days": list(self.windows),
            "fleet_figures": {str(days): f.as_dict() for days, f in self.overall.items()},
            "services": {name: {str(days): f.as_dict() for days, f in by_window.items()}
                         for name, by_window in self.services.items()},
        }


def report(changes: Sequence[ProdChange], fleet_name: str, production: str, services: Iterable[str], *,
           now: float, windows: Sequence[int] = WINDOWS) -> Report:
    return Report(
        fleet=fleet_name,
        production=production,
        computed_at=now,
        windows=tuple(windows),
        overall={days: figures(changes, now=now, days=days) for days in windows},
        services={name: {days: figures([c for c in changes if c.service == name], now=now, days=days)
                         for days in windows} for name in services},
    )


# --- reading the changes from the instance -------------------------------------------------------------


def _timestamp(iso: str | None) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp() if iso else None
    except ValueError:
        return None


def read_prod_changes(instance, fleet: Fleet, since: float) -> list[ProdChange]:
    """Every prod change of every service from `since` (a timestamp) on, oldest first."""
    production = fleet.production
    prod_steps = {environment_key(name, production).to_python_identifier(): name for name in fleet.services}
    deployed: dict[int, ProdChange] = {}  # by storage id
    in_run: dict[str, int] = {}  # run id -> its deployment: a run that deployed and then failed is one change
    failed: list[ProdChange] = []
    for name in fleet.services:
        # The commit time of each digest, as the image step that built it recorded it (any time before).
        committed = {r.digest: _timestamp(r.value(M.COMMITTED_AT))
                     for r in reversed(history.history(instance, image_key(name))) if r.digest}
        for record in history.history_since(instance, environment_key(name, production), since):
            if record.value(M.CHANGED) is False:  # the digest already ran there: nothing changed in prod
                continue
            in_run[record.run_id] = record.storage_id
            deployed[record.storage_id] = ProdChange(
                service=name, at=record.timestamp, outcome=DEPLOYED, digest=record.digest,
                committed_at=committed.get(record.digest),
                rolled_back_from=record.value(M.ROLLED_BACK_FROM) or None, run_id=record.run_id)
    rolled_back_runs = {r.run_id for name in fleet.services
                        for r in history.rollbacks(instance, environment_key(name, production), since=since)}
    prod_keys = {environment_key(name, production) for name in fleet.services}
    for run in history.failed_runs_since(instance, since):
        selection = run.dagster_run.asset_selection  # empty or None: a whole job's run, which may hold prod
        if selection and not prod_keys & set(selection):
            continue  # it did not try to change prod (and its events need not be read)
        if run.dagster_run.tags.get(WILL_RETRY_TAG) == "true":
            continue  # Dagster runs it again: that run's outcome is the change's
        for failure in history.step_failures(instance, run.dagster_run.run_id):
            service = prod_steps.get(failure.step_key)
            if service is None or failure.timestamp < since:
                continue
            outcome = ROLLED_BACK if failure.run_id in rolled_back_runs else FAILED
            if failure.run_id in in_run:  # recorded, then a blocking check of the deployment failed
                deployed[in_run[failure.run_id]] = replace(deployed[in_run[failure.run_id]], outcome=outcome)
            else:
                failed.append(ProdChange(service=service, at=failure.timestamp, outcome=outcome,
                                         run_id=failure.run_id))
    return sorted([*deployed.values(), *failed], key=lambda c: c.at)


def read_report(instance, fleet: Fleet, *, now: float, windows: Sequence[int] = WINDOWS) -> Report:
    changes = read_prod_changes(instance, fleet, since=now - max(windows) * DAY)
    return report(changes, fleet.name, fleet.production.name, fleet.services, now=now, windows=windows)



def as_text(result: Report) -> str:
    """One row per service (and the fleet) and window: what `release-graph dora` prints."""
    header = f"{'SERVICE':<16} {'DAYS':>4} {'CHANGES':>7} {'PER DAY':>8} {'LEAD TIME':>10} {'FAILURE RATE':>12} " \
             f"{'RESTORE':>10}"
    lines = [f"DORA of fleet {result.fleet} in {result.production}", header]

    def hours(seconds: float | None) -> str:
        return "-" if seconds is None else f"{seconds / HOUR:.2f} h"

    rows = [("(fleet)", result.overall), *sorted(result.services.items())]
    for name, by_window in rows:
        for days in result.windows:
            f = by_window[days]
            rate = "-" if f.change_failure_rate is None else f"{f.change_failure_rate:.0%}"
            lines.append(f"{name:<16} {days:>4} {f.changes:>7} {f.deployments_per_day:>8.2f} "
                         f"{hours(f.lead_time_seconds):>10} {rate:>12} {hours(f.time_to_restore_seconds):>10}")
    return "\n".join(lines)
