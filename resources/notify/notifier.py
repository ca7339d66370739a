"""The `notifier` resource: sends a notification to one channel of the manifest, through that channel's adapter.

Channels are the manifest's (`release_graph.fleet.model.NotificationChannel`); this resource only holds how
long a channel may take. Adapters are built on first use and kept; nothing here does I/O at import or
construction.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from release_graph.fleet.model import NotificationChannel
from resources.notify.interface import Channel, Notification


class Notifier(dg.ConfigurableResource):
    """Delivers release notifications to SNS topics, Slack incoming webhooks and signed webhooks."""

    timeout_seconds: float = Field(default=5.0, description="How long one channel may take to answer one message.")

    _channels: Any = PrivateAttr(default_factory=dict)

    def channel(self, settings: NotificationChannel) -> Channel:
        if settings not in self._channels:
            from resources.notify.slack import SlackChannel
            from resources.notify.sns import SnsChannel
            from resources.notify.webhook import WebhookChannel

            adapter = {"sns": SnsChannel, "slack": SlackChannel, "webhook": WebhookChannel}[settings.type]
            self._channels[settings] = adapter(settings, timeout_seconds=self.timeout_seconds)
        return self._channels[settings]

    def send(self, settings: NotificationChannel, notification: Notification) -> None:
        """Deliver, or raise DeliveryFailed (never with a secret in its message)."""
        self.channel(settings).send(notification)
