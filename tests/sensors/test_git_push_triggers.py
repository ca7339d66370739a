"""Push triggers: the Git sensor ticks often, asks every branch once per poll interval, and a pushed branch at once.

Real repositories behind a real git daemon (its log counts every ls-remote and fetch), the real sensor, and
for the push-to-build figure a real HTTP request to the receiver (release_graph/webhooks.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import yaml

from release_graph.fleet import Fleet, load_fleet
from release_graph.webhooks import Receiver
from resources.git import GitResource
from resources.push_spool import read_nudges, write_nudge
from resources.registry import Registry
from sensors.git_commits import HANDLED_PUSHES_KEY, LAST_FULL_POLL_KEY, build_git_commit_sensor

DOCKERFILE = "FROM 127.0.0.1:5000/base/busybox:latest\nCMD [\"true\"]\n"
POLL = 10


@pytest.fixture
def git(tmp_path: Path) -> GitResource:
    return GitResource(mirror_dir=str(tmp_path / "mirrors"))


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "state" / "git-pushes"


def write_fleet(tmp_path: Path, services: dict) -> Fleet:
    document = {"fleet": "shop", "registry": "127.0.0.1:5000/push-triggers", "services": services,
                "environments": {"staging": {"target": "docker"}}}
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return load_fleet(path)


def built(repo: str) -> dict:
    return {"repo": repo, "build": {"dockerfile": "Dockerfile"}, "port": 8080}


class Story:
    """Two services in two repos behind the daemon, already seen by the sensor (their heads in the cursor)."""

    def __init__(self, tmp_path, new_repo, git_daemon, git, spool, instance):
        self.daemon, self.git, self.spool, self.instance = git_daemon, git, spool, instance
        self.orders = new_repo("orders", base=git_daemon.base)
        self.payments = new_repo("payments", base=git_daemon.base)
        heads = {name: repo.commit("first", {"Dockerfile": DOCKERFILE})
                 for name, repo in [("orders", self.orders), ("payments", self.payments)]}
        self.fleet = write_fleet(tmp_path, {"orders": built(git_daemon.url("orders")),
                                            "payments": built(git_daemon.url("payments"))})
        self.sensor = build_git_commit_sensor(self.fleet, minimum_interval_seconds=1, poll_interval_seconds=POLL,
                                              push_spool=spool)
        self.cursor: str | None = json.dumps({self.key(name): sha for name, sha in heads.items()})

    def key(self, name: str) -> str:
        return f"{self.daemon.url(name)}@main"

    def tick(self, *, keep_cursor: bool = True) -> dg.SensorResult:
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor,
                                          resources={"git": self.git, "registry": Registry()})
        result = self.sensor(context)
        assert isinstance(result, dg.SensorResult)
        if keep_cursor:  # what the daemon does when a tick returns
            self.cursor = result.cursor
        return result

    def asked(self) -> dict[str, int]:
        return {name: self.daemon.requests_for(name) for name in ("orders", "payments")}

    def poll_due(self) -> None:
        """As if the poll interval passed since the last full poll."""
        cursor = json.loads(self.cursor)
        cursor[LAST_FULL_POLL_KEY] = f"{time.time() - POLL - 1:.3f}"
        self.cursor = json.dumps(cursor)


@pytest.fixture
def story(tmp_path, new_repo, git_daemon, git, spool, instance) -> Story:
    return Story(tmp_path, new_repo, git_daemon, git, spool, instance)


def requested(result: dg.SensorResult) -> dict[str, str]:
    return {r.tags["release/service"]: r.tags["release/git_sha"] for r in result.run_requests or []}


def test_an_old_cursor_is_a_full_poll_and_a_tick_before_the_poll_interval_asks_no_repository(story):
    # the cursor of a sensor without push triggers: a flat object of branch -> head, no reserved key
    first = story.tick()
    assert story.asked() == {"orders": 1, "payments": 1}  # one ls-remote each
    assert first.skip_reason.skip_message == "no new commits on 2 tracked branch(es)"
    cursor = json.loads(first.cursor)
    assert set(cursor) == {story.key("orders"), story.key("payments"), LAST_FULL_POLL_KEY}
    assert abs(float(cursor[LAST_FULL_POLL_KEY]) - time.time()) < 5

    story.orders.commit("orders: a change nobody pushed a webhook for", {"app.txt": "2"})
    second = story.tick()

    assert story.asked() == {"orders": 1, "payments": 1}  # no ls-remote at all
    assert not second.run_requests
    assert second.skip_reason.skip_message.startswith("no push received; next poll of 2 tracked branch(es) in ")
    assert json.loads(second.cursor) == cursor


def test_without_a_webhook_polling_still_finds_the_commit_once_the_interval_passed(story):
    story.tick()
    head = story.orders.commit("orders: a change nobody pushed a webhook for", {"app.txt": "2"})
    assert not story.tick().run_requests

    story.poll_due()
    found = story.tick()

    assert requested(found) == {"orders": head}
    assert story.daemon.requests_for("payments") == 2  # a full poll asks every branch
    assert float(json.loads(found.cursor)[LAST_FULL_POLL_KEY]) > time.time() - 5


def test_a_nudge_makes_the_next_tick_ask_that_branch_at_once_and_is_removed_after_the_cursor_was_kept(story, spool):
    story.tick()
    head = story.orders.commit("orders: pushed", {"app.txt": "2"})
    write_nudge(spool, story.key("orders"), story.daemon.url("orders"), "main", head)
    [nudge], _ = read_nudges(spool)

    pushed = story.tick(keep_cursor=False)  # the daemon died before it stored this tick's cursor

    assert requested(pushed) == {"orders": head}
    assert pushed.run_requests[0].run_key == f"orders:{head}"
    assert story.daemon.requests_for("payments") == 1  # only the pushed branch was asked
    assert json.loads(pushed.cursor)[HANDLED_PUSHES_KEY] == nudge.name
    assert read_nudges(spool)[0] == [nudge]  # kept until a tick's cursor naming it was stored

    again = story.tick()  # the same old cursor again: handled twice, the same run key (no second build)
    assert [r.run_key for r in again.run_requests] == [f"orders:{head}"]
    assert read_nudges(spool)[0] == [nudge]

    after = story.tick()  # this tick got the cursor naming the nudge: it removes it, and asks nobody
    assert read_nudges(spool) == ([], [])
    assert HANDLED_PUSHES_KEY not in json.loads(after.cursor)
    assert not after.run_requests
    assert story.daemon.requests_for("payments") == 1


def test_a_nudge_for_another_fleets_branch_is_left_in_the_spool(story, spool):
    story.tick()
    write_nudge(spool, "git://elsewhere/other@main", "git://elsewhere/other", "main", "0" * 40)
    story.tick()
    story.tick()
    assert [n.branch_key for n in read_nudges(spool)[0]] == ["git://elsewhere/other@main"]
    assert story.asked() == {"orders": 1, "payments": 1}


def test_push_to_run_request_through_the_receiver_and_the_sensor(story, spool, capsys):
    """From the moment the webhook POST returns to the tick that returns the run request, the sensor called
    every 0.5 s (the daemon's own loop is not measured here)."""
    secret = b"push-trigger-secret"
    story.tick()
    head = story.orders.commit("orders: pushed through the webhook", {"app.txt": "2"})
    body = json.dumps({"ref": "refs/heads/main", "after": head,
                       "repository": {"clone_url": story.daemon.url("orders") + ".git"}}).encode()
    signature = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()

    with Receiver(lambda: story.fleet, secret, spool=spool) as receiver:
        request = urllib.request.Request(receiver.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "X-GitHub-Event": "push", "X-Hub-Signature-256": signature})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
        posted = time.monotonic()
        ticks, result = 0, None
        while time.monotonic() - posted < POLL:
            tick_started = time.monotonic()
            result = story.tick()
            ticks += 1
            if result.run_requests:
                break
            time.sleep(max(0.0, 0.5 - (time.monotonic() - tick_started)))
        elapsed = time.monotonic() - posted
        tick_took = time.monotonic() - tick_started

    assert requested(result) == {"orders": head}
    assert ticks == 1  # the first tick after the push: no poll interval waited for
    assert elapsed < 2
    with capsys.disabled():
        print(f"\npush-to-run-request: {elapsed:.3f} s after the POST returned ({ticks} tick of {tick_took:.3f} s)")
