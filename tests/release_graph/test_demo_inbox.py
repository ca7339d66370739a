"""The demo team's inbox (`python -m release_graph.demo inbox`, started by `make demo`) receives what the demo
manifest's signed webhook sends: a message signed with the right key is kept and printed, any other refused."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from release_graph import demo
from release_graph.fleet.model import NotificationChannel
from resources.notify.interface import DeliveryFailed, Notification
from resources.notify.webhook import WebhookChannel

CHANNEL = NotificationChannel(name="team-inbox", type="webhook", url_env="SHOP_NOTIFY_URL",
                              hmac_key_env="SHOP_NOTIFY_KEY")
ROLLBACK = Notification(kind="rolled_back", service="inventory", environment="prod", stage="inventory/prod",
                        sha="1a2b3c4d5e6f", reason="the analysis failed: mean response time 412 ms above 200 ms",
                        link="http://127.0.0.1:3000/runs/abc")


def test_a_signed_notification_is_kept_and_one_signed_with_another_key_is_refused(monkeypatch):
    with demo.Inbox(0, b"the-demo-key") as inbox:
        monkeypatch.setenv("SHOP_NOTIFY_URL", inbox.url)
        monkeypatch.setenv("SHOP_NOTIFY_KEY", "the-demo-key")
        WebhookChannel(CHANNEL).send(ROLLBACK)
        assert [(m["kind"], m["stage"], m["sha"]) for m in inbox.of_kind("rolled_back")] == [
            ("rolled_back", "inventory/prod", "1a2b3c4d5e6f")]
        assert demo.inbox_line(inbox.messages[0]) == (
            "inbox: inventory/prod (1a2b3c4) was rolled back: the analysis failed: mean response time 412 ms above "
            "200 ms (http://127.0.0.1:3000/runs/abc)")

        monkeypatch.setenv("SHOP_NOTIFY_KEY", "a-forged-key")
        with pytest.raises(DeliveryFailed, match="answered HTTP 401"):
            WebhookChannel(CHANNEL).send(ROLLBACK)
        assert inbox.refused == 1 and len(inbox.messages) == 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_inbox_command_prints_each_notification_and_refuses_to_start_without_its_key(monkeypatch):
    env = {k: v for k, v in os.environ.items() if k != "SHOP_NOTIFY_KEY"}
    refused = subprocess.run([sys.executable, "-m", "release_graph.demo", "inbox", "--port", str(free_port())],
                             env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "$SHOP_NOTIFY_KEY is not set" in refused.stderr

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "release_graph.demo", "inbox", "--port", str(port)],
                               env={**env, "SHOP_NOTIFY_KEY": "k-123"}, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().startswith(f"inbox: receiving release notifications on "
                                                    f"http://127.0.0.1:{port}/")
        monkeypatch.setenv("SHOP_NOTIFY_URL", f"http://127.0.0.1:{port}/release-notifications")
        monkeypatch.setenv("SHOP_NOTIFY_KEY", "k-123")
        started = time.monotonic()
        WebhookChannel(CHANNEL).send(ROLLBACK)
        assert process.stdout.readline().startswith("inbox: inventory/prod (1a2b3c4) was rolled back: the analysis")
        assert time.monotonic() - started < 30
    finally:
        process.terminate()
        process.wait(10)


def test_the_shoppers_command_runs_until_stopped():
    # (`make demo` starts it beside the UI: a crash there would leave prod's canaries without traffic, unseen)
    process = subprocess.Popen([sys.executable, "-m", "release_graph.demo", "shoppers", "--port", str(free_port()),
                                "--rate", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout.readline().startswith("shoppers: about 2 requests a second to the gateway")
        time.sleep(2)  # a few requests to a port where nothing answers: counted as failed, not a crash
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(10)


def test_a_deployment_event_lands_on_the_inbox_as_a_cdevent(monkeypatch):
    from release_graph.fleet.model import CDEventsSink
    from resources.events.cdevents import CDEventsSinkAdapter
    from resources.events.interface import ServiceEvent

    digest = "sha256:" + "ab" * 32
    with demo.Inbox(0, b"the-demo-key") as inbox:
        monkeypatch.setenv("SHOP_CDEVENTS_SINK_URL", inbox.cdevents_url)
        sink = CDEventsSinkAdapter(CDEventsSink(sink_url_env="SHOP_CDEVENTS_SINK_URL"), "shop")
        sink.send(ServiceEvent(kind="rolledback", fleet="shop", service="inventory", environment="prod",
                               at=time.time(), key="inventory/prod/1", repository="127.0.0.1:5000/shop/inventory",
                               digest=digest))
        (event,) = inbox.cdevents
        assert event["type"] == "dev.cdevents.service.rolledback.0.2.0" and inbox.messages == []
        assert demo.inbox_line(event) == ("inbox: cdevent service.rolledback inventory in prod "
                                          f"(pkg:oci/inventory@{digest}?repository_url=127.0.0.1:5000/shop/inventory)")
