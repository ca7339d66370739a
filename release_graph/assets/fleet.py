"""Fleet-level assets (group `fleet`): each environment's end-to-end tests, the environment matrix and DORA's
four figures."""


import hashlib
import json
import time

import dagster as dg

from release_graph.assets.automation import dora_condition, e2e_condition, matrix_condition
from release_graph.assets.image import stream_to_run
from release_graph.assets.image_checks import junit_metadata, read_test_report, tests_passed
from release_graph.assets.retry import retry_when_transient
from release_graph.fleet import Environment, Fleet
from release_graph.release import dora, history, matrix
from release_graph.release import metadata as M
from release_graph.release.keys import DORA_KEY, MATRIX_KEY, e2e_key, environment_key
from release_graph.release.tags import ENV_TAG
from resources import labels as L
from resources.containers import ContainerEngine
from resources.registry import Registry
from resources.targets import DeployTarget, DeployTargets

E2E_TIMEOUT_SECONDS = 600


def service_urls(fleet: Fleet) -> dict[str, str]:
    """`<SERVICE>_URL=http://<service>:<port>` for every service with a port: how tests find the fleet."""
    return {
        f"{name.upper().replace('-', '_')}_URL": f"http://{name}:{service.port}"
        for name, service in fleet.services.items()
        if service.port
    }


def build_fleet_assets(fleet: Fleet) -> tuple[list, list]:
    assets = [_matrix_asset(fleet), _dora_asset(fleet)]
    if fleet.e2e is not None:
        assets += [_e2e_asset(fleet, environment) for environment in fleet.environments.values()]
    return assets, []


def _e2e_asset(fleet: Fleet, environment: Environment) -> dg.AssetsDefinition:
    key = e2e_key(environment)
    deployments = [environment_key(name, environment) for name in fleet.services]
    in_pods = environment.target == "kubernetes"

    @dg.asset(
        key=key,
        deps=deployments,
        group_name="fleet",
        description=f"The fleet's end-to-end tests run against {environment.name}"
        + (" as a pod of its namespace, reporting back through Dagster Pipes" if in_pods else "")
        + ". A failure blocks promotion beyond this environment. The data version identifies the set of deployed "
        "digests tested.",
        kinds={"kubernetes" if in_pods else "docker"},
        automation_condition=e2e_condition(deployments, label=f"a deployment in {environment.name} changed"),
        check_specs=[dg.AssetCheckSpec("e2e_tests", asset=key, blocking=True,
                                       description="JUnit XML of the end-to-end test container")],
        tags={ENV_TAG: environment.name},
    )
    def e2e(context: dg.AssetExecutionContext, engine: ContainerEngine, deploy_targets: DeployTargets,
            registry: Registry):
        yield from run_e2e(context, fleet, environment, engine=engine,
                           target=deploy_targets.target_of(environment), registry=registry)

    return e2e


@retry_when_transient("the end-to-end tests")
def run_e2e(context, fleet: Fleet, environment: Environment, *, engine: ContainerEngine, target: DeployTarget,
            registry: Registry | None = None):
    deployed = {
        name: record.digest
        for name in fleet.services
        if (record := history.latest(context.instance, environment_key(name, environment))) is not None
    }
    # The tested set of digests, as one stable value: the data version and what check evidence refers to.
    fingerprint = "sha256:" + hashlib.sha256(json.dumps(deployed, sort_keys=True).encode()).hexdigest()
    tag = f"{fleet.registry}/fleet-e2e:{fingerprint[7:19]}"
    # The tests live beside the manifest, so they are built from that folder (not from a service's commit).
    engine.build(
        fleet.root / fleet.e2e.context,
        dockerfile=fleet.e2e.dockerfile,
        tag=tag,
        target=fleet.e2e.target,
        labels={L.FLEET: fleet.name, L.STEP: "e2e"},
        buildargs={},
        on_log=stream_to_run(context),
    )
    image = tag
    if target.tests_pull_from_registry:  # a cluster runs the tests: it pulls them, by digest
        image = f"{tag.rsplit(':', 1)[0]}@{engine.push(tag, on_log=stream_to_run(context), registry=registry)}"
    run = target.run_tests(
        fleet.name, environment.name, image,
        env=service_urls(fleet),
        copy_out="/reports",
        timeout_seconds=E2E_TIMEOUT_SECONDS,
        command=engine.image_command(tag),
        step=context,
    )
    summary = read_test_report(run, f"environment '{environment.name}': the end-to-end container")
    yield dg.MaterializeResult(
        data_version=dg.DataVersion(fingerprint),
        metadata={
            M.DIGEST: fingerprint,
            M.DEPLOYED_DIGESTS: dg.MetadataValue.json(deployed),
            "tests": summary.tests,
            "failed": summary.failed + summary.errors,
        },
    )
    yield dg.AssetCheckResult(
        check_name="e2e_tests",
        passed=tests_passed(summary),
        metadata={M.DIGEST: fingerprint, **junit_metadata(summary)},
    )


def _matrix_asset(fleet: Fleet) -> dg.AssetsDefinition:
    deployments = [environment_key(name, env) for name in fleet.services for env in fleet.environments]

    @dg.asset(
        key=MATRIX_KEY,
        deps=deployments,
        group_name="fleet",
        description="Which version of every service runs in every environment, since when, approved by whom.",
        kinds={"table"},
        automation_condition=matrix_condition(deployments, label="a deployment changed or a run finished",
                                              quiet=[DORA_KEY]),
    )
    def environments(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        cells = matrix.read_matrix(context.instance, fleet)
        return dg.MaterializeResult(
            metadata={
                "matrix": dg.MetadataValue.md(matrix.as_markdown(cells, fleet)),
                "deployments": matrix.as_table(cells),
                "services": len(fleet.services),
                "environments": ", ".join(fleet.environments),
            }
        )

    return environments


# The UI plots every numeric metadata key over the materializations: the fleet's figures for every window, each
# service's for this one window (the others are in the table), so the plots stay readable for a large fleet.
SERVICE_PLOT_WINDOW = 30
HOURS = 3600.0


def dora_metadata(result: dora.Report) -> dict:
    """Numbers the UI plots (lead time and time to restore in hours, the failure rate as a fraction), a table of
    every service and window, and the definitions' one-line summary."""
    def numbers(prefix: str, figures: dora.Figures) -> dict:
        values = {
            f"{prefix}_changes": dg.MetadataValue.int(figures.changes),
            f"{prefix}_deployments_per_day": dg.MetadataValue.float(round(figures.deployments_per_day, 4)),
        }
        # A figure with nothing to measure is left out: a 0 would plot as a perfect score.
        for name, value, scale in (("lead_time_hours", figures.lead_time_seconds, HOURS),
                                   ("change_failure_rate", figures.change_failure_rate, 1.0),
                                   ("time_to_restore_hours", figures.time_to_restore_seconds, HOURS)):
            if value is not None:
                values[f"{prefix}_{name}"] = dg.MetadataValue.float(round(value / scale, 4))
        return values

    metadata: dict = {"production": result.production}
    for days, figures in result.overall.items():
        metadata.update(numbers(f"fleet_{days}d", figures))
    for name, by_window in result.services.items():
        if SERVICE_PLOT_WINDOW in by_window:
            metadata.update(numbers(f"{name.replace('-', '_')}_{SERVICE_PLOT_WINDOW}d", by_window[SERVICE_PLOT_WINDOW]))
    rows = []
    for name, by_window in [("(fleet)", result.overall), *sorted(result.services.items())]:
        for days, figures in by_window.items():
            rows.append(dg.TableRecord({
                "service": name, "days": days, "changes": figures.changes, "failed": figures.failed_changes,
                "deployments_per_day": round(figures.deployments_per_day, 3),
                "lead_time_hours": _hours(figures.lead_time_seconds),
                "change_failure_rate": "" if figures.change_failure_rate is None
                else f"{figures.change_failure_rate:.2f}",
                "time_to_restore_hours": _hours(figures.time_to_restore_seconds),
            }))
    metadata["figures"] = dg.MetadataValue.table(rows, schema=dg.TableSchema(columns=[
        dg.TableColumn("service"), dg.TableColumn("days", "int"), dg.TableColumn("changes", "int"),
        dg.TableColumn("failed", "int"), dg.TableColumn("deployments_per_day", "float"),
        dg.TableColumn("lead_time_hours"), dg.TableColumn("change_failure_rate"),
        dg.TableColumn("time_to_restore_hours")]))
    return metadata


def _hours(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds / HOURS:.2f}"


def _dora_asset(fleet: Fleet) -> dg.AssetsDefinition:
    production = fleet.production
    prod_deployments = [environment_key(name, production) for name in fleet.services]

    @dg.asset(
        key=DORA_KEY,
        deps=prod_deployments,
        group_name="fleet",
        description=f"DORA's four figures for {production.name} over the last 7, 30 and 90 days, for the fleet and "
        "each service: deployment frequency, lead time for changes (commit to prod), change failure rate "
        "and time to restore, read from the release history (docs/operations.md, \"DORA metrics\").",
        kinds={"table"},
        automation_condition=dora_condition(prod_deployments, label=f"a deployment to {production.name} "
                                            "changed, or an hour passed"),
    )
    def dora_figures(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        result = dora.read_report(context.instance, fleet, now=time.time())
        return dg.MaterializeResult(metadata=dora_metadata(result))

    return dora_figures
