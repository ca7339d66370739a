"""The promotion rules: what a digest must have passed before a stage may take it, and who may approve it.

Every rule reads the instance's records only (no engine, no registry), so each one is unit-tested on a bare
instance. The deploy and approval steps call these before anything changes; the branch-promotion sensor and
the integration stage call the same ones.
"""

from __future__ import annotations

from collections.abc import Collection

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
)
from release_graph.release.metadata import APPROVAL_RUN_ID


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


# How a stage waiting for a person's approval begins its waiting reason (the notifications' approval_needed).
WAITING_FOR_APPROVAL = "waiting for an approval of"


def refuse(service: Service, environment: Environment, message: str) -> ReleaseStepError:
    return ReleaseStepError(f"service '{service.name}', environment '{environment.name}': {message}")


def blocking_checks_passed(instance, fleet: Fleet, service: Service, key: dg.AssetKey, digest: str) -> list[str]:
    """Names of the blocking checks of `key` that did not pass for `digest` (empty when all passed)."""
    failed = []
    for name in blocking_check_names(fleet, service, key):
        if history.check_passed_for(instance, dg.AssetCheckKey(key, name), digest) is not True:
            failed.append(name)
    return failed


def choose_digest(instance, fleet: Fleet, service: Service, environment: Environment, requested: str | None = None):
    """The digest that passed the previous stage: its latest one, or the one the release manager named."""
    previous_key = previous_stage_key(fleet, service, environment)
    if requested:
        record = history.record_with_digest(instance, previous_key, requested)
        if record is None:
            raise refuse(service, environment,
                          f"digest {requested} never passed {previous_key.to_user_string()}: refused")
    else:
        record = history.latest(instance, previous_key)
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


def verify_provenance(instance, service: Service, environment: Environment, digest: str) -> None:
    """Only a digest this fleet's image step produced may be promoted (not one pushed by hand)."""
    if service.is_prebuilt:
        return
    if history.record_with_digest(instance, image_key(service), digest) is None:
        raise refuse(service, environment,
                      f"digest {digest} was not produced by {image_key(service).to_user_string()}: refused")


def approval_spent(instance, service: Service, environment: Environment) -> bool:
    """True when the environment's latest approval was used by its latest deployment: it runs what that
    approval released, and only a new approval deploys there again."""
    approval = history.latest(instance, approval_key(service, environment))
    last = history.latest(instance, environment_key(service, environment))
    return approval is not None and last is not None and last.value(APPROVAL_RUN_ID) == approval.run_id


def verify_approval(instance, service: Service, environment: Environment, digest: str):
    """A new approval of exactly this digest, not already used by an earlier deployment."""
    approval = history.latest(instance, approval_key(service, environment))
    if approval is None:
        raise refuse(service, environment, "needs an approval: release-graph approve "
                      f"{service.name} --env {environment.name} --by <you>")
    if approval.digest != digest:
        raise refuse(service, environment, f"the latest approval is for {approval.digest}, "
                      f"not for {digest}, which is what would be deployed: approve this digest")
    if approval_spent(instance, service, environment):
        raise refuse(service, environment, "the latest approval has already been used: "
                      "one approval releases one digest once")
    return approval


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


def is_author(approver: str, author: str) -> bool:
    """Exact identity: the approver is the author's email or the author's full name (case-insensitive).

    Never a substring: 'ann' does not match 'Joanna <joanna@example.com>'.
    """
    if not approver or not author:
        return False
    name, _, rest = author.partition("<")
    identities = {name.strip().casefold(), rest.rstrip(">").strip().casefold(), author.strip().casefold()}
    identities.discard("")
    return approver.strip().casefold() in identities


def verify_approver(service: Service, environment: Environment, approver: str, author: str) -> None:
    """The approvers list (when the environment has one) and the author rule."""
    if environment.approvers and approver not in environment.approvers:
        raise refuse(service, environment, f"'{approver}' may not approve here "
                     f"(approvers: {', '.join(environment.approvers)})")
    if environment.author_cannot_approve and is_author(approver, author):
        raise refuse(service, environment, f"'{approver}' wrote this commit and may not approve it")


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
    for provider in service.hard_deps:
        if service.deploy_unit and fleet.services[provider].deploy_unit == service.deploy_unit:
            continue  # edges inside a deploy unit do not order deployments
        if history.latest(instance, environment_key(provider, environment)) is None:
            return f"waiting for {provider}/{environment.name} (provider) to be deployed first"
        if about_to_deploy(instance, fleet, fleet.services[provider], environment):
            return f"waiting for {provider}/{environment.name} (provider) to deploy its new release first"
    if environment.requires_approval:
        approval = history.latest(instance, approval_key(service, environment))
        if approval is None or approval.digest != digest:
            return f"{WAITING_FOR_APPROVAL} {label} for {environment.name}"
        if current is not None and current.value(APPROVAL_RUN_ID) == approval.run_id:
            return None  # the approval was used: this environment runs what it approved
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
    return providers_unsettled(instance, fleet, service, environment)


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
            and providers_unsettled(instance, fleet, service, first) is None):
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
