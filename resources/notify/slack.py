"""A Slack incoming webhook (`slack_sdk`'s WebhookClient): one Block Kit message per notification.

The webhook URL carries its token: it comes from `$<url_env>` at send time. The client logs each request's
URL at DEBUG, so it gets a logger of its own that stops below WARNING whatever the process's log level is.
"""

from __future__ import annotations

import logging

from release_graph.fleet.model import NotificationChannel
from resources.notify.interface import Channel, DeliveryFailed, Notification, redact, secret_from

_QUIET_LOGGER = logging.getLogger("release_graph.notify.slack")
_QUIET_LOGGER.setLevel(logging.WARNING)


def blocks(notification: Notification) -> list[dict]:
    """Block Kit: the headline, the fields side by side, the reason, and a button to the run."""
    fields = notification.fields()
    return [
        {"type": "header", "text": {"type": "plain_text", "text": notification.headline()[:150]}},
        {"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*{name}*\n{fields[name]}"} for name in ("service", "environment", "sha",
                                                                                 "stage")]},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*reason*\n{notification.reason[:2900]}"}},
        {"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Open in Dagster"}, "url": notification.link}]},
    ]


class SlackChannel(Channel):
    def __init__(self, settings: NotificationChannel, *, timeout_seconds: float = 5.0) -> None:
        self.settings = settings
        self.name = settings.name
        self.timeout_seconds = timeout_seconds

    def send(self, notification: Notification) -> None:
        from slack_sdk.webhook import WebhookClient

        where = self.settings.describe()
        url = secret_from(self.settings.url_env, where)
        client = WebhookClient(url, timeout=int(max(1, self.timeout_seconds)), logger=_QUIET_LOGGER)
        try:
            # `text` is what notifications and clients without blocks show
            response = client.send(text=notification.text(), blocks=blocks(notification))
        except Exception as exc:  # refused, timed out, a bad URL: one line, without the URL
            reason = getattr(exc, "reason", exc)
            raise DeliveryFailed(redact(f"channel {where}: did not answer: {type(reason).__name__}: {reason}",
                                        url)) from None
        if response.status_code != 200:
            raise DeliveryFailed(redact(f"channel {where}: answered HTTP {response.status_code}: "
                                        f"{(response.body or '')[:200]}", url))
