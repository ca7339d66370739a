"""The push receiver (`release-graph webhooks`), over real HTTP: GitHub, GitLab and Gitea pushes, signed or not.

A verified push to a tracked branch leaves one nudge in the spool; anything else is refused or ignored with one
log line that never holds the secret or the signature.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from release_graph.fleet import Fleet, load_fleet
from release_graph.webhooks import Receiver, normalize_repo_url
from resources.push_spool import read_nudges

SECRET = b"s3cret-webhook-key-0123"
SHA = "9fceb02d0ae598e95dc970b74767f19372d61af8"


def write_fleet(tmp_path: Path) -> Fleet:
    document = {
        "fleet": "shop",
        "registry": "127.0.0.1:5000/shop",
        "services": {
            "orders": {"repo": "https://github.com/Acme/orders.git", "build": {"dockerfile": "Dockerfile"},
                       "port": 8080},
            "payments": {"repo": "git@gitlab.example.com:acme/payments.git", "branch": "release",
                         "build": {"dockerfile": "Dockerfile"}, "port": 8080},
            "stock": {"repo": "https://gitea.example.com/acme/stock", "build": {"dockerfile": "Dockerfile"},
                      "port": 8080},
        },
        "environments": {"staging": {"target": "docker"}},
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return load_fleet(path)


def github_push(repo: str = "Acme/orders", branch: str = "main") -> dict:
    return {"ref": f"refs/heads/{branch}", "before": "0" * 40, "after": SHA,
            "repository": {"full_name": repo, "clone_url": f"https://GitHub.com/{repo}.git",
                           "ssh_url": f"git@github.com:{repo}.git", "html_url": f"https://github.com/{repo}"}}


def gitlab_push() -> dict:
    return {"object_kind": "push", "ref": "refs/heads/release", "before": "0" * 40, "after": SHA,
            "project": {"path_with_namespace": "acme/payments",
                        "git_http_url": "https://gitlab.example.com/acme/payments.git",
                        "git_ssh_url": "git@gitlab.example.com:acme/payments.git"}}


def gitea_push() -> dict:
    return {"ref": "refs/heads/main", "before": "0" * 40, "after": SHA,
            "repository": {"full_name": "acme/stock", "clone_url": "https://gitea.example.com/acme/stock.git",
                           "ssh_url": "git@gitea.example.com:acme/stock.git"}}


def github_headers(body: bytes, secret: bytes = SECRET, event: str = "push") -> dict:
    return {"X-GitHub-Event": event,
            "X-Hub-Signature-256": "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()}


def gitea_headers(body: bytes, secret: bytes = SECRET) -> dict:
    # Gitea sends GitHub's headers too; its own signature is the one checked
    signature = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return {"X-Gitea-Event": "push", "X-GitHub-Event": "push", "X-Gitea-Signature": signature,
            "X-Hub-Signature-256": "sha256=" + signature}


def gitlab_headers(token: bytes = SECRET) -> dict:
    return {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": token.decode()}


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "git-pushes"


@pytest.fixture
def receiver(tmp_path: Path, spool: Path):
    fleet = write_fleet(tmp_path)
    with Receiver(lambda: fleet, SECRET, spool=spool) as running:
        yield running


def post(receiver: Receiver, body: bytes, headers: dict) -> tuple[int, str]:
    request = urllib.request.Request(receiver.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def nudged(spool: Path) -> list[tuple[str, str]]:
    nudges, unreadable = read_nudges(spool)
    assert not unreadable
    return [(n.branch_key, n.sha) for n in nudges]


def logged(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "release_graph.webhooks")


# --- accepted -----------------------------------------------------------------------------------------------


def test_a_signed_github_push_to_a_tracked_branch_leaves_one_nudge(receiver, spool, caplog):
    caplog.set_level(logging.INFO, logger="release_graph.webhooks")
    body = json.dumps(github_push()).encode()

    status, text = post(receiver, body, github_headers(body))

    assert (status, text.strip()) == (202, f"accepted: https://GitHub.com/Acme/orders.git@main {SHA[:12]}")
    # matched despite the host's case and the trailing .git; named as the sensor's cursor names the branch
    assert nudged(spool) == [("https://github.com/Acme/orders.git@main", SHA)]
    document = json.loads(next(spool.glob("*.json")).read_text())
    assert document["repo"] == "https://github.com/Acme/orders.git"
    assert document["branch"] == "main"
    assert document["received_at"].endswith("+00:00")
    assert not list(spool.glob(".*"))  # written under a temporary name, then renamed
    assert "the Git sensor looks at it" in logged(caplog)


def test_a_github_push_sent_form_encoded_is_read_too(receiver, spool):
    body = urllib.parse.urlencode({"payload": json.dumps(github_push())}).encode()
    status, _ = post(receiver, body, {**github_headers(body), "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 202
    assert len(nudged(spool)) == 1


def test_a_gitlab_push_with_the_right_token_is_accepted_by_its_ssh_or_http_url(receiver, spool):
    body = json.dumps(gitlab_push()).encode()

    status, text = post(receiver, body, gitlab_headers())

    assert status == 202, text
    assert nudged(spool) == [("git@gitlab.example.com:acme/payments.git@release", SHA)]


def test_a_signed_gitea_push_is_accepted(receiver, spool):
    body = json.dumps(gitea_push()).encode()

    status, text = post(receiver, body, gitea_headers(body))

    assert status == 202, text
    assert nudged(spool) == [("https://gitea.example.com/acme/stock@main", SHA)]


def test_two_pushes_leave_two_nudges_and_a_ping_leaves_none(receiver, spool):
    body = json.dumps(github_push()).encode()
    assert post(receiver, body, github_headers(body))[0] == 202
    assert post(receiver, body, github_headers(body))[0] == 202
    assert len(nudged(spool)) == 2  # a second push never overwrites a nudge not yet handled

    ping = json.dumps({"zen": "Keep it simple.", "hook_id": 1}).encode()
    assert post(receiver, ping, github_headers(ping, event="ping")) == (200, "pong\n")
    issues = json.dumps({"action": "opened"}).encode()
    assert post(receiver, issues, github_headers(issues, event="issues"))[0] == 202
    assert len(nudged(spool)) == 2


# --- refused ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("headers", "status", "reason"), [
    (lambda body: github_headers(body, secret=b"another key"), 401,
     "github: X-Hub-Signature-256 does not match the body"),
    (lambda body: {"X-GitHub-Event": "push"}, 401, "github: X-Hub-Signature-256 missing"),
    (lambda body: {**github_headers(body), "X-Hub-Signature-256": github_headers(body)["X-Hub-Signature-256"][7:]},
     401, "github: X-Hub-Signature-256 does not match the body"),  # the bare hex, without sha256=
    (lambda body: gitea_headers(body, secret=b"another key"), 401, "gitea: X-Gitea-Signature does not match"),
    (lambda body: {"X-Gitea-Event": "push"}, 401, "gitea: X-Gitea-Signature missing"),
    (lambda body: gitlab_headers(token=b"not the secret"), 401, "gitlab: X-Gitlab-Token is not the shared secret"),
    (lambda body: {"X-Gitlab-Event": "Push Hook"}, 401, "gitlab: X-Gitlab-Token missing"),
    (lambda body: {}, 401, "unsigned: no GitHub, GitLab or Gitea signature or token header"),
])
def test_a_bad_or_missing_signature_or_token_is_refused_and_logged_without_the_secret(
    receiver, spool, caplog, headers, status, reason
):
    caplog.set_level(logging.INFO, logger="release_graph.webhooks")
    body = json.dumps(github_push()).encode()
    sent = headers(body)

    answer = post(receiver, body, sent)

    assert answer[0] == status
    assert reason in answer[1]
    assert nudged(spool) == []
    log = logged(caplog)
    assert f"refused a webhook from 127.0.0.1 ({status}): {reason}" in log
    assert SECRET.decode() not in log and SECRET.decode() not in answer[1]
    for value in sent.values():
        assert value in {"push", "Push Hook"} or value not in log  # no signature or token reaches the log


@pytest.mark.parametrize(("body", "reason"), [
    (b"{not json", "github: the body is not JSON"),
    (b"[1, 2]", "github: the body is not a JSON object"),
    (json.dumps({"zen": "no push here"}).encode(), "github: not a push event (no repository, ref or after)"),
    (json.dumps({"ref": "refs/heads/main", "after": SHA, "repository": {"name": "x"}}).encode(),
     "github: the push names no repository URL"),
])
def test_a_signed_body_that_is_no_push_event_is_refused_400_and_logged(receiver, spool, caplog, body, reason):
    caplog.set_level(logging.INFO, logger="release_graph.webhooks")

    status, text = post(receiver, body, github_headers(body))

    assert (status, text.strip()) == (400, f"refused: {reason}")
    assert nudged(spool) == []
    assert f"refused a webhook from 127.0.0.1 (400): {reason}" in logged(caplog)
    assert SECRET.decode() not in logged(caplog)


# --- not tracked --------------------------------------------------------------------------------------------


def test_a_push_to_an_untracked_repository_or_branch_or_a_tag_is_answered_202_and_logged(receiver, spool, caplog):
    caplog.set_level(logging.INFO, logger="release_graph.webhooks")
    for push, answer in [
        (github_push(repo="Acme/unknown"), "not tracked: https://GitHub.com/Acme/unknown.git@main"),
        (github_push(branch="feature/x"), "not tracked: https://GitHub.com/Acme/orders.git@feature/x"),
        ({**github_push(), "ref": "refs/tags/v1.0"}, "ignored: refs/tags/v1.0 is not a branch"),
    ]:
        body = json.dumps(push).encode()
        assert post(receiver, body, github_headers(body)) == (202, answer + "\n")
    assert nudged(spool) == []
    log = logged(caplog)
    assert "push to https://GitHub.com/Acme/unknown.git@main (9fceb02d0ae5) from 127.0.0.1 not tracked" in log
    assert "feature/x (9fceb02d0ae5) from 127.0.0.1 not tracked" in log


def test_repository_urls_are_compared_without_scheme_user_host_case_or_dot_git():
    same = {normalize_repo_url(url) for url in [
        "https://github.com/Acme/orders.git", "https://GITHUB.com/Acme/orders", "git@github.com:Acme/orders.git",
        "ssh://git@github.com/Acme/orders.git", "https://token:x@github.com/Acme/orders/",
    ]}
    assert same == {"github.com/Acme/orders"}
    assert normalize_repo_url("git://127.0.0.1:9418/orders") == "127.0.0.1:9418/orders"
    assert normalize_repo_url("https://github.com/acme/orders") != normalize_repo_url("https://github.com/Acme/orders")
    assert normalize_repo_url("/srv/git/orders.git") == "/srv/git/orders"


# --- the command --------------------------------------------------------------------------------------------


def test_the_command_refuses_to_start_without_its_secret(tmp_path, capsys, monkeypatch):
    from release_graph.cli.main import main

    write_fleet(tmp_path)
    monkeypatch.delenv("SHOP_WEBHOOK_SECRET", raising=False)
    assert main(["webhooks", "--port", "0", "--fleet", str(tmp_path / "fleet.yaml"),
                 "--secret-env", "SHOP_WEBHOOK_SECRET"]) == 2
    assert "$SHOP_WEBHOOK_SECRET is not set" in capsys.readouterr().out


def test_the_command_serves_pushes_into_the_state_folders_spool(tmp_path):
    write_fleet(tmp_path)
    state = tmp_path / "state"
    env = {**os.environ, "RELEASE_GRAPH_STATE": str(state), "SHOP_WEBHOOK_SECRET": SECRET.decode()}
    process = subprocess.Popen(
        [sys.executable, "-m", "release_graph.cli.main", "webhooks", "--port", "0", "--secret-env",
         "SHOP_WEBHOOK_SECRET", "--fleet", str(tmp_path / "fleet.yaml")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        assert "for 3 tracked branch(es)" in line, line
        url = re.search(r"listening on (\S+) ", line).group(1)
        body = json.dumps(github_push()).encode()
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", **github_headers(body)})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
        assert nudged(state / "git-pushes") == [("https://github.com/Acme/orders.git@main", SHA)]
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert "the Git sensor looks at it" in stderr
    assert SECRET.decode() not in stderr
