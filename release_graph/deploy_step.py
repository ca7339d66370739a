"""Deploying `<service>/<environment>` and approving `<service>/<environment>_approval`.

Whatever must prevent a deployment (a digest that never passed the previous stage, one this fleet did not
build, a missing or mismatched approval, a missing secret, a failing health check) refuses here, before
anything changes. Checks on the asset then record the evidence for the UI.

No `from __future__ import annotations` here: Dagster reads the Config classes' annotations at import.
"""

import time
from typing import Optional

import dagster as dg

from release_graph import history
from release_graph.image_step import SERVICE_TAG, SHA_TAG, SHORT_SHA_TAG, ReleaseStepError
from release_graph.manifest import Environment, Fleet, Service
from release_graph.stages import (
    approval_key,
    e2e_key,
    environment_key,
    image_key,
    integration_key,
    previous_environment,
    previous_stage_key,
)

ENV_TAG = "release/env"


class DeployConfig(dg.Config):
    """Leave empty to deploy what the previous stage passed last; give a digest to roll back or forward."""

    digest: Optional[str] = None  # noqa: UP045 - Dagster's Config needs typing.Optional here


class ApprovalConfig(dg.Config):
    approver: str
    ticket: Optional[str] = None  # noqa: UP045
    digest: Optional[str] = None  # noqa: UP045 - default: the digest the previous environment runs


def _refuse(service: Service, environment: Environment, message: str) -> ReleaseStepError:
    return ReleaseStepError(f"service '{service.name}', environment '{environment.name}': {message}")


def blocking_checks_passed(instance, fleet: Fleet, service: Service, key: dg.AssetKey, digest: str) -> list[str]:
    """Names of the blocking checks of `key` that did not pass for `digest` (empty when all passed)."""
    from release_graph.service_release import blocking_check_names

    failed = []
    for name in blocking_check_names(fleet, service, key):
        if history.check_passed_for(instance, dg.AssetCheckKey(key, name), digest) is not True:
            failed.append(name)
    return failed


def choose_digest(context, fleet: Fleet, service: Service, environment: Environment, config: DeployConfig):
    """The digest that passed the previous stage: its latest one, or the one the release manager named."""
    instance = context.instance
    previous_key = previous_stage_key(fleet, service, environment)
    if config.digest:
        record = history.record_with_digest(instance, previous_key, config.digest)
        if record is None:
            raise _refuse(service, environment,
                          f"digest {config.digest} never passed {previous_key.to_user_string()}: refused")
    else:
        record = history.latest(instance, previous_key)
        if record is None:
            raise _refuse(service, environment, f"nothing has passed {previous_key.to_user_string()} yet")
    if not record.digest:
        raise _refuse(service, environment, f"{previous_key.to_user_string()} recorded no digest")
    failed = blocking_checks_passed(instance, fleet, service, previous_key, record.digest)
    if failed:
        raise _refuse(service, environment, f"digest {record.digest} did not pass "
                      f"{previous_key.to_user_string()} (blocking checks not passed: {', '.join(failed)})")
    before = previous_environment(fleet, environment)
    if before is not None and fleet.e2e is not None:
        e2e = history.latest(instance, e2e_key(before))
        if e2e is None or history.check_passed_for(
            instance, dg.AssetCheckKey(e2e_key(before), "e2e_tests"), e2e.digest
        ) is not True:
            raise _refuse(service, environment,
                          f"the end-to-end tests of '{before.name}' have not passed: promotion beyond it is blocked")
    return record


def verify_provenance(instance, service: Service, environment: Environment, digest: str) -> None:
    """Only a digest this fleet's image step produced may be promoted (not one pushed by hand)."""
    if service.is_prebuilt:
        return
    if history.record_with_digest(instance, image_key(service), digest) is None:
        raise _refuse(service, environment,
                      f"digest {digest} was not produced by {image_key(service).to_user_string()}: refused")


def verify_security_gate(context, fleet: Fleet, service: Service, environment: Environment, digest: str) -> dict:
    """Refuse an image above this environment's `scan_threshold` (after waivers) before anything changes.

    The findings are the ones the `vulnerability_scan` check recorded for exactly this digest; no scan of it is
    a refusal too. Returns the gate's result and the IAM policy the service needs here (least privilege: read
    only its own secrets; references, never values), for the deployment's metadata.
    """
    from release_graph import security_checks
    from release_graph.security.findings import parse_threshold
    from release_graph.security.gate import evaluate_gate
    from release_graph.security.least_privilege import needed_policy
    from release_graph.security.waivers import WaiverError

    ecr = fleet.security.ecr
    # Without a configured region/account the policy uses IAM's own variables: the caller's account and region.
    policy = needed_policy(environment.secrets.get(service.name, {}),
                           region=ecr.region if ecr else "${aws:RequestedRegion}",
                           account=ecr.registry_id if ecr and ecr.registry_id else "${aws:PrincipalAccount}")
    metadata = {"iam_policy": dg.MetadataValue.json(policy)}
    if environment.scan_threshold is None:
        metadata["security_gate"] = "no scan_threshold in this environment"
    elif fleet.security.scanner == "none":
        metadata["security_gate"] = (f"not enforced: scan_threshold {environment.scan_threshold} is set, "
                                     "but security.scanner is none")
        context.log.warning(f"{service.name}@{environment.name}: {metadata['security_gate']}")
    else:
        threshold = parse_threshold(environment.scan_threshold,
                                    f"environment '{environment.name}', field 'scan_threshold'")
        check_key = security_checks.image_scan_key(service)
        scan = history.check_metadata_for(context.instance, check_key, digest)
        if scan is None:
            raise _refuse(service, environment, f"no vulnerability scan of {digest} is recorded "
                          f"({check_key.asset_key.to_user_string()} check '{check_key.name}'"
                          + (", and prebuilt images are not scanned" if service.is_prebuilt else "")
                          + f"): nothing may enter an environment with scan_threshold '{threshold.text}' unscanned")
        findings = security_checks.findings_from_metadata(scan.get("all_findings"))
        try:
            waivers = security_checks.load_fleet_waivers(fleet)
            result = evaluate_gate(findings, threshold, waivers, security_checks.today(), service.name)
        except WaiverError as exc:
            raise _refuse(service, environment, f"the vulnerability gate cannot be applied: {exc}") from None
        if not result.passed:
            worst = "; ".join(f"{f.rule} ({f.severity}) at {f.location}" for f in result.blocking[:10])
            raise _refuse(service, environment, f"image {digest} is above the scan threshold '{threshold.text}' "
                          f"({threshold.describe()}): {len(result.blocking)} blocking finding(s): {worst}. "
                          "Fix the image, or waive the findings in the waivers file with an owner and expiry")
        metadata.update({
            "security_gate": f"passed: {result.summary()}",
            "scan_threshold": threshold.text,
            "scan_blocking_findings": len(result.blocking),
            "scan_total_findings": result.total,
            "scan_waivers_used": security_checks.rows_table(result.waiver_rows, security_checks.WAIVER_COLUMNS),
        })
    return metadata


def verify_approval(context, service: Service, environment: Environment, digest: str):
    """A new approval of exactly this digest, not already used by an earlier deployment."""
    instance = context.instance
    approval = history.latest(instance, approval_key(service, environment))
    if approval is None:
        raise _refuse(service, environment, "needs an approval: release-graph approve "
                      f"{service.name} --env {environment.name} --by <you>")
    if approval.digest != digest:
        raise _refuse(service, environment, f"the latest approval is for {approval.digest}, "
                      f"not for {digest}, which is what would be deployed: approve this digest")
    last = history.latest(instance, environment_key(service, environment))
    if last is not None and last.value("approval_run_id") == approval.run_id:
        raise _refuse(service, environment, "the latest approval has already been used: "
                      "one approval releases one digest once")
    return approval


def image_reference(fleet: Fleet, service: Service, digest: str) -> str:
    if service.is_prebuilt:
        repository = service.image.split("@")[0]
        last = repository.rsplit("/", 1)[-1]
        if ":" in last:
            repository = repository[: repository.rfind(":")]
        return f"{repository}@{digest}"
    return f"{service.image_repository(fleet)}@{digest}"


def materialize_deployment(context, config: DeployConfig, fleet: Fleet, service: Service,
                           environment: Environment) -> dg.MaterializeResult:
    from resources.targets import DeploymentSpec

    record = choose_digest(context, fleet, service, environment, config)
    digest = record.digest
    verify_provenance(context.instance, service, environment, digest)
    security_metadata = verify_security_gate(context, fleet, service, environment, digest)
    approval = verify_approval(context, service, environment, digest) if environment.requires_approval else None
    git_sha = record.git_sha or ""
    context.instance.add_run_tags(context.run.run_id, {
        SERVICE_TAG: service.name, ENV_TAG: environment.name,
        **({SHA_TAG: git_sha, SHORT_SHA_TAG: git_sha[:12]} if git_sha else {}),
    })
    # Secrets resolve before anything stops: a missing one leaves the running version untouched.
    secrets = context.resources.secrets.resolve(
        environment.secrets.get(service.name, {}), environment=environment.name, service=service.name
    )
    target = _target(context, service, environment)
    started = time.monotonic()
    result = target.deploy(DeploymentSpec(
        fleet=fleet.name,
        environment=environment.name,
        service=service.name,
        image=image_reference(fleet, service, digest),
        port=service.port,
        health=service.health,
        # The commit rides along as GIT_SHA (for /version); the build arg alone is not reliable on every engine.
        env={**environment.service_env(service), **({"GIT_SHA": git_sha} if git_sha else {})},
        secrets=secrets,
        publish=environment.publish.get(service.name),
        labels={"io.release-graph.git-sha": git_sha},
    ))
    context.log.info(
        f"{service.name}@{environment.name}: {'deployed' if result.changed else 'already running'} {digest}"
    )
    metadata = {
        **security_metadata,
        "digest": digest,
        "git_sha": git_sha,
        "short_sha": git_sha[:12],
        "image": image_reference(fleet, service, digest),
        "container": result.container_name,
        "deployed_at": dg.MetadataValue.timestamp(time.time()),
        "changed": result.changed,
        "deploy_seconds": dg.MetadataValue.float(round(time.monotonic() - started, 2)),
        "promoted_from": previous_stage_key(fleet, service, environment).to_user_string(),
        "target": environment.target,
        "secrets": ", ".join(sorted(environment.secrets.get(service.name, {}))) or "none",
    }
    if result.published_url:
        metadata["url"] = dg.MetadataValue.url(result.published_url)
    if approval is not None:
        metadata.update({
            "approved_by": approval.value("approver"),
            "approval_ticket": approval.value("ticket") or "",
            "approval_run_id": approval.run_id,
        })
    return dg.MaterializeResult(data_version=dg.DataVersion(digest), metadata=metadata)


def _target(context, service: Service, environment: Environment):
    if environment.target != "docker":
        raise _refuse(service, environment, f"target '{environment.target}' is not configured on this instance "
                      "(see docs/operations.md: Kubernetes)")
    return context.resources.docker_target


def materialize_approval(context, config: ApprovalConfig, fleet: Fleet, service: Service,
                         environment: Environment) -> dg.MaterializeResult:
    before = previous_environment(fleet, environment)
    running_key = environment_key(service, before) if before else (
        integration_key(service) if service.build and service.build.integration_target else image_key(service)
    )
    current = history.latest(context.instance, running_key)
    if current is None or not current.digest:
        raise _refuse(service, environment, f"nothing to approve: {running_key.to_user_string()} has no release")
    digest = config.digest or current.digest
    if digest != current.digest:
        raise _refuse(service, environment, f"refused approval of {digest}: "
                      f"{running_key.to_user_string()} runs {current.digest}")
    if environment.approvers and config.approver not in environment.approvers:
        raise _refuse(service, environment, f"'{config.approver}' may not approve here "
                      f"(approvers: {', '.join(environment.approvers)})")
    built = history.record_with_digest(context.instance, image_key(service), digest)
    author = built.value("author", "") if built else ""
    if environment.author_cannot_approve and author and config.approver.lower() in author.lower():
        raise _refuse(service, environment, f"'{config.approver}' wrote this commit and may not approve it")
    context.instance.add_run_tags(context.run.run_id, {
        SERVICE_TAG: service.name, ENV_TAG: environment.name, "release/approved_by": config.approver,
    })
    return dg.MaterializeResult(
        data_version=dg.DataVersion(digest),
        metadata={
            "digest": digest,
            "git_sha": current.git_sha or "",
            "approver": config.approver,
            "ticket": config.ticket or "",
            "approved_at": dg.MetadataValue.timestamp(time.time()),
            "author": author,
        },
    )
