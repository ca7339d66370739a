"""Amazon SNS: one `publish` per notification to the channel's topic (boto3).

The subject is the headline; the message is the text (service, environment, SHA, stage, reason, link); the
same fields ride as message attributes, so a subscription's filter policy can pick e.g. prod failures only.
The endpoint is the manifest's `endpoint_url`, else $RELEASE_GRAPH_AWS_ENDPOINT_URL (moto_server in tests),
else AWS; credentials come from boto3's usual chain. The client is made on first use.
"""

from __future__ import annotations

from typing import Any

from release_graph.fleet.model import NotificationChannel
from resources.notify.interface import Channel, DeliveryFailed, Notification

SUBJECT_LIMIT = 100  # SNS refuses longer subjects (and line breaks in them)


class SnsChannel(Channel):
    def __init__(self, settings: NotificationChannel, *, timeout_seconds: float = 5.0) -> None:
        self.settings = settings
        self.name = settings.name
        self.timeout_seconds = timeout_seconds
        self._client: Any = None

    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            # Fail within seconds: the sensor tries an unreachable channel again at its next tick.
            config = Config(connect_timeout=self.timeout_seconds, read_timeout=self.timeout_seconds,
                            retries={"max_attempts": 1, "mode": "standard"})
            self._client = boto3.client("sns", region_name=self.settings.resolved_region(),
                                        endpoint_url=self.settings.resolved_endpoint_url(), config=config)
        return self._client

    def send(self, notification: Notification) -> None:
        attributes = {name.capitalize(): {"DataType": "String", "StringValue": value}
                      for name, value in (("kind", notification.kind), *notification.fields().items())
                      if value and name not in ("reason", "link")}  # SNS refuses empty values
        try:
            self.client().publish(TopicArn=self.settings.topic_arn, Message=notification.text(),
                                  Subject=notification.headline().replace("\n", " ")[:SUBJECT_LIMIT],
                                  MessageAttributes=attributes)
        except Exception as exc:  # botocore raises many kinds; each means this message was not taken
            raise DeliveryFailed(f"channel {self.settings.describe()} in {self.settings.resolved_region()}: "
                                 f"{type(exc).__name__}: {exc}") from None
