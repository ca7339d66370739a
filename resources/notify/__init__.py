"""Release notifications: one small interface (`interface.py`), one adapter per channel type (`sns.py`,
`slack.py`, `webhook.py`), and the `notifier` resource that picks the adapter for a manifest's channel."""

from resources.notify.interface import Channel, DeliveryFailed, Notification
from resources.notify.notifier import Notifier

__all__ = ["Channel", "DeliveryFailed", "Notification", "Notifier"]
