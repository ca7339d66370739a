"""What happened to each service in each environment, as events for machines (CDEvents, CloudWatch metrics),
read from the release history: no state of its own.

From the timeline of `<svc>/<env>` (its materializations and observations, oldest first):
- a deployment that changed what runs there (`changed` is not false, a digest other than the running one):
  `deployed` when nothing ran there before (first ever, or after a teardown), `rolledback` when it is a rollback
  by hand (`rolled_back_from`) or its image was built before the running one's (for a prebuilt service: its
  digest ran there before), else `upgraded`;
- a `rollback` observation (a rollout the analysis rolled back): `rolledback`, to the version that kept serving;
- a `removed` observation (`release-graph teardown`): `removed`, of the version that ran;
- and, from the runs that failed for good, every deploy step of an environment that failed: `failed`.

Each event carries a `key` built from what it was read from (a materialization's storage id, a run and step),
so the sensor that delivers them (sensors/deployment_events.py) can send each exactly once and a restarted
daemon reads the same keys again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from release_graph.fleet import Fleet
from release_graph.release import history
from release_graph.release import metadata as M
from release_graph.release.keys import environment_key, image_key
from release_graph.release.tags import SHA_TAG
from release_graph.release.why import WILL_RETRY_TAG, failure_reason

DEPLOYED, UPGRADED, ROLLED_BACK, REMOVED, FAILED = "deployed", "upgraded", "rolledback", "removed", "failed"
KINDS = (DEPLOYED, UPGRADED, ROLLED_BACK, REMOVED, FAILED)


@dataclass(frozen=True)
class DeploymentEvent:
    kind: str  # one of KINDS
    service: str
    environment: str
    at: float  # when it happened (the record's timestamp)
    key: str  # unique and stable: what the sensor remembers it under
    digest: str = ""  # what runs there now; removed: what ran; failed: "" (the step did not say)
    previous_digest: str = ""  # what ran there before ("" for a first deployment)
    sha: str = ""  # the commit of `digest` (of the run, for a failure), "" when unknown
    committed_at: float | None = None  # the commit's time, as the image step recorded it (deployed, upgraded)
    # True when a deployment recorded the change (a materialization); a rollout the analysis rolled back did not
    # deploy anything: the version that served kept serving.
    deployment: bool = False
    run_id: str = ""
    reason: str = ""  # failed: the step's error in words; rolledback: why, when recorded

    @property
    def lead_time_seconds(self) -> float | None:
        """Commit -> running here: only for a release moving forward (a rollback runs an old commit again)."""
        if self.kind in (DEPLOYED, UPGRADED) and self.committed_at is not None:
            return max(0.0, self.at - self.committed_at)
        return None


def _timestamp(iso: str | None) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp() if iso else None
    except ValueError:
        return None


def timeline_events(service: str, environment: str, materializations, observations,
                    committed: dict[str, float | None], built: dict[str, float]) -> list[DeploymentEvent]:
    """The events of one `<svc>/<env>` from its whole recorded history (any order), oldest first. `committed`
    and `built`: the commit time and the image step's time of each digest the service built."""
    records = sorted([*materializations, *observations], key=lambda r: (r.timestamp, r.storage_id))
    materialized = {id(r) for r in materializations}
    events: list[DeploymentEvent] = []
    running, ran = "", set()
    asset = f"{service}/{environment}"
    for record in records:
        common = {"service": service, "environment": environment, "at": record.timestamp, "run_id": record.run_id}
        if id(record) in materialized:
            digest = record.digest or ""
            if not digest or digest == running:
                continue  # a redeploy of what already runs changes nothing
            if record.value(M.CHANGED) is False:
                running = digest  # it already ran there (a history older than what was read)
                continue
            if not running:
                kind = DEPLOYED
            elif record.value(M.ROLLED_BACK_FROM) or _older(digest, running, built, ran):
                kind = ROLLED_BACK
            else:
                kind = UPGRADED
            events.append(DeploymentEvent(
                kind=kind, digest=digest, previous_digest=running, sha=record.git_sha or "",
                committed_at=committed.get(digest), deployment=True, key=f"{kind}|{asset}|{record.storage_id}",
                reason=record.value(M.ROLLBACK_REASON) or "", **common))
            ran.add(running)
            running = digest
        elif record.value("event") == M.ROLLBACK_EVENT:
            serving = record.value("serving") or ""
            events.append(DeploymentEvent(
                kind=ROLLED_BACK, digest=serving, previous_digest=record.digest or "",
                key=f"{ROLLED_BACK}|{asset}|{record.storage_id}",
                reason=record.value(M.ROLLED_BACK_BECAUSE) or "", **common))
            running = serving or running
        elif record.value("event") == M.REMOVED_EVENT and running:
            events.append(DeploymentEvent(kind=REMOVED, digest=running, key=f"{REMOVED}|{asset}|{record.storage_id}",
                                          **common))
            ran.add(running)
            running = ""
    return events


def _older(digest: str, running: str, built: dict[str, float], ran: set[str]) -> bool:
    """Whether deploying `digest` over `running` goes back: it was built before the running one (a digest that
    ran before and is deployed again after a rollback is a step forward again); for digests this instance did
    not build (prebuilt services), whether it ran here before."""
    if digest in built and running in built:
        return built[digest] < built[running]
    return digest in ran


def failures(instance, fleet: Fleet, since: float) -> list[DeploymentEvent]:
    """Every deploy step of an environment that failed for good in a run that failed since `since`."""
    steps = {environment_key(service, environment).to_python_identifier(): (service, environment)
             for service in fleet.services for environment in fleet.environments}
    keys = {environment_key(service, environment) for service, environment in steps.values()}
    events = []
    for record in history.failed_runs_since(instance, since):
        run = record.dagster_run
        if run.asset_selection and not keys & set(run.asset_selection):
            continue  # it tried no deployment (and its events need not be read)
        if run.tags.get(WILL_RETRY_TAG) == "true":
            continue  # Dagster runs it again: that run's outcome is the deployment's
        for failure in history.step_failures(instance, run.run_id):
            if failure.step_key not in steps or failure.timestamp < since:
                continue
            service, environment = steps[failure.step_key]
            events.append(DeploymentEvent(
                kind=FAILED, service=service, environment=environment, at=failure.timestamp,
                key=f"{FAILED}|{service}/{environment}|{run.run_id}", sha=run.tags.get(SHA_TAG, ""),
                run_id=run.run_id, reason=failure_reason(failure.error)))
    return events


def read_events(instance, fleet: Fleet, since: float) -> list[DeploymentEvent]:
    """Every deployment event of every service and environment from `since` (a timestamp) on, oldest first.
    Each environment's whole recorded history is read to tell a first deployment, an upgrade and a rollback
    apart; only what happened from `since` on is returned."""
    events = failures(instance, fleet, since)
    for service in fleet.services:
        # The commit time of each digest, as the image step that built it recorded it.
        images = list(reversed(history.history(instance, image_key(service))))
        committed = {r.digest: _timestamp(r.value(M.COMMITTED_AT)) for r in images if r.digest}
        built = {r.digest: r.timestamp for r in images if r.digest}  # a rebuild of a digest keeps its newest time
        for environment in fleet.environments:
            key = environment_key(service, environment)
            events += [e for e in timeline_events(service, environment, history.history(instance, key),
                                                  history.observations(instance, key), committed, built)
                       if e.at >= since]
    return sorted(events, key=lambda e: (e.at, e.key))
