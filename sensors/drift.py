"""Drift: what actually runs in each environment, compared with the last recorded deployment.

Each tick asks the deploy target of every environment what runs there and records an `in_sync` evaluation
on `<svc>/<env>` whenever the answer changes (a container stopped or replaced by hand fails it; a
redeploy that restores the recorded digest passes it again). It also asks which calls the network rule
refused there, and records a `network_policy` evaluation (a warning naming caller and callee) on the
deployments of both ends when that changes. The cursor holds the last answers per deployment, so an unchanged
fleet writes nothing to the event log.
"""

from __future__ import annotations

import json

import dagster as dg

from release_graph.fleet import Fleet
from release_graph.release import history
from release_graph.release.keys import environment_key
from release_graph.release.matrix import in_sync_evaluation, network_policy_answer, network_policy_evaluation
from resources.targets import DeployTargets, TargetNotConfigured


def build_drift_sensor(fleet: Fleet, minimum_interval_seconds: int = 30) -> dg.SensorDefinition:
    @dg.sensor(
        name="environment_drift",
        description="Compares the digest each container actually runs with the last recorded deployment and "
        "records the in_sync check when that changes; records network_policy when the calls the network "
        "refused there change.",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def environment_drift(context: dg.SensorEvaluationContext, deploy_targets: DeployTargets):
        previous = json.loads(context.cursor) if context.cursor else {}
        answers, events, drifted = {}, [], []
        recorded = history.latest_of(context.instance, [environment_key(service, environment)
                                                        for environment in fleet.environments.values()
                                                        for service in fleet.services.values()])
        for environment in fleet.environments.values():
            try:
                target = deploy_targets.target_of(environment)
            except TargetNotConfigured:
                continue  # nothing can run there, so nothing has drifted
            running = target.running_services(fleet.name, environment.name)
            refused = target.refused_calls(fleet.name, environment.name)
            for service in fleet.services.values():
                key = environment_key(service, environment)
                record = recorded.get(key)
                if record is None or not record.digest:
                    continue
                passed, metadata = in_sync_evaluation(fleet, service, environment, record.digest,
                                                      running.get(service.name))
                label = key.to_user_string()
                answers[label] = metadata["drift"]
                if not passed:
                    drifted.append(f"{label}: {metadata['drift']}")
                if previous.get(label) != answers[label]:
                    events.append(dg.AssetCheckEvaluation(
                        asset_key=key, check_name="in_sync", passed=passed, metadata=metadata,
                        description=metadata["drift"],
                    ))
                if environment.target != "docker":
                    continue  # the check exists where the target counts refusals
                answers[f"{label} network_policy"] = network_policy_answer(service, refused)
                # (no refusal since the switch started: nothing to record, the deployment's own check says so)
                if previous.get(f"{label} network_policy", "") != answers[f"{label} network_policy"]:
                    allowed, policy = network_policy_evaluation(fleet, service, refused)
                    description = policy.pop("drift")
                    events.append(dg.AssetCheckEvaluation(
                        asset_key=key, check_name="network_policy", passed=allowed, metadata=policy,
                        description=description, severity=dg.AssetCheckSeverity.WARN,
                    ))
        return dg.SensorResult(
            asset_events=events,
            cursor=json.dumps(answers, sort_keys=True),
            skip_reason=None if events else ("drift: " + "; ".join(drifted) if drifted else "all in sync"),
        )

    return environment_drift
