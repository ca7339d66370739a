"""The demo fleet's git repositories: `python -m release_graph.demo repos | commit`.

`repos` turns each folder under examples/shop/services/ into its own git repository under
examples/shop/.repos/ (branch main): the repositories the Git sensor watches. Rerunning it keeps their
history: a repository changes only when its source folder changed since the last import, and then the
change is merged into main, so commits made in the demo repository are kept. `--force` recreates them.

`commit <service>` makes a small real change (bumps VERSION) and commits it, so a user sees the sensor fire;
`--break KIND` also breaks the unit tests, the integration tests, the health endpoint, the static analysis,
(inventory only) the end-to-end tests of that commit, or makes every API request 400 ms slower (`slow`: every
test passes, production's canary analysis rolls it back), and `--repair` undoes every such breakage.

`inbox --port P` is the demo team's channel: it receives the release notifications the demo manifest sends to
a signed webhook (`$SHOP_NOTIFY_URL`), checks each signature with the key in `$SHOP_NOTIFY_KEY`, takes the
deployment events (CDEvents, `$SHOP_CDEVENTS_SINK_URL`) on `/cdevents`, and prints one line per message.

`trespass <caller> <callee> --env E` shows the network rule: from inside the caller's running container it calls
the callee by name and straight at the environment's switch, as code that ignores the manifest would; a call
with no edge in the manifest is refused both ways, the switch names caller and callee, and `release-graph
environments` and the `network_policy` checks show the refusal.

`shoppers --port P` is the demo's users: a steady stream of product lookups and orders (each order cancelled
again) through the gateway published on 127.0.0.1:P, so a rollout's analysis has traffic to judge.

The demo fleet's folder is `--demo-dir`, else $RELEASE_GRAPH_DEMO_DIR, else ./examples/shop: the demo ships
with the repository, not with the package, so `make` runs this from the checkout.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DEMO_DIR_ENV = "RELEASE_GRAPH_DEMO_DIR"
DEFAULT_DEMO_DIR = "examples/shop"  # relative to the working folder: the checkout, where `make` runs
BRANCH = "main"
# The last imported state of a source folder. Updates are committed on top of it and merged into main.
SOURCE_REF = "refs/demo/source"
DEMO_AUTHOR_NAME = "Shop Demo"
DEMO_AUTHOR_EMAIL = "demo@shop.example"
VERSION_PATTERN = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
GIT_TIMEOUT_SECONDS = 60

# What `commit --break KIND` writes: path in the service's repository -> content. Each is a real defect
# that the matching release step catches; `--repair` removes them all again.
BREAKAGES: dict[str, tuple[str, str]] = {
    "unit-test": (
        "tests/unit/test_demo_breakage.py",
        '"""Broken on purpose by `python -m release_graph.demo commit --break unit-test`."""\n\n'
        "import unittest\n\n\n"
        "class DemoBreakage(unittest.TestCase):\n"
        "    def test_this_commit_breaks_the_unit_tests(self):\n"
        '        self.assertEqual(2 + 2, 5, "broken on purpose by release_graph.demo")\n',
    ),
    "integration-test": (
        "tests/integration/test_demo_breakage.py",
        '"""Broken on purpose by `python -m release_graph.demo commit --break integration-test`."""\n\n'
        "import unittest\n\n\n"
        "class DemoBreakage(unittest.TestCase):\n"
        "    def test_this_commit_breaks_the_integration_tests(self):\n"
        '        self.assertEqual(2 + 2, 5, "broken on purpose by release_graph.demo")\n',
    ),
    "sast": (
        "debug_shell.py",
        '"""Added on purpose by `python -m release_graph.demo commit --break sast`: a shell injection."""\n\n'
        "import subprocess\n\n\n"
        "def run_debug_command(command: str) -> str:\n"
        "    return subprocess.run(command, shell=True, capture_output=True, text=True, check=False).stdout\n",
    ),
}
# `--break health` and `--break slow` append these to the Dockerfile: its last stage is the released image.
HEALTH_BREAKAGE = "# Broken on purpose by release_graph.demo: /healthz answers 500.\nENV HEALTHZ_STATUS=500\n"
SLOW_BREAKAGE = ("# Slowed on purpose by release_graph.demo: every API request takes 400 ms longer.\n"
                 "ENV EXTRA_LATENCY_MS=400\n")
DOCKERFILE_BREAKAGES = {"health": HEALTH_BREAKAGE, "slow": SLOW_BREAKAGE}
# `--break e2e`: a change to a service's API that its own unit and integration tests accept but its consumers'
# contract, the fleet's end-to-end tests, rejects (so it stops after dev): service -> (path, text, broken text).
# inventory's reservation ids grow from 12 to 16 hex digits: its unit test only looks at the "res-" prefix,
# its integration tests only use the id, and the shop's e2e test expects `res-` and 12 hex digits.
E2E_BREAKAGES: dict[str, tuple[str, str, str]] = {
    "inventory": ("app.py", 'f"res-{secrets.token_hex(6)}"', 'f"res-{secrets.token_hex(8)}"'),
}
BREAK_KINDS = (*BREAKAGES, *DOCKERFILE_BREAKAGES, "e2e")


class DemoError(Exception):
    """Something the demo cannot do; the message names the repository or service and what to do."""


@dataclass(frozen=True)
class RepoResult:
    service: str
    path: Path
    action: str  # created, recreated, unchanged, updated
    head: str


@dataclass(frozen=True)
class CommitResult:
    service: str
    path: Path
    sha: str
    message: str
    version: str
    changed: tuple[str, ...]


def _git(repo: Path, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Runs git in `repo` as the demo author, without hooks or signing; raises DemoError on failure."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}
    full_env = {
        **inherited,
        "GIT_AUTHOR_NAME": DEMO_AUTHOR_NAME,
        "GIT_AUTHOR_EMAIL": DEMO_AUTHOR_EMAIL,
        "GIT_COMMITTER_NAME": DEMO_AUTHOR_NAME,
        "GIT_COMMITTER_EMAIL": DEMO_AUTHOR_EMAIL,
        **(env or {}),
    }
    try:
        done = subprocess.run(
            ["git", "-c", "commit.gpgsign=false", *args],
            cwd=cwd or repo, env=full_env, capture_output=True, text=True, timeout=GIT_TIMEOUT_SECONDS,
        )
    except FileNotFoundError:
        raise DemoError("git is not installed (the demo repositories need it)") from None
    except subprocess.TimeoutExpired:
        raise DemoError(f"{repo}: `git {' '.join(args)}` did not finish in {GIT_TIMEOUT_SECONDS}s") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise DemoError(f"{repo}: `git {' '.join(args)}` failed: {detail}")
    return done.stdout.strip()


def _source_tree(repo: Path, source: Path) -> str:
    """Writes the source folder's files (honouring its .gitignore) into the repo as a tree; returns its id."""
    with tempfile.TemporaryDirectory(prefix="rg-demo-index-") as tmp:
        env = {"GIT_DIR": str(repo / ".git"), "GIT_WORK_TREE": str(source), "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git(repo, "add", "--all", ".", cwd=source, env=env)
        return _git(repo, "write-tree", cwd=source, env=env)


def _rev(repo: Path, ref: str) -> str | None:
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", ref)
    except DemoError:
        return None


def service_sources(sources_dir: Path) -> dict[str, Path]:
    """Service name -> source folder: every folder under `sources_dir` that has a Dockerfile."""
    if not sources_dir.is_dir():
        raise DemoError(f"{sources_dir}: the demo services' source folder does not exist")
    found = {p.name: p for p in sorted(sources_dir.iterdir()) if (p / "Dockerfile").is_file()}
    if not found:
        raise DemoError(f"{sources_dir}: no service folders with a Dockerfile")
    return found


def sync_repo(service: str, source: Path, repo: Path, *, force: bool = False) -> RepoResult:
    """Creates the service's repository from its source folder, or brings a source change into main."""
    if not (source / "Dockerfile").is_file():
        raise DemoError(f"{source}: service '{service}': not a demo service source folder (no Dockerfile)")
    recreated = False
    if force and repo.exists():
        shutil.rmtree(repo)
        recreated = True
    if not (repo / ".git").is_dir():
        if repo.exists() and any(repo.iterdir()):
            raise DemoError(f"{repo}: exists but is not a git repository; remove it or rerun with --force")
        repo.mkdir(parents=True, exist_ok=True)
        try:
            _git(repo, "init", "--quiet", f"--initial-branch={BRANCH}")
            tree = _source_tree(repo, source)
            commit = _git(repo, "commit-tree", tree, "-m", f"Import {service} from examples/shop/services/{service}")
            _git(repo, "update-ref", SOURCE_REF, commit)
            _git(repo, "update-ref", f"refs/heads/{BRANCH}", commit)
            _git(repo, "reset", "--quiet", "--hard", BRANCH)
        except DemoError:
            shutil.rmtree(repo, ignore_errors=True)  # no half-made repository that a rerun would refuse
            raise
        return RepoResult(service, repo, "recreated" if recreated else "created", commit)

    imported = _rev(repo, SOURCE_REF)
    if imported is None:
        raise DemoError(f"{repo}: not created by release_graph.demo (no {SOURCE_REF}); rerun with --force")
    tree = _source_tree(repo, source)
    if tree == _git(repo, "rev-parse", f"{imported}^{{tree}}"):
        return RepoResult(service, repo, "unchanged", _git(repo, "rev-parse", "HEAD"))
    current_branch = _git(repo, "symbolic-ref", "--quiet", "--short", "HEAD")
    if current_branch != BRANCH:
        raise DemoError(f"{repo}: branch '{current_branch}' is checked out; check out '{BRANCH}' to update it")
    update = _git(repo, "commit-tree", tree, "-p", imported,
                  "-m", f"Update {service} from examples/shop/services/{service}")
    _git(repo, "update-ref", SOURCE_REF, update)
    try:
        # Fast-forwards when main has no commits of its own; otherwise merges, keeping them.
        _git(repo, "merge", "--quiet", "--no-verify", "--no-edit", "-m",
             f"Merge updated examples/shop/services/{service}", SOURCE_REF)
    except DemoError as exc:
        _git(repo, "update-ref", SOURCE_REF, imported)
        with contextlib.suppress(DemoError):  # a merge that refused to start has nothing to abort
            _git(repo, "merge", "--abort")
        raise DemoError(f"{exc}\nThe source change could not be merged into main; rerun with --force "
                        "to recreate the repository from its source folder") from None
    return RepoResult(service, repo, "updated", _git(repo, "rev-parse", "HEAD"))


def sync_repos(sources_dir: Path, repos_dir: Path, *, force: bool = False) -> list[RepoResult]:
    return [sync_repo(name, source, repos_dir / name, force=force)
            for name, source in service_sources(sources_dir).items()]


def demo_repo(service: str, repos_dir: Path) -> Path:
    repo = repos_dir / service
    if (repo / ".git").is_dir():
        return repo
    known = sorted(p.name for p in repos_dir.glob("*") if (p / ".git").is_dir()) if repos_dir.is_dir() else []
    if not known:
        raise DemoError(f"{repos_dir}: no demo repositories yet; run `python -m release_graph.demo repos` first")
    raise DemoError(f"service '{service}': no demo repository {repo} (services: {', '.join(known)})")


def commit_change(service: str, repos_dir: Path, *, message: str | None = None,
                  breakage: str | None = None, repair: bool = False) -> CommitResult:
    """Bumps the patch version in VERSION (plus an optional breakage or repair) and commits it on main."""
    if breakage is not None and breakage not in BREAK_KINDS:
        raise DemoError(f"--break: unknown kind {breakage!r} (kinds: {', '.join(BREAK_KINDS)})")
    if breakage == "e2e" and service not in E2E_BREAKAGES:
        raise DemoError(f"--break e2e: service '{service}' has no such breakage (services with one: "
                        f"{', '.join(E2E_BREAKAGES)})")
    repo = demo_repo(service, repos_dir)
    current_branch = _git(repo, "symbolic-ref", "--quiet", "--short", "HEAD")
    if current_branch != BRANCH:
        raise DemoError(f"{repo}: branch '{current_branch}' is checked out; the demo commits on '{BRANCH}'")
    version_file = repo / "VERSION"
    current = version_file.read_text().strip() if version_file.is_file() else ""
    match = VERSION_PATTERN.match(current)
    if not match:
        raise DemoError(f"{version_file}: service '{service}': expected a version like 1.2.3, got {current!r}")
    major, minor, patch = (int(part) for part in match.groups())
    version = f"{major}.{minor}.{patch + 1}"
    version_file.write_text(version + "\n")
    changed = ["VERSION"]

    dockerfile = repo / "Dockerfile"
    if breakage in BREAKAGES:
        path, content = BREAKAGES[breakage]
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(content)
        changed.append(path)
    elif breakage in DOCKERFILE_BREAKAGES:
        text = dockerfile.read_text()
        if DOCKERFILE_BREAKAGES[breakage] not in text:
            dockerfile.write_text(text.rstrip("\n") + "\n" + DOCKERFILE_BREAKAGES[breakage])
            changed.append("Dockerfile")
    elif breakage == "e2e":
        path, text, broken = E2E_BREAKAGES[service]
        source = (repo / path).read_text()
        if text not in source and broken not in source:
            raise DemoError(f"{repo / path}: service '{service}': --break e2e expects {text!r} in it")
        (repo / path).write_text(source.replace(text, broken))
        changed.append(path)
    if repair:
        for path, _content in BREAKAGES.values():
            if (repo / path).exists():
                (repo / path).unlink()
                changed.append(path)
        text = dockerfile.read_text()
        repaired = text
        for appended in DOCKERFILE_BREAKAGES.values():
            repaired = repaired.replace(appended, "")
        if repaired != text:
            dockerfile.write_text(repaired)
            changed.append("Dockerfile")
        if service in E2E_BREAKAGES:
            path, text, broken = E2E_BREAKAGES[service]
            source = (repo / path).read_text()
            if broken in source:
                (repo / path).write_text(source.replace(broken, text))
                changed.append(path)

    if message is None:
        message = f"Bump {service} to {version}"
        if breakage:
            message += f" and break its {breakage} (demo)"
        if repair:
            message += " and repair the demo breakages"
    _git(repo, "add", "--all", "--", *changed)
    _git(repo, "commit", "--quiet", "--no-verify", "-m", message, "--", *changed)
    return CommitResult(service, repo, _git(repo, "rev-parse", "HEAD"), message, version, tuple(changed))


@dataclass
class Traffic:
    """What the shoppers saw: answers by HTTP status (0: no answer at all, e.g. while the gateway starts)."""

    statuses: Counter = field(default_factory=Counter)
    # the last few answers of 500 or more, with what was asked and when: what a release manager looks at first
    server_errors: deque = field(default_factory=lambda: deque(maxlen=5))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, status: int, request: str = "", answer: dict | None = None) -> None:
        with self._lock:
            self.statuses[status] += 1
            if status >= 500:
                self.server_errors.append(f"{time.strftime('%H:%M:%S')} {request}: {status} {answer or ''}")

    def snapshot(self) -> Counter:
        """The counts so far, safe to read while the shoppers run."""
        with self._lock:
            return Counter(self.statuses)

    def last_server_errors(self) -> list[str]:
        with self._lock:
            return list(self.server_errors)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.statuses.items() if status == 0 or status >= 500)

    def line(self) -> str:
        shown = ", ".join(f"{'no answer' if s == 0 else s}: {n}" for s, n in sorted(self.statuses.items()))
        return f"{self.requests} requests ({shown or 'none'})"


def _call(port: int, method: str, path: str, body: dict | None = None, timeout: float = 10) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"Content-Type": "application/json"} if body is not None else {})
        response = conn.getresponse()
        payload = response.read()
        with contextlib.suppress(ValueError):
            return response.status, json.loads(payload or b"{}")
        return response.status, {}
    except (OSError, http.client.HTTPException):
        return 0, {}
    finally:
        conn.close()


# What the shoppers buy: a product the fleet's end-to-end tests never count, so a test run in prod while they shop
# sees only its own orders (a cancelled widget order "gave back" one unit too few while a shopper held one).
SHOPPERS_SKU = "doohickey"


def shop(port: int, stop: threading.Event, *, rate: float = 10.0, report_every: float = 30.0,
         on_report: Callable[[Traffic], None] | None = None, traffic: Traffic | None = None) -> Traffic:
    """The demo's users until `stop` is set: about `rate` requests a second through the gateway on 127.0.0.1:port,
    product lookups (gateway -> orders -> inventory) and, every other time, an order (payments too), cancelled
    right away so the stock stays. Every `report_every` seconds `on_report` gets the counts so far; they go to
    `traffic` when given (read it while the shoppers run)."""
    traffic = traffic if traffic is not None else Traffic()
    reported = time.monotonic()
    cycle = 0
    while not stop.is_set():
        cycle += 1
        status, answer = _call(port, "GET", f"/api/products/{SHOPPERS_SKU}")
        traffic.add(status, f"GET /api/products/{SHOPPERS_SKU}", answer)
        if cycle % 2 == 0:
            status, order = _call(port, "POST", "/api/orders", {"sku": SHOPPERS_SKU, "quantity": 1})
            traffic.add(status, "POST /api/orders", order)
            if status == 201 and "order_id" in order:
                status, answer = _call(port, "DELETE", f"/api/orders/{order['order_id']}")
                traffic.add(status, "DELETE /api/orders/<id>", answer)
        if on_report and time.monotonic() - reported >= report_every:
            on_report(traffic)
            reported = time.monotonic()
        stop.wait(1 / rate)
    return traffic


SIGNATURE_HEADER = "X-Release-Graph-Signature"  # what resources/notify/webhook.py signs with
CDEVENTS_PATH = "/cdevents"


class Inbox:
    """A webhook receiver on 127.0.0.1:`port` (0: a free one) that keeps each notification whose HMAC-SHA256
    signature matches `key` and refuses (401) any other, and on `/cdevents` the deployment events (CDEvents in
    CloudEvents). A context manager; `messages` and `cdevents` hold what arrived.
    The demo's `inbox` command and the live story both use it: it checks the sender from outside."""

    def __init__(self, port: int, key: bytes, on_message=None) -> None:
        self.key = key
        self.messages: list[dict] = []  # notifications (signed)
        self.cdevents: list[dict] = []  # deployment events, as CloudEvents in structured JSON mode
        self.refused = 0
        self.on_message = on_message
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the name http.server calls
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == CDEVENTS_PATH:  # deployment events: CloudEvents, unsigned (the URL is the secret)
                    event = json.loads(body)
                    inbox.cdevents.append(event)
                    if inbox.on_message:
                        inbox.on_message(event)
                    self.send_response(202)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                expected = "sha256=" + hmac.new(inbox.key, body, hashlib.sha256).hexdigest()
                if not hmac.compare_digest(self.headers.get(SIGNATURE_HEADER, ""), expected):
                    inbox.refused += 1
                    self.send_response(401)
                else:
                    message = json.loads(body)
                    inbox.messages.append(message)
                    if inbox.on_message:
                        inbox.on_message(message)
                    self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:  # one line per message is printed by on_message instead
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/release-notifications"
        self.cdevents_url = f"http://127.0.0.1:{self.port}{CDEVENTS_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def of_kind(self, kind: str) -> list[dict]:
        return [message for message in self.messages if message.get("kind") == kind]

    def __enter__(self) -> Inbox:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()


def inbox_line(message: dict) -> str:
    if "specversion" in message:  # a CloudEvent carrying a CDEvent
        content = (message.get("data") or {}).get("subject", {}).get("content", {})
        kind = str(message.get("type", "")).removeprefix("dev.cdevents.").rsplit(".", 3)[0]
        return (f"inbox: cdevent {kind} {message.get('subject')} in {content.get('environment', {}).get('id')}"
                + (f" ({content['artifactId']})" if content.get("artifactId") else ""))
    return f"inbox: {message.get('headline')}: {message.get('reason')} ({message.get('link')})"


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


REPOS_HELP = "where the repositories live (default: <demo dir>/.repos)"


def trespass_from(manifest: Path, caller: str, callee: str, environment: str, path: str, *, out=None) -> int:
    """`trespass`: what a call from `caller`'s container to `callee` gives, by name and through the switch, and
    whether the manifest allows it. 0: the network did what the manifest says; 1: it did not; 2: bad input."""
    from release_graph.fleet import ManifestError, load_fleet
    from release_graph.fleet.network import refused
    from release_graph.wiring import default_resources
    from resources.targets import TargetError

    out = out or sys.stdout
    try:
        fleet = load_fleet(manifest)
        for name in (caller, callee):
            if name not in fleet.services:
                raise DemoError(f"{manifest}: no service '{name}' (services: {', '.join(fleet.services)})")
        if environment not in fleet.environments:
            raise DemoError(f"{manifest}: no environment '{environment}' (environments: "
                            f"{', '.join(fleet.environments)})")
        target = default_resources(fleet)["deploy_targets"].target_of(fleet.environments[environment])
        answers = target.call_from(fleet.name, environment, caller, callee, path, port=fleet.services[callee].port)
    except (ManifestError, DemoError, TargetError) as exc:
        print(f"demo: error: trespass: {exc}", file=sys.stderr)
        return 2
    allowed = not refused(fleet, caller, callee)
    print(f"{caller} -> {callee} in {environment}: the manifest {'declares' if allowed else 'has no'} edge "
          f"{caller} -> {callee}", file=out)
    for way, answer in answers.items():
        print(f"  {way}: {answer}", file=out)
    went_through = [way for way, answer in answers.items() if answer.split()[0].isdigit()
                    and not answer.startswith("403 network_policy")]
    return 0 if (bool(went_through) == allowed) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m release_graph.demo", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    repos = commands.add_parser("repos", help="create (or update) a git repository per demo service")
    repos.add_argument("--force", action="store_true", help="delete and recreate the repositories")
    repos.add_argument("--sources", type=Path, help="folder of the services' sources (default: <demo dir>/services)")
    repos.add_argument("--repos-dir", type=Path, help=REPOS_HELP)
    commit = commands.add_parser("commit", help="commit a small real change to one demo service")
    commit.add_argument("service")
    commit.add_argument("--message", "-m", help="commit message (default: 'Bump <service> to <version>')")
    kind = commit.add_mutually_exclusive_group()
    kind.add_argument("--break", dest="breakage", choices=BREAK_KINDS, help="also break this in the commit")
    kind.add_argument("--repair", action="store_true", help="also undo every demo breakage")
    commit.add_argument("--repos-dir", type=Path, help=REPOS_HELP)
    shoppers = commands.add_parser("shoppers", help="steady traffic through the gateway until interrupted")
    shoppers.add_argument("--port", type=int, required=True, help="the gateway's published port (prod: 18080)")
    shoppers.add_argument("--rate", type=float, default=10.0, help="requests a second (default 10)")
    inbox = commands.add_parser("inbox", help="receive the demo's release notifications until interrupted")
    inbox.add_argument("--port", type=int, required=True, help="where the manifest's webhook sends (demo: 18090)")
    inbox.add_argument("--key-env", default="SHOP_NOTIFY_KEY", help="the variable holding the signing key")
    trespass = commands.add_parser("trespass", help="call one service from another's container, as code that "
                                   "ignores the manifest's edges would (the network refuses it)")
    trespass.add_argument("caller")
    trespass.add_argument("callee")
    trespass.add_argument("--env", default="dev", help="the environment (default: dev)")
    trespass.add_argument("--path", default="/healthz", help="what to GET (default: /healthz)")
    trespass.add_argument("--fleet", type=Path, help="the manifest (default: <demo dir>/fleet.yaml)")
    for command in (repos, commit, trespass):
        command.add_argument("--demo-dir", type=Path, help=f"the demo fleet's folder (default: ${DEMO_DIR_ENV}, "
                             f"then ./{DEFAULT_DEMO_DIR})")
    args = parser.parse_args(argv)

    if args.command == "inbox":
        key = os.environ.get(args.key_env)
        if not key:
            print(f"demo: error: inbox: ${args.key_env} is not set (the key the notifications are signed with)",
                  file=sys.stderr)
            return 2
        with Inbox(args.port, key.encode(), on_message=lambda m: print(inbox_line(m), flush=True)) as receiver:
            print(f"inbox: receiving release notifications on {receiver.url}", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
        return 0
    if args.command == "shoppers":
        print(f"shoppers: about {args.rate:g} requests a second to the gateway on 127.0.0.1:{args.port}", flush=True)
        stop = threading.Event()
        try:
            shop(args.port, stop, rate=args.rate, on_report=lambda t: print(f"shoppers: {t.line()}", flush=True))
        except KeyboardInterrupt:
            stop.set()
        return 0
    demo_dir = args.demo_dir or Path(os.environ.get(DEMO_DIR_ENV) or DEFAULT_DEMO_DIR)
    if args.command == "trespass":
        return trespass_from(args.fleet or demo_dir / "fleet.yaml", args.caller, args.callee, args.env, args.path)
    repos_dir = args.repos_dir or demo_dir / ".repos"
    try:
        if args.command == "repos":
            sources = args.sources or demo_dir / "services"
            for result in sync_repos(sources.resolve(), repos_dir.resolve(), force=args.force):
                print(f"{result.service}: {result.action} {_shown(result.path)} ({BRANCH} at {result.head[:12]})")
            return 0
        result = commit_change(args.service, repos_dir.resolve(), message=args.message,
                               breakage=args.breakage, repair=args.repair)
    except DemoError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    print(f"{result.service}: committed {result.sha[:12]} \"{result.message}\" on {BRANCH} in {_shown(result.path)} "
          f"(changed: {', '.join(result.changed)}); the Git sensor releases it at its next tick")
    return 0


if __name__ == "__main__":
    sys.exit(main())
