"""What the CLI does: the same assets the UI materializes, run in-process against the Dagster instance
($DAGSTER_HOME), so every build, deploy and approval shows up in the UI's runs and lineage."""

from __future__ import annotations

import json
import sys

import dagster as dg

from release_graph.fleet import Fleet, ManifestError
from release_graph.release import matrix
from release_graph.release import metadata as M
from release_graph.release.keys import approval_key, environment_key, image_key
from release_graph.release.tags import SERVICE_TAG, SHA_TAG, SHORT_SHA_TAG
from release_graph.wiring import build_definitions, default_resources

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.get()


def _service(fleet: Fleet, name: str):
    if name not in fleet.services:
        raise ManifestError([f"{fleet.source_file.name}: no service '{name}' (services: {', '.join(fleet.services)})"])
    return fleet.services[name]


def _environment(fleet: Fleet, name: str):
    if name not in fleet.environments:
        raise ManifestError([f"{fleet.source_file.name}: no environment '{name}' "
                             f"(environments: {', '.join(fleet.environments)})"])
    return fleet.environments[name]


def run_assets(fleet: Fleet, keys: list[dg.AssetKey], *, tags: dict | None = None,
               run_config: dict | None = None, instance: dg.DagsterInstance | None = None):
    defs = build_definitions(fleet)
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance or _instance(),
        asset_selection=keys,
        tags={"dagster/max_retries": "0", **(tags or {})},
        # The terminal gets `report`'s summary; the full event log is in the UI, not on stderr.
        run_config={**(run_config or {}), "loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        raise_on_error=False,
    )


def report(result, out=None) -> int:
    """One line per materialization and check, then the failure, in words a release manager reads."""
    out = out or sys.stdout
    for event in result.all_events:
        if event.is_step_materialization:
            materialization = event.step_materialization_data.materialization
            digest = materialization.metadata.get(M.DIGEST)
            print(f"recorded {materialization.asset_key.to_user_string()}"
                  + (f": {digest.value}" if digest else ""), file=out)
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            verdict = "passed" if evaluation.passed else "FAILED"
            print(f"check {evaluation.asset_key.to_user_string()}:{evaluation.check_name} {verdict}"
                  + (f": {evaluation.description}" if evaluation.description else ""), file=out)
        elif event.is_step_failure:
            error = event.step_failure_data.error
            message = error.message.strip() if error else "failed"
            # A Failure's description is the reason; the class name and traceback help nobody here.
            print(f"FAILED {event.step_key}: {message.split(': ', 1)[-1] if 'Failure' in message else message}",
                  file=out)
    run = result.dagster_run
    print(f"run {run.run_id} {'succeeded' if result.success else 'failed'}", file=out)
    return EXIT_OK if result.success else EXIT_FAILED


def build_image(fleet: Fleet, service_name: str, sha: str | None = None) -> int:
    service = _service(fleet, service_name)
    if service.is_prebuilt:
        raise ManifestError([f"{fleet.source_file.name}: service '{service_name}' is prebuilt ({service.image}): "
                             "it is promoted, never built"])
    tags = {"release/trigger": "cli"}
    if sha:
        resources = default_resources()
        full = resources["git"].resolve_commit(service.repo_url, sha)
        tags.update({SERVICE_TAG: service.name, SHA_TAG: full, SHORT_SHA_TAG: full[:12]})
    return report(run_assets(fleet, [image_key(service)], tags=tags))


def deploy(fleet: Fleet, service_name: str, environment_name: str, digest: str | None = None) -> int:
    service = _service(fleet, service_name)
    environment = _environment(fleet, environment_name)
    key = environment_key(service, environment)
    config = {"ops": {key.to_python_identifier(): {"config": {"digest": digest}}}} if digest else None
    return report(run_assets(fleet, [key], run_config=config, tags={"release/trigger": "cli"}))


def approve(fleet: Fleet, service_name: str, environment_name: str, *, by: str, ticket: str | None = None,
            digest: str | None = None) -> int:
    service = _service(fleet, service_name)
    environment = _environment(fleet, environment_name)
    if not environment.requires_approval:
        raise ManifestError([f"{fleet.source_file.name}: environment '{environment_name}' does not require "
                             "approval"])
    key = approval_key(service, environment)
    config = {"approver": by, **({"ticket": ticket} if ticket else {}), **({"digest": digest} if digest else {})}
    return report(run_assets(fleet, [key], run_config={"ops": {key.to_python_identifier(): {"config": config}}},
                             tags={"release/trigger": "cli"}))


def status(fleet: Fleet, *, as_json: bool = False, out=None) -> int:
    """The environment matrix with drift; non-zero when anything drifted."""
    out = out or sys.stdout
    cells = matrix.with_drift(matrix.read_matrix(_instance(), fleet), fleet, default_resources()["deploy_targets"])
    if as_json:
        print(json.dumps(matrix.as_json(cells), indent=2), file=out)
    else:
        print(matrix.as_text(cells, fleet), file=out)
    return EXIT_FAILED if any(cell.drift for cell in cells) else EXIT_OK
