"""Deployment events to machines: every environment's deployments, upgrades, rollbacks, removals and failed
deployments (release_graph/release/deployments.py), sent to the sinks the manifest's `events:` configures (CDEvents
over HTTP, CloudWatch release metrics), each exactly once per sink.

The same pattern as the notifications sensor: the history is read on every tick and what each sink took is
remembered in the sensor's cursor, which the daemon keeps in the instance's storage and saves only when a tick
succeeds, so a restarted daemon sends nothing twice. Each sink gets its events oldest first; a sink that does
not take one (down, a 5xx, its variable not set) is logged, and the rest of its events wait for the next tick, so
a receiver sees an upgrade before the rollback that follows it. A sink that refuses one event for good (a 4xx)
is logged as an error and that event is not sent again. Neither fails the tick, a run or a release.

Registered only when the manifest has `events:` (release_graph/wiring.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import dagster as dg

from release_graph.fleet import Fleet
from release_graph.release import deployments as D
from release_graph.release.promotion import image_reference
from resources.events import EventSinks, ServiceEvent, SinkRefused, SinkUnavailable

SENSOR_NAME = "deployment_events"
# Events older than this are not sent any more (the daemon or a sink was down that long); CloudWatch itself takes
# data points up to two weeks old. A remembered event is forgotten once it is older than this too.
LOOK_BACK_SECONDS = 3 * 24 * 3600


@dataclass
class Delivered:
    """The cursor: when the sensor first ran (deployments before it are not news) and, per sink, the key and
    time of every event it took (or refused for good)."""

    started: float
    sent: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def parse(cls, cursor: str | None, now: float) -> Delivered:
        if not cursor:
            return cls(started=now)
        data = json.loads(cursor)
        return cls(started=float(data["started"]),
                   sent={sink: {k: float(at) for k, at in keys.items()} for sink, keys in data["sent"].items()})

    def to_cursor(self, now: float) -> str:
        kept = {sink: {k: at for k, at in keys.items() if now - at < LOOK_BACK_SECONDS}
                for sink, keys in self.sent.items()}
        return json.dumps({"started": self.started, "sent": kept}, sort_keys=True)


@dataclass
class TickReport:
    sent: dict[str, int] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)
    refused: int = 0

    def summary(self) -> str:
        if not any(self.sent.values()) and not self.waiting and not self.refused:
            return "nothing new to send"
        parts = [f"{count} to {sink}" for sink, count in self.sent.items() if count]
        text = f"sent {', '.join(parts) or 'nothing'}"
        if self.waiting:
            text += "; waiting for the next tick: " + ", ".join(f"{n} for {s}" for s, n in self.waiting.items())
        return text + (f"; {self.refused} refused for good (see the log)" if self.refused else "")


def repository_of(fleet: Fleet, service: str, digest: str) -> str:
    """Where the service's images live (a prebuilt service's own repository), without tag or digest."""
    found = fleet.services[service]
    return image_reference(fleet, found, digest).rsplit("@", 1)[0] if digest else found.image_repository(fleet)


def service_event(fleet: Fleet, event: D.DeploymentEvent) -> ServiceEvent:
    return ServiceEvent(
        kind=event.kind, fleet=fleet.name, service=event.service, environment=event.environment, at=event.at,
        key=event.key, repository=repository_of(fleet, event.service, event.digest), digest=event.digest,
        previous_digest=event.previous_digest, sha=event.sha, run_id=event.run_id, deployment=event.deployment,
        lead_time_seconds=event.lead_time_seconds)


def deliver(context, fleet: Fleet, sinks: EventSinks, memory: Delivered, now: float) -> TickReport:
    """Send each sink the events it has not taken yet, oldest first; remember what it took."""
    settings = fleet.events
    report = TickReport()
    if settings is None:
        return report
    since = max(memory.started, now - LOOK_BACK_SECONDS)
    events = [service_event(fleet, e) for e in D.read_events(context.instance, fleet, since)]
    for sink in sinks.configured(settings):
        taken = memory.sent.setdefault(sink, {})
        pending = [e for e in events if e.key not in taken]
        report.sent[sink] = 0
        for index, event in enumerate(pending):
            what = f"{event.kind} of {event.service}/{event.environment}" + (
                f" ({event.digest[:19]})" if event.digest else "")
            try:
                if sinks.send(sink, settings, event):
                    report.sent[sink] += 1
                    context.log.info(f"sent {what} to {sinks.describe(sink, settings, fleet.name)}")
            except SinkRefused as exc:
                report.refused += 1
                context.log.error(f"refused for good, not sent again: {what}: {exc}")
            except SinkUnavailable as exc:
                report.waiting[sink] = len(pending) - index
                context.log.warning(f"not delivered: {what}: {exc}; it and the {len(pending) - index - 1} "
                                    "after it are tried again at the next tick")
                break
            taken[event.key] = event.at
    return report


def build_deployment_events_sensor(fleet: Fleet, minimum_interval_seconds: int = 30) -> dg.SensorDefinition:
    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Sends every environment's deployments, upgrades, rollbacks, removals and failed deployments "
        "to the manifest's event sinks (CDEvents over HTTP, CloudWatch release metrics): once per event and sink.",
    )
    def deployment_events(context: dg.SensorEvaluationContext, event_sinks: EventSinks) -> dg.SensorResult:
        now = time.time()
        memory = Delivered.parse(context.cursor, now)
        report = deliver(context, fleet, event_sinks, memory, now)
        return dg.SensorResult(skip_reason=report.summary(), cursor=memory.to_cursor(now))

    return deployment_events
