"""Automation conditions for the stages after the image, as verified against Dagster 1.13 (see the notes).

Only a stage's *own* trigger starts it: a provider's new deployment never redeploys an unchanged consumer.
`since(newly_requested())` instead of `since_last_handled()`: the latter loses an image that lands while
its own deployment runs. Every gate also requires its dependencies' blocking checks to have passed,
because a blocking check stops downstream steps only inside the run it failed in.
"""


from collections.abc import Iterable

import dagster as dg

AC = dg.AutomationCondition


def stage_condition(
    own_triggers: Iterable[dg.AssetKey], *, label: str, not_with: dg.AssetKey | None = None
) -> dg.AutomationCondition:
    """Fires once after any of `own_triggers` is updated, when every dependency is present, idle and passed.

    `not_with`: a dependency that must not be requested in the same tick (for a gated environment, the
    previous environment: otherwise an image and an approval landing together would deploy the gated
    environment on an approval given for the previous digest).
    """
    triggers = dg.AssetSelection.assets(*own_triggers)
    condition = (
        AC.any_deps_match(AC.newly_updated()).allow(triggers).since(AC.newly_requested())
        & AC.all_deps_blocking_checks_passed()
        & ~AC.any_deps_missing()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
    )
    if not_with is not None:
        condition = condition & ~AC.any_deps_match(AC.will_be_requested()).allow(dg.AssetSelection.assets(not_with))
    return condition.with_label(label)


def report_condition(sources: Iterable[dg.AssetKey], *, label: str) -> dg.AutomationCondition:
    """For a report over many stages (the environment matrix): refresh after any of them changed, without
    waiting for every one of them to exist, so the first deployment already shows."""
    return (
        AC.any_deps_match(AC.newly_updated()).allow(dg.AssetSelection.assets(*sources)).since(AC.newly_requested())
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
    ).with_label(label)


def automation_sensor() -> dg.AutomationConditionSensorDefinition:
    """The project's own automation sensor, running by default (Dagster's default one starts stopped)."""
    return dg.AutomationConditionSensorDefinition(
        name="release_automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=15,
        run_tags={"release/trigger": "automation", "dagster/max_retries": "0"},
    )
