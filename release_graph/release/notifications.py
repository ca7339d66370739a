"""What is worth telling a release manager, read from the release history: a stage that failed (a run's
step, or one of its blocking checks), a rollout the analysis rolled back, a release waiting for an approval,
and a release waiting at a stage longer than the manifest's limit.

The sensor (sensors/notifications.py) asks these functions on every tick and sends each event once per
channel: `ReleaseEvent.key(channel)` is what it remembers. The reasons are `release-graph why`'s own.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from release_graph.fleet import Fleet, Service
from release_graph.fleet.model import NOTIFICATION_EVENTS
from release_graph.release import history
from release_graph.release import metadata as M
from release_graph.release.keys import (
    DORA_KEY,
    MATRIX_KEY,
    approval_key,
    e2e_key,
    environment_key,
    has_integration,
    image_key,
    integration_key,
    previous_stage_key,
)
from release_graph.release.promotion import waits_for_approval
from release_graph.release.tags import SHA_TAG
from release_graph.release.why import (
    BLOCKED,
    WAITING,
    WILL_RETRY_TAG,
    failure_reason,
    process_death,
    stage_status,
)

FAILED, ROLLED_BACK, APPROVAL_NEEDED, WAITING_TOO_LONG = NOTIFICATION_EVENTS


@dataclass(frozen=True)
class ReleaseEvent:
    kind: str  # one of NOTIFICATION_EVENTS
    service: str  # a service, or `fleet` for the fleet's own assets (e2e tests)
    environment: str | None  # None: a stage before the environments (image, integration)
    stage: str  # the asset, e.g. orders/prod
    sha: str  # the release's commit, "" when none is known
    reason: str
    run_id: str = ""
    digest: str = ""

    @property
    def release(self) -> str:
        """What "the same release" means for sending once: its commit, else its digest, else its run."""
        return self.sha or self.digest or f"run:{self.run_id}"

    def key(self, channel: str) -> str:
        return f"{self.release}|{self.stage}|{self.kind}|{channel}"

    def link(self, ui_url: str) -> str:
        return f"{ui_url}/runs/{self.run_id}" if self.run_id else f"{ui_url}/assets/{self.stage}"


@dataclass(frozen=True)
class _Stage:
    service: str
    environment: str | None
    key: dg.AssetKey


def _stages(fleet: Fleet) -> dict[str, _Stage]:
    """Every asset a release runs, by its step key (AssetKey.to_python_identifier())."""
    stages = []
    for service in fleet.services.values():
        stages.append(_Stage(service.name, None, image_key(service)))
        if has_integration(service):
            stages.append(_Stage(service.name, None, integration_key(service)))
        for environment in fleet.environments.values():
            stages.append(_Stage(service.name, environment.name, environment_key(service, environment)))
            if environment.requires_approval:
                stages.append(_Stage(service.name, environment.name, approval_key(service, environment)))
    for environment in fleet.environments.values():
        stages.append(_Stage("fleet", environment.name, e2e_key(environment)))
    stages += [_Stage("fleet", None, MATRIX_KEY), _Stage("fleet", None, DORA_KEY)]
    return {stage.key.to_python_identifier(): stage for stage in stages}


def _candidate_sha(instance, fleet: Fleet, stage: _Stage) -> str:
    """The commit a stage was about to take, for a run that failed before it said (a refusal)."""
    if stage.service not in fleet.services or stage.environment is None:
        return ""
    previous = previous_stage_key(fleet, fleet.services[stage.service], fleet.environments[stage.environment])
    candidate = history.latest(instance, previous)
    return (candidate.git_sha or "") if candidate else ""


def _check_reason(evaluations: list[dg.AssetCheckEvaluation], key: dg.AssetKey) -> str | None:
    failed = [e for e in evaluations if e.asset_key == key and e.blocking]
    if not failed:
        return None
    names = ", ".join(e.check_name for e in failed)
    description = next((e.description for e in failed if e.description), None)
    return (f"blocking check{'s' if len(failed) > 1 else ''} {names} of {key.to_user_string()} did not pass"
            + (f": {description}" if description else ""))


def failures(instance, fleet: Fleet, since: float) -> list[ReleaseEvent]:
    """Every stage that failed for good (or was rolled back) in a run that failed since `since`."""
    stages = _stages(fleet)
    events = []
    for record in history.failed_runs_since(instance, since):
        run = record.dagster_run
        if run.tags.get(WILL_RETRY_TAG) == "true":
            continue  # Dagster runs it again: its retry's outcome is the one to tell
        failed_steps = history.step_failures(instance, run.run_id)
        rolled_back = {r.key for r in history.observations_in_run(instance, run.run_id)
                       if r.value("event") == M.ROLLBACK_EVENT}
        checks = history.failed_checks(instance, run.run_id) if failed_steps else []
        found = [(stages[f.step_key], f) for f in failed_steps if f.step_key in stages]
        if not failed_steps:  # the run ended before any step could fail (its process died, a bad launch)
            held = [stages[k.to_python_identifier()] for k in run.asset_selection or ()
                    if k.to_python_identifier() in stages]
            found = [(held[0], None)] if held else []
        for stage, failure in found:
            if failure is None:
                reason = process_death(instance, run.run_id) or "the run failed before its steps finished"
            else:
                reason = _check_reason(checks, stage.key) or failure_reason(failure.error)
            events.append(ReleaseEvent(
                kind=ROLLED_BACK if stage.key in rolled_back else FAILED,
                service=stage.service, environment=stage.environment, stage=stage.key.to_user_string(),
                sha=run.tags.get(SHA_TAG) or _candidate_sha(instance, fleet, stage), reason=reason,
                run_id=run.run_id))
    return events


def _waiting_stages(fleet: Fleet, service: Service) -> list[tuple[str, str | None]]:
    """(stage for why.stage_status, its environment) of every stage after the image."""
    stages: list[tuple[str, str | None]] = [("integration", None)] if has_integration(service) else []
    return stages + [(name, name) for name in fleet.environments]


def waiting(instance, fleet: Fleet, now: float) -> list[ReleaseEvent]:
    """Releases waiting for an approval, and releases waiting at a stage longer than its limit."""
    events = []
    for service in fleet.services.values():
        for stage, environment in _waiting_stages(fleet, service):
            settings = fleet.notifications_for(environment)
            wanted = {APPROVAL_NEEDED, WAITING_TOO_LONG} & set(settings.events if settings else ())
            if not wanted or not settings.channels:
                continue
            status = stage_status(instance, fleet, service, stage)
            if status.state not in (WAITING, BLOCKED):
                continue
            previous = (image_key(service) if stage == "integration"
                        else previous_stage_key(fleet, service, fleet.environments[stage]))
            candidate = history.latest(instance, previous)
            if candidate is None:
                continue  # nothing has reached the stage before: nothing is waiting yet
            common = {"service": service.name, "environment": environment, "stage": status.stage,
                      "sha": candidate.git_sha or "", "digest": candidate.digest or ""}
            if APPROVAL_NEEDED in wanted and waits_for_approval(status.reason):
                events.append(ReleaseEvent(kind=APPROVAL_NEEDED, reason=status.reason, **common))
            waited = now - candidate.timestamp
            if WAITING_TOO_LONG in wanted and waited > settings.waiting_limit_minutes * 60:
                events.append(ReleaseEvent(
                    kind=WAITING_TOO_LONG, reason=f"{status.state} for {_duration(waited)} (limit "
                    f"{_duration(settings.waiting_limit_minutes * 60)}): {status.reason}", **common))
    return events


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
