"""A generic webhook: the notification as JSON, POSTed with an HMAC-SHA256 signature of the exact body.

Headers: `X-Release-Graph-Event: <kind>` and `X-Release-Graph-Signature: sha256=<hex>` (the digest of the body
with the key from `$<hmac_key_env>`), so a receiver can verify that the message comes from this orchestrator
and was not changed. The URL comes from `$<url_env>`. Both are read at send time and never logged.
Plain urllib: one POST needs no client library.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request

from release_graph.fleet.model import NotificationChannel
from resources.notify.interface import Channel, DeliveryFailed, Notification, redact, secret_from

SIGNATURE_HEADER = "X-Release-Graph-Signature"
EVENT_HEADER = "X-Release-Graph-Event"


def signature(key: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def body_of(notification: Notification) -> bytes:
    return json.dumps({**notification.as_dict(), "sent_at": round(time.time(), 3)}, sort_keys=True).encode()


class WebhookChannel(Channel):
    def __init__(self, settings: NotificationChannel, *, timeout_seconds: float = 5.0) -> None:
        self.settings = settings
        self.name = settings.name
        self.timeout_seconds = timeout_seconds

    def send(self, notification: Notification) -> None:
        where = self.settings.describe()
        url = secret_from(self.settings.url_env, where)
        key = secret_from(self.settings.hmac_key_env, where)
        body = body_of(notification)
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "release-graph",
            EVENT_HEADER: notification.kind, SIGNATURE_HEADER: signature(key.encode(), body)})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:  # noqa: S310 - http(s) from the operator
                status = response.status
        except urllib.error.HTTPError as exc:
            raise DeliveryFailed(f"channel {where}: answered HTTP {exc.code} {exc.reason}") from None
        except Exception as exc:  # refused, timed out, a bad URL: one line, without the URL
            reason = getattr(exc, "reason", exc)
            raise DeliveryFailed(redact(f"channel {where}: did not answer: {type(reason).__name__}: {reason}",
                                        url, key)) from None
        if not 200 <= status < 300:
            raise DeliveryFailed(f"channel {where}: answered HTTP {status}")
