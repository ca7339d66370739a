"""`<service>/integration`: the new image with its transitive hard dependencies on a private network.

The dependencies run the digests the first environment runs (or their latest passing images), so the
test answers "does this change work with what it would meet". Everything is torn down, also on failure.
Each service started here receives the integration's own declared secrets (`integration.secrets`), never the
first environment's.
"""


import tempfile
from pathlib import Path

import dagster as dg

from release_graph.assets.automation import stage_condition
from release_graph.assets.common import asset_attributes, describe
from release_graph.assets.fleet import service_urls
from release_graph.assets.image import export_build_context, stream_to_run
from release_graph.assets.image_checks import junit_metadata, read_test_report, tests_passed
from release_graph.assets.retry import retry_when_transient
from release_graph.assets.stage_tracing import Stage, tag_release, traced_stage
from release_graph.fleet import Fleet, Service
from release_graph.release import metadata as M
from release_graph.release.errors import ReleaseStepError
from release_graph.release.keys import image_key, integration_key
from release_graph.release.promotion import (
    blocking_checks_passed,
    image_reference,
    integration_partner,
    newest_settled,
    transitive_hard_deps,
)
from resources import labels as L
from resources.containers import ContainerEngine
from resources.git import GitResource
from resources.secrets import SecretsResource
from resources.targets import DeployTarget, DeployTargets

INTEGRATION_TIMEOUT_SECONDS = 600


def dependency_digest(context, fleet: Fleet, name: str) -> str:
    """What the integration starts of the dependency `name` (promotion.integration_partner says which)."""
    digest = integration_partner(context.instance, fleet, name)
    if digest is None:
        first = next(iter(fleet.environments.values()))
        raise ReleaseStepError(f"service '{name}': no passing image and nothing in '{first.name}' to integrate "
                               "with: build it first")
    return digest


@retry_when_transient("the integration stage")
def run_integration(context, fleet: Fleet, service: Service, *, target: DeployTarget, engine: ContainerEngine,
                    git: GitResource, secrets: SecretsResource):
    instance = context.instance
    # The newest commit's image whose checks are in: an image a build run is still checking is passed over (it
    # follows in that run), as the deploy steps do (promotion.newest_settled)
    image = newest_settled(instance, fleet, service, image_key(service))
    if image is None or not image.digest:
        raise ReleaseStepError(f"service '{service.name}': no image to test yet")
    failed = blocking_checks_passed(instance, fleet, service, image_key(service), image.digest)
    if failed:
        raise ReleaseStepError(f"service '{service.name}': image {image.digest} has not passed "
                               f"{', '.join(failed)}: not integrated")
    sha = image.git_sha
    # The Runs page filters by service and commit: automation cannot tag that at launch, the step can.
    tag_release(context, fleet, service, sha)
    first = next(iter(fleet.environments.values()))
    test_reference = f"{service.image_repository(fleet)}:{sha}-{service.build.integration_target}"
    if not engine.local_image_exists(test_reference):
        with tempfile.TemporaryDirectory(prefix=f"rg-it-{service.name}-") as tmp:
            context_dir = export_build_context(git, service, sha, Path(tmp))
            engine.build(
                context_dir, dockerfile=service.build.dockerfile, tag=test_reference,
                target=service.build.integration_target,
                labels={L.SERVICE: service.name, "org.opencontainers.image.revision": sha},
                buildargs=dict(service.build.args), on_log=stream_to_run(context),
            )
    dependencies = {name: dependency_digest(context, fleet, name) for name in transitive_hard_deps(fleet, service)}
    started = []
    with target.ephemeral_environment(fleet.name, f"it-{service.name}-{context.run.run_id[:8]}") as environment:
        for name, digest in [*dependencies.items(), (service.name, image.digest)]:
            member = fleet.services[name]
            environment.start(
                name,
                image=image_reference(fleet, member, digest),
                port=member.port,
                health=member.health,
                env=first.service_env(member),
                # The integration's own declared secrets (top-level `integration.secrets`), never an environment's.
                secrets=secrets.resolve(
                    fleet.integration_secrets.get(name, {}), environment="integration", service=name),
                entrypoint=member.entrypoint,
                command=member.command,
                secrets_as=member.secrets_as,
                hardening=member.hardening,
            )
            started.append(f"{name}@{digest[7:19]}")
        context.log.info(f"integration environment up: {', '.join(started)}")
        run = environment.run_to_completion(
            test_reference,
            env=service_urls(fleet),
            copy_out="/reports",
            timeout_seconds=INTEGRATION_TIMEOUT_SECONDS,
        )
    summary = read_test_report(run, f"service '{service.name}': the integration-test container")
    yield dg.MaterializeResult(
        data_version=dg.DataVersion(image.digest),
        metadata={
            M.DIGEST: image.digest,
            M.GIT_SHA: sha,
            M.SHORT_SHA: sha[:12] if sha else "",
            "tested_with": ", ".join(started),
            "tests": summary.tests,
            "failed": summary.failed + summary.errors,
        },
    )
    yield dg.AssetCheckResult(
        check_name="integration_tests",
        passed=tests_passed(summary),
        metadata={M.DIGEST: image.digest, **junit_metadata(summary), "tested_with": ", ".join(started)},
    )


def integration_asset(fleet: Fleet, service: Service) -> dg.AssetsDefinition:
    @dg.asset(
        key=integration_key(service),
        deps=[image_key(service)],
        description=describe(service, "The image and its transitive hard dependencies started on a private "
                              "network, the integration tests run against them, everything torn down. "
                              "The data version is the tested digest."),
        kinds={"docker"},
        automation_condition=stage_condition(fleet, service, [image_key(service)],
                                             label=f"new image of {service.name}"),
        check_specs=[dg.AssetCheckSpec("integration_tests", asset=integration_key(service), blocking=True,
                                       description="JUnit XML of the integration-test container")],
        **asset_attributes(service),
    )
    @traced_stage(fleet, service, Stage("integration", "integration", "test", after=image_key(service)))
    def integration(context: dg.AssetExecutionContext, deploy_targets: DeployTargets, engine: ContainerEngine,
                    git: GitResource, secrets: SecretsResource):
        yield from run_integration(context, fleet, service, target=deploy_targets.for_integration(), engine=engine,
                                   git=git, secrets=secrets)

    return integration
