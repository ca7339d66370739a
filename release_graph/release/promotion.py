"""The promotion rules: what a digest must have passed before a stage may take it, and who may approve it.

Every rule reads the instance's records only (no engine, no registry), so each one is unit-tested on a bare
instance. The deploy and approval steps call these before anything changes; the branch-promotion sensor and
the integration stage call the same ones.
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg

from release_graph.fleet import Environment, Fleet, Service, topological_order
from release_graph.fleet.references import pinned
from release_graph.release import history
from release_graph.release import metadata as M
from release_graph.release.errors import ReleaseStepError
from release_graph.release.keys import (
    approval_key,
    e2e_key,
    environment_key,
    image_key,
    integration_key,
    previous_environment,
    previous_stage_key,
    source_key,
)
from release_graph.release.metadata import APPROVAL_RUN_ID
from release_graph.release.tags import AUTHENTICATED_USER_TAG
from release_graph.security import provenance


def blocking_check_names(fleet: Fleet, service: Service, key: dg.AssetKey) -> list[str]:
    """The blocking checks a digest must have passed at a stage before the next stage may take it."""
    stage = key.path[-1]
    if stage == "image":
        if service.is_prebuilt:
            return []
        return (["unit_tests"] if service.build.test_target else []) + ["sast"] + (
            ["compliance"] if fleet.security.compliance_blocking else [])
    if stage == "integration":
        return ["integration_tests"]
    if stage in fleet.environments:
        return ["healthy"]
    return []


# How a stage waiting for a person's approval begins its waiting reason (the notifications' approval_needed):
# "waiting for an approval of ...", or, when some of the approvals it needs were given, "waiting for 1 more
# approval of ..." (`waits_for_approval` recognises both).
WAITING_FOR_APPROVAL = "waiting for an approval of"
_WAITING_FOR_APPROVAL = re.compile(r"^waiting for (an|\d+ more) approvals? of ")


def waits_for_approval(reason: str) -> bool:
    """Whether a waiting reason is a release waiting for people to approve it."""
    return bool(_WAITING_FOR_APPROVAL.match(reason))


def refuse(service: Service, environment: Environment, message: str) -> ReleaseStepError:
    return ReleaseStepError(f"service '{service.name}', environment '{environment.name}': {message}")


def blocking_checks_passed(instance, fleet: Fleet, service: Service, key: dg.AssetKey, digest: str) -> list[str]:
    """Names of the blocking checks of `key` that did not pass for `digest` (empty when all passed)."""
    failed = []
    for name in blocking_check_names(fleet, service, key):
        if history.check_passed_for(instance, dg.AssetCheckKey(key, name), digest) is not True:
            failed.append(name)
    return failed


# How far back a deploy step looks past releases whose checks are still being evaluated (a burst of commits).
SETTLING_LOOKED_AT = 10
# How many of a service's newest source observations order a burst's builds (in_commit_order).
SOURCE_OBSERVATIONS_LOOKED_AT = 50


def newest_settled(instance, fleet: Fleet, service: Service, key: dg.AssetKey) -> history.StageRecord | None:
    """The newest record of `key`, passed over while a run still has it in hand with its blocking checks not yet
    evaluated: in a burst, an older commit's build run that reaches its deploy step just after a newer commit's
    integration recorded its digest, and before that run evaluated its checks, deploys its own release (the
    newer one follows in its own run) instead of failing on checks that are still on their way."""
    records = in_commit_order(instance, service, key, history.history(instance, key, limit=SETTLING_LOOKED_AT))
    for record in records:
        pending = record.digest and any(history.check_passed_for(instance, dg.AssetCheckKey(key, name), record.digest)
                                        is None for name in blocking_check_names(fleet, service, key))
        run = instance.get_run_by_id(record.run_id) if pending and record.run_id else None
        if run is None or run.is_finished:
            return record
    return records[0] if records else None


# The build stages whose records can land out of commit order: two build runs of one service side by side.
BUILD_STAGES = ("image", "integration")


def in_commit_order(instance, service: Service, key: dg.AssetKey,
                    records: list[history.StageRecord]) -> list[history.StageRecord]:
    """`records` of a build stage (newest first), re-ordered newest commit first. In a burst two build runs of a
    service can run side by side, and the older commit's may finish last: taken in the order they were
    recorded, its deploy would put the older commit back over the newer one. A commit's place is the latest
    observation of `<service>/source` naming it (the Git sensor observes a branch's releases in order, and a
    branch moved back to an older commit observes it again); a record of a commit never observed keeps its
    place after the observed ones. An environment's records stay as they are: one deployment runs there at a
    time, so its latest record is what runs."""
    if service.is_prebuilt or key.path[-1] not in BUILD_STAGES or len(records) < 2:
        return records
    place: dict[str, int] = {}
    for observed in history.observations(instance, source_key(service), limit=SOURCE_OBSERVATIONS_LOOKED_AT):
        place.setdefault(observed.metadata.get("sha") or "", observed.storage_id)
    return sorted(records, key=lambda r: (place.get(r.git_sha or "", -1), r.storage_id), reverse=True)


def passed_over_while_checked(instance, fleet: Fleet, service: Service, environment: Environment,
                              chosen: str) -> str | None:
    """What a deploy step says when `newest_settled` made it pass over a newer digest of the previous stage (whose
    run is still evaluating its blocking checks), else None."""
    key = previous_stage_key(fleet, service, environment)
    records = in_commit_order(instance, service, key, history.history(instance, key, limit=SETTLING_LOOKED_AT))
    newest = records[0] if records else None
    if newest is None or not newest.digest or newest.digest == chosen:
        return None
    return (f"{service.name}@{environment.name}: passing over {newest.digest}, whose run {(newest.run_id or '?')[:8]} "
            f"is still evaluating its blocking checks (it follows in a run of its own); deploying {chosen}")


def choose_digest(instance, fleet: Fleet, service: Service, environment: Environment, requested: str | None = None):
    """The digest that passed the previous stage: its latest one, or the one the release manager named."""
    previous_key = previous_stage_key(fleet, service, environment)
    if requested:
        record = history.record_with_digest(instance, previous_key, requested)
        if record is None:
            raise refuse(service, environment,
                          f"digest {requested} never passed {previous_key.to_user_string()}: refused")
    else:
        record = newest_settled(instance, fleet, service, previous_key)
        if record is None:
            raise refuse(service, environment, f"nothing has passed {previous_key.to_user_string()} yet")
    if not record.digest:
        raise refuse(service, environment, f"{previous_key.to_user_string()} recorded no digest")
    failed = blocking_checks_passed(instance, fleet, service, previous_key, record.digest)
    if failed:
        raise refuse(service, environment, f"digest {record.digest} did not pass "
                      f"{previous_key.to_user_string()} (blocking checks not passed: {', '.join(failed)})")
    blocker = e2e_blocker(instance, fleet, service, environment, record.digest)
    if blocker:
        raise refuse(service, environment, f"{blocker}: promotion beyond it is blocked")
    return record


def verify_provenance(instance, service: Service, environment: Environment, digest: str, *,
                      verify_key: provenance.VerifyKey | None = None, repository: str | None = None) -> dict | None:
    """Only a digest this fleet's image step produced may be promoted (not one pushed by hand).

    With `verify_key` (the fleet's `security.provenance` is configured) that is proven, not assumed: a record of
    `<service>/image` for the digest must carry a DSSE envelope whose statement is SLSA provenance of exactly
    `repository@digest`, signed by that key. Returns the verified statement (None without a key)."""
    if service.is_prebuilt:
        return None
    records = [r for r in history.history(instance, image_key(service)) if r.digest == digest]
    if verify_key is None:
        if not records:
            raise refuse(service, environment,
                          f"digest {digest} was not produced by {image_key(service).to_user_string()}: refused")
        return None
    refusal = f"refused: {digest} has no provenance signed by this fleet's key: "
    if not records:
        raise refuse(service, environment, refusal + f"{image_key(service).to_user_string()} never recorded it "
                      "(not built by this fleet)")
    reasons = []
    for record in records:  # newest first; one valid statement proves the digest
        envelope = record.value(M.PROVENANCE)
        if not envelope:
            reasons.append(f"the build of {record.git_sha or 'an unknown commit'} recorded no statement")
            continue
        try:
            return provenance.verify(envelope, verify_key, digest=digest, repository=repository)
        except provenance.ProvenanceError as exc:
            reasons.append(str(exc))
    raise refuse(service, environment, refusal + reasons[0])


def unused_approvals(instance, service: Service, environment: Environment) -> list[history.StageRecord]:
    """The environment's approvals given since the last one a deployment used, newest first: what may still
    release a digest there. A deployment records the approval that completed its count (APPROVAL_RUN_ID); that
    one and every approval before it are spent."""
    used = {record.value(APPROVAL_RUN_ID) for record in history.history(instance, environment_key(service, environment))
            if record.value(APPROVAL_RUN_ID)}
    unused = []
    for approval in history.history(instance, approval_key(service, environment)):
        if approval.run_id in used:
            break
        unused.append(approval)
    return unused


def approval_spent(instance, service: Service, environment: Environment) -> bool:
    """True when the environment's latest approval was used by a deployment: it runs what that approval
    released, and only a new approval deploys there again."""
    return (history.latest(instance, approval_key(service, environment)) is not None
            and not unused_approvals(instance, service, environment))


def identity_key(identity: str) -> str:
    """How two identities are compared: whole, without surrounding spaces, case-insensitive."""
    return identity.strip().casefold()


@dataclass(frozen=True)
class ApprovalCount:
    """The unused approvals of one digest in one environment, sorted: those that count (one per person, oldest
    first), those that expired and those that no longer count (the approvers list changed, or the author)."""

    digest: str
    required: int
    counted: tuple[history.StageRecord, ...] = ()
    expired: tuple[tuple[history.StageRecord, float], ...] = ()  # (approval, when it expired)
    refused: tuple[tuple[history.StageRecord, str], ...] = ()  # (approval, why it does not count)
    given_by: tuple[str, ...] = ()  # the counted approvals' identities, in order

    @property
    def complete(self) -> bool:
        return len(self.counted) >= self.required

    @property
    def missing(self) -> int:
        return max(self.required - len(self.counted), 0)

    @property
    def run_id(self) -> str:
        """The approval that completed the count: a deployment records it, and it and all before are spent."""
        return self.counted[-1].run_id if self.counted else ""

    @property
    def tickets(self) -> str:
        return ", ".join(dict.fromkeys(t for a in self.counted if (t := a.value(M.TICKET))))

    def progress(self) -> str:
        """`1 of 2: ann@shop.example`."""
        return f"{len(self.counted)} of {self.required}" + (f": {', '.join(self.given_by)}" if self.given_by else "")


def _at(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def count_approvals(instance, service: Service, environment: Environment, digest: str,
                    now: float | None = None) -> ApprovalCount:
    """Which unused approvals of `digest` count now: each given by an eligible approver who is not the commit's
    author (the rules are asked again: the manifest may have changed since), not expired, one per identity."""
    now = time.time() if now is None else now
    author, author_email = commit_identity(instance, service, digest)
    lifetime = (environment.approval_expires_after_hours * 3600
                if environment.approval_expires_after_hours is not None else None)
    counted, expired, refused, seen = [], [], [], set()
    for approval in reversed(unused_approvals(instance, service, environment)):  # oldest first
        if approval.digest != digest:
            continue
        identity = approval.value(M.APPROVER, "") or ""
        if lifetime is not None and now > approval.timestamp + lifetime:
            expired.append((approval, approval.timestamp + lifetime))
            continue
        reason = approver_refusal(environment, identity, author, author_email)
        if reason:
            refused.append((approval, reason))
            continue
        if identity_key(identity) in seen:
            continue  # the same person twice counts once
        seen.add(identity_key(identity))
        counted.append(approval)
    return ApprovalCount(digest=digest, required=environment.approvals_required, counted=tuple(counted),
                         expired=tuple(expired), refused=tuple(refused),
                         given_by=tuple(a.value(M.APPROVER, "") for a in counted))


def approval_shortfall(count: ApprovalCount, environment: Environment, label: str) -> str:
    """What an incomplete count still needs, and why earlier approvals did not count."""
    if count.counted:
        text = (f"waiting for {count.missing} more approval{'s' if count.missing != 1 else ''} of {label} "
                f"({count.progress()}) for {environment.name}")
    else:
        text = f"{WAITING_FOR_APPROVAL} {label} for {environment.name}" + (
            f" ({count.required} distinct approvers needed)" if count.required > 1 else "")
    notes = [f"the approval by {a.value(M.APPROVER)} expired at {_at(at)} (approvals expire after "
             f"{environment.approval_expires_after_hours:g} h here)" for a, at in count.expired]
    notes += [f"the approval by {a.value(M.APPROVER)} does not count: {why}" for a, why in count.refused]
    return text + (": " + "; ".join(notes) if notes else "")


def verify_approval(instance, service: Service, environment: Environment, digest: str,
                    now: float | None = None) -> ApprovalCount:
    """Enough unused, unexpired approvals of exactly this digest, by distinct eligible people who did not write
    it; what the deployment records (who approved, the approval that completed the count)."""
    unused = unused_approvals(instance, service, environment)
    if not unused:
        if history.latest(instance, approval_key(service, environment)) is not None:
            raise refuse(service, environment, "the latest approval has already been used: "
                         "one approval releases one digest once")
        raise refuse(service, environment, "needs an approval: release-graph approve "
                     f"{service.name} --env {environment.name} --by <you>")
    if not any(a.digest == digest for a in unused):
        raise refuse(service, environment, f"the latest approval is for {unused[0].digest}, "
                     f"not for {digest}, which is what would be deployed: approve this digest")
    count = count_approvals(instance, service, environment, digest, now)
    if not count.complete:
        raise refuse(service, environment, approval_shortfall(count, environment, digest_label(digest))
                     + f"; approve with release-graph approve {service.name} --env {environment.name} --by <you>")
    return count


def approver_identity(run_tags, typed: str | None) -> tuple[str, str]:
    """Who approves, and how we know: the identity the UI's authenticating proxy put in the run's tags when
    there is one (the person cannot choose it), else what was typed in the run config ('' when nothing)."""
    authenticated = (run_tags.get(AUTHENTICATED_USER_TAG) or "").strip()
    if authenticated:
        return authenticated, M.PROXY_IDENTITY
    return (typed or "").strip(), M.TYPED_IDENTITY


def verify_new_approval(instance, service: Service, environment: Environment, digest: str, identity: str,
                        now: float | None = None) -> ApprovalCount:
    """Whether `identity` may approve `digest` here now: an eligible approver, not the commit's author, and not
    one whose approval of it already counts (a second approval by the same person would add nothing). Returns
    the count before this approval."""
    verify_approver(service, environment, identity, *commit_identity(instance, service, digest))
    count = count_approvals(instance, service, environment, digest, now)
    if identity_key(identity) in {identity_key(given) for given in count.given_by}:
        raise refuse(service, environment, f"'{identity}' already approved {digest_label(digest)} and that approval "
                     f"still counts; {environment.approvals_required} distinct approvers are needed "
                     f"({count.progress()})")
    return count


def image_reference(fleet: Fleet, service: Service, digest: str) -> str:
    """What a deployment of `digest` pulls: the prebuilt reference's repository, or the fleet's, `@digest`."""
    return pinned(service.image if service.is_prebuilt else service.image_repository(fleet), digest)


def approvable_digest(instance, fleet: Fleet, service: Service, environment: Environment,
                      requested: str | None) -> history.StageRecord:
    """The release an approval for `environment` is about: what the previous stage runs now.

    An approval names that digest (or none, meaning that one); any other digest is refused.
    """
    before = previous_environment(fleet, environment)
    running_key = environment_key(service, before) if before else (
        integration_key(service) if service.build and service.build.integration_target else image_key(service)
    )
    current = history.latest(instance, running_key)
    if current is None or not current.digest:
        raise refuse(service, environment, f"nothing to approve: {running_key.to_user_string()} has no release")
    if current.value(M.ROLLED_BACK_FROM):
        raise refuse(service, environment, f"{running_key.to_user_string()} was rolled back by hand to "
                     f"{current.digest}: a rollback is not approved forward; approve the next release, or "
                     "deploy a digest explicitly "
                     f"with release-graph deploy {service.name} --env {environment.name} --digest ...")
    if requested and requested != current.digest:
        raise refuse(service, environment, f"refused approval of {requested}: "
                     f"{running_key.to_user_string()} runs {current.digest}")
    return current


def commit_author(instance, service: Service, digest: str) -> str:
    """`Name <email>` of the commit the digest was built from, as the image step recorded it ('' if unknown)."""
    built = history.record_with_digest(instance, image_key(service), digest)
    return built.value(M.AUTHOR, "") if built else ""


def commit_author_email(instance, service: Service, digest: str) -> str:
    """The author's email exactly as git has it for the digest's commit ('' if unknown; images recorded
    before the image step wrote it separately have only `Name <email>`)."""
    return commit_identity(instance, service, digest)[1]


def commit_identity(instance, service: Service, digest: str) -> tuple[str, str]:
    """(`Name <email>`, the email) of the digest's commit, read once, as the author rule takes them."""
    built = history.record_with_digest(instance, image_key(service), digest)
    return (built.value(M.AUTHOR, ""), built.value(M.AUTHOR_EMAIL, "")) if built else ("", "")


def is_author(approver: str, author: str, author_email: str = "") -> bool:
    """Exact identity: the approver is the author's email or the author's full name (case-insensitive).

    `author_email` is the commit's own email when the image step recorded it; otherwise it is read from the
    `<...>` of `author`. Never a substring: 'ann' does not match 'Joanna <joanna@example.com>'.
    """
    if not approver or not (author or author_email):
        return False
    name, bracket, rest = author.rpartition("<") if "<" in author else (author, "", "")
    email = author_email or (rest.rstrip(">") if bracket else "")
    identities = {identity_key(name), identity_key(email), identity_key(author)}
    identities.discard("")
    return identity_key(approver) in identities


def approver_refusal(environment: Environment, approver: str, author: str, author_email: str = "") -> str | None:
    """Why `approver` may not approve here (not an eligible approver, or the commit's author), or None."""
    if not approver.strip():
        return "an approval names who gives it: the approver is empty"
    if not environment.may_approve(approver):
        teams = f"; teams resolved: {', '.join(environment.eligible_approvers)}" if any(
            a.startswith("team:") for a in environment.approvers) else ""
        return f"'{approver}' may not approve here (approvers: {', '.join(environment.approvers)}{teams})"
    if environment.author_cannot_approve and is_author(approver, author, author_email):
        return f"'{approver}' wrote this commit ({author or author_email}) and may not approve it"
    return None


def verify_approver(service: Service, environment: Environment, approver: str, author: str,
                    author_email: str = "") -> None:
    """The approvers list (when the environment has one, teams resolved) and the author rule."""
    reason = approver_refusal(environment, approver, author, author_email)
    if reason:
        raise refuse(service, environment, reason)


def digest_label(digest: str, git_sha: str | None = None) -> str:
    """How a reason names a release: the digest's first 12 hex digits, and the commit when known."""
    return f"sha256:{digest.removeprefix('sha256:')[:12]}" + (f" ({git_sha[:7]})" if git_sha else "")


def e2e_blocker(instance, fleet: Fleet, service: Service, environment: Environment, digest: str,
                label: str | None = None) -> str | None:
    """The end-to-end gate in front of `environment`: the previous environment's e2e must have passed with a
    tested set that contains exactly `digest` for this service. A pass for another set is no evidence."""
    label = label or digest_label(digest)
    before = previous_environment(fleet, environment)
    if before is None or fleet.e2e is None:
        return None
    key = e2e_key(before)
    e2e = history.latest(instance, key)
    if e2e is None:
        return f"waiting for {key.to_user_string()} to pass with {service.name} {label}"
    tested = e2e.value(M.DEPLOYED_DIGESTS) or {}
    passed = history.check_passed_for(instance, dg.AssetCheckKey(key, "e2e_tests"), e2e.digest)
    if tested.get(service.name) != digest:
        return f"waiting for {key.to_user_string()} to pass with {service.name} {label}"
    if passed is not True:
        return (f"the end-to-end tests of '{before.name}' "
                + ("failed" if passed is False else "have not passed") + f" with {service.name} {label}")
    return None


def e2e_in_progress(instance, fleet: Fleet, environment: Environment) -> str | None:
    """A deployment waits while its environment's own e2e run is queued or running: its verdict is about what
    runs there, and a release moving under it (a canary taking half the traffic) would fail it for nothing."""
    if fleet.e2e is None:
        return None
    key = e2e_key(environment)
    run = history.run_in_progress_holding(instance, key)
    if run is None:
        return None
    return (f"waiting for {key.to_user_string()} to finish (run {run.run_id[:8]}): it tests what runs in "
            f"{environment.name}")


def rolled_back_from(instance, service: Service, environment: Environment, digest: str) -> history.StageRecord | None:
    """The deployment that rolled `digest` back out of `environment`, if one did."""
    return next((r for r in history.history(instance, environment_key(service, environment))
                 if r.value(M.ROLLED_BACK_FROM) == digest), None)


def transitive_hard_deps(fleet: Fleet, service: Service) -> list[str]:
    """Every service `service` needs at run time, providers first."""
    needed: set[str] = set()
    pending = list(service.hard_deps)
    while pending:
        name = pending.pop()
        if name not in needed:
            needed.add(name)
            pending += fleet.services[name].hard_deps
    return [name for name in topological_order(fleet.services) if name in needed]


def integration_partner(instance, fleet: Fleet, name: str) -> str | None:
    """The digest of the dependency `name` an integration run starts beside the service: what the first
    environment runs, else its latest image that passed its blocking checks; None when there is neither yet."""
    first = next(iter(fleet.environments.values()))
    dependency = fleet.services[name]
    deployed = history.latest(instance, environment_key(dependency, first))
    if deployed is not None and deployed.digest:
        return deployed.digest
    for record in history.history(instance, image_key(dependency), limit=50):
        if record.digest and not blocking_checks_passed(instance, fleet, dependency, image_key(dependency),
                                                        record.digest):
            return record.digest
    return None


def waiting_reason(instance, fleet: Fleet, service: Service, key: dg.AssetKey) -> str | None:
    """Why the stage `key` (integration or an environment) would not take the release its previous stage
    holds now, in words; None when it may (or already did). The automation gate and `release-graph why`
    both ask this, so what waits always says why."""
    stage = key.path[-1]
    if stage == "integration":
        previous, environment = image_key(service), None
    else:
        environment = fleet.environments[stage]
        previous = previous_stage_key(fleet, service, environment)
    candidate = history.latest(instance, previous)
    if candidate is None or not candidate.digest:
        return f"waiting for {previous.to_user_string()}: nothing has passed it yet"
    digest = candidate.digest
    short = (candidate.git_sha or "")[:7] or digest[7:19]
    label = digest_label(digest, candidate.git_sha)
    current = history.latest(instance, key)
    # A stage that already runs what its previous stage holds waits for nothing: it is not held back by
    # evidence gathered since (another service's change failing the e2e run that tested this digest too).
    # An approval-gated environment is judged by its approvals below.
    if current is not None and current.digest == digest and (environment is None or not environment.requires_approval):
        return None
    failed = blocking_checks_passed(instance, fleet, service, previous, digest)
    if failed:
        return f"blocked: {', '.join(failed)} did not pass for {short} at {previous.to_user_string()}"
    if environment is None:
        # The integration starts the image beside every service it needs: each must have something to start
        # (a fleet's first release builds them all at once, and a consumer's image can pass its checks first).
        for name in transitive_hard_deps(fleet, service):
            if integration_partner(instance, fleet, name) is None:
                return (f"waiting for {name}/image to pass its checks (the integration tests start it beside "
                        f"{service.name})")
        return None
    if candidate.value(M.ROLLED_BACK_FROM):
        return (f"{previous.to_user_string()} was rolled back to {label} by hand: a rollback does not flow "
                "forward (the next new release will)")
    if rolled_back_from(instance, service, environment, digest) is not None:
        return f"{label} was rolled back out of {environment.name}: it is not promoted there again automatically"
    blocker = e2e_blocker(instance, fleet, service, environment, digest, label)
    if blocker:
        return blocker
    testing = e2e_in_progress(instance, fleet, environment)
    if testing:
        return testing
    for provider in service.hard_deps:
        if service.deploy_unit and fleet.services[provider].deploy_unit == service.deploy_unit:
            continue  # edges inside a deploy unit do not order deployments
        if history.latest(instance, environment_key(provider, environment)) is None:
            return f"waiting for {provider}/{environment.name} (provider) to be deployed first"
        if about_to_deploy(instance, fleet, fleet.services[provider], environment):
            return f"waiting for {provider}/{environment.name} (provider) to deploy its new release first"
    if environment.requires_approval:
        if current is not None and current.digest == digest and approval_spent(instance, service, environment):
            return None  # the approvals were used: this environment runs what they approved
        count = count_approvals(instance, service, environment, digest)
        if not count.complete:
            return approval_shortfall(count, environment, label)
    return None


def already_took_or_tried(instance, fleet: Fleet, service: Service, key: dg.AssetKey) -> bool:
    """Whether the ungated stage `key` already took the digest its previous stage holds now, or tried to and
    failed: there is nothing for automation to start (the stage ran in the same run as its previous stage,
    or its trigger fired again for a digest it took already)."""
    stage = key.path[-1]
    if stage == "integration":
        previous = image_key(service)
    else:
        environment = fleet.environments[stage]
        if environment.requires_approval:
            return False  # judged by its approvals (`approval_spent`)
        previous = previous_stage_key(fleet, service, environment)
    current, candidate = history.latest(instance, key), history.latest(instance, previous)
    if candidate is None or not candidate.digest:
        return False
    if current is not None and current.digest == candidate.digest and current.storage_id > candidate.storage_id:
        return True
    # It tried that digest already and failed (in the same run as its previous stage, or after it): automation
    # does not try again on its own; `release-graph why` says it failed, `release-graph retry` runs it again.
    return history.failed_attempt_since(instance, service.name, key, candidate.timestamp, candidate.run_id) is not None


def chain_waiting_reason(instance, fleet: Fleet, service: Service, environment: Environment) -> str | None:
    """Why the first environment cannot deploy in the same run as the integration of the service's newest
    image (None: it can). That run deploys what its integration passed, or nothing: a failed integration or
    a failed blocking check stops the run before the deployment (the deploy step then judges the integration's
    evidence itself, as always). What can be judged before the integration ran is judged here: the rollback
    rules, and that every provider already runs there with no new release of its own on the way, so providers
    still deploy first. When this says no, the stage simply waits for the integration's result as before."""
    image = history.latest(instance, image_key(service))
    if image is None or not image.digest:
        return f"waiting for {service.name}/image: nothing has been built yet"
    if rolled_back_from(instance, service, environment, image.digest) is not None:
        return f"{digest_label(image.digest, image.git_sha)} was rolled back out of {environment.name}"
    return e2e_in_progress(instance, fleet, environment) or providers_unsettled(instance, fleet, service, environment)


def providers_unsettled(instance, fleet: Fleet, service: Service, environment: Environment) -> str | None:
    """Why a release of `service` cannot be deployed to `environment` without waiting for its run's previous
    stage (None: it can): a provider that does not run there yet, or has a new release of its own on the way."""
    for provider_name in service.hard_deps:
        provider = fleet.services[provider_name]
        if service.deploy_unit and provider.deploy_unit == service.deploy_unit:
            continue
        deployed = history.latest(instance, environment_key(provider, environment))
        if deployed is None:
            return f"waiting for {provider_name}/{environment.name} (provider) to be deployed first"
        if about_to_deploy(instance, fleet, provider, environment) or release_on_the_way(
                instance, fleet, provider, deployed.digest):
            return f"waiting for {provider_name}/{environment.name} (provider) to deploy its new release first"
    return None


def stages_in_the_image_run(instance, fleet: Fleet, service: Service, releasing: Collection[str]) -> list[dg.AssetKey]:
    """The stages a new commit's build run goes on to after its image, so a release does not wait for an
    automation tick and a run start-up between them: its integration, when every service it is started beside
    has an image to start; and then its first environment, when nothing in `releasing` (the services whose new
    commits this Git tick builds) is one of its providers and `providers_unsettled` has nothing to say. Each
    stage still runs only when the one before passed (a failed blocking check stops the run there) and the
    deploy step judges the integration's evidence as always. Empty: automation takes over after the image."""
    if not (service.build and service.build.integration_target):
        return []
    needed = transitive_hard_deps(fleet, service)
    if any(name in releasing for name in needed) or any(
            integration_partner(instance, fleet, name) is None for name in needed):
        return []
    stages = [integration_key(service)]
    first = next(iter(fleet.environments.values()))
    if (not first.requires_approval and not first.branch and previous_stage_key(fleet, service, first) == stages[0]
            and providers_unsettled(instance, fleet, service, first) is None
            and e2e_in_progress(instance, fleet, first) is None):
        stages.append(environment_key(service, first))
    return stages


def release_on_the_way(instance, fleet: Fleet, service: Service, deployed_digest: str | None) -> bool:
    """Whether `service` has a newer image than the one its first environment runs, built and passing its
    blocking checks, and its integration has not failed since: a release its consumers should let go first."""
    image = history.latest(instance, image_key(service))
    if image is None or not image.digest or image.digest == deployed_digest:
        return False
    if blocking_checks_passed(instance, fleet, service, image_key(service), image.digest):
        return False
    integrated = history.latest(instance, integration_key(service))
    if integrated is not None and integrated.digest == image.digest:
        return False  # past its integration: `about_to_deploy` judges the rest
    return history.failed_attempt_since(instance, service.name, integration_key(service), image.timestamp) is None


def about_to_deploy(instance, fleet: Fleet, service: Service, environment: Environment) -> bool:
    """Whether `service` has a release it is about to deploy in `environment`: its own trigger (the previous
    stage, or the approval) is newer than its last deployment there, its gate is open, and no attempt since
    failed (automation does not retry a failed run). A consumer waits for that: providers deploy first, each
    in a run of its own."""
    key = environment_key(service, environment)
    trigger_key = approval_key(service, environment) if environment.requires_approval else (
        previous_stage_key(fleet, service, environment))
    trigger = history.latest(instance, trigger_key)
    current = history.latest(instance, key)
    if trigger is None or (current is not None and current.storage_id > trigger.storage_id):
        return False
    if waiting_reason(instance, fleet, service, key) is not None:
        return False
    return history.failed_attempt_since(instance, service.name, key, trigger.timestamp, trigger.run_id) is None
