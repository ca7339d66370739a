"""What a sink is told about one service in one environment, and the two ways a sink fails.

`SinkUnavailable`: the sink did not take the event now (did not answer, a 5xx, its variable is not set); the
sensor stops sending to it for this tick and tries the same event first at the next one, so events arrive in
order. `SinkRefused`: the sink answered that it will never take this event (an HTTP 4xx other than 408 and 429);
the sensor logs it as an error and goes on, so one bad event cannot hold back every later one.
Messages name the sink and where its URL comes from, never the URL.
"""

from __future__ import annotations

from dataclasses import dataclass

# The kinds a sink receives (release_graph/release/deployments.py decides them from the history).
DEPLOYED, UPGRADED, ROLLED_BACK, REMOVED, FAILED = "deployed", "upgraded", "rolledback", "removed", "failed"


@dataclass(frozen=True)
class ServiceEvent:
    kind: str  # deployed, upgraded, rolledback, removed, failed
    fleet: str
    service: str
    environment: str
    at: float  # when it happened, a timestamp
    key: str  # unique and stable (the sensor's): the CDEvent's id is derived from it, so a resend is the same event
    repository: str  # the service's image repository, e.g. 127.0.0.1:5000/shop/orders
    digest: str = ""  # what runs there now (removed: what ran); "" when unknown
    previous_digest: str = ""
    sha: str = ""
    run_id: str = ""
    deployment: bool = False  # a deployment recorded the change (counted in Deployments)
    lead_time_seconds: float | None = None  # commit -> running there (deployed, upgraded)


class SinkUnavailable(Exception):
    """The sink did not take the event now; the same event is tried again first at the next tick."""


class SinkRefused(SinkUnavailable):
    """The sink answered that it will not take this event, ever (HTTP 4xx other than 408 and 429)."""
