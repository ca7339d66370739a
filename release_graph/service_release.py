"""One service's release, generated from the manifest in this one place.

No `from __future__ import annotations`: Dagster reads the step functions' annotations (context, config).

For every service: `<svc>/source` (the head commit, observed by the Git sensor), `<svc>/image` (built from
that exact commit, or the pinned prebuilt image) and the image's evidence as checks. Keys are
`[<service>, <stage>]`, grouped by service. `<svc>/image` has no automation condition: only the Git
sensor, a person in the UI or `release-graph build` builds.
"""


from dataclasses import dataclass, field

import dagster as dg

from release_graph import (
    deploy_step,
    environment_checks,
    image_checks,
    image_step,
    integration_step,
    security_checks,
)
from release_graph.automation import stage_condition
from release_graph.manifest import Environment, Fleet, Service
from release_graph.stages import (
    approval_key,
    e2e_key,
    environment_key,
    has_integration,
    image_key,
    integration_key,
    pool_name,
    previous_environment,
    previous_stage_key,
    source_key,
)
from resources.git import GitError


@dataclass
class ServiceRelease:
    assets: list = field(default_factory=list)
    checks: list = field(default_factory=list)


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


def edges_metadata(fleet: Fleet, service: Service) -> dict:
    """The service's edges as a release manager reads them; hard ones order deployments (later stages)."""
    consumers = sorted(s.name for s in fleet.services.values() if service.name in s.hard_deps)
    rows = [
        dg.TableRecord({
            "service": edge.name,
            "kind": "soft" if edge.soft else ("hard, start-up only" if edge.startup_only else "hard"),
            "evidence": "; ".join(edge.evidence),
        })
        for edge in service.depends_on
    ]
    return {
        "depends_on": dg.MetadataValue.table(
            records=rows,
            schema=dg.TableSchema(columns=[
                dg.TableColumn("service", "string"), dg.TableColumn("kind", "string"),
                dg.TableColumn("evidence", "string"),
            ]),
        ),
        "hard_dependencies": ", ".join(service.hard_deps) or "none",
        "soft_dependencies": ", ".join(service.soft_deps) or "none",
        "used_by": ", ".join(consumers) or "none",
    }


def _common(fleet: Fleet, service: Service) -> dict:
    return {
        "group_name": service.group,
        "owners": list(service.owners) or None,
        "tags": {"release/service": service.name, **({"language": service.language} if service.language else {})},
    }


def _describe(service: Service, what: str) -> str:
    return f"{what}\n\n{service.description}".strip() if service.description else what


def build_service_release(fleet: Fleet, service: Service) -> ServiceRelease:
    release = _prebuilt_release(fleet, service) if service.is_prebuilt else _built_release(fleet, service)
    if has_integration(service):
        release.assets.append(_integration_stage(fleet, service))
    for environment in fleet.environments.values():
        if environment.requires_approval:
            release.assets.append(_approval_stage(fleet, service, environment))
        deployment, checks = _environment_stage(fleet, service, environment)
        release.assets.append(deployment)
        release.checks += checks
    return release


def _integration_stage(fleet: Fleet, service: Service) -> dg.AssetsDefinition:
    @dg.asset(
        key=integration_key(service),
        deps=[image_key(service)],
        description=_describe(service, "The image and its transitive hard dependencies started on a private "
                              "network, the integration tests run against them, everything torn down. "
                              "The data version is the tested digest."),
        kinds={"docker"},
        automation_condition=stage_condition([image_key(service)], label=f"new image of {service.name}"),
        check_specs=[dg.AssetCheckSpec("integration_tests", asset=integration_key(service), blocking=True,
                                       description="JUnit XML of the integration-test container")],
        required_resource_keys={"docker_target", "engine", "git", "secrets"},
        **_common(fleet, service),
    )
    def integration(context: dg.AssetExecutionContext):
        yield from integration_step.run_integration(context, fleet, service)

    return integration


def _approval_stage(fleet: Fleet, service: Service, environment: Environment) -> dg.AssetsDefinition:
    before = previous_environment(fleet, environment)
    upstream = environment_key(service, before) if before else previous_stage_key(fleet, service, environment)
    who = ", ".join(environment.approvers) or "anyone"

    @dg.asset(
        key=approval_key(service, environment),
        deps=[upstream],
        description=_describe(service, f"A person approved a digest of {service.name} for {environment.name} "
                              f"({who} may approve). Materialize with config approver, ticket and optionally "
                              f"digest, or run `release-graph approve {service.name} --env {environment.name}`."),
        **_common(fleet, service),
    )
    def approval(context: dg.AssetExecutionContext, config: deploy_step.ApprovalConfig) -> dg.MaterializeResult:
        return deploy_step.materialize_approval(context, config, fleet, service, environment)

    return approval


def _environment_stage(fleet: Fleet, service: Service, environment: Environment):
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
    if environment.target == "docker":  # only the docker target can show how its containers run
        check_specs.append(dg.AssetCheckSpec(
            "hardening", asset=key,
            description="The running container: non-root user, read-only root filesystem, not privileged, "
            "no added capabilities (a warning)."))

    @dg.asset(
        key=key,
        deps=deps,
        description=_describe(service, f"{service.name} running in {environment.name} "
                              f"({environment.target}): the digest that passed {previous.to_user_string()}"
                              + (", approved" if environment.requires_approval else "")
                              + ". The data version is the deployed digest."),
        kinds={"docker"} if environment.target == "docker" else {"kubernetes"},
        # An environment that tracks a branch is deployed only by the branch_promotion sensor.
        automation_condition=None if environment.branch else stage_condition(
            [trigger], label=f"new {gate} for {service.name}/{environment.name}",
            not_with=environment_key(service, before) if environment.requires_approval and before else None,
        ),
        check_specs=check_specs,
        pool=pool_name(service, environment),
        required_resource_keys={"docker_target", "secrets", "engine"},
        **_common(fleet, service),
    )
    def deployment(context: dg.AssetExecutionContext, config: deploy_step.DeployConfig) -> dg.MaterializeResult:
        deployed = deploy_step.materialize_deployment(context, config, fleet, service, environment)
        digest = deployed.metadata["digest"]
        evidence = [
            environment_checks.check_healthy(context, fleet, service, environment, digest),
            environment_checks.check_in_sync(context, fleet, service, environment, digest),
        ]
        if environment.target == "docker":
            evidence.append(security_checks.check_hardening(context, fleet, service, environment, digest))
        return dg.MaterializeResult(data_version=deployed.data_version, metadata=deployed.metadata,
                                    check_results=evidence)

    return deployment, []


def _built_release(fleet: Fleet, service: Service) -> ServiceRelease:
    common = _common(fleet, service)
    repository = service.image_repository(fleet)

    @dg.observable_source_asset(
        key=source_key(service),
        description=_describe(service, f"Head commit of branch `{service.branch}` of `{service.repo}`"
                              + (f" (path `{service.path}`)" if service.path != "." else "")
                              + ". Observed by the `git_commits` sensor; the data version is the SHA."),
        metadata={"repo": service.repo, "branch": service.branch, "path": service.path},
        required_resource_keys={"git"},
        **{k: v for k, v in common.items() if k != "tags"},
    )
    def source(context) -> dg.DataVersion:
        git = context.resources.git
        try:
            return dg.DataVersion(git.release_commit(service.repo_url, service.branch, service.path))
        except GitError as exc:
            raise image_step.ReleaseStepError(f"service '{service.name}': cannot read {service.repo}: {exc}") from None

    kinds = {"docker"} | ({service.language} if service.language else set())

    @dg.asset(
        key=image_key(service),
        deps=[source_key(service)],
        description=_describe(
            service,
            f"`{repository}:<sha>`: the commit built with its Dockerfile (`{service.build.dockerfile}`), "
            "pushed; the data version is the image digest. Built only by the Git sensor, the UI or "
            "`release-graph build`.",
        ),
        kinds=kinds,
        metadata={"repository": repository, **edges_metadata(fleet, service)},
        required_resource_keys={"git", "engine", "registry"},
        **common,
    )
    def image(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        r = context.resources
        return image_step.materialize_image(context, fleet, service, r.git, r.engine, r.registry)

    checks = []
    if service.build.test_target:

        @dg.asset_check(
            asset=image_key(service),
            name="unit_tests",
            blocking=True,
            description=f"Unit tests: the `{service.build.test_target}` stage of the Dockerfile run in a "
            "container, JUnit XML from /reports.",
            required_resource_keys={"git", "engine"},
        )
        def unit_tests(context) -> dg.AssetCheckResult:
            r = context.resources
            return image_checks.check_unit_tests(context, fleet, service, r.git, r.engine)

        checks.append(unit_tests)

    checks += _security_checks(fleet, service)

    @dg.asset_check(
        asset=image_key(service),
        name="dockerfile_lint",
        blocking=False,
        description="Dockerfile lint with hadolint: a warning, never blocking.",
        required_resource_keys={"git"},
    )
    def dockerfile_lint(context) -> dg.AssetCheckResult:
        return image_checks.check_dockerfile_lint(context, service, context.resources.git)

    checks.append(dockerfile_lint)
    return ServiceRelease(assets=[source, image], checks=checks)


def _security_checks(fleet: Fleet, service: Service) -> list:
    """The security evidence of a built service: SAST, and what `security:` turns on (vulnerability scan, SBOM,
    compliance) on its image. (The hardening of its containers is evidence of each deployment.)"""
    image = image_key(service)
    settings = fleet.security
    checks = []

    @dg.asset_check(asset=image, name="sast", blocking=True,
                    description=f"Static analysis: semgrep (the rules shipped with release-graph) and, for Python, "
                    f"bandit; findings at or above {fleet.sast_threshold} block unless waived.",
                    required_resource_keys={"git"})
    def sast(context) -> dg.AssetCheckResult:
        return security_checks.check_sast(context, fleet, service, context.resources.git)

    checks.append(sast)
    if settings.scanner != "none":

        @dg.asset_check(asset=image, name=security_checks.VULNERABILITY_SCAN, blocking=False,
                        description=f"Image vulnerability scan ({settings.scanner}): counts per severity and the "
                        "top findings. Each environment's deploy step refuses findings above its scan_threshold.",
                        required_resource_keys={"registry"})
        def vulnerability_scan(context) -> dg.AssetCheckResult:
            return security_checks.check_vulnerability_scan(context, fleet, service, context.resources.registry)

        checks.append(vulnerability_scan)
    if settings.sbom:

        @dg.asset_check(asset=image, name="sbom", blocking=False,
                        description="CycloneDX SBOM of the image (Debian packages, Python distributions), "
                        "stored with the run's reports.", required_resource_keys={"engine"})
        def sbom(context) -> dg.AssetCheckResult:
            return security_checks.check_sbom(context, fleet, service, context.resources.engine)

        checks.append(sbom)
    if settings.compliance_blocking is not None:
        rules = ", ".join(settings.compliance_blocking) or "none"

        @dg.asset_check(asset=image, name="compliance", blocking=bool(settings.compliance_blocking),
                        description=f"hadolint and checkov on the Dockerfile and Kubernetes manifests; blocking "
                        f"rules: {rules}.", required_resource_keys={"git"})
        def compliance(context) -> dg.AssetCheckResult:
            return security_checks.check_compliance(context, fleet, service, context.resources.git)

        checks.append(compliance)

    return checks


def _prebuilt_release(fleet: Fleet, service: Service) -> ServiceRelease:
    """A prebuilt image is promoted, never built: its image stage pins the reference to a digest."""
    role = "infrastructure (deployed, never released)" if service.infrastructure else "prebuilt application image"

    @dg.asset(
        key=image_key(service),
        description=_describe(service, f"Prebuilt image `{service.image}`: {role}. Promoted, never built; "
                              "materializing it pins the reference to the digest the registry serves now."),
        kinds={"docker"},
        metadata={"reference": service.image, "infrastructure": service.infrastructure,
                  **edges_metadata(fleet, service)},
        required_resource_keys={"registry"},
        **_common(fleet, service),
    )
    def image(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        return image_step.pin_prebuilt_image(context, service, context.resources.registry)

    return ServiceRelease(assets=[image])
