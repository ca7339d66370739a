"""One service's release, assembled from the manifest in this one place: every stage's factory is called here.

For every service: `<svc>/source` (the head commit, observed by the Git sensor), `<svc>/image` (built from
that exact commit, or the pinned prebuilt image) and the image's evidence as checks, `<svc>/integration`
when the Dockerfile has an integration stage, and per environment (in manifest order) the approval when the
environment is gated and the deployment. Keys are `[<service>, <stage>]`, grouped by service.
"""

from dataclasses import dataclass, field

from release_graph.assets.approval import approval_asset
from release_graph.assets.deployment import deployment_asset
from release_graph.assets.image import image_asset, prebuilt_image_asset
from release_graph.assets.image_checks import image_check_definitions
from release_graph.assets.integration import integration_asset
from release_graph.assets.security_checks import security_check_definitions
from release_graph.assets.source import source_asset
from release_graph.fleet import Fleet, Service
from release_graph.release.keys import has_integration


@dataclass
class ServiceRelease:
    assets: list = field(default_factory=list)
    checks: list = field(default_factory=list)


def build_service_release(fleet: Fleet, service: Service) -> ServiceRelease:
    if service.is_prebuilt:
        release = ServiceRelease(assets=[prebuilt_image_asset(fleet, service)])
    else:
        release = ServiceRelease(
            assets=[source_asset(service), image_asset(fleet, service)],
            checks=image_check_definitions(fleet, service) + security_check_definitions(fleet, service),
        )
    if has_integration(service):
        release.assets.append(integration_asset(fleet, service))
    for environment in fleet.environments.values():
        if environment.requires_approval:
            release.assets.append(approval_asset(fleet, service, environment))
        release.assets.append(deployment_asset(fleet, service, environment))
    return release
