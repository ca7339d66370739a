"""What the CLI does: the same assets the UI materializes, run in-process against the Dagster instance
($DAGSTER_HOME), so every build, deploy and approval shows up in the UI's runs and lineage."""

from __future__ import annotations

import dataclasses
import json
import sys

import dagster as dg

from release_graph.fleet import Fleet, ManifestError
from release_graph.release import history, matrix
from release_graph.release import metadata as M
from release_graph.release.keys import approval_key, environment_key, image_key, integration_key
from release_graph.release.promotion import digest_label
from release_graph.release.tags import (
    MAX_RETRIES_TAG,
    ROLLOUT_REQUEST_TAG,
    TRIGGER_TAG,
    release_tags,
)
from release_graph.release.why import (
    BLOCKED,
    FAILED,
    IN_PROGRESS,
    RUNNING,
    UP_TO_DATE,
    failure_reason,
    gone_process,
    stage_status,
)
from release_graph.wiring import build_definitions, default_resources
from resources.state import state_dir
from resources.targets import TargetNotConfigured

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
        tags={MAX_RETRIES_TAG: "0", **(tags or {})},
        # The terminal gets `report`'s summary; the full event log is in the UI, not on stderr.
        run_config={**(run_config or {}), "loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
        raise_on_error=False,
    )


def report(result, out=None) -> int:
    """One line per materialization and check; a failure is one line with its reason, no traceback."""
    out = out or sys.stdout
    run = result.dagster_run
    failures = []
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
            failures.append(failure_reason(event.step_failure_data.error))
    if result.success:
        print(f"run {run.run_id} succeeded", file=out)
        return EXIT_OK
    for reason in failures or ["the run failed"]:
        print(f"refused: {reason} (run {run.run_id})", file=out)
    return EXIT_FAILED


def build_image(fleet: Fleet, service_name: str, sha: str | None = None) -> int:
    service = _service(fleet, service_name)
    if service.is_prebuilt:
        raise ManifestError([f"{fleet.source_file.name}: service '{service_name}' is prebuilt ({service.image}): "
                             "it is promoted, never built"])
    tags = {TRIGGER_TAG: "cli"}
    if sha:
        resources = default_resources()
        full = resources["git"].resolve_commit(service.repo_url, sha)
        tags.update(release_tags(service.name, full, fleet=fleet.name))
    return report(run_assets(fleet, [image_key(service)], tags=tags))


def deploy(fleet: Fleet, service_name: str, environment_name: str, digest: str | None = None) -> int:
    service = _service(fleet, service_name)
    environment = _environment(fleet, environment_name)
    key = environment_key(service, environment)
    config = {"ops": {key.to_python_identifier(): {"config": {"digest": digest}}}} if digest else None
    return report(run_assets(fleet, [key], run_config=config, tags={TRIGGER_TAG: "cli"}))


def approve(fleet: Fleet, service_name: str, environment_name: str, *, by: str, ticket: str | None = None,
            digest: str | None = None, out=None) -> int:
    out = out or sys.stdout
    service = _service(fleet, service_name)
    environment = _environment(fleet, environment_name)
    if not environment.requires_approval:
        raise ManifestError([f"{fleet.source_file.name}: environment '{environment_name}' does not require "
                             "approval"])
    key = approval_key(service, environment)
    config = {"approver": by, **({"ticket": ticket} if ticket else {}), **({"digest": digest} if digest else {})}
    code = report(run_assets(fleet, [key], run_config={"ops": {key.to_python_identifier(): {"config": config}}},
                             tags={TRIGGER_TAG: "cli"}), out=out)
    if code == EXIT_OK:
        print(f"next: {next_step(_instance(), fleet, service, environment)}", file=out)
    return code


def next_step(instance, fleet: Fleet, service, environment) -> str:
    """What happens after an approval: the deployment starts, or what it waits for."""
    status = stage_status(instance, fleet, service, environment.name)
    if status.state in (RUNNING, UP_TO_DATE) or not status.reason.startswith(("waiting", "blocked")):
        approved = history.latest(instance, approval_key(service, environment))
        digest = approved.digest if approved else ""
        return (f"{service.name}/{environment.name} deploys {digest_label(digest)} at the next tick of the "
                f"sensor release_automation_{service.group} (while the Dagster daemon runs; `release-graph why "
                f"{service.name} --env {environment.name}` follows it)")
    return f"{service.name}/{environment.name} {status.state}: {status.reason}"


def retry(fleet: Fleet, service_name: str, stage: str) -> int:
    """Run one stage again (integration or an environment) with what its previous stage holds now; the
    release continues from there by automation, without rerunning the earlier stages."""
    service = _service(fleet, service_name)
    key = integration_key(service) if stage == "integration" else environment_key(
        service, _environment(fleet, stage))
    return report(run_assets(fleet, [key], tags={TRIGGER_TAG: "cli retry"}))


def why(fleet: Fleet, service_name: str, stage: str, *, as_json: bool = False, out=None) -> int:
    """Why one stage of one service is where it is; exits 1 when it is blocked or failed."""
    out = out or sys.stdout
    service = _service(fleet, service_name)
    if stage != "integration":
        _environment(fleet, stage)
    status = stage_status(_instance(), fleet, service, stage)
    print(json.dumps(status.as_dict(), indent=2) if as_json else status.line(), file=out)
    return EXIT_FAILED if status.state in (BLOCKED, FAILED) else EXIT_OK


def environments(fleet: Fleet, *, as_json: bool = False, out=None) -> int:
    """What runs per environment of the fleet (containers of any instance, proxies, ports)."""
    out = out or sys.stdout
    targets = default_resources(fleet)["deploy_targets"]
    reports = []
    for environment in fleet.environments.values():
        try:
            reports.append(targets.target_of(environment).describe_environment(fleet.name, environment.name))
        except TargetNotConfigured as exc:
            print(str(exc), file=out)
    if as_json:
        print(json.dumps([dataclasses.asdict(r) for r in reports], indent=2), file=out)
        return EXIT_OK
    own = str(state_dir())
    for report in reports:
        if report.empty:
            print(f"{fleet.name}/{report.environment}: nothing runs", file=out)
            continue
        print(f"{fleet.name}/{report.environment}: network {report.network or '-'}, proxy "
              + (f"{'running' if report.proxy_running else 'stopped'} ({report.proxy})" if report.proxy else "none"),
              file=out)
        for name, port in sorted(report.published.items()):
            print(f"  published {name} on port {port}", file=out)
        for name, address in sorted(report.switched.items()):
            print(f"  switched  {name} for its consumers at {address}", file=out)
        for call, calls in sorted(report.refused_calls.items()):
            print(f"  refused   {call}: {calls.line()} (no edge in the manifest)", file=out)
        for container in report.containers:
            owner = "this instance" if container.instance and container.instance.startswith(own) else (
                container.instance or "unknown instance")
            print(f"  {container.service:<12} {container.status:<8} {container.name} ({owner})", file=out)
    return EXIT_OK


def teardown(fleet: Fleet, environment_names: list[str], *, out=None) -> int:
    """Remove every container, network and proxy of the named environments (deployed by any instance)."""
    out = out or sys.stdout
    targets = default_resources(fleet)["deploy_targets"]
    for name in environment_names:
        environment = _environment(fleet, name)
        try:
            target = targets.target_of(environment)
            present = {c.service for c in target.describe_environment(fleet.name, name).containers}
            report = target.teardown_environment(fleet.name, name)
        except TargetNotConfigured as exc:
            print(str(exc), file=out)
            continue
        print(f"{fleet.name}/{name}: removed {len(report.containers)} containers, "
              f"{len(report.networks)} networks, {len(report.proxies)} proxies", file=out)
        _record_removals(fleet, name, sorted(present & set(fleet.services)), out)
    return EXIT_OK


def _record_removals(fleet: Fleet, environment: str, services: list[str], out) -> None:
    """A `removed` observation on `<svc>/<env>` of each service whose containers went: the history's record of
    the teardown (the deployment events' `service.removed`). Without an instance ($DAGSTER_HOME unset, as in
    `make clean` on a host that never ran one) there is no history to record it in."""
    import os

    if not services or not os.environ.get("DAGSTER_HOME"):
        return
    instance = _instance()
    for service in services:
        instance.report_runless_asset_event(dg.AssetObservation(
            asset_key=environment_key(service, environment),
            metadata={"event": M.REMOVED_EVENT, "removed_by": "release-graph teardown"}))
    print(f"{fleet.name}/{environment}: recorded the removal of {', '.join(services)}", file=out)


def status(fleet: Fleet, *, as_json: bool = False, out=None) -> int:
    """The environment matrix with drift; non-zero when anything drifted."""
    out = out or sys.stdout
    cells = matrix.with_drift(matrix.read_matrix(_instance(), fleet), fleet, default_resources()["deploy_targets"])
    if as_json:
        print(json.dumps(matrix.as_json(cells), indent=2), file=out)
    else:
        print(matrix.as_text(cells, fleet), file=out)
    # Drift, a failed stage and a blocked one are each worth a non-zero exit: something needs a person.
    stuck = any(cell.waiting_for.startswith((FAILED, BLOCKED)) for cell in cells)
    return EXIT_FAILED if stuck or any(cell.drift for cell in cells) else EXIT_OK


def rollout(fleet: Fleet, action: str, service_name: str, environment_name: str, *, out=None) -> int:
    """`status` of a rollout (in progress, paused, interrupted or none), or ask its run to `promote`/`abort`.
    A rollout whose run is gone (killed half-way) is settled by `abort`: the serving version takes 100 %."""
    out = out or sys.stdout
    service = _service(fleet, service_name)
    environment = _environment(fleet, environment_name)
    key = environment_key(service, environment)
    where = f"{service.name}/{environment.name}"
    target = default_resources(fleet)["deploy_targets"].target_of(environment)
    route = target.traffic(fleet.name, environment.name, service.name)
    instance = _instance()
    runs = history.runs_holding(instance, service.name, key, IN_PROGRESS)
    run_id = runs[0].dagster_run.run_id if runs else None
    candidate = route.candidate_name if route is not None and route.candidate else None
    gone = f" (its run {run_id} still says started, but its process {pid} runs no more)" if run_id and (
        pid := gone_process(instance, run_id)) else ""
    if gone:
        run_id = None  # a dead run reads no request: the rollout is interrupted, settled by abort
    if action == "status":
        if candidate and run_id:
            print(f"{where}: rollout in progress (run {run_id}): {candidate} takes {route.candidate_weight} % "
                  "of the traffic", file=out)
            return EXIT_OK
        if candidate:
            print(f"{where}: interrupted: {candidate} takes {route.candidate_weight} % of the traffic and no run "
                  f"drives it{gone}; `release-graph rollout abort {service.name} --env {environment.name}` (or the "
                  "next deployment) puts the serving version back at 100 %", file=out)
            return EXIT_FAILED
        serving = target.running(fleet.name, environment.name, service.name)
        print(f"{where}: no rollout in progress; "
              + (f"{digest_label(serving.digest)} serves all traffic" if serving and serving.digest else "nothing runs")
              + (f" (run {run_id} is deploying)" if run_id else ""), file=out)
        return EXIT_OK
    if run_id:
        instance.add_run_tags(run_id, {ROLLOUT_REQUEST_TAG: action})
        print(f"{where}: asked run {run_id} to {action} its rollout (read between its measurements)", file=out)
        return EXIT_OK
    if action == "abort" and candidate:
        target.abort_candidate(fleet.name, environment.name, service.name)
        print(f"{where}: the interrupted rollout is settled: {candidate} removed, the serving version takes 100 %",
              file=out)
        return EXIT_OK
    print(f"{where}: no rollout in progress to {action}", file=out)
    return EXIT_FAILED


def rollback(fleet: Fleet, service_name: str, environment_name: str, *, by: str, reason: str, out=None) -> int:
    """Back to the digest recorded before the one that runs now, switched at once, as a new materialization
    that says who and why; it stays where it was made (it never flows forward)."""
    out = out or sys.stdout
    service = _service(fleet, service_name)
    environment = _environment(fleet, environment_name)
    key = environment_key(service, environment)
    records = history.history(_instance(), key)
    if not records:
        print(f"{service.name}/{environment.name}: nothing was deployed here yet: nothing to go back to", file=out)
        return EXIT_FAILED
    current = records[0].digest
    previous = next((r.digest for r in records[1:] if r.digest and r.digest != current), None)
    if previous is None:
        print(f"{service.name}/{environment.name}: only {digest_label(current)} was ever deployed here: nothing "
              "to go back to", file=out)
        return EXIT_FAILED
    config = {"digest": previous, "rollback_by": by, "rollback_reason": reason}
    code = report(run_assets(fleet, [key], run_config={"ops": {key.to_python_identifier(): {"config": config}}},
                             tags={TRIGGER_TAG: "cli rollback"}), out=out)
    if code == EXIT_OK:
        print(f"{service.name}/{environment.name}: rolled back from {digest_label(current)} to "
              f"{digest_label(previous)} by {by}: {reason}", file=out)
    return code


def dora(fleet: Fleet, *, days: int | None = None, as_json: bool = False, out=None) -> int:
    """DORA's figures for production, read from the instance's history (release_graph/release/dora.py)."""
    import time

    from release_graph.release import dora as D

    out = out or sys.stdout
    result = D.read_report(_instance(), fleet, now=time.time(), windows=(days,) if days else D.WINDOWS)
    print(json.dumps(result.as_dict(), indent=2) if as_json else D.as_text(result), file=out)
    return EXIT_OK
