"""The Git commit sensor: a new commit on a tracked branch becomes one build run per changed service.

Each tick asks every tracked repo for its branch heads (`git ls-remote`, in parallel, with a timeout) and
compares them with the cursor `{"<repo>@<branch>": "<head sha>"}`. Only a branch whose head moved is
fetched into its cached mirror. For each service on a moved branch the tick then

- observes `<svc>/source` with the release SHA as data version (author, message, skipped commits as
  metadata), and
- requests one run of `<svc>/image` with `run_key=<svc>:<sha>` and the SHA in the run tags; the run goes on
  to the service's integration and first environment when the promotion rules allow it beforehand
  (`promotion.stages_in_the_image_run`), so a release does not wait for automation ticks between them.

The release SHA of a service is the newest commit that changed its `path` (the head itself for `path: .`),
so a monorepo commit releases only the services whose folder it touched, and several commits since the
last tick coalesce into the newest one. A build still queued for an older commit of the service when a newer
one arrives coalesces too: the sensor cancels it, names the newer commit on it, and the newer build lists its
commits (`supersede_queued_builds`); in a burst the queue then holds at most one build per service.

On the first tick for a branch (no cursor entry) nothing is compared: every service is observed, and built only
if `<registry>/<svc>:<sha>` is not in the registry yet.

Push triggers: built with `poll_interval_seconds`, the sensor ticks often (every second in the fleet's
definitions) but asks every branch only once per poll interval (the last full poll is kept in the cursor
under `#last_full_poll`). In between, a tick reads the push spool (resources/push_spool.py), where the
webhook receiver (`release-graph webhooks`) leaves one nudge per accepted push, and asks only the pushed
branches, at once. A nudge is removed by the next tick, once the cursor that names it (`#handled_pushes`)
was stored; after a crash it is handled again, which the run key makes harmless. Without a receiver (or
when it is down), polling finds every commit within the poll interval as before. Keys starting with `#` are
reserved: the cursor stays the flat JSON object it always was, with branch keys read as before.

A repo that cannot be read (unreachable, deleted, branch gone) or a registry that cannot answer on a first
tick is a skip reason for that branch only: its cursor entry stays as it was, so the next tick retries,
and the other branches proceed. Anything else (a broken mirror folder, a bug) fails the tick, and Dagster
then keeps the previous cursor.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import dagster as dg

from release_graph.fleet import Fleet, Service
from release_graph.release import metadata as M
from release_graph.release.keys import environment_key, image_key, integration_key, source_key
from release_graph.release.promotion import stages_in_the_image_run
from release_graph.release.tags import (
    COALESCED_COMMITS_TAG,
    COALESCED_COUNT_TAG,
    MAX_RETRIES_TAG,
    RUN_RETRIES_AFTER_A_CRASH,
    SERVICE_TAG,
    SHA_TAG,
    SUPERSEDED_BY_TAG,
    release_tags,
)
from resources.git import CommitInfo, GitError, GitResource, redact_url
from resources.push_spool import Nudge, read_nudges, remove_nudges, spool_dir
from resources.registry import RegistryError

# Dagster reads the data version of an observation from this tag
# (dagster._core.definitions.data_version.DATA_VERSION_TAG, not exported by the public API).
DATA_VERSION_TAG = "dagster/data_version"
# The daemon writes the requesting sensor's name on every run it creates (dagster._core.storage.tags).
SENSOR_NAME_TAG = "dagster/sensor_name"
# Enough to see what a coalesced release contains without turning metadata into a log.
MAX_LISTED_SKIPPED = 50
# Reserved cursor keys (a branch key always contains "@" after a URL, never starts with "#").
LAST_FULL_POLL_KEY = "#last_full_poll"  # when every branch was last asked (seconds since the epoch)
HANDLED_PUSHES_KEY = "#handled_pushes"  # the spool files this tick handled, removed by the next tick


class ImageRegistry(Protocol):
    """What the sensor needs from the `registry` resource (resources.registry.Registry has it)."""

    def image_exists(self, repository: str, tag: str) -> bool:
        """`repository` is `host[:port]/path`; raises RegistryUnavailable when the registry cannot answer, and
        RegistryError when it refuses (credentials missing or refused)."""
        ...


@dataclass(frozen=True)
class NewRelease:
    """One service at one commit, as found by a tick."""

    service: str
    commit: CommitInfo
    repo_url: str
    branch: str
    path: str
    branch_head: str
    previous_head: str | None  # the cursor's head of the branch; None on the first tick
    skipped: tuple[CommitInfo, ...] = ()  # newer-than-cursor commits touching `path`, folded into this one
    skipped_count: int = 0
    force_pushed: bool = False
    build: bool = True  # False when the first tick found the image already in the registry
    then: tuple[dg.AssetKey, ...] = ()  # the stages its build run goes on to after the image
    # queued builds of older commits this one took over (supersede_queued_builds): their 12-character SHAs and
    # those of the commits they had coalesced, and how many commits that is in all
    superseded: tuple[str, ...] = ()
    superseded_count: int = 0

    @property
    def sha(self) -> str:
        return self.commit.sha

    def run_request(self, fleet: str) -> dg.RunRequest:
        return dg.RunRequest(
            run_key=f"{self.service}:{self.sha}",
            asset_selection=[image_key(self.service), *self.then],
            # A build whose process died is run again by the instance (never one that failed): the run key
            # would stop this sensor from asking twice, so without it the commit would be lost.
            tags={**release_tags(self.service, self.sha, fleet=fleet), MAX_RETRIES_TAG: RUN_RETRIES_AFTER_A_CRASH,
                  **self.coalesced_tags()},
        )

    def coalesced_tags(self) -> dict[str, str]:
        """The commits this build folds in, on its run: the record that survives a tick cut short."""
        if not self.skipped_count + self.superseded_count:
            return {}
        listed = [c.sha[:12] for c in self.skipped] + list(self.superseded)
        return {COALESCED_COUNT_TAG: str(self.skipped_count + self.superseded_count),
                COALESCED_COMMITS_TAG: " ".join(listed[:MAX_LISTED_SKIPPED])}

    def observation(self) -> dg.AssetObservation:
        metadata: dict[str, object] = {
            "sha": self.sha,
            M.SHORT_SHA: self.commit.short_sha,
            M.AUTHOR: self.commit.author,
            "message": self.commit.message,
            M.COMMITTED_AT: self.commit.committed_at,
            "repository": redact_url(self.repo_url),
            "branch": self.branch,
            "path": self.path,
            "branch_head": self.branch_head,
            "skipped_count": self.skipped_count,
            "skipped_commits": dg.MetadataValue.json([
                {"sha": c.sha, "author": c.author, "committed_at": c.committed_at, "subject": c.subject}
                for c in self.skipped
            ]),
            "superseded_queued_builds": dg.MetadataValue.json(list(self.superseded)),
            "force_pushed": self.force_pushed,
            "first_seen": self.previous_head is None,
            "build_requested": self.build,
        }
        if self.previous_head is not None:
            metadata["previous_head"] = self.previous_head
        description = f"{self.commit.short_sha} {self.commit.subject}"
        if self.force_pushed:
            description += f" (branch force-pushed over {self.previous_head[:12]})"
        return dg.AssetObservation(
            asset_key=source_key(self.service),
            description=description,
            metadata=metadata,
            tags={DATA_VERSION_TAG: self.sha},
        )


@dataclass
class GitTick:
    """What one tick found: the releases, the next cursor, and the branches it had to skip (and why)."""

    releases: list[NewRelease] = field(default_factory=list)
    cursor: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    branches: int = 0  # tracked (repo, branch) pairs
    moved: int = 0  # of which the head moved since the cursor (and could be read)
    fleet: str = ""  # the fleet's name: with service and SHA, it names each release's trace
    polled: int | None = None  # branches asked this tick; None: all of them (a full poll)
    pushed: int = 0  # of which named by a push (the spool)
    next_poll_in: float | None = None  # seconds to the next full poll, when this tick was not one

    def run_requests(self) -> list[dg.RunRequest]:
        return [r.run_request(self.fleet) for r in self.releases if r.build]

    def observations(self) -> list[dg.AssetObservation]:
        return [r.observation() for r in self.releases]

    def skip_reason(self) -> str | None:
        if self.run_requests():
            return None
        parts = []
        if self.releases:
            parts.append(
                f"recorded {len(self.releases)} head(s) whose images already exist: "
                + ", ".join(f"{r.service}:{r.commit.short_sha}" for r in self.releases)
            )
        elif self.moved:
            parts.append(f"new commits on {self.moved} branch(es) touch no released service's path")
        elif self.polled == 0 and not self.problems:
            parts.append(f"no push received; next poll of {self.branches} tracked branch(es) "
                         f"in {self.next_poll_in or 0:.0f} s")
        elif self.polled is not None and not self.problems:
            parts.append(f"no new commits on {self.polled} pushed branch(es)")
        elif not self.problems:
            parts.append(f"no new commits on {self.branches} tracked branch(es)")
        if self.problems:
            parts.append(f"skipped {len(self.problems)} branch(es): " + "; ".join(self.problems))
        return "; ".join(parts)

    def sensor_result(self) -> dg.SensorResult:
        return dg.SensorResult(
            run_requests=self.run_requests(),
            skip_reason=self.skip_reason(),
            cursor=json.dumps(self.cursor, sort_keys=True),
            asset_events=self.observations(),
        )


@dataclass
class _BranchOutcome:
    key: str
    head: str | None  # None: the branch could not be read; its cursor entry stays as it was
    releases: list[NewRelease]
    problems: list[str]


def cursor_key(repo_url: str, branch: str) -> str:
    return f"{redact_url(repo_url)}@{branch}"


def parse_cursor(raw: str | None) -> tuple[dict[str, str], str | None]:
    """The cursor as a dict, or an empty one and a problem when it is unreadable (then: a first tick)."""
    if not raw:
        return {}, None
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return {}, f"cursor {raw[:80]!r} is not a JSON object of branch to SHA; starting over as a first tick"
    return value, None


def tracked_branches(fleet: Fleet) -> dict[tuple[str, str], list[Service]]:
    """Built services grouped by the (repo URL, branch) they are released from; prebuilt ones have no repo."""
    branches: dict[tuple[str, str], list[Service]] = {}
    for service in sorted(fleet.services.values(), key=lambda s: s.name):
        if service.build is not None and service.repo_url:
            branches.setdefault((service.repo_url, service.branch), []).append(service)
    return branches


def evaluate_git_tick(
    fleet: Fleet, git: GitResource, registry: ImageRegistry, cursor: str | None, *,
    poll_interval_seconds: float | None = None, spool: Path | None = None, now: float | None = None,
) -> GitTick:
    """One tick of the sensor, without Dagster's context: the releases, the next cursor and the problems.

    `poll_interval_seconds` None: every tick asks every branch (and reads no spool). Otherwise every branch is
    asked once per interval, and in between only the branches the nudges in `spool` name."""
    previous, cursor_problem = parse_cursor(cursor)
    reserved = {key: previous.pop(key) for key in list(previous) if key.startswith("#")}
    branches = tracked_branches(fleet)
    tick = GitTick(branches=len(branches), fleet=fleet.name)
    if cursor_problem:
        tick.problems.append(cursor_problem)
    polled = branches
    if poll_interval_seconds is not None:
        now = time.time() if now is None else now
        # Only this fleet's branches: another fleet of the same installation may share the state folder.
        tracked = {cursor_key(*pair) for pair in branches}
        nudges = [n for n in _take_nudges(spool, reserved.get(HANDLED_PUSHES_KEY, "")) if n.branch_key in tracked]
        if nudges:
            tick.cursor[HANDLED_PUSHES_KEY] = ",".join(n.name for n in nudges)
        last_poll = _float_or_none(reserved.get(LAST_FULL_POLL_KEY))
        if last_poll is None or not 0 <= now - last_poll < poll_interval_seconds:
            tick.cursor[LAST_FULL_POLL_KEY] = f"{now:.3f}"
        else:
            tick.cursor[LAST_FULL_POLL_KEY] = reserved[LAST_FULL_POLL_KEY]
            pushed = {n.branch_key for n in nudges}
            polled = {pair: services for pair, services in branches.items() if cursor_key(*pair) in pushed}
            tick.polled = tick.pushed = len(polled)
            tick.next_poll_in = last_poll + poll_interval_seconds - now
    heads = git.remote_heads(list(polled)) if polled else {}

    moved: list[tuple[tuple[str, str], str | None, str]] = []
    for (url, branch), services in branches.items():
        key = cursor_key(url, branch)
        old = previous.get(key)
        if (url, branch) not in polled:  # not asked this tick: as it was
            if old is not None:
                tick.cursor[key] = old
            continue
        head = heads[(url, branch)]
        if head.sha is None:
            tick.problems.append(f"{key} ({_names(services)}): {head.error}")
            if old is not None:
                tick.cursor[key] = old
        elif head.sha == old:
            tick.cursor[key] = old
        else:
            moved.append(((url, branch), old, head.sha))

    workers = max(1, min(git.max_parallel, len(moved)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="git-branch") as pool:
        outcomes = list(pool.map(
            lambda item: _inspect_branch(git, item[0][0], item[0][1], item[1], item[2], branches[item[0]]),
            moved,
        ))

    for outcome, ((url, branch), old, _new) in zip(outcomes, moved, strict=True):
        tick.problems.extend(outcome.problems)
        if outcome.head is not None and old is None and outcome.releases:
            try:
                outcome.releases = _skip_existing_images(fleet, registry, outcome.releases)
            except RegistryError as exc:  # down (RegistryUnavailable), or its credentials missing or refused
                tick.problems.append(
                    f"{outcome.key} ({_names(branches[(url, branch)])}): first look at this branch postponed, "
                    f"the registry cannot say which images exist: {exc}"
                )
                continue  # still no cursor entry: the next tick is a first tick again
        if outcome.head is not None:
            tick.cursor[outcome.key] = outcome.head
            tick.releases.extend(outcome.releases)
            tick.moved += 1
        elif old is not None:
            tick.cursor[outcome.key] = old
    tick.releases.sort(key=lambda r: r.service)
    return tick


def _take_nudges(spool: Path | None, handled: str) -> list[Nudge]:
    """The nudges not handled yet. Those the previous tick handled are removed now: that tick's cursor, which
    names them, was stored (Dagster passes a tick the cursor the previous one returned)."""
    folder = spool if spool is not None else spool_dir()
    remove_nudges(folder, [name for name in handled.split(",") if name])
    nudges, unreadable = read_nudges(folder)
    remove_nudges(folder, unreadable)
    return nudges


def _float_or_none(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _names(services: Sequence[Service]) -> str:
    return ", ".join(s.name for s in services)


def _skip_existing_images(fleet: Fleet, registry: ImageRegistry, releases: list[NewRelease]) -> list[NewRelease]:
    checked = []
    for release in releases:
        exists = registry.image_exists(f"{fleet.registry}/{release.service}", release.sha)
        checked.append(replace(release, build=not exists))
    return checked


def _inspect_branch(
    git: GitResource, url: str, branch: str, old: str | None, new: str, services: Sequence[Service]
) -> _BranchOutcome:
    """The releases a moved head brings (git work only). A git failure skips the branch."""
    key = cursor_key(url, branch)
    try:
        return _BranchOutcome(key, new, *_releases_on_branch(git, url, branch, old, new, services))
    except GitError as exc:
        return _BranchOutcome(key, None, [], [f"{key} ({_names(services)}): {exc}"])


def _releases_on_branch(
    git: GitResource, url: str, branch: str, old: str | None, new: str, services: Sequence[Service]
) -> tuple[list[NewRelease], list[str]]:
    git.ensure_commit(url, new)
    force_pushed = old is not None and not git.is_ancestor(url, old, new)
    old_available = old is not None and git.has_commit(url, old)
    releases: list[tuple[Service, str, list[str]]] = []
    problems: list[str] = []
    for service in services:
        sha = git.last_commit_touching(url, new, service.path)
        if sha is None or not git.path_exists(url, new, service.path):
            problems.append(
                f"{cursor_key(url, branch)} ({service.name}): path '{service.path}' does not exist at "
                f"{new[:12]}; nothing to release"
            )
            continue
        if old is None:
            releases.append((service, sha, []))
            continue
        if not force_pushed:
            commits = git.commits_between(url, old, new, service.path)
            if commits:
                releases.append((service, commits[0], commits[1:]))
            continue
        # Force-pushed: release unless the service's own newest commit is the one already released.
        if old_available:
            if service.path != "." and git.last_commit_touching(url, old, service.path) == sha:
                continue
            skipped = [c for c in git.commits_between(url, old, new, service.path) if c != sha]
        else:
            skipped = []
        releases.append((service, sha, skipped))

    wanted = {sha for _, sha, _ in releases}
    wanted.update(c for _, _, skipped in releases for c in skipped[:MAX_LISTED_SKIPPED])
    infos = {info.sha: info for info in git.commit_infos(url, sorted(wanted))}
    return [
        NewRelease(
            service=service.name,
            commit=infos[sha],
            repo_url=url,
            branch=branch,
            path=service.path,
            branch_head=new,
            previous_head=old,
            skipped=tuple(infos[c] for c in skipped[:MAX_LISTED_SKIPPED]),
            skipped_count=len(skipped),
            force_pushed=force_pushed,
        )
        for service, sha, skipped in releases
    ], problems


def supersede_queued_builds(instance: dg.DagsterInstance, release: NewRelease, sensor_name: str) -> NewRelease:
    """`release`, having taken over the builds of its service that this sensor requested for older commits and
    that are still queued: each is cancelled with the reason on its run (the cancel message, and the tag
    `release/superseded_by`), and its commits fold into `release`'s coalesced ones. Building them would only
    produce images that are no longer their branch's newest, at the front of the queue. A build that started
    is left alone: it finishes, and the deploy steps take the newest digest that passed."""
    if not release.build:
        return release
    superseded, count = list(release.superseded), release.superseded_count
    queued = instance.get_runs(filters=dg.RunsFilter(
        statuses=[dg.DagsterRunStatus.QUEUED], tags={SERVICE_TAG: release.service, SENSOR_NAME_TAG: sensor_name}))
    for run in sorted(queued, key=lambda r: r.run_id):
        sha = run.tags.get(SHA_TAG, "")
        current = instance.get_run_by_id(run.run_id) if sha and sha != release.sha else None
        if current is None or current.status != dg.DagsterRunStatus.QUEUED:
            continue  # the queue took it meanwhile (Dagster's dequeuer skips a run that is no longer queued)
        instance.report_run_canceled(current, message=(
            f"{release.service}: build of {sha[:12]} superseded while queued by {release.sha[:12]}, a newer commit "
            f"of {release.branch}; that build holds this commit"))
        instance.add_run_tags(run.run_id, {SUPERSEDED_BY_TAG: release.sha})
        superseded += [sha[:12], *run.tags.get(COALESCED_COMMITS_TAG, "").split()]
        count += 1 + int(run.tags.get(COALESCED_COUNT_TAG) or 0)
    return replace(release, superseded=tuple(superseded), superseded_count=count)


def build_git_commit_sensor(
    fleet: Fleet, *, minimum_interval_seconds: int = 10, name: str = "git_commits",
    poll_interval_seconds: float | None = None, push_spool: Path | None = None,
) -> dg.SensorDefinition:
    """The sensor for one fleet; needs resources `git` (GitResource) and `registry` (image_exists).

    With `poll_interval_seconds`, push triggers are on: each tick reads the push spool (`push_spool`, default
    `<state>/git-pushes`, resolved at tick time) and asks every branch only once per poll interval."""
    image_keys = [image_key(s) for branch in tracked_branches(fleet).values() for s in branch]
    first = next(iter(fleet.environments.values()), None)
    # what a build run may go on to (stages_in_the_image_run): every service's integration and first environment
    then_keys = [key for branch in tracked_branches(fleet).values() for s in branch if s.build
                 and s.build.integration_target for key in (integration_key(s), *(
                     [environment_key(s, first)] if first is not None and not first.requires_approval else []))]

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        # An asset selection (not a job): each request then runs in the fleet's implicit asset job with
        # exactly its image and that image's checks (resolved by Dagster when the tick is evaluated).
        asset_selection=dg.AssetSelection.assets(*image_keys, *then_keys) if image_keys else None,
        description="Polls every tracked branch with git ls-remote"
        + (f" every {poll_interval_seconds:g} s, and a pushed branch at once (release-graph webhooks)"
           if poll_interval_seconds is not None else "")
        + "; one image build per new release "
        "(run key <service>:<sha>), an observation of <service>/source with the SHA as data version.",
    )
    def git_commits(
        context: dg.SensorEvaluationContext, git: GitResource, registry: dg.ResourceParam[ImageRegistry]
    ) -> dg.SensorResult:
        tick = evaluate_git_tick(fleet, git, registry, context.cursor,
                                 poll_interval_seconds=poll_interval_seconds, spool=push_spool)
        tick.releases = [supersede_queued_builds(context.instance, r, name) for r in tick.releases]
        releasing = {r.service for r in tick.releases if r.build}
        tick.releases = [replace(r, then=tuple(stages_in_the_image_run(
            context.instance, fleet, fleet.services[r.service], releasing - {r.service}))) if r.build else r
            for r in tick.releases]
        for problem in tick.problems:
            context.log.warning(problem)
        return tick.sensor_result()

    return git_commits
