"""Git through plain `git` subprocesses: branch heads, one cached bare mirror per repo, exact trees.

Why subprocesses and not a library: `git` is what every repo host speaks (local paths, file://, git://,
http(s)://, ssh), it honours the user's credential helpers and SSH config, and its errors are the ones
people already know how to read. Every call has a timeout, never prompts, and fails with a `GitError`
naming the repository, the branch and git's own message.

Nothing here runs at import or construction time: the mirror folder is created on first use.
"""

import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from pydantic import Field

from resources.state import state_dir

COMMIT_ID = re.compile(r"^[0-9a-f]{7,64}$")
# The generic advice git appends to every transport error says nothing about this repo.
_GIT_BOILERPLATE = (
    "Could not read from remote repository.",
    "Please make sure you have the correct access rights",
    "and the repository exists.",
)
_REPO_MISSING_SIGNS = (
    "does not appear to be a git repository",
    "repository not exported",
    "repository not found",
    "not found",  # smart HTTP answers 404 for a repo that does not exist
    "no such file or directory",
)
_UNREACHABLE_SIGNS = (
    "unable to connect",
    "connection refused",
    "could not resolve host",
    "could not resolve hostname",
    "failed to connect",
    "connection timed out",
    "network is unreachable",
    "no route to host",
    "connection reset",
    "couldn't connect to server",
    "operation timed out",
    "the remote end hung up unexpectedly",
)


class GitError(Exception):
    """A git command failed; the message names the repository, the branch (if any) and git's stderr."""

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        branch: str | None = None,
        stderr: str = "",
        timed_out: bool = False,
    ):
        self.url = url
        self.branch = branch
        self.stderr = stderr
        self.timed_out = timed_out
        super().__init__(message)


@dataclass(frozen=True)
class HeadResult:
    """The head of one branch as `git ls-remote` saw it: a SHA, or why there is none.

    `problem` tells the cases apart for the caller: "unreachable" (host down, timeout: try again later),
    "repository_missing" (deleted, moved or not exported), "branch_missing", or "failed" (anything else).
    """

    url: str
    branch: str
    sha: str | None = None
    error: str | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.sha is not None


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    short_sha: str
    author_name: str
    author_email: str
    committed_at: str  # ISO 8601, UTC
    message: str  # subject and body

    @property
    def subject(self) -> str:
        return self.message.split("\n", 1)[0]

    @property
    def author(self) -> str:
        return f"{self.author_name} <{self.author_email}>"


def redact_url(url: str) -> str:
    """Drop a password or token from `scheme://user:secret@host/...` before it reaches a message."""
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", url)


def _summarize_stderr(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines()]
    kept = [line for line in lines if line and not any(text in line for text in _GIT_BOILERPLATE)]
    return " ".join(kept)[:600] or "(git printed no message)"


def classify_remote_error(stderr: str) -> str:
    """`unreachable`, `repository_missing` or `failed`, from git's message (LC_ALL=C keeps it English)."""
    text = stderr.lower()
    if any(sign in text for sign in _UNREACHABLE_SIGNS):
        return "unreachable"
    if any(sign in text for sign in _REPO_MISSING_SIGNS):
        return "repository_missing"
    return "failed"


def mirror_name(url: str) -> str:
    """A readable, collision-free folder name: the repo's last path part plus a hash of the whole URL."""
    tail = re.sub(r"\.git$", "", url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1])
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", tail).strip(".-")[:40] or "repo"
    return f"{slug}-{hashlib.sha256(url.encode()).hexdigest()[:16]}.git"


class _Completed:
    def __init__(self, returncode: int, stdout: bytes, stderr: str):
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")


class GitResource(dg.ConfigurableResource):
    """Reads git repositories for the release graph: branch heads, commits and exact trees.

    Repositories are given as absolute local paths or git URLs (git://, file://, http(s)://, ssh).
    """

    mirror_dir: str | None = Field(
        default=None,
        description="Folder of the cached bare mirrors (one per repo). Default: "
        "<state dir>/git-mirrors (resources.state: $RELEASE_GRAPH_STATE, else $DAGSTER_HOME, "
        "else ./.dagster_home), resolved on first use.",
    )
    timeout_seconds: float = Field(
        default=10, description="Timeout of each query of a remote (git ls-remote)."
    )
    fetch_timeout_seconds: float = Field(
        default=300, description="Timeout of each clone/fetch into a mirror and of each archive export."
    )
    max_parallel: int = Field(default=8, description="Remotes queried at the same time.")

    # --- plumbing ----------------------------------------------------------------------------------------

    def mirror_root(self) -> Path:
        if self.mirror_dir:
            return Path(self.mirror_dir).expanduser().resolve()
        return state_dir() / "git-mirrors"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            GIT_TERMINAL_PROMPT="0",  # a missing credential must fail, never wait for a keyboard
            LC_ALL="C",  # error classification reads git's English messages
            GIT_LITERAL_PATHSPECS="1",  # a manifest path is a folder name, never a glob
        )
        # Same for SSH: no password or host-key prompt inside a sensor tick.
        env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        return env

    def _run(
        self,
        args: Sequence[str],
        *,
        url: str,
        timeout: float,
        what: str,
        branch: str | None = None,
        git_dir: Path | None = None,
        check: bool = True,
    ) -> _Completed:
        command = ["git"]
        if git_dir is not None:
            command += ["--git-dir", str(git_dir)]
        command += list(args)
        # Own session: on timeout the whole group (git and the ssh/upload-pack it started) is killed, or
        # a grandchild holding the pipe would keep us waiting anyway.
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self._env(),
            start_new_session=True,
        )
        try:
            stdout, stderr_bytes = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise GitError(
                f"{what} {_where(url, branch)}: no answer within {timeout:g} s",
                url=url,
                branch=branch,
                timed_out=True,
            ) from None
        stderr = stderr_bytes.decode("utf-8", errors="replace")
        if check and proc.returncode != 0:
            raise GitError(
                f"{what} {_where(url, branch)}: {_summarize_stderr(stderr)}",
                url=url,
                branch=branch,
                stderr=stderr,
            )
        return _Completed(proc.returncode, stdout, stderr)

    # --- branch heads ------------------------------------------------------------------------------------

    def remote_heads(self, targets: Iterable[tuple[str, str]]) -> dict[tuple[str, str], HeadResult]:
        """The head SHA of every (repo URL, branch): one `git ls-remote` per repo, repos in parallel."""
        branches_by_url: dict[str, list[str]] = {}
        for url, branch in targets:
            wanted = branches_by_url.setdefault(url, [])
            if branch not in wanted:
                wanted.append(branch)
        if not branches_by_url:
            return {}
        results: dict[tuple[str, str], HeadResult] = {}
        workers = max(1, min(self.max_parallel, len(branches_by_url)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="git-ls-remote") as pool:
            for heads in pool.map(lambda item: self._ls_remote(*item), branches_by_url.items()):
                results.update(heads)
        return results

    def _ls_remote(self, url: str, branches: list[str]) -> dict[tuple[str, str], HeadResult]:
        refs = [f"refs/heads/{b}" for b in branches]
        try:
            done = self._run(
                ["ls-remote", "--heads", "--", url, *refs],
                url=url,
                timeout=self.timeout_seconds,
                what="git ls-remote",
            )
        except GitError as exc:
            problem = "unreachable" if exc.timed_out else classify_remote_error(exc.stderr)
            shown = redact_url(url)
            timeout = f"no answer within {self.timeout_seconds:g} s"
            detail = timeout if exc.timed_out else _summarize_stderr(exc.stderr)
            if problem == "unreachable":
                message = f"repository {shown} is unreachable: {detail}"
            elif problem == "repository_missing":
                message = f"repository {shown} was not found (deleted, moved or not exported): {detail}"
            else:
                message = f"git ls-remote {shown} failed: {detail}"
            return {(url, b): HeadResult(url, b, error=message, problem=problem) for b in branches}
        found: dict[str, str] = {}
        for line in done.text.splitlines():
            sha, _, ref = line.partition("\t")
            if ref in refs:
                found[ref] = sha.strip()
        results = {}
        for branch, ref in zip(branches, refs, strict=True):
            if ref in found:
                results[(url, branch)] = HeadResult(url, branch, sha=found[ref])
            else:
                results[(url, branch)] = HeadResult(
                    url,
                    branch,
                    error=f"branch '{branch}' does not exist in {redact_url(url)}",
                    problem="branch_missing",
                )
        return results

    # --- the mirror ----------------------------------------------------------------------------------------

    def mirror_path(self, url: str) -> Path:
        return self.mirror_root() / mirror_name(url)

    @contextmanager
    def _mirror_lock(self, url: str) -> Iterator[Path]:
        """Serializes creation and fetches of one mirror across threads and processes (sensor and runs)."""
        root = self.mirror_root()
        root.mkdir(parents=True, exist_ok=True)
        path = root / mirror_name(url)
        with open(root / f"{path.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield path
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def mirror(self, url: str) -> Path:
        """The bare mirror of `url`, created (and fetched once) on first use; otherwise not fetched."""
        path = self.mirror_path(url)
        if path.is_dir():
            return path
        with self._mirror_lock(url) as path:
            if path.is_dir():
                return path
            staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
            try:
                self._run(["init", "--bare", "--quiet", str(staging)], url=url, timeout=60, what="git init")
                for key, value in (
                    ("remote.origin.url", url),
                    ("remote.origin.fetch", "+refs/heads/*:refs/heads/*"),
                ):
                    self._run(["config", key, value], url=url, timeout=60, what="git config", git_dir=staging)
                self._run(
                    ["config", "--add", "remote.origin.fetch", "+refs/tags/*:refs/tags/*"],
                    url=url, timeout=60, what="git config", git_dir=staging,
                )
                # Highest-precedence attributes: a repo's own .gitattributes must not drop files
                # (export-ignore) or rewrite them (export-subst) when its tree is exported.
                (staging / "info").mkdir(exist_ok=True)
                (staging / "info" / "attributes").write_text("* -export-ignore -export-subst\n")
                staging.rename(path)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            self._fetch_locked(url, path)
        return path

    def fetch(self, url: str) -> Path:
        """Bring the mirror up to date with every branch and tag of `url`."""
        self.mirror(url)
        with self._mirror_lock(url) as path:
            self._fetch_locked(url, path)
        return path

    def _fetch_locked(self, url: str, path: Path) -> None:
        self._run(
            ["fetch", "--quiet", "--prune", "--no-write-fetch-head", "origin"],
            url=url,
            timeout=self.fetch_timeout_seconds,
            what="git fetch",
            git_dir=path,
        )

    def has_commit(self, url: str, sha: str) -> bool:
        """Whether the mirror holds commit `sha` (no fetch)."""
        _check_commit_id(sha, url)
        done = self._git(url, ["cat-file", "-e", f"{sha}^{{commit}}"], "git cat-file", check=False)
        return done.returncode == 0

    def ensure_commit(self, url: str, sha: str) -> Path:
        """The mirror, fetched only if it lacks `sha`. Raises GitError if no branch or tag holds it."""
        path = self.mirror(url)
        if self.has_commit(url, sha):
            return path
        self.fetch(url)
        if not self.has_commit(url, sha):
            raise GitError(
                f"commit {sha} is not on any branch or tag of {redact_url(url)}", url=url, stderr=""
            )
        return path

    # --- reading commits ---------------------------------------------------------------------------------

    def _git(self, url: str, args: Sequence[str], what: str, check: bool = True) -> _Completed:
        return self._run(
            args, url=url, timeout=self.fetch_timeout_seconds, what=what, git_dir=self.mirror(url),
            check=check,
        )

    def resolve_commit(self, url: str, rev: str) -> str:
        """The full SHA of `rev` (a full or abbreviated SHA, a branch or a tag), after fetching the mirror."""
        self.fetch(url)
        done = self._git(url, ["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], "git rev-parse",
                         check=False)
        if done.returncode != 0 or not done.text.strip():
            raise GitError(f"no commit '{rev}' in {redact_url(url)} (give a SHA, branch or tag that exists)",
                           url=url, stderr=done.stderr)
        return done.text.strip()

    def commit_info(self, url: str, sha: str) -> CommitInfo:
        """Author, commit time and message of `sha` (which the mirror must hold: see ensure_commit)."""
        return self.commit_infos(url, [sha])[0]

    def commit_infos(self, url: str, shas: Sequence[str]) -> list[CommitInfo]:
        """commit_info for several commits with one git call, in the order given."""
        if not shas:
            return []
        for sha in shas:
            _check_commit_id(sha, url)
        done = self._git(
            url,
            ["-c", "i18n.logOutputEncoding=UTF-8", "show", "-s", "--no-notes",
             "--format=%H%x00%an%x00%ae%x00%ct%x00%B%x1e", *(f"{sha}^{{commit}}" for sha in shas), "--"],
            "git show",
        )
        infos = []
        for record in done.text.split("\x1e")[: len(shas)]:
            full, name, email, timestamp, message = record.lstrip("\n").split("\0", 4)
            infos.append(CommitInfo(
                sha=full,
                short_sha=full[:12],
                author_name=name,
                author_email=email,
                committed_at=datetime.fromtimestamp(int(timestamp), tz=UTC).isoformat(),
                message=message.strip(),
            ))
        return infos

    def commits_between(self, url: str, old_sha: str, new_sha: str, path: str = ".") -> list[str]:
        """Commits reachable from `new_sha` and not from `old_sha` that touch `path`, newest first."""
        _check_commit_id(old_sha, url)
        _check_commit_id(new_sha, url)
        args = ["rev-list", "--topo-order", new_sha, f"^{old_sha}"]
        # No pathspec for the whole repo: `-- .` would simplify away merges that change nothing.
        if _normalize_path(path) != ".":
            args += ["--", _normalize_path(path)]
        return self._git(url, args, "git rev-list").text.split()

    def last_commit_touching(self, url: str, ref_sha: str, path: str = ".") -> str | None:
        """The newest commit in the history of `ref_sha` that changed `path` (`ref_sha` itself for '.')."""
        _check_commit_id(ref_sha, url)
        if _normalize_path(path) == ".":
            done = self._git(url, ["rev-parse", "--verify", f"{ref_sha}^{{commit}}"], "git rev-parse")
            return done.text.strip()
        found = self._git(
            url, ["rev-list", "-n", "1", ref_sha, "--", _normalize_path(path)], "git rev-list"
        ).text.strip()
        return found or None

    def path_exists(self, url: str, sha: str, path: str) -> bool:
        _check_commit_id(sha, url)
        if _normalize_path(path) == ".":
            return True
        spec = f"{sha}:{_normalize_path(path)}"
        done = self._git(url, ["cat-file", "-e", spec], "git cat-file", check=False)
        return done.returncode == 0

    def is_ancestor(self, url: str, old_sha: str, new_sha: str) -> bool:
        """Whether `old_sha` is in the history of `new_sha` (False after a force-push).

        A mirror holds every branch's full history, so an `old_sha` it lacks after a fetch was rewritten
        away: that is "not an ancestor", not an error. A missing `new_sha` is an error.
        """
        _check_commit_id(old_sha, url)
        _check_commit_id(new_sha, url)
        if not self.has_commit(url, new_sha):
            raise GitError(f"commit {new_sha} is not in the mirror of {redact_url(url)}", url=url)
        if not self.has_commit(url, old_sha):
            return False
        args = ["merge-base", "--is-ancestor", old_sha, new_sha]
        done = self._git(url, args, "git merge-base", check=False)
        if done.returncode in (0, 1):
            return done.returncode == 0
        detail = _summarize_stderr(done.stderr)
        raise GitError(f"git merge-base {_where(url, None)}: {detail}", url=url, stderr=done.stderr)

    def release_commit(self, url: str, branch: str, path: str = ".") -> str:
        """The commit a service at `path` of `branch` is released from: the newest one that changed `path`.

        For the whole repo that is the branch head. In a monorepo, a commit elsewhere in the repo does not
        change this service, so its SHA (and the data version of its source) stays the same.
        """
        head = self.remote_heads([(url, branch)])[(url, branch)]
        if head.sha is None:
            raise GitError(head.error or f"no head for branch '{branch}'", url=url, branch=branch)
        self.ensure_commit(url, head.sha)
        sha = self.last_commit_touching(url, head.sha, path)
        if sha is None or not self.path_exists(url, head.sha, path):
            raise GitError(
                f"path '{path}' does not exist at the head {head.sha[:12]} of {_where(url, branch)}",
                url=url, branch=branch,
            )
        return sha

    # --- exact trees ---------------------------------------------------------------------------------------

    def _archive_to(self, url: str, sha: str, subpath: str, target: Path) -> None:
        _check_commit_id(sha, url)
        sub = _normalize_path(subpath)
        tree = sha if sub == "." else f"{sha}:{sub}"
        self._git(url, ["archive", "--format=tar", "-o", str(target), tree], "git archive")

    def archive_bytes(self, url: str, sha: str, subpath: str = ".") -> bytes:
        """A tar of exactly the tree of `sha` (below `subpath`), e.g. a Docker build context."""
        with tempfile.TemporaryDirectory(prefix="rg-archive-") as tmp:
            target = Path(tmp) / "tree.tar"
            self._archive_to(url, sha, subpath, target)
            return target.read_bytes()

    def export(self, url: str, sha: str, dest_dir: str | os.PathLike, subpath: str = ".") -> Path:
        """Write exactly the tree of `sha` (below `subpath`) into `dest_dir`, which must be empty or absent.

        The commit's tree, never a working copy: uncommitted or ignored files cannot leak into a build.
        """
        dest = Path(dest_dir)
        if dest.exists() and any(dest.iterdir()):
            raise GitError(
                f"cannot export {sha[:12]} of {redact_url(url)}: {dest} is not empty", url=url
            )
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="rg-archive-") as tmp:
            target = Path(tmp) / "tree.tar"
            self._archive_to(url, sha, subpath, target)
            with tarfile.open(target) as archive:
                extract_tree(archive, dest)
        return dest


def extract_tree(archive: tarfile.TarFile, dest: Path) -> None:
    """Extract git's own archive of a tree into `dest`: nothing is written outside it, and a link (symbolic or
    hard) that points outside it or to an absolute path is refused (a repository's tree is untrusted input).

    Python 3.11.4+ has extraction filters (PEP 706): the "data" filter does that. Debian bookworm's Python
    3.11.2, the user-code image's (deploy/Dockerfile), has none, so the same refusals are made here first."""
    if hasattr(tarfile, "data_filter"):
        archive.extractall(dest, filter="data")
        return
    root = dest.resolve()

    def inside(path: str, relative_to: Path) -> bool:
        return not Path(path).is_absolute() and (relative_to / path).resolve().is_relative_to(root)

    for member in archive.getmembers():
        safe = inside(member.name, root)
        if safe and member.issym():  # a symbolic link's target is relative to its own folder
            safe = inside(member.linkname, (root / member.name).parent)
        if safe and member.islnk():  # a hard link's target is a member's name
            safe = inside(member.linkname, root)
        if not safe:
            raise GitError(f"refusing to extract {member.name!r}: it points outside {dest}", url=str(dest))
    archive.extractall(dest)  # noqa: S202 - every member was checked above


def _where(url: str, branch: str | None) -> str:
    return f"{redact_url(url)} (branch '{branch}')" if branch else redact_url(url)


def _check_commit_id(sha: str, url: str) -> None:
    # Also keeps anything that git would read as an option out of its argument list.
    if not isinstance(sha, str) or not COMMIT_ID.match(sha):
        raise GitError(f"{sha!r} is not a commit id (hex SHA) for {redact_url(url)}", url=url)


def _normalize_path(path: str) -> str:
    cleaned = os.path.normpath(path or ".").replace(os.sep, "/")
    if cleaned.startswith(("/", "../")) or cleaned == "..":
        raise GitError(f"path {path!r} is not inside the repository")
    return cleaned

