"""A release manager configures notifications in fleet.yaml: channels for the fleet, an environment's own
overrides, and every mistake reported with file, line and field, never echoing what may be a secret."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from release_graph.cli.main import main as cli_main
from release_graph.fleet import ManifestError, load_fleet
from release_graph.fleet.model import NOTIFICATION_EVENTS

HEAD = """\
fleet: shop
registry: 127.0.0.1:5000/shop
services:
  orders: {image: "127.0.0.1:5000/vendor/orders:1.0"}
"""

GOOD = HEAD + """\
notifications:
  waiting_limit_minutes: 90
  ui_url: https://dagster.shop.example/
  channels:
    releases: {type: sns, topic_arn: "arn:aws:sns:eu-west-1:123456789012:releases"}
    team-chat: {type: slack, url_env: SHOP_SLACK_WEBHOOK_URL}
    audit: {type: webhook, url_env: SHOP_AUDIT_WEBHOOK_URL, hmac_key_env: SHOP_AUDIT_WEBHOOK_KEY}
environments:
  dev:
    notifications: {events: [failed]}
  staging: {}
  prod:
    approval: required
    notifications:
      waiting_limit_minutes: 15
      channels:
        pager: {type: sns, topic_arn: "arn:aws:sns:us-east-1:123456789012:pager", region: us-east-1,
                endpoint_url: "http://127.0.0.1:5001"}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_fleet(write(tmp_path, text))
    return caught.value.problems


def with_channel(channel: str, extra: str = "") -> str:
    return HEAD + f"notifications:\n{extra}  channels:\n    team-chat: {channel}\nenvironments:\n  prod: {{}}\n"


def test_the_fleets_channels_and_each_environments_overrides_become_settings(tmp_path):
    fleet = load_fleet(write(tmp_path, GOOD))
    top = fleet.notifications
    assert [(c.name, c.type) for c in top.channels] == [("releases", "sns"), ("team-chat", "slack"),
                                                        ("audit", "webhook")]
    assert top.events == NOTIFICATION_EVENTS and top.waiting_limit_minutes == 90
    assert top.ui_url == "https://dagster.shop.example"
    releases, team_chat, audit = top.channels
    assert releases.resolved_region() == "eu-west-1"  # from the topic's ARN
    assert (team_chat.url_env, audit.url_env, audit.hmac_key_env) == (
        "SHOP_SLACK_WEBHOOK_URL", "SHOP_AUDIT_WEBHOOK_URL", "SHOP_AUDIT_WEBHOOK_KEY")
    # dev: only failures, to the fleet's channels; staging: the fleet's settings as they are
    dev, staging, prod = (fleet.environments[name].notifications for name in ("dev", "staging", "prod"))
    assert dev.events == ("failed",) and dev.channels == top.channels
    assert staging == top
    # prod: its own channel and limit, the fleet's events and UI
    assert [c.name for c in prod.channels] == ["pager"] and prod.waiting_limit_minutes == 15
    assert prod.events == NOTIFICATION_EVENTS and prod.ui_url == top.ui_url
    assert prod.channels[0].resolved_endpoint_url() == "http://127.0.0.1:5001"
    assert fleet.notifications_for(None) == top and fleet.notifications_for("prod") == prod
    assert fleet.notifies and fleet.production.name == "prod"
    assert prod.channels_for("failed") == prod.channels and dev.channels_for("rolled_back") == ()


def test_a_fleet_without_notifications_notifies_nobody(tmp_path):
    fleet = load_fleet(write(tmp_path, HEAD + "environments:\n  prod: {}\n"))
    assert fleet.notifications is None and fleet.environments["prod"].notifications is None and not fleet.notifies


def test_an_unknown_channel_type_names_the_file_line_and_field(tmp_path):
    assert problems_of(tmp_path, with_channel("{type: teams, url_env: TEAMS_URL}")) == [
        "fleet.yaml:7: field 'notifications.channels.team-chat.type': unknown channel type 'teams' "
        "(expected one of sns, slack, webhook)"]


def test_a_channel_without_a_type_is_reported(tmp_path):
    assert problems_of(tmp_path, with_channel("{url_env: SLACK_URL}")) == [
        "fleet.yaml:7: field 'notifications.channels.team-chat.type': missing: the channel's type, one of "
        "sns, slack, webhook"]


def test_a_slack_channel_without_the_name_of_its_url_variable_is_reported(tmp_path):
    assert problems_of(tmp_path, with_channel("{type: slack}")) == [
        "fleet.yaml:7: field 'notifications.channels.team-chat.url_env': missing: the name of the environment "
        "variable that holds the webhook URL (a secret, never written in the manifest)"]


def test_a_webhook_without_the_name_of_its_signing_key_variable_is_reported(tmp_path):
    assert problems_of(tmp_path, with_channel("{type: webhook, url_env: AUDIT_URL}")) == [
        "fleet.yaml:7: field 'notifications.channels.team-chat.hmac_key_env': missing: the name of the environment "
        "variable that holds the key that signs each message (HMAC-SHA256) (a secret, never written in the "
        "manifest)"]


def test_a_webhook_url_written_in_the_manifest_is_refused_without_repeating_it(tmp_path):
    secret = "https://hooks.example.com/services/T000/B000/XXXXSECRET"
    problems = problems_of(tmp_path, with_channel(f"{{type: slack, url: '{secret}'}}"))
    assert ("fleet.yaml:7: field 'notifications.channels.team-chat.url': a slack channel's url is a secret: put it "
            "in an environment variable of the orchestrator and name that variable in url_env") in problems
    assert not any("XXXXSECRET" in p for p in problems)
    # ... and so is one pasted where the variable's name belongs
    problems = problems_of(tmp_path, with_channel(f"{{type: slack, url_env: '{secret}'}}"))
    assert problems == ["fleet.yaml:7: field 'notifications.channels.team-chat.url_env': expected the name of an "
                        "environment variable (letters, digits, '_'), which holds the webhook URL"]


def test_an_sns_channel_needs_a_topic_arn(tmp_path):
    assert problems_of(tmp_path, with_channel("{type: sns, topic_arn: releases}")) == [
        "fleet.yaml:7: field 'notifications.channels.team-chat.topic_arn': expected an SNS topic ARN such as "
        "arn:aws:sns:eu-west-1:123456789012:releases, got 'releases'"]


@pytest.mark.parametrize("limit", [0, -5, "an hour", True])
def test_a_waiting_limit_that_is_not_a_positive_number_of_minutes_is_reported(tmp_path, limit):
    text = with_channel("{type: slack, url_env: SLACK_URL}", extra=f"  waiting_limit_minutes: {limit}\n")
    assert problems_of(tmp_path, text) == [
        "fleet.yaml:6: field 'notifications.waiting_limit_minutes': expected a number of minutes greater than 0 "
        f"(a stage waiting longer is notified), got {limit!r}"]


def test_an_unknown_event_is_reported(tmp_path):
    text = with_channel("{type: slack, url_env: SLACK_URL}", extra="  events: [failed, deployed]\n")
    assert problems_of(tmp_path, text) == [
        "fleet.yaml:6: field 'notifications.events': expected a list of failed, rolled_back, approval_needed, "
        "waiting_too_long (or [] for none), got ['failed', 'deployed']"]


def test_an_environments_broken_override_names_the_environment(tmp_path):
    text = HEAD + """\
environments:
  prod:
    notifications:
      waiting_limit: 30
      channels:
        pager: {type: webhook, url_env: PAGER_URL}
"""
    assert problems_of(tmp_path, text) == [
        "fleet.yaml:8: environment 'prod', field 'notifications.waiting_limit': unknown key (expected one of: "
        "channels, events, ui_url, waiting_limit_minutes)",
        "fleet.yaml:10: environment 'prod', field 'notifications.channels.pager.hmac_key_env': missing: the name of "
        "the environment variable that holds the key that signs each message (HMAC-SHA256) (a secret, never "
        "written in the manifest)"]


def test_an_environment_override_without_channels_anywhere_is_reported(tmp_path):
    text = HEAD + "environments:\n  prod:\n    notifications: {events: [failed]}\n"
    assert problems_of(tmp_path, text) == [
        "fleet.yaml:7: environment 'prod', field 'notifications.channels': missing: at least one channel, e.g. "
        "{team-chat: {type: slack, url_env: SLACK_WEBHOOK_URL}} (here or in the top-level notifications)"]


def test_validate_prints_every_notification_problem_and_exits_2(tmp_path, capsys):
    path = write(tmp_path, with_channel("{type: teams}", extra="  waiting_limit_minutes: 0\n"))
    assert cli_main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "field 'notifications.waiting_limit_minutes'" in err and "unknown channel type 'teams'" in err
