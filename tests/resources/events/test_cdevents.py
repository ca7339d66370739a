"""The CDEvents sink: each deployment event becomes a CloudEvent in structured JSON mode whose data is a CDEvent
valid against its type's schema (tests/resources/events/schemas), POSTed to a real HTTP receiver on loopback.
A receiver that answers 503 or is not listening is SinkUnavailable (try again), a 400 is SinkRefused (never),
and neither message repeats the sink's URL, which carries its token."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import jsonschema
import pytest

from release_graph.fleet.model import CDEventsSink
from resources.events import ServiceEvent, SinkRefused, SinkUnavailable
from resources.events.cdevents import CDEVENT_TYPES, CDEventsSinkAdapter, cdevent, purl

SCHEMAS = Path(__file__).parent / "schemas"
DIGEST = "sha256:" + "ab" * 32
BEFORE = "sha256:" + "cd" * 32


def schema_of(kind: str) -> dict:
    return json.loads((SCHEMAS / f"service-{kind}.json").read_text())


def event(kind: str, **changes) -> ServiceEvent:
    values = {"kind": kind, "fleet": "shop", "service": "orders", "environment": "prod", "at": 1_780_000_000.25,
              "key": f"{kind}|orders/prod|42", "repository": "127.0.0.1:5000/shop/orders", "digest": DIGEST,
              "previous_digest": BEFORE, "sha": "5e1f" + "0" * 36, "run_id": "r-1", "deployment": True}
    return ServiceEvent(**{**values, **changes})


@pytest.fixture
def sink(http_receiver, monkeypatch):
    """(a started receiver, the adapter whose $RG_TEST_CDEVENTS_URL points at it with a token in the path)."""
    receiver = http_receiver(status=202).start()
    token = secrets.token_hex(12)
    monkeypatch.setenv("RG_TEST_CDEVENTS_URL", f"{receiver.url}/events/{token}")
    return receiver, CDEventsSinkAdapter(CDEventsSink(sink_url_env="RG_TEST_CDEVENTS_URL"), "shop",
                                         timeout_seconds=2), token


def test_the_artifact_is_a_purl_of_the_oci_image_by_digest():
    assert purl("127.0.0.1:5000/shop/orders", DIGEST) == (
        f"pkg:oci/orders@{DIGEST}?repository_url=127.0.0.1:5000/shop/orders")


@pytest.mark.parametrize("kind", ["deployed", "upgraded", "rolledback", "removed"])
def test_each_kind_is_a_cdevent_valid_against_its_schema(kind):
    data = cdevent(event(kind), "/release-graph/shop")
    jsonschema.validate(data, schema_of(kind))
    assert data["context"]["type"] == CDEVENT_TYPES[kind] == f"dev.cdevents.service.{kind}.0.2.0"
    assert data["subject"]["id"] == "orders" and data["subject"]["content"]["environment"]["id"] == "prod"
    assert data["context"]["timestamp"] == "2026-05-28T20:26:40.250000Z"
    if kind != "removed":
        assert data["subject"]["content"]["artifactId"].startswith(f"pkg:oci/orders@{DIGEST}")


def test_a_schema_refuses_an_event_without_what_its_type_requires():
    data = cdevent(event("upgraded"), "/release-graph/shop")
    del data["subject"]["content"]["artifactId"]
    with pytest.raises(jsonschema.ValidationError, match="artifactId"):
        jsonschema.validate(data, schema_of("upgraded"))


def test_a_failure_and_a_rollback_to_nothing_have_no_cdevent():
    assert cdevent(event("failed", digest=""), "/release-graph/shop") is None
    assert cdevent(event("rolledback", digest=""), "/release-graph/shop") is None


def test_an_upgrade_is_posted_as_a_structured_cloudevent_with_a_stable_id(sink):
    receiver, adapter, _ = sink
    assert adapter.send(event("upgraded")) is True
    assert adapter.send(event("upgraded")) is True  # the same event sent again (a cursor that was not saved)
    first, again = receiver.received
    assert first["headers"]["Content-Type"].startswith("application/cloudevents+json")
    cloud_event = json.loads(first["body"])
    assert {k: cloud_event[k] for k in ("specversion", "type", "source", "subject", "datacontenttype")} == {
        "specversion": "1.0", "type": "dev.cdevents.service.upgraded.0.2.0", "source": "/release-graph/shop",
        "subject": "orders", "datacontenttype": "application/json"}
    jsonschema.validate(cloud_event["data"], schema_of("upgraded"))
    # CDEvents' CloudEvents binding: the CloudEvent's id is the CDEvent's, the same for the same event
    assert cloud_event["id"] == cloud_event["data"]["context"]["id"] == json.loads(again["body"])["id"]
    assert cloud_event["data"]["customData"] == {"fleet": "shop", "git_sha": "5e1f" + "0" * 36, "digest": DIGEST,
                                                 "previous_digest": BEFORE, "run_id": "r-1"}


def test_a_sink_that_answers_503_is_unavailable_and_one_that_answers_400_refuses(sink):
    receiver, adapter, token = sink
    receiver.status = 503
    with pytest.raises(SinkUnavailable) as unavailable:
        adapter.send(event("deployed"))
    assert not isinstance(unavailable.value, SinkRefused)
    receiver.status = 400
    with pytest.raises(SinkRefused) as refused:
        adapter.send(event("deployed"))
    assert str(refused.value) == "sink cdevents (url from $RG_TEST_CDEVENTS_URL): answered HTTP 400 Bad Request"
    assert token not in str(unavailable.value) + str(refused.value)


def test_a_sink_that_is_not_listening_is_unavailable_without_its_url(sink):
    receiver, adapter, token = sink
    receiver.stop()
    with pytest.raises(SinkUnavailable, match=r"sink cdevents \(url from \$RG_TEST_CDEVENTS_URL\): did not answer: "
                       r"ConnectionRefusedError") as caught:
        adapter.send(event("deployed"))
    assert token not in str(caught.value)


def test_a_sink_whose_variable_is_not_set_is_unavailable(sink, monkeypatch):
    _, adapter, _ = sink
    monkeypatch.delenv("RG_TEST_CDEVENTS_URL")
    with pytest.raises(SinkUnavailable, match=r"\$RG_TEST_CDEVENTS_URL is not set"):
        adapter.send(event("deployed"))
