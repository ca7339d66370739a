"""Release notifications: failed stages, rollbacks, approvals needed and releases waiting too long, sent to the
channels the manifest configures (`notifications:`), each exactly once per release, stage, kind and channel.

A plain sensor that reads the history on every tick (release_graph/release/notifications.py), rather than a
run-failure sensor: approvals and waits are states, not run events, and one reader serves both. What was sent
is remembered in the sensor's cursor, which the daemon keeps in the instance's storage (and saves only when
a tick succeeds): a restarted daemon sends nothing twice. A channel that does not take a message is logged
and tried again at the next tick; its failure never fails the tick, a run or a release. A channel that failed
once in a tick is not tried again in that tick, so an unreachable one costs one timeout per tick.

Registered only when the manifest configures notifications (release_graph/wiring.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import dagster as dg

from release_graph.fleet import Fleet
from release_graph.release import notifications as N
from resources.notify import DeliveryFailed, Notification, Notifier

SENSOR_NAME = "release_notifications"
LOOK_BACK_SECONDS = 24 * 3600  # failed runs older than this are not told any more (the daemon was down)
KEEP_SENT_SECONDS = 14 * 24 * 3600  # how long a sent message is remembered; a wait that long is told again


@dataclass
class SentMessages:
    """The cursor: when the sensor first ran (failures before it are not news) and every message sent."""

    started: float
    sent: dict[str, float] = field(default_factory=dict)  # ReleaseEvent.key(channel) -> when it was sent

    @classmethod
    def parse(cls, cursor: str | None, now: float) -> SentMessages:
        if not cursor:
            return cls(started=now)
        data = json.loads(cursor)
        return cls(started=float(data["started"]), sent={k: float(v) for k, v in data["sent"].items()})

    def to_cursor(self, now: float) -> str:
        kept = {key: at for key, at in self.sent.items() if now - at < KEEP_SENT_SECONDS}
        return json.dumps({"started": self.started, "sent": kept}, sort_keys=True)


@dataclass
class TickReport:
    sent: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.sent and not self.failed:
            return "nothing new to tell"
        return (f"sent {len(self.sent)} message(s)"
                + (f"; {len(self.failed)} not delivered, tried again next tick" if self.failed else ""))


def notification_of(event: N.ReleaseEvent, ui_url: str) -> Notification:
    return Notification(kind=event.kind, service=event.service, environment=event.environment or "",
                        stage=event.stage, sha=event.sha, reason=event.reason, link=event.link(ui_url),
                        run_id=event.run_id, digest=event.digest)


def notify(context, fleet: Fleet, notifier: Notifier, memory: SentMessages, now: float) -> TickReport:
    """Send every event not yet sent to each of its channels; remember what went out."""
    since = max(memory.started, now - LOOK_BACK_SECONDS)
    events = N.failures(context.instance, fleet, since) + N.waiting(context.instance, fleet, now)
    report, down = TickReport(), set()
    for event in events:
        settings = fleet.notifications_for(event.environment)
        if settings is None:
            continue
        for channel in settings.channels_for(event.kind):
            key = event.key(channel.name)
            if key in memory.sent or channel.name in down:
                continue
            what = f"{event.kind} of {event.stage}" + (f" ({event.sha[:7]})" if event.sha else "")
            try:
                notifier.send(channel, notification_of(event, settings.ui_url))
            except DeliveryFailed as exc:
                down.add(channel.name)
                report.failed.append(what)
                context.log.warning(f"not delivered: {what}: {exc}; tried again at the next tick")
                continue
            memory.sent[key] = time.time()
            report.sent.append(what)
            context.log.info(f"sent {what} to {channel.describe()}")
    return report


def build_notification_sensor(fleet: Fleet, minimum_interval_seconds: int = 30) -> dg.SensorDefinition:
    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Tells the manifest's notification channels about failed stages, rollbacks, approvals "
        "needed and releases waiting too long: once per release, stage, kind and channel.",
    )
    def release_notifications(context: dg.SensorEvaluationContext, notifier: Notifier) -> dg.SensorResult:
        now = time.time()
        memory = SentMessages.parse(context.cursor, now)
        report = notify(context, fleet, notifier, memory, now)
        return dg.SensorResult(skip_reason=report.summary(), cursor=memory.to_cursor(now))

    return release_notifications
