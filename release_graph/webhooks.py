"""`release-graph webhooks`: a receiver for Git push events that makes the Git sensor look at once.

GitHub, GitLab and Gitea (Forgejo, Gogs) send a push event as JSON. Each is verified with the shared secret
before anything else is read: GitHub's `X-Hub-Signature-256` (`sha256=` and the HMAC-SHA256 of the raw body),
Gitea's `X-Gitea-Signature` (the hex HMAC-SHA256 of the body), GitLab's `X-Gitlab-Token` (the secret itself).
Every comparison is constant-time. A request without a valid signature or token is refused (401), a payload
that is no push event JSON too (400), each with one log line naming the reason, never the secret or the
signature. A push to a branch the fleet tracks (its repository URL compared without scheme, user, case of
the host or a trailing `.git`) leaves a nudge in the push spool (resources/push_spool.py), and the Git
sensor asks that branch on its next tick (sensors/git_commits.py); any other push is answered 202 "not
tracked". Polling stays: when the receiver is down, the sensor still finds each commit within its interval.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from release_graph.fleet import Fleet
from resources.git import redact_url
from resources.push_spool import spool_dir, write_nudge
from sensors.git_commits import cursor_key  # the sensor's own name for a branch

LOG = logging.getLogger("release_graph.webhooks")
SECRET_VARIABLE = "RELEASE_GRAPH_WEBHOOK_SECRET"  # the default variable holding the shared secret
MAX_BODY = 25 * 1024 * 1024  # GitHub caps a payload at 25 MB
PUSH_EVENTS = {"github": "push", "gitea": "push", "gitlab": "Push Hook"}


class Refused(Exception):
    """A request that is not a verified push event: `status` is the HTTP answer, the message the log's reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Push:
    provider: str  # github, gitlab, gitea
    repo_urls: tuple[str, ...]  # every URL the payload names the repository by
    branch: str
    sha: str


def normalize_repo_url(url: str) -> str:
    """`host[:port]/path` in lower-case host, without scheme, user, trailing `/` or `.git`; scp-like SSH
    (`git@host:owner/repo.git`) and URLs name the same repository alike. Local paths stay paths."""
    url = url.strip()
    scp = re.fullmatch(r"(?:[^@/:]+@)?([^/:]+):(?!//)(.*)", url)
    if scp and "://" not in url and not url.startswith("/"):
        host, path = scp.group(1), scp.group(2)
    else:
        parts = urlsplit(url)
        if not parts.netloc:
            return url.rstrip("/").removesuffix(".git")
        host, path = parts.netloc.rsplit("@", 1)[-1], parts.path
    path = path.strip("/").removesuffix(".git").rstrip("/")
    return f"{host.lower()}/{path}"


def verify(headers: Mapping[str, str], body: bytes, secret: bytes) -> str:
    """The provider whose signature or token on `body` matches `secret`; raises Refused (401) otherwise.
    Gitea also sends GitHub's headers, so its own are looked at first."""
    if headers.get("X-Gitea-Signature") is not None or headers.get("X-Gitea-Event") is not None:
        expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(headers.get("X-Gitea-Signature", "").strip().encode(), expected.encode()):
            raise Refused(401, "gitea: X-Gitea-Signature " + ("missing" if not headers.get("X-Gitea-Signature")
                                                             else "does not match the body"))
        return "gitea"
    if headers.get("X-Gitlab-Event") is not None or headers.get("X-Gitlab-Token") is not None:
        if not hmac.compare_digest(headers.get("X-Gitlab-Token", "").encode(), secret):
            raise Refused(401, "gitlab: X-Gitlab-Token " + ("missing" if not headers.get("X-Gitlab-Token")
                                                          else "is not the shared secret"))
        return "gitlab"
    if headers.get("X-Hub-Signature-256") is not None or headers.get("X-GitHub-Event") is not None:
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(headers.get("X-Hub-Signature-256", "").strip().encode(), expected.encode()):
            raise Refused(401, "github: X-Hub-Signature-256 " + ("missing" if not headers.get("X-Hub-Signature-256")
                                                                else "does not match the body"))
        return "github"
    raise Refused(401, "unsigned: no GitHub, GitLab or Gitea signature or token header")


def parse_push(provider: str, body: bytes, content_type: str = "application/json") -> Push:
    """The push in a verified body; raises Refused (400) when it is not a push event's JSON."""
    try:
        if content_type.split(";")[0].strip() == "application/x-www-form-urlencoded":  # GitHub's other format
            body = (parse_qs(body.decode())["payload"][0]).encode()
        document = json.loads(body)
    except (ValueError, KeyError, IndexError, UnicodeDecodeError):
        raise Refused(400, f"{provider}: the body is not JSON") from None
    if not isinstance(document, dict):
        raise Refused(400, f"{provider}: the body is not a JSON object")
    repository = document.get("project" if provider == "gitlab" else "repository")
    ref, sha = document.get("ref"), document.get("after") or document.get("checkout_sha")
    if not isinstance(repository, dict) or not isinstance(ref, str) or not isinstance(sha, str):
        raise Refused(400, f"{provider}: not a push event (no repository, ref or after)")
    fields = ("git_http_url", "git_ssh_url", "http_url", "ssh_url", "web_url") if provider == "gitlab" else (
        "clone_url", "ssh_url", "html_url", "git_url")
    urls = tuple(url for name in fields if isinstance(url := repository.get(name), str) and url)
    if not urls:
        raise Refused(400, f"{provider}: the push names no repository URL")
    return Push(provider, urls, ref, sha)


class Receiver:
    """The receiver on `host`:`port` (0: a free one): verifies, matches against `fleet()` (called per push,
    so a reloaded manifest counts) and writes nudges into `spool`. A context manager."""

    def __init__(self, fleet: Callable[[], Fleet], secret: bytes, *, host: str = "127.0.0.1", port: int = 0,
                 spool: Path | None = None) -> None:
        if not secret:
            raise ValueError("the webhook secret is empty")
        self.fleet, self.secret, self.spool = fleet, secret, spool
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the name http.server calls
                status, text = receiver.handle(self.headers, self._body(), self.client_address[0])
                payload = (text + "\n").encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):  # noqa: N802 - a health check for load balancers and `curl`
                payload = b"release-graph webhooks: POST push events here\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _body(self) -> bytes | None:
                length = int(self.headers.get("Content-Length") or 0)
                return None if length > MAX_BODY else self.rfile.read(length)

            def log_message(self, *args) -> None:  # one line per push is logged by handle() instead
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://{host}:{self.port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def handle(self, headers: Mapping[str, str], body: bytes | None, client: str = "?") -> tuple[int, str]:
        """(HTTP status, answer) for one request; logs one line."""
        try:
            if body is None:
                raise Refused(413, f"the body is larger than {MAX_BODY} bytes")
            provider = verify(headers, body, self.secret)
            event = headers.get({"github": "X-GitHub-Event", "gitea": "X-Gitea-Event",
                                 "gitlab": "X-Gitlab-Event"}[provider], "")
            if event == "ping":  # GitHub's hello when the hook is created
                LOG.info("%s: ping from %s, answered", provider, client)
                return 200, "pong"
            if event and event != PUSH_EVENTS[provider]:
                LOG.info("%s: %s event from %s ignored (only pushes start builds)", provider, event, client)
                return 202, f"ignored: {event} is not a push event"
            push = parse_push(provider, body, headers.get("Content-Type", "application/json"))
        except Refused as refused:
            LOG.warning("refused a webhook from %s (%d): %s", client, refused.status, refused)
            return refused.status, f"refused: {refused}"
        return self.accept(push, client)

    def accept(self, push: Push, client: str) -> tuple[int, str]:
        if not push.branch.startswith("refs/heads/"):
            LOG.info("%s: push of %s to %s ignored: not a branch", push.provider, push.branch, push.repo_urls[0])
            return 202, f"ignored: {push.branch} is not a branch"
        branch = push.branch.removeprefix("refs/heads/")
        matches = tracked_matches(self.fleet(), push.repo_urls, branch)
        shown = redact_url(push.repo_urls[0])
        if not matches:
            LOG.info("%s: push to %s@%s (%s) from %s not tracked by this fleet", push.provider, shown, branch,
                     push.sha[:12], client)
            return 202, f"not tracked: {shown}@{branch}"
        spool = self.spool if self.spool is not None else spool_dir()
        for url in matches:
            write_nudge(spool, cursor_key(url, branch), redact_url(url), branch, push.sha)
        LOG.info("%s: push to %s@%s (%s) from %s: the Git sensor looks at it on its next tick", push.provider,
                 shown, branch, push.sha[:12], client)
        return 202, f"accepted: {shown}@{branch} {push.sha[:12]}"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()


def tracked_matches(fleet: Fleet, urls: Iterable[str], branch: str) -> list[str]:
    """The fleet's repository URLs (as written in the manifest) that track `branch` of a repository named by
    any of `urls`."""
    wanted = {normalize_repo_url(url) for url in urls}
    found = {service.repo_url for service in fleet.services.values()
             if service.build is not None and service.repo_url and service.branch == branch
             and normalize_repo_url(service.repo_url) in wanted}
    return sorted(found)


def manifest_reader(path: Path) -> Callable[[], Fleet]:
    """The fleet at `path`, loaded again when the file changed; the last good one while it does not load."""
    from release_graph.fleet import ManifestError, load_fleet

    state: dict[str, object] = {"mtime": path.stat().st_mtime, "fleet": load_fleet(path)}

    def current() -> Fleet:
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return state["fleet"]  # type: ignore[return-value]
        if mtime != state["mtime"]:
            state["mtime"] = mtime
            try:
                state["fleet"] = load_fleet(path)
                LOG.info("reloaded the manifest %s", path)
            except ManifestError as exc:
                LOG.warning("the manifest %s does not load; matching pushes against the last one that did: %s",
                            path, str(exc).splitlines()[0])
        return state["fleet"]  # type: ignore[return-value]

    return current


def serve(fleet_path: Path, *, host: str, port: int, secret_variable: str, environ: Mapping[str, str]) -> int:
    """`release-graph webhooks`: serve until interrupted. 2 when the secret or the manifest is missing."""
    secret = environ.get(secret_variable, "")
    if not secret:
        print(f"release-graph webhooks: ${secret_variable} is not set; it must hold the secret configured on "
              "the Git host's webhook (--secret-env names another variable)", flush=True)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    fleet = manifest_reader(fleet_path)
    receiver = Receiver(fleet, secret.encode(), host=host, port=port)
    tracked = sorted({f"{redact_url(s.repo_url)}@{s.branch}" for s in fleet().services.values()
                      if s.build is not None and s.repo_url})
    print(f"release-graph webhooks: listening on {receiver.url} for {len(tracked)} tracked branch(es); "
          f"nudges go to {spool_dir()}", flush=True)
    try:
        receiver.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.server.server_close()
    return 0
