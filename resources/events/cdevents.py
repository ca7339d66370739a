"""Deployment events as CDEvents (CD Foundation, spec v0.4), carried as CloudEvents in structured JSON mode over
HTTP (the `cloudevents` SDK builds the message): one POST per event to the sink whose URL is in `$<sink_url_env>`.

| kind        | CDEvent type                            | subject content                   |
|-------------|-----------------------------------------|-----------------------------------|
| deployed    | dev.cdevents.service.deployed.0.2.0     | environment, artifactId           |
| upgraded    | dev.cdevents.service.upgraded.0.2.0     | environment, artifactId           |
| rolledback  | dev.cdevents.service.rolledback.0.2.0   | environment, artifactId           |
| removed     | dev.cdevents.service.removed.0.2.0      | environment                       |

A failure is no CDEvent of these four (the metrics count it); a rollback to nothing (the first version of a
service rolled back by its rollout) has no artifact to name and is not sent. The subject is the service (its
name), the environment's id is its name, and the artifact is a purl of the OCI image with its digest:
`pkg:oci/<name>@sha256:<hex>?repository_url=<registry>/<repository>`. The CDEvent's id (and the CloudEvent's) is
a UUID derived from the event's key: a sink that receives one event twice (a tick that sent it and then could
not save its cursor) sees the same id and can drop the copy. `customData` holds the fleet, the commit, the
digest it replaced and the run: never a secret. The URL may carry the sink's token; it is read at send time and
never logged.
"""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from urllib.parse import quote

from release_graph.fleet.model import CDEventsSink
from resources.events.interface import (
    DEPLOYED,
    REMOVED,
    ROLLED_BACK,
    UPGRADED,
    ServiceEvent,
    SinkRefused,
    SinkUnavailable,
)
from resources.notify.interface import redact

SPEC_VERSION = "0.4.1"  # the CDEvents specification the events follow (context.version)
CDEVENT_TYPES = {
    DEPLOYED: "dev.cdevents.service.deployed.0.2.0",
    UPGRADED: "dev.cdevents.service.upgraded.0.2.0",
    ROLLED_BACK: "dev.cdevents.service.rolledback.0.2.0",
    REMOVED: "dev.cdevents.service.removed.0.2.0",
}
RETRYABLE_STATUSES = (408, 429)  # 4xx answers that mean "not now" rather than "never"


def default_source(fleet: str) -> str:
    return f"/release-graph/{fleet}"


def purl(repository: str, digest: str) -> str:
    """The package URL of an OCI image by digest: its name is the repository's last segment, where it lives is
    the `repository_url` qualifier (purl-spec's `oci` type)."""
    name = repository.rsplit("/", 1)[-1].lower()
    return f"pkg:oci/{quote(name)}@{quote(digest, safe=':')}?repository_url={quote(repository, safe='/:')}"


def _rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def event_id(source: str, event: ServiceEvent) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{source}#{event.key}"))


def cdevent(event: ServiceEvent, source: str) -> dict | None:
    """The CDEvent of `event`, or None when it has none (a failure; a rollback with no version to go back to)."""
    if event.kind not in CDEVENT_TYPES or (event.kind != REMOVED and not event.digest):
        return None
    content: dict = {"environment": {"id": event.environment, "source": source}}
    if event.kind != REMOVED:
        content["artifactId"] = purl(event.repository, event.digest)
    custom = {"fleet": event.fleet, "git_sha": event.sha, "digest": event.digest,
              "previous_digest": event.previous_digest, "run_id": event.run_id}
    return {
        "context": {"version": SPEC_VERSION, "id": event_id(source, event), "source": source,
                    "type": CDEVENT_TYPES[event.kind], "timestamp": _rfc3339(event.at)},
        "subject": {"id": event.service, "source": source, "type": "service", "content": content},
        "customData": {name: value for name, value in custom.items() if value},
        "customDataContentType": "application/json",
    }


def http_message(event: ServiceEvent, source: str):
    """The CloudEvent (CDEvents' CloudEvents binding: id, source, type, subject and time from the CDEvent) in
    structured JSON mode: (headers, body), or None when the event has no CDEvent."""
    from cloudevents.core.bindings.http import to_structured_event
    from cloudevents.core.v1.event import CloudEvent

    data = cdevent(event, source)
    if data is None:
        return None
    context = data["context"]
    cloud_event = CloudEvent(attributes={
        "id": context["id"], "source": source, "type": context["type"], "subject": event.service,
        "time": datetime.fromtimestamp(event.at, UTC), "datacontenttype": "application/json"}, data=data)
    message = to_structured_event(cloud_event)
    return message.headers, message.body


class CDEventsSinkAdapter:
    """POSTs each event's CloudEvent to the sink; built from the manifest's `events.cdevents`."""

    def __init__(self, settings: CDEventsSink, fleet: str, *, timeout_seconds: float = 5.0) -> None:
        self.settings = settings
        self.source = settings.source or default_source(fleet)
        self.timeout_seconds = timeout_seconds

    def describe(self) -> str:
        """The sink as logs may name it: never its URL, only where it comes from."""
        return f"cdevents (url from ${self.settings.sink_url_env})"

    def send(self, event: ServiceEvent) -> bool:
        """Deliver one event; False when it has no CDEvent (nothing to send). Raises SinkUnavailable/SinkRefused."""
        import os

        message = http_message(event, self.source)
        if message is None:
            return False
        headers, body = message
        url = os.environ.get(self.settings.sink_url_env, "")
        if not url:
            raise SinkUnavailable(f"sink {self.describe()}: ${self.settings.sink_url_env} is not set in the "
                                  "orchestrator's environment")
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={**headers, "User-Agent": "release-graph"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:  # noqa: S310 - the operator's URL
                status = response.status
        except urllib.error.HTTPError as exc:
            error = SinkRefused if 400 <= exc.code < 500 and exc.code not in RETRYABLE_STATUSES else SinkUnavailable
            raise error(f"sink {self.describe()}: answered HTTP {exc.code} {exc.reason}") from None
        except Exception as exc:  # refused, timed out, a bad URL: one line, without the URL (it may hold a token)
            reason = getattr(exc, "reason", exc)
            raise SinkUnavailable(redact(f"sink {self.describe()}: did not answer: {type(reason).__name__}: {reason}",
                                         url)) from None
        if not 200 <= status < 300:
            raise SinkUnavailable(f"sink {self.describe()}: answered HTTP {status}")
        return True
