"""Deployment events for machines: one small interface (`interface.py`), one adapter per sink (`cdevents.py`: CDEvents
as CloudEvents over HTTP; `cloudwatch.py`: release metrics), and the `event_sinks` resource that holds them."""

from resources.events.interface import ServiceEvent, SinkRefused, SinkUnavailable
from resources.events.sinks import EventSinks

__all__ = ["EventSinks", "ServiceEvent", "SinkRefused", "SinkUnavailable"]
