"""The `event_sinks` resource: delivers a deployment event to the manifest's CDEvents sink or CloudWatch.

The sinks' settings are the manifest's (`release_graph.fleet.model.DeploymentEvents`); this resource only holds
how long a sink may take. Adapters are built on first use and kept; nothing here does I/O at import or
construction.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from release_graph.fleet.model import DeploymentEvents
from resources.events.interface import ServiceEvent

CDEVENTS, CLOUDWATCH = "cdevents", "cloudwatch"


class EventSinks(dg.ConfigurableResource):
    """Sends deployment events as CDEvents to an HTTP sink and as release metrics to CloudWatch."""

    timeout_seconds: float = Field(default=5.0, description="How long one sink may take to answer one event.")

    _adapters: Any = PrivateAttr(default_factory=dict)

    def configured(self, settings: DeploymentEvents) -> tuple[str, ...]:
        """The sinks the manifest names, in the order they are sent to."""
        return tuple(name for name, value in ((CDEVENTS, settings.cdevents), (CLOUDWATCH, settings.cloudwatch))
                     if value is not None)

    def adapter(self, sink: str, settings: DeploymentEvents, fleet: str):
        key = (sink, settings, fleet)
        if key not in self._adapters:
            from resources.events.cdevents import CDEventsSinkAdapter
            from resources.events.cloudwatch import ReleaseMetrics

            self._adapters[key] = (
                CDEventsSinkAdapter(settings.cdevents, fleet, timeout_seconds=self.timeout_seconds)
                if sink == CDEVENTS else ReleaseMetrics(settings.cloudwatch, timeout_seconds=self.timeout_seconds))
        return self._adapters[key]

    def describe(self, sink: str, settings: DeploymentEvents, fleet: str) -> str:
        return self.adapter(sink, settings, fleet).describe()

    def send(self, sink: str, settings: DeploymentEvents, event: ServiceEvent) -> bool:
        """Deliver one event to one sink: True if sent, False if it has nothing for that sink. Raises
        SinkUnavailable (try again later) or SinkRefused (never), without a secret in the message."""
        return self.adapter(sink, settings, event.fleet).send(event)
