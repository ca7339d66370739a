"""Each channel delivers a release notification to a real receiver: SNS to an SQS queue subscribed to the
topic on a real moto_server, Slack and the signed webhook to HTTP servers on loopback ports. A channel that
does not answer, refuses the message or has no secret set is a DeliveryFailed that names the channel and never
carries its URL or key."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets

import boto3
import pytest

from release_graph.fleet.model import AWS_ENDPOINT_URL_VARIABLE, NotificationChannel
from resources.notify import DeliveryFailed, Notification, Notifier
from resources.notify.webhook import EVENT_HEADER, SIGNATURE_HEADER

REGION = "eu-west-1"
FAILED = Notification(
    kind="failed", service="orders", environment="prod", stage="orders/prod", sha="1a2b3c4d5e6f" + "0" * 28,
    reason="new container not healthy: GET /healthz answered 500", link="http://127.0.0.1:3000/runs/abc123",
    run_id="abc123")


def test_a_signed_webhook_receives_the_json_and_a_signature_of_its_exact_body(http_receiver, monkeypatch):
    receiver = http_receiver(status=204).start()
    key = secrets.token_hex(16)
    monkeypatch.setenv("AUDIT_URL", f"{receiver.url}/hooks/{secrets.token_hex(8)}")
    monkeypatch.setenv("AUDIT_KEY", key)
    channel = NotificationChannel(name="audit", type="webhook", url_env="AUDIT_URL", hmac_key_env="AUDIT_KEY")

    Notifier().send(channel, FAILED)

    (request,) = receiver.received
    body = request["body"]
    expected = "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request["headers"][SIGNATURE_HEADER], expected)
    assert request["headers"][EVENT_HEADER] == "failed"
    message = json.loads(body)
    assert {k: message[k] for k in ("service", "environment", "sha", "stage", "reason", "link")} == {
        "service": "orders", "environment": "prod", "sha": FAILED.sha, "stage": "orders/prod",
        "reason": FAILED.reason, "link": FAILED.link}
    assert message["headline"] == "orders/prod (1a2b3c4) failed"


def test_slack_receives_block_kit_naming_service_environment_sha_stage_reason_and_link(http_receiver, monkeypatch):
    receiver = http_receiver().start()
    monkeypatch.setenv("SLACK_URL", f"{receiver.url}/services/T000/B000/{secrets.token_hex(12)}")
    channel = NotificationChannel(name="team-chat", type="slack", url_env="SLACK_URL")

    Notifier().send(channel, FAILED)

    (request,) = receiver.received
    message = json.loads(request["body"])
    assert message["text"].startswith("orders/prod (1a2b3c4) failed")
    header, fields, reason, actions = message["blocks"]
    assert header["text"]["text"] == "orders/prod (1a2b3c4) failed"
    assert [f["text"] for f in fields["fields"]] == ["*service*\norders", "*environment*\nprod",
                                                     f"*sha*\n{FAILED.sha}", "*stage*\norders/prod"]
    assert FAILED.reason in reason["text"]["text"]
    assert actions["elements"][0]["url"] == FAILED.link


def test_sns_delivers_to_a_subscribed_sqs_queue_with_filterable_attributes(moto_server, monkeypatch, run_id):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv(AWS_ENDPOINT_URL_VARIABLE, moto_server)  # the channel names no endpoint: it uses this
    sns = boto3.client("sns", region_name=REGION, endpoint_url=moto_server)
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=moto_server)
    topic = sns.create_topic(Name=f"{run_id}-releases")["TopicArn"]
    queue = sqs.create_queue(QueueName=f"{run_id}-releases")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    channel = NotificationChannel(name="releases", type="sns", topic_arn=topic)

    Notifier().send(channel, FAILED)

    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=2)["Messages"]
    (envelope,) = [json.loads(m["Body"]) for m in messages]
    assert envelope["Subject"] == "orders/prod (1a2b3c4) failed"
    assert envelope["Message"] == FAILED.text()
    assert {name: a["Value"] for name, a in envelope["MessageAttributes"].items()} == {
        "Kind": "failed", "Service": "orders", "Environment": "prod", "Sha": FAILED.sha, "Stage": "orders/prod"}


def test_a_webhook_that_does_not_answer_fails_without_showing_its_url_or_key(http_receiver, monkeypatch):
    down = http_receiver()  # its port is free: nothing listens
    token, key = secrets.token_hex(8), secrets.token_hex(16)
    monkeypatch.setenv("AUDIT_URL", f"{down.url}/hooks/{token}")
    monkeypatch.setenv("AUDIT_KEY", key)
    channel = NotificationChannel(name="audit", type="webhook", url_env="AUDIT_URL", hmac_key_env="AUDIT_KEY")

    with pytest.raises(DeliveryFailed) as caught:
        Notifier(timeout_seconds=2).send(channel, FAILED)

    message = str(caught.value)
    assert message.startswith("channel audit (webhook, url from $AUDIT_URL): did not answer: ConnectionRefusedError")
    assert token not in message and key not in message and str(down.port) not in message


def test_slack_refusing_the_message_is_a_delivery_failure_naming_the_answer(http_receiver, monkeypatch):
    receiver = http_receiver(status=404, answer=b"no_service").start()
    token = secrets.token_hex(12)
    monkeypatch.setenv("SLACK_URL", f"{receiver.url}/services/T000/B000/{token}")
    channel = NotificationChannel(name="team-chat", type="slack", url_env="SLACK_URL")

    with pytest.raises(DeliveryFailed) as caught:
        Notifier().send(channel, FAILED)

    assert str(caught.value) == "channel team-chat (slack, url from $SLACK_URL): answered HTTP 404: no_service"


def test_a_channel_whose_variable_is_not_set_names_the_variable(monkeypatch):
    monkeypatch.delenv("SLACK_URL", raising=False)
    channel = NotificationChannel(name="team-chat", type="slack", url_env="SLACK_URL")
    with pytest.raises(DeliveryFailed, match=r"\$SLACK_URL is not set in the orchestrator's environment"):
        Notifier().send(channel, FAILED)


def test_an_sns_endpoint_that_does_not_answer_names_the_topic_and_region(free_port, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    topic = "arn:aws:sns:eu-west-1:123456789012:releases"
    channel = NotificationChannel(name="releases", type="sns", topic_arn=topic,
                                  endpoint_url=f"http://127.0.0.1:{free_port}")
    with pytest.raises(DeliveryFailed) as caught:
        Notifier(timeout_seconds=2).send(channel, FAILED)
    assert str(caught.value).startswith(f"channel releases (sns {topic}) in eu-west-1: EndpointConnectionError")
