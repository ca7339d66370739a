"""Real git repositories for the tests: repos built commit by commit in tmp_path and a real `git daemon`.

Commits carry a fixed author and a fixed, increasing time, so SHAs are reproducible and assertions can
name exact authors and timestamps. The daemon runs on 127.0.0.1 on a free port; stopping it is what
"unreachable" means. tests/sensors/conftest.py loads these same helpers.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

AUTHOR_NAME = "Ada Lovelace"
AUTHOR_EMAIL = "ada@example.com"
FIRST_COMMIT_TIME = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def git_env() -> dict[str, str]:
    """The machine's own git configuration (signing, hooks, default branch) must not change a test."""
    env = dict(os.environ)
    env.update(
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME=AUTHOR_NAME,
        GIT_AUTHOR_EMAIL=AUTHOR_EMAIL,
        GIT_COMMITTER_NAME=AUTHOR_NAME,
        GIT_COMMITTER_EMAIL=AUTHOR_EMAIL,
        GIT_TERMINAL_PROMPT="0",
        LC_ALL="C",
    )
    return env


class GitRepo:
    """A working repository that tests commit to; every commit is one minute after the previous one."""

    def __init__(self, path: Path, branch: str = "main"):
        self.path = path
        self.branch = branch
        self.commits_made = 0
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "--quiet", f"--initial-branch={branch}")

    def git(self, *args: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            ["git", *args], cwd=self.path, env=env or git_env(), capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed in {self.path}: {done.stderr}")
        return done.stdout.strip()

    def next_commit_time(self) -> datetime:
        return FIRST_COMMIT_TIME + timedelta(minutes=self.commits_made)

    def commit(self, message: str, files: dict[str, str | None]) -> str:
        """Write (or delete, with None) the files and commit them; returns the new SHA."""
        for name, content in files.items():
            target = self.path / name
            if content is None:
                self.git("rm", "--quiet", "-r", "--", name)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
            self.git("add", "--", name)
        stamp = f"{int(self.next_commit_time().timestamp())} +0000"
        env = git_env() | {"GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}
        self.git("commit", "--quiet", "--allow-empty", "-m", message, env=env)
        self.commits_made += 1
        return self.head()

    def head(self, ref: str = "HEAD") -> str:
        return self.git("rev-parse", ref)

    def rewrite_to(self, sha: str) -> None:
        """Move the branch back to `sha`, dropping later commits: what a force-push does to the remote."""
        self.git("reset", "--quiet", "--hard", sha)
        # The dropped commits must really be gone from the source repo, as after a server-side gc.
        self.git("reflog", "expire", "--expire=now", "--all")
        self.git("gc", "--quiet", "--prune=now")


class GitDaemon:
    """`git daemon` serving every repo under `base` on 127.0.0.1:<port>; start()/stop() on demand."""

    def __init__(self, base: Path, port: int, log: Path):
        self.base = base
        self.port = port
        self.log = log
        self.process: subprocess.Popen | None = None

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        assert self.process is None, "daemon already running"
        self.base.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                ["git", "daemon", "--verbose", "--reuseaddr", f"--base-path={self.base}", "--export-all",
                 f"--port={self.port}", "--listen=127.0.0.1"],
                stdout=subprocess.DEVNULL, stderr=log, env=git_env(), start_new_session=True,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"git daemon exited with {self.process.returncode}: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AssertionError(f"git daemon did not accept connections on port {self.port} within 15 s")

    def stop(self) -> None:
        if self.process is None:
            return
        # The daemon forks one child per connection; the whole session goes, so the port really closes.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=10)
        self.process = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    time.sleep(0.05)
            except OSError:
                return
        raise AssertionError(f"port {self.port} still accepts connections after the daemon stopped")

    def requests_for(self, name: str) -> int:
        """How many git requests (ls-remote or fetch) the daemon has served for repo `name`."""
        return len(re.findall(rf"Request upload-pack for '/{re.escape(name)}'", self.log.read_text()))


@pytest.fixture
def git_daemon(tmp_path: Path, free_port: int):
    daemon = GitDaemon(tmp_path / "served", free_port, tmp_path / "git-daemon.log")
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture
def new_repo(tmp_path: Path):
    """new_repo(name, base=None): a fresh repo under tmp_path/repos, or under `base` (a daemon's folder)."""

    def make(name: str, *, base: Path | None = None, branch: str = "main") -> GitRepo:
        return GitRepo((base or tmp_path / "repos") / name, branch=branch)

    return make


@pytest.fixture
def silent_port():
    """A port that accepts TCP connections and never answers: a remote that hangs."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield server.getsockname()[1]
