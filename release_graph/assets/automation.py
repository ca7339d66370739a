"""Automation conditions for the stages after the image, and the sensors that evaluate them.

Only a stage's *own* trigger starts it: a provider's new deployment never redeploys an unchanged consumer.
`since(newly_requested())` instead of `since_last_handled()`: the latter loses an image that lands while
its own deployment runs (Dagster 1.13, verified in tests/release_graph/assets/test_automation.py).

The gate is the project's own promotion rules (`release_graph.release.promotion.waiting_reason`), not
Dagster's `all_deps_blocking_checks_passed()`: that one reads the *latest* execution of every dependency's
checks, so a check that was planned in a run that failed elsewhere ("execution failed") froze everything
downstream for good. The rules judge the evidence about the digest the stage would take: the last check
that actually executed for that digest, the e2e run whose tested set contains it, an approval of it.

Isolation: one automation sensor per service (and one for the fleet's assets). Dagster launches every asset
one sensor requests in one tick as ONE run, so with a single sensor one service's failure skipped another
service's step. Per-service sensors also tag each run with its service from launch.
"""

from collections.abc import Iterable

import dagster as dg

from release_graph.fleet import Environment, Fleet, Service
from release_graph.release.promotion import already_took_or_tried, approval_spent, chain_waiting_reason, waiting_reason
from release_graph.release.tags import MAX_RETRIES_TAG, RUN_RETRIES_AFTER_A_CRASH, SERVICE_TAG, TRIGGER_TAG

AC = dg.AutomationCondition
FLEET_GROUP = "fleet"


class RecordsCondition(dg.AutomationCondition):
    """A condition that reads the instance's records on every evaluation and keeps no cursor of its own (so its
    answer survives a restart of the daemon); `rule_name` and `rule_description` are what the UI shows."""

    rule_name = ""
    rule_description = ""

    @property
    def requires_cursor(self) -> bool:
        return False

    @property
    def name(self) -> str:
        return self.rule_name

    @property
    def description(self) -> str:
        return self.rule_description


class PromotionGate(RecordsCondition):
    """True when the promotion rules let this stage take the release its previous stage holds now."""

    rule_name = "promotion_gate"
    rule_description = ("the digest this stage would take passed its previous stage's blocking checks, the previous "
                        "environment's e2e run with that digest, and its approval (release-graph why)")

    def __init__(self, fleet: Fleet, service: Service):
        self._fleet = fleet
        self._service = service

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        if context.candidate_subset.is_empty:
            return dg.AutomationResult(context, context.get_empty_subset())
        instance = context.asset_graph_view.instance
        reason = waiting_reason(instance, self._fleet, self._service, context.key)
        stage = context.key.path[-1]
        environment = self._fleet.environments.get(stage) if stage != "integration" else None
        # A gated environment that runs what its latest approval released is done: its step would refuse
        # a second use of that approval (another trigger, such as the previous environment's e2e run again).
        done = (environment is not None and environment.requires_approval
                and approval_spent(instance, self._service, environment))
        # A stage that took that digest already (in the run of its previous stage) is not started again.
        done = done or already_took_or_tried(instance, self._fleet, self._service, context.key)
        subset = context.get_empty_subset() if reason or done else context.candidate_subset
        return dg.AutomationResult(context, subset)


class ChainGate(RecordsCondition):
    """True when the first environment may deploy in the same run as the integration requested in this tick
    (`promotion.chain_waiting_reason`): one run instead of two, one automation tick and one run start-up less
    between a commit and its first environment."""

    rule_name = "chain_gate"
    rule_description = ("providers already run the release this stage would be deployed beside, and no rollback "
                        "rule stops it")

    def __init__(self, fleet: Fleet, service: Service, environment: Environment):
        self._fleet, self._service, self._environment = fleet, service, environment

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        if context.candidate_subset.is_empty:
            return dg.AutomationResult(context, context.get_empty_subset())
        reason = chain_waiting_reason(context.asset_graph_view.instance, self._fleet, self._service,
                                      self._environment)
        return dg.AutomationResult(context, context.get_empty_subset() if reason else context.candidate_subset)


RUN_FINISHED = (dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.RUN_CANCELED)
RUNS_LOOKED_AT = 50


class RunFinished(RecordsCondition):
    """True when a run finished since this asset was last requested (its last run was created), other than a
    run of this asset alone (or of it and the other fleet reports in `quiet`).

    For the environment matrix, whose `waiting_for` column reads everything a run can record: an e2e result,
    an approval, a failed or refused step. Refreshed only when a deployment changed, it kept saying "waiting
    for fleet/staging_e2e" long after that e2e passed and the stage waited for an approval. Its own runs are
    no news: a refresh, or a failing one, would otherwise start the next one for ever; so are the runs of the
    other reports that only read the history (fleet/dora), which a deployment requests in the same tick.
    """

    rule_name = "run_finished"
    rule_description = "another run finished since this asset was last requested"

    def __init__(self, quiet: Iterable[dg.AssetKey] = ()):
        self._quiet = frozenset(quiet)

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        upto = context.max_storage_id
        if context.candidate_subset.is_empty or upto is None:
            return dg.AutomationResult(context, context.get_empty_subset())
        instance = context.asset_graph_view.instance
        # Its last request, as the event log has it (the event its run wrote when it was created), so the
        # answer survives a restart of the daemon; storage ids, so no run's end falls between two reads.
        planned = instance.get_latest_planned_materialization_info(context.key)
        after = planned.storage_id if planned else None
        finished = [
            record.run_id
            for event_type in RUN_FINISHED
            for record in instance.fetch_run_status_changes(
                dg.RunStatusChangeRecordsFilter(event_type, after_storage_id=after, before_storage_id=upto + 1),
                limit=RUNS_LOOKED_AT,
            ).records
        ]
        own = {context.key} | self._quiet
        news = any(run is None or not run.asset_selection or not set(run.asset_selection) <= own
                   for run in (instance.get_run_by_id(run_id) for run_id in finished))
        return dg.AutomationResult(context, context.candidate_subset if news else context.get_empty_subset())


def stage_condition(
    fleet: Fleet, service: Service, own_triggers: Iterable[dg.AssetKey], *, label: str,
    not_with: dg.AssetKey | None = None, chained_to: tuple[dg.AssetKey, Environment] | None = None,
) -> dg.AutomationCondition:
    """Fires once after any of `own_triggers` is updated, when the promotion rules allow it and every
    dependency is present and idle (a consumer waits while its provider deploys).

    `not_with`: a dependency that must not be requested in the same tick (for a gated environment, the
    previous environment: otherwise an image and an approval landing together would deploy the gated
    environment on an approval given for the previous digest).
    `chained_to`: (the integration, the first environment): the environment is also requested in the same
    tick as that integration when `ChainGate` allows, so both run in one run, the integration first.
    """
    triggers = dg.AssetSelection.assets(*own_triggers)
    condition = (
        AC.any_deps_match(AC.newly_updated()).allow(triggers).since(AC.newly_requested())
        & PromotionGate(fleet, service)
        & ~AC.any_deps_missing()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
    )
    if not_with is not None:
        condition = condition & ~AC.any_deps_match(AC.will_be_requested()).allow(dg.AssetSelection.assets(not_with))
    if chained_to is not None:
        integration, environment = chained_to
        condition = condition | (
            AC.any_deps_match(AC.will_be_requested()).allow(dg.AssetSelection.assets(integration))
            & ChainGate(fleet, service, environment)
            & ~AC.any_deps_in_progress()
            & ~AC.in_progress()
        )
    return condition.with_label(label)


def report_condition(sources: Iterable[dg.AssetKey], *, label: str) -> dg.AutomationCondition:
    """For a fleet-level asset over many deployments (an environment's e2e tests): run after any of them
    changed, without waiting for every one of them to exist or to be healthy (the e2e tests judge
    what actually runs; a failed deployment leaves the previous version serving)."""
    return (
        AC.any_deps_match(AC.newly_updated()).allow(dg.AssetSelection.assets(*sources)).since(AC.newly_requested())
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
    ).with_label(label)


def matrix_condition(deployments: Iterable[dg.AssetKey], *, label: str,
                     quiet: Iterable[dg.AssetKey] = ()) -> dg.AutomationCondition:
    """The environment matrix: after a deployment changed or another run finished, so what each stage waits
    for is never older than the last finished run (and one automation tick). `quiet`: other reports whose runs
    are no news to it."""
    changed = AC.any_deps_match(AC.newly_updated()).allow(dg.AssetSelection.assets(*deployments))
    return (
        (changed.since(AC.newly_requested()) | RunFinished(quiet))
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
    ).with_label(label)


DORA_CRON = "0 * * * *"


def dora_condition(prod_deployments: Iterable[dg.AssetKey], *, label: str) -> dg.AutomationCondition:
    """DORA's figures: after a prod deployment changed, and every hour, so a failed change (which records no
    deployment) and the windows' passing days show within the hour."""
    changed = AC.any_deps_match(AC.newly_updated()).allow(dg.AssetSelection.assets(*prod_deployments))
    return (
        (changed.since(AC.newly_requested()) | AC.cron_tick_passed(DORA_CRON))
        & ~AC.in_progress()
    ).with_label(label)


def e2e_condition(deployments: Iterable[dg.AssetKey], *, label: str) -> dg.AutomationCondition:
    """An environment's e2e tests: after any deployment there changed, once every service runs there."""
    return (report_condition(deployments, label=label) & ~AC.any_deps_missing()).with_label(label)


# Every gap between two stages waits for a tick. Dagster's sensor daemon looks at its sensors every 5 s (its
# MIN_INTERVAL_LOOP_TIME; these sensors run in the code server, so the sensor daemon evaluates them, not the asset
# daemon). An interval of exactly 5 s missed every other look by a few milliseconds, so ticks came 10 s apart
# (84 ticks in 722 s on the live story); below 5 s each service's sensor ticks at every look. A tick of one
# service's sensor reads a few records per stage; the live story prints what the ticks cost on the real daemon.
AUTOMATION_INTERVAL_SECONDS = 4


def automation_sensors(fleet: Fleet, interval_seconds: int = AUTOMATION_INTERVAL_SECONDS,
                       ) -> list[dg.AutomationConditionSensorDefinition]:
    """One automation sensor per service and one for the fleet group, running by default (Dagster's default
    sensor starts stopped), evaluated in the code server because the promotion gate is Python."""
    common = {"default_status": dg.DefaultSensorStatus.RUNNING, "minimum_interval_seconds": interval_seconds,
              "use_user_code_server": True}
    tags = {TRIGGER_TAG: "automation", MAX_RETRIES_TAG: RUN_RETRIES_AFTER_A_CRASH}
    sensors = [
        dg.AutomationConditionSensorDefinition(
            name=f"release_automation_{service.group}",
            target=dg.AssetSelection.groups(service.group),
            run_tags={**tags, SERVICE_TAG: service.name},
            description=f"Integrates, deploys and promotes {service.name}: one run per service and tick.",
            **common,
        )
        for service in fleet.services.values()
    ]
    sensors.append(dg.AutomationConditionSensorDefinition(
        name="release_automation_fleet",
        target=dg.AssetSelection.groups(FLEET_GROUP),
        run_tags=tags,
        description="Runs each environment's end-to-end tests and refreshes the environment matrix.",
        **common,
    ))
    return sensors
