"""Release notifications on the sensor daemon's own loop: a code server runs the story's definitions, and each
tick is Dagster's `execute_sensor_iteration`, which keeps the sensor's cursor, ticks and logs in the
instance's storage as `dagster-daemon run` does.

Given inventory's image whose unit tests failed, when a release manager deploys it to dev anyway, the fleet's
own deploy step refuses (a real failed run), and then SNS (an SQS queue subscribed on a real moto_server),
Slack and a signed webhook (HTTP servers on loopback) each receive exactly one message, however many ticks
follow and across a restart of the daemon. The webhook is down at first: that is logged, fails nothing, and
the message arrives at the first tick after it answers. No secret reaches the instance's storage.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import textwrap
import time
from pathlib import Path

import boto3
import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef
from dagster._core.scheduler.instigation import TickStatus
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.workspace.load_target import PythonFileTarget
from dagster._daemon.sensor import execute_sensor_iteration

from release_graph.fleet import load_fleet
from release_graph.release import metadata as M
from release_graph.wiring import build_definitions, default_resources
from resources.notify.webhook import SIGNATURE_HEADER
from sensors.notifications import SENSOR_NAME

REGION = "eu-west-1"
SHA = "5e1f" + "0" * 36
DIGEST = "sha256:" + "ab" * 32

FLEET = """\
fleet: {fleet}
registry: 127.0.0.1:5000/{fleet}
services:
  inventory: {{repo: repos/inventory, build: {{dockerfile: Dockerfile}}}}
environments:
  dev: {{target: docker}}
  prod: {{target: docker, approval: required}}
notifications:
{settings}
"""

DEFINITIONS = """\
from pathlib import Path

import dagster as dg

from release_graph.fleet import load_fleet
from resources.notify import Notifier
from sensors.notifications import build_notification_sensor

# The notification sensor alone, ticking every second: the daemon would otherwise also tick the fleet's git
# and drift sensors, and a story cannot wait 30 s between ticks.
fleet = load_fleet(Path(__file__).parent / "fleet.yaml")
defs = dg.Definitions(sensors=[build_notification_sensor(fleet, minimum_interval_seconds=1)],
                      resources={"notifier": Notifier(timeout_seconds=2)})
"""


class Daemon:
    """The sensor daemon over a fresh instance on `home`'s storage; leaving the block stops it."""

    def __init__(self, home: Path, definitions: Path):
        self.home, self.definitions = home, definitions

    def __enter__(self) -> Daemon:
        self.stack = contextlib.ExitStack()
        self.instance = self.stack.enter_context(dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(self.home))))
        target = PythonFileTarget(python_file=str(self.definitions), attribute="defs",
                                  working_directory=str(self.definitions.parent), location_name="fleet")
        self.context = self.stack.enter_context(create_test_daemon_workspace_context(target, self.instance))
        self.last = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()

    def tick(self) -> None:
        time.sleep(max(0.0, self.last + 1.1 - time.time()))  # the sensor's minimum interval
        self.started = time.time()
        list(execute_sensor_iteration(self.context, logging.getLogger("sensor-daemon"), None, None))
        self.last = time.time()

    def ticks(self) -> list:
        repository = next(iter(self.context.create_request_context().get_code_location("fleet")
                               .get_repositories().values()))
        sensor = repository.get_sensor(SENSOR_NAME)
        return list(self.instance.get_ticks(sensor.get_remote_origin_id(), sensor.selector_id))


@pytest.fixture
def sns_queue(moto_server, monkeypatch, run_id):
    """An SNS topic on moto_server with an SQS queue subscribed to it: (topic ARN, moto's endpoint, a function
    reading the queue)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    sns = boto3.client("sns", region_name=REGION, endpoint_url=moto_server)
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=moto_server)
    name = f"{run_id}-{secrets.token_hex(3)}"
    topic = sns.create_topic(Name=name)["TopicArn"]
    queue = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    received: list[dict] = []

    def read() -> list[dict]:
        """Everything the queue has received so far (moto delivers at publish time)."""
        while True:
            messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages")
            if not messages:
                return received
            for message in messages:
                received.append(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])

    return topic, moto_server, read


@pytest.fixture
def story(tmp_path, monkeypatch, run_id):
    """A fleet folder (manifest, inventory's repo, the code server's definitions) and its instance's home."""
    (tmp_path / "repos" / "inventory").mkdir(parents=True)
    (tmp_path / "repos" / "inventory" / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "definitions.py").write_text(DEFINITIONS)
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("RELEASE_GRAPH_STATE", str(tmp_path / "state"))

    def write(settings: str):
        (tmp_path / "fleet.yaml").write_text(FLEET.format(fleet=f"{run_id}n", settings=textwrap.indent(
            textwrap.dedent(settings).strip(), "  ")))
        return load_fleet(tmp_path / "fleet.yaml"), home, tmp_path / "definitions.py"

    return write


def record_image(instance, *, unit_tests_passed: bool) -> None:
    """inventory's image as the image step records it (digest, commit, checks)."""
    instance.report_runless_asset_event(dg.AssetMaterialization(
        asset_key=["inventory", "image"], metadata={M.DIGEST: DIGEST, M.GIT_SHA: SHA}))
    for check in ("unit_tests", "sast"):
        instance.report_runless_asset_event(dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey(["inventory", "image"]), check_name=check,
            passed=unit_tests_passed or check != "unit_tests", metadata={M.DIGEST: DIGEST}))


def files_holding(home: Path, *values: str) -> list[str]:
    """Every file of the instance's storage (run and event databases, the schedule storage with the sensor's
    cursor and ticks, captured logs) that contains any of `values`."""
    return [str(path) for path in home.rglob("*") if path.is_file()
            and any(value.encode() in path.read_bytes() for value in values)]


def test_a_refused_deployment_notifies_each_channel_once_and_a_channel_that_was_down_once_it_answers(
        story, sns_queue, http_receiver, monkeypatch):
    topic, endpoint, sqs_messages = sns_queue
    slack, webhook = http_receiver().start(), http_receiver(status=204)  # the webhook is down at first
    slack_token, webhook_token, key = secrets.token_hex(12), secrets.token_hex(12), secrets.token_hex(20)
    monkeypatch.setenv("RG_TEST_SLACK_URL", f"{slack.url}/services/T000/B000/{slack_token}")
    monkeypatch.setenv("RG_TEST_AUDIT_URL", f"{webhook.url}/hooks/{webhook_token}")
    monkeypatch.setenv("RG_TEST_AUDIT_KEY", key)
    fleet, home, definitions = story(f"""
        channels:
          releases: {{type: sns, topic_arn: "{topic}", endpoint_url: "{endpoint}"}}
          team-chat: {{type: slack, url_env: RG_TEST_SLACK_URL}}
          audit: {{type: webhook, url_env: RG_TEST_AUDIT_URL, hmac_key_env: RG_TEST_AUDIT_KEY}}
    """)

    with dg.instance_for_test(temp_dir=str(home)) as instance, Daemon(home, definitions) as daemon:
        daemon.tick()  # the sensor's first tick: nothing has failed
        assert not slack.received and not sqs_messages()

        # Given inventory's image whose unit tests failed
        record_image(instance, unit_tests_passed=False)
        # when a release manager deploys it to dev anyway, the fleet's own deploy step refuses
        defs = build_definitions(fleet, resources=default_resources(fleet))
        run = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey(["inventory", "dev"])], raise_on_error=False,
            tags={"release/trigger": "cli"})
        assert not run.success
        failed_at = instance.get_run_record_by_id(run.run_id).end_time

        # then at the next tick SNS and Slack each receive one message; the webhook does not answer
        daemon.tick()
        assert len(slack.received) == 1 and len(sqs_messages()) == 1 and not webhook.received
        latency = (slack.received[0]["at"] - failed_at, slack.received[0]["at"] - daemon.started)
        daemon.tick()  # still down: tried again, and nothing is sent twice
        assert len(slack.received) == 1 and len(sqs_messages()) == 1

        # once the webhook answers, the next tick delivers it there, once
        webhook.start()
        daemon.tick()
        daemon.tick()
        assert len(webhook.received) == 1
        # and no tick failed
        assert {t.status for t in daemon.ticks()} == {TickStatus.SKIPPED}, [t.error for t in daemon.ticks()]

    # Given the daemon restarted (a fresh instance on the same storage, a new code server)
    with Daemon(home, definitions) as daemon:
        daemon.tick()
        daemon.tick()
    # then nothing is sent again
    assert (len(slack.received), len(sqs_messages()), len(webhook.received)) == (1, 1, 1)

    # Every message names the service, environment, SHA, stage, reason and the run in the UI
    expected = {"service": "inventory", "environment": "dev", "sha": SHA, "stage": "inventory/dev",
                "link": f"http://127.0.0.1:3000/runs/{run.run_id}"}
    audit = webhook.received[0]
    signed = "sha256=" + hmac.new(key.encode(), audit["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(audit["headers"][SIGNATURE_HEADER], signed)
    message = json.loads(audit["body"])
    assert {k: message[k] for k in expected} == expected and message["kind"] == "failed"
    assert "did not pass inventory/image (blocking checks not passed: unit_tests" in message["reason"]
    slack_fields = json.loads(slack.received[0]["body"])["blocks"][1]["fields"]
    assert [f["text"] for f in slack_fields] == ["*service*\ninventory", "*environment*\ndev", f"*sha*\n{SHA}",
                                                 "*stage*\ninventory/dev"]
    (envelope,) = sqs_messages()
    assert envelope["Subject"] == f"inventory/dev ({SHA[:7]}) failed"
    assert expected["link"] in envelope["Message"] and message["reason"] in envelope["Message"]

    # The URLs' tokens and the signing key are nowhere in the instance's storage, whose logs do say what failed
    assert files_holding(home, slack_token, webhook_token, key) == []
    assert files_holding(home, "not delivered: failed of inventory/dev")
    print(f"\nSlack received the failure {latency[0]:.2f} s after the run ended (the sensor's 1 s interval), "
          f"{latency[1]:.2f} s after that tick began")


def test_a_release_waiting_for_an_approval_and_then_too_long_is_told_once_each(story, http_receiver, monkeypatch):
    webhook = http_receiver().start()
    monkeypatch.setenv("RG_TEST_AUDIT_URL", f"{webhook.url}/hooks/{secrets.token_hex(8)}")
    monkeypatch.setenv("RG_TEST_AUDIT_KEY", secrets.token_hex(16))
    fleet, home, definitions = story("""
        events: [approval_needed, waiting_too_long]
        waiting_limit_minutes: 0.05
        ui_url: http://dagster.shop.example:3000
        channels:
          audit: {type: webhook, url_env: RG_TEST_AUDIT_URL, hmac_key_env: RG_TEST_AUDIT_KEY}
    """)
    with dg.instance_for_test(temp_dir=str(home)) as instance, Daemon(home, definitions) as daemon:
        # Given inventory's release running in dev, so prod waits for an approval of it
        record_image(instance, unit_tests_passed=True)
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=["inventory", "dev"], metadata={M.DIGEST: DIGEST, M.GIT_SHA: SHA}))
        instance.report_runless_asset_event(dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey(["inventory", "dev"]), check_name="healthy", passed=True,
            metadata={M.DIGEST: DIGEST}))
        # when the sensor ticks, then the approval is asked for once
        daemon.tick()
        daemon.tick()
        assert [json.loads(r["body"])["kind"] for r in webhook.received] == ["approval_needed"]
        # and once it has waited longer than the limit (3 s), that is told once too
        time.sleep(max(0.0, instance.fetch_materializations(dg.AssetKey(["inventory", "dev"]), limit=1)
                       .records[0].timestamp + 3.2 - time.time()))
        daemon.tick()
        daemon.tick()
    kinds = [json.loads(r["body"])["kind"] for r in webhook.received]
    assert kinds == ["approval_needed", "waiting_too_long"]
    approval, waiting = (json.loads(r["body"]) for r in webhook.received)
    assert approval["stage"] == "inventory/prod" and approval["environment"] == "prod" and approval["sha"] == SHA
    assert approval["reason"].startswith(f"waiting for an approval of sha256:{'ab' * 6} ({SHA[:7]}) for prod")
    assert approval["link"] == "http://dagster.shop.example:3000/assets/inventory/prod"
    assert waiting["reason"].startswith("waiting for ") and "(limit 3 s): waiting for an approval" in waiting["reason"]
