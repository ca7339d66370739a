"""The order of a service's stages, derived from the manifest: image -> integration -> env1 -> env2 ...

Kept apart from the steps so the graph builder, the steps, the CLI and the status table agree on which
stage promotes from which.
"""

from __future__ import annotations

import dagster as dg

from release_graph.fleet import Environment, Fleet, Service


def _name(service: Service | str) -> str:
    return service if isinstance(service, str) else service.name


def source_key(service: Service | str) -> dg.AssetKey:
    return dg.AssetKey([_name(service), "source"])


def image_key(service: Service | str) -> dg.AssetKey:
    return dg.AssetKey([_name(service), "image"])


def integration_key(service: Service) -> dg.AssetKey:
    return dg.AssetKey([service.name, "integration"])


def environment_key(service: Service | str, environment: Environment | str) -> dg.AssetKey:
    name = service if isinstance(service, str) else service.name
    env = environment if isinstance(environment, str) else environment.name
    return dg.AssetKey([name, env])


def approval_key(service: Service, environment: Environment) -> dg.AssetKey:
    return dg.AssetKey([service.name, f"{environment.name}_approval"])


def e2e_key(environment: Environment) -> dg.AssetKey:
    return dg.AssetKey(["fleet", f"{environment.name}_e2e"])


MATRIX_KEY = dg.AssetKey(["fleet", "environments"])
DORA_KEY = dg.AssetKey(["fleet", "dora"])


def has_integration(service: Service) -> bool:
    return service.build is not None and service.build.integration_target is not None


def previous_environment(fleet: Fleet, environment: Environment) -> Environment | None:
    names = list(fleet.environments)
    index = names.index(environment.name)
    return fleet.environments[names[index - 1]] if index > 0 else None


def previous_stage_key(fleet: Fleet, service: Service, environment: Environment) -> dg.AssetKey:
    """The stage whose latest digest this environment deploys."""
    before = previous_environment(fleet, environment)
    if before is not None:
        return environment_key(service, before)
    return integration_key(service) if has_integration(service) else image_key(service)


def pool_name(service: Service, environment: Environment) -> str:
    """One deployment per service and environment at a time (automation runs cannot carry per-step tags)."""
    return f"deploy-{service.name}-{environment.name}"
