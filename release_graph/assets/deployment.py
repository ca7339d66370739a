"""`<service>/<environment>`: deploying the digest that passed the previous stage.

Whatever must prevent a deployment (a digest that never passed the previous stage, one this fleet did not
build, a missing or mismatched approval, a missing secret, a scan above the threshold) refuses here, before
anything changes: the rules are in release_graph/release/promotion.py. The evidence about the deployment
(healthy, in_sync, hardening) is produced by this step as check results.

No `from __future__ import annotations` here: Dagster reads the Config classes' annotations at import.
"""

import time
from typing import Optional

import dagster as dg

from release_graph.assets import deployment_checks
from release_graph.assets.automation import stage_condition
from release_graph.assets.common import asset_attributes, describe, rows_table
from release_graph.assets.image import fleet_signing_key
from release_graph.assets.retry import retry_when_transient
from release_graph.assets.rollout import deliver
from release_graph.assets.security_checks import check_hardening
from release_graph.assets.stage_tracing import Stage, tag_release, traced_stage
from release_graph.fleet import Environment, Fleet, Service
from release_graph.release import history
from release_graph.release import metadata as M
from release_graph.release.keys import (
    approval_key,
    e2e_key,
    environment_key,
    integration_key,
    pool_name,
    previous_environment,
    previous_stage_key,
)
from release_graph.release.promotion import (
    choose_digest,
    image_reference,
    passed_over_while_checked,
    refuse,
    verify_approval,
    verify_provenance,
)
from release_graph.release.tags import SHA_TAG
from release_graph.security import provenance
from resources.containers import ContainerEngine
from resources.secrets import SecretsResource
from resources.targets import DeployTarget, DeployTargets, TargetNotConfigured, deployment_spec


class DeployConfig(dg.Config):
    """Leave empty to deploy what the previous stage passed last; give a digest to roll back or forward."""

    digest: Optional[str] = None  # noqa: UP045 - Dagster's Config needs typing.Optional here
    # `release-graph rollback`: who went back and why; the digest then switches at once, without a rollout.
    rollback_by: Optional[str] = None  # noqa: UP045
    rollback_reason: Optional[str] = None  # noqa: UP045


def verify_security_gate(context, fleet: Fleet, service: Service, environment: Environment, digest: str) -> dict:
    """Refuse an image above this environment's `scan_threshold` (after waivers) before anything changes.

    The findings are the ones the `vulnerability_scan` check recorded for exactly this digest; no scan of it is
    a refusal too. The IAM policy the service needs here (least privilege: read only its own secrets;
    references, never values) is checked first: one with grants beyond that is refused. Returns the gate's
    result and the policy, for the deployment's metadata.
    """
    from release_graph.assets import security_checks
    from release_graph.security.findings import parse_threshold
    from release_graph.security.gate import evaluate_gate
    from release_graph.security.least_privilege import PolicyRefused, check_policy, needed_policy
    from release_graph.security.waivers import WaiverError

    ecr = fleet.security.ecr
    # Without a configured region/account the policy uses IAM's own variables: the caller's account and region.
    region = ecr.region if ecr else "${aws:RequestedRegion}"
    account = ecr.registry_id if ecr and ecr.registry_id else "${aws:PrincipalAccount}"
    policy = needed_policy(environment.secrets.get(service.name, {}), region=region, account=account)
    # The manifest supplies no policy document of its own: the generated one is the policy, and it is judged by
    # the same rule as any granted policy (a secret id written as a pattern would make it over-broad).
    try:
        check_policy(policy, service.name, environment.name, fleet, region=region, account=account)
    except PolicyRefused as exc:
        raise refuse(service, environment, f"least privilege: {exc}") from None
    metadata = {
        "iam_policy": dg.MetadataValue.json(policy),
        "iam_policy_check": "passed: reads only its own secrets in this environment (check_policy)",
    }
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
            raise refuse(service, environment, f"no vulnerability scan of {digest} is recorded "
                          f"({check_key.asset_key.to_user_string()} check '{check_key.name}'"
                          + (", and prebuilt images are not scanned" if service.is_prebuilt else "")
                          + f"): nothing may enter an environment with scan_threshold '{threshold.text}' unscanned")
        findings = security_checks.findings_from_metadata(scan.get("all_findings"))
        try:
            waivers = security_checks.load_fleet_waivers(fleet)
            result = evaluate_gate(findings, threshold, waivers, security_checks.today(), service.name)
        except WaiverError as exc:
            raise refuse(service, environment, f"the vulnerability gate cannot be applied: {exc}") from None
        if not result.passed:
            worst = "; ".join(f"{f.rule} ({f.severity}) at {f.location}" for f in result.blocking[:10])
            raise refuse(service, environment, f"image {digest} is above the scan threshold '{threshold.text}' "
                          f"({threshold.describe()}): {len(result.blocking)} blocking finding(s): {worst}. "
                          "Fix the image, or waive the findings in the waivers file with an owner and expiry")
        metadata.update({
            "security_gate": f"passed: {result.summary()}",
            "scan_threshold": threshold.text,
            "scan_blocking_findings": len(result.blocking),
            "scan_total_findings": result.total,
            "scan_waivers_used": rows_table(result.waiver_rows, security_checks.WAIVER_COLUMNS),
        })
    return metadata


def verify_signed_provenance(context, fleet: Fleet, service: Service, environment: Environment, digest: str,
                             secrets_resource: SecretsResource) -> dict:
    """Refuse a digest this fleet did not build, before anything changes. With `security.provenance` that is
    proven: its recorded statement must be signed by the fleet's key (its public half, derived here from the key
    in the secret store) and be about exactly this image. Returns what the deployment records about it."""
    signing_key = fleet_signing_key(fleet, secrets_resource) if not service.is_prebuilt else None
    if signing_key is None:
        verify_provenance(context.instance, service, environment, digest)
        return {}
    started = time.perf_counter()
    statement = verify_provenance(context.instance, service, environment, digest, verify_key=signing_key.public,
                                  repository=service.image_repository(fleet))
    seconds = time.perf_counter() - started
    facts = provenance.summary(statement or {})
    context.log.info(f"{service.name}@{environment.name}: provenance of {digest} verified (key "
                     f"{signing_key.public.keyid[:16]}, commit {facts['commit'][:12]})")
    return {
        M.PROVENANCE_VERIFIED: (f"verified: built from {facts['source']} at {facts['commit'][:12]} "
                                f"by {facts['builder']}"),
        M.PROVENANCE_KEY_ID: signing_key.public.keyid,
        "provenance_verify_ms": dg.MetadataValue.float(round(seconds * 1000, 3)),
    }


@retry_when_transient("the deployment")
def materialize_deployment(context, config: DeployConfig, fleet: Fleet, service: Service, environment: Environment,
                           deploy_targets: DeployTargets, secrets_resource: SecretsResource) -> dg.MaterializeResult:
    record = choose_digest(context.instance, fleet, service, environment, config.digest)
    digest = record.digest
    passed_over = None if config.digest else passed_over_while_checked(context.instance, fleet, service, environment,
                                                                       digest)
    if passed_over:
        context.log.info(passed_over)
    launched_for = context.run.tags.get(SHA_TAG)
    if not (config.digest or passed_over) and launched_for and record.git_sha and launched_for != record.git_sha:
        context.log.info(f"{service.name}@{environment.name}: this run was launched for {launched_for[:12]}; a newer "
                         f"commit, {record.git_sha[:12]}, passed {record.key.to_user_string()} meanwhile and is "
                         "deployed instead (a burst: the newest commit wins)")
    provenance_metadata = verify_signed_provenance(context, fleet, service, environment, digest, secrets_resource)
    security_metadata = verify_security_gate(context, fleet, service, environment, digest)
    approval = (verify_approval(context.instance, service, environment, digest)
                if environment.requires_approval else None)
    git_sha = record.git_sha or ""
    tag_release(context, fleet, service, git_sha, environment.name)
    # Secrets resolve before anything stops: a missing one leaves the running version untouched.
    secrets = secrets_resource.resolve(
        environment.secrets.get(service.name, {}), environment=environment.name, service=service.name
    )
    target = target_for(deploy_targets, service, environment)
    started = time.monotonic()
    key = environment_key(service, environment)
    result, rollout_metadata = deliver(context, target, deployment_spec(
        fleet, service, environment, image=image_reference(fleet, service, digest), git_sha=git_sha, secrets=secrets,
    ), environment, key, immediate=bool(config.rollback_reason))
    context.log.info(
        f"{service.name}@{environment.name}: {'deployed' if result.changed else 'already running'} {digest}"
    )
    metadata = {
        **security_metadata,
        **provenance_metadata,
        M.DIGEST: digest,
        M.GIT_SHA: git_sha,
        M.SHORT_SHA: git_sha[:12],
        "image": image_reference(fleet, service, digest),
        "container": result.container_name,
        M.DEPLOYED_AT: dg.MetadataValue.timestamp(time.time()),
        M.CHANGED: result.changed,
        "deploy_seconds": dg.MetadataValue.float(round(time.monotonic() - started, 2)),
        "promoted_from": previous_stage_key(fleet, service, environment).to_user_string(),
        "target": environment.target,
        "secrets": ", ".join(sorted(environment.secrets.get(service.name, {}))) or "none",
    }
    metadata.update(rollout_metadata)
    if config.rollback_reason:
        metadata.update({M.ROLLBACK_BY: config.rollback_by or "", M.ROLLBACK_REASON: config.rollback_reason})
    if result.published_url:
        metadata["url"] = dg.MetadataValue.url(result.published_url)
    metadata.update(rollback_metadata(context.instance, fleet, service, environment, digest, config.digest))
    if approval is not None:
        metadata.update({
            M.APPROVED_BY: ", ".join(approval.given_by),
            M.APPROVAL_TICKET: approval.tickets,
            M.APPROVAL_RUN_ID: approval.run_id,
        })
    return dg.MaterializeResult(data_version=dg.DataVersion(digest), metadata=metadata)


def rollback_metadata(instance, fleet: Fleet, service: Service, environment: Environment, digest: str,
                      requested: str | None) -> dict:
    """A digest named by hand that is not the newest release of the previous stage is a rollback (or a pin):
    it is marked, so it never flows forward by automation and the digest it replaced is not promoted here
    again automatically."""
    newest = history.latest(instance, previous_stage_key(fleet, service, environment))
    if not requested or newest is None or newest.digest == requested:
        return {}
    before = history.latest(instance, environment_key(service, environment))
    replaced = before.digest if before is not None and before.digest != digest else newest.digest
    return {M.ROLLED_BACK_FROM: replaced or ""}


def target_for(deploy_targets: DeployTargets, service: Service, environment: Environment) -> DeployTarget:
    """The target of the environment's `target:`; a refusal (nothing changed) when this instance has none."""
    try:
        return deploy_targets.for_environment(environment.target, environment.kubernetes)
    except TargetNotConfigured as exc:
        raise refuse(service, environment, str(exc)) from None


def deployment_asset(fleet: Fleet, service: Service, environment: Environment) -> dg.AssetsDefinition:
    key = environment_key(service, environment)
    before = previous_environment(fleet, environment)
    previous = previous_stage_key(fleet, service, environment)
    deps = [previous]
    if environment.requires_approval:
        deps.append(approval_key(service, environment))
        trigger = approval_key(service, environment)
    else:
        trigger = previous
    if before is not None and fleet.e2e is not None:
        deps.append(e2e_key(before))
    # Hard edges order deployments: a provider's deployment here precedes its consumers'. Edges inside one
    # deploy_unit are left out: that is how a cycle of calls stays deployable.
    deps += [
        environment_key(dep, environment) for dep in service.hard_deps
        if not (service.deploy_unit and fleet.services[dep].deploy_unit == service.deploy_unit)
    ]
    gate = "approval" if environment.requires_approval else previous.to_user_string()

    # The evidence about a deployment is produced by the deploy step itself (check specs, not separate check
    # steps): Dagster's automation selects exactly the checks it requests when a tick also requests an asset
    # whose checks are specs (integration, e2e), and separate checks of a deployment would then never run.
    check_specs = [
        dg.AssetCheckSpec("healthy", asset=key, blocking=True,
                          description=f"The deployed container runs and {service.health or 'its process'} answers."),
        dg.AssetCheckSpec("in_sync", asset=key,
                          description="What actually runs is the digest last recorded here (drift); the "
                          "environment_drift sensor re-evaluates it between deployments."),
    ]
    if environment.rollout.progressive:
        check_specs.append(dg.AssetCheckSpec(
            "analysis", asset=key, blocking=True,
            description=f"The new version measured while it served ({environment.rollout.strategy}, then "
            f"{environment.rollout.bake_seconds:g} s at full traffic): "
            f"{', '.join(environment.rollout.analysis.providers)}. A failed analysis rolls back on its own."))
    if environment.target == "docker":  # only the docker target can show how its containers run
        check_specs.append(dg.AssetCheckSpec(
            "hardening", asset=key,
            description="The running container: non-root user, read-only root filesystem, not privileged, "
            "no added capabilities (a warning)."))
        check_specs.append(dg.AssetCheckSpec(
            "network_policy", asset=key,
            description="The network refused no call to or from it: only the services that declare an edge to it "
            "may call it (a warning naming caller and callee; the environment_drift sensor re-evaluates it)."))

    @dg.asset(
        key=key,
        deps=deps,
        description=describe(service, f"{service.name} running in {environment.name} "
                              f"({environment.target}): the digest that passed {previous.to_user_string()}"
                              + (", approved" if environment.requires_approval else "")
                              + ". The data version is the deployed digest."),
        kinds={"docker"} if environment.target == "docker" else {"kubernetes"},
        # An environment that tracks a branch is deployed only by the branch_promotion sensor.
        automation_condition=None if environment.branch else stage_condition(
            fleet, service, [trigger], label=f"new {gate} for {service.name}/{environment.name}",
            not_with=environment_key(service, before) if environment.requires_approval and before else None,
            chained_to=(previous, environment) if previous == integration_key(service) and before is None
            and not environment.requires_approval else None,
        ),
        check_specs=check_specs,
        pool=pool_name(service, environment),
        **asset_attributes(service),
    )
    @traced_stage(fleet, service, Stage(environment.name, f"deploy {environment.name}", "deploy",
                                        environment=environment.name, after=trigger))
    def deployment(context: dg.AssetExecutionContext, config: DeployConfig, deploy_targets: DeployTargets,
                   secrets: SecretsResource, engine: ContainerEngine) -> dg.MaterializeResult:
        deployed = materialize_deployment(context, config, fleet, service, environment, deploy_targets, secrets)
        target = target_for(deploy_targets, service, environment)
        digest = deployed.metadata[M.DIGEST]
        evidence = [
            deployment_checks.check_healthy(context, fleet, service, environment, target, digest),
            deployment_checks.check_in_sync(context, fleet, service, environment, target, digest),
        ]
        if environment.rollout.progressive:
            verdict = str(deployed.metadata.get(M.ANALYSIS_VERDICT, "not analysed"))
            evidence.append(dg.AssetCheckResult(
                check_name="analysis", passed=True, description=verdict,
                metadata={"verdict": verdict, M.DIGEST: digest}))
        if environment.target == "docker":
            evidence.append(check_hardening(context, fleet, service, environment, target, engine, digest))
            evidence.append(deployment_checks.check_network_policy(fleet, service, environment, target))
        return dg.MaterializeResult(data_version=deployed.data_version, metadata=deployed.metadata,
                                    check_results=evidence)

    return deployment
