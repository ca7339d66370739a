"""Git-based promotion: an environment that tracks a branch deploys the digest built from that branch's head.

Nothing is rebuilt: the head's SHA is looked up among the digests `<svc>/image` produced. The digest is
promoted (`run_key=<svc>:<env>:<sha>`) only if it passed the previous stage; otherwise the refusal, with
its reason, is the tick's skip reason in the UI (and a warning in its log), and later ticks ask again, so
the head is promoted as soon as its digest has passed the previous stage.
"""

from __future__ import annotations

import json

import dagster as dg

from release_graph.fleet import Fleet
from release_graph.release import history
from release_graph.release.keys import environment_key, image_key, previous_stage_key
from release_graph.release.promotion import blocking_checks_passed
from release_graph.release.tags import (
    MAX_RETRIES_TAG,
    RUN_RETRIES_AFTER_A_CRASH,
    TRIGGER_TAG,
    release_tags,
)
from resources.git import GitResource


def build_branch_promotion_sensor(fleet: Fleet, minimum_interval_seconds: int = 30) -> dg.SensorDefinition:
    tracked = [
        (service, environment)
        for environment in fleet.environments.values() if environment.branch
        for service in fleet.built_services
    ]

    @dg.sensor(
        name="branch_promotion",
        description="Promotes the digest built from the head of each environment's tracked branch, "
        "if it passed the previous stage.",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def branch_promotion(context: dg.SensorEvaluationContext, git: GitResource):
        cursor = json.loads(context.cursor) if context.cursor else {}
        heads = git.remote_heads(
            sorted({(service.repo_url, environment.branch) for service, environment in tracked})
        )
        requests, notes = [], []
        for service, environment in tracked:
            label = f"{service.name}@{environment.name}"
            head = heads[(service.repo_url, environment.branch)]
            if head.error:
                notes.append(f"{label}: cannot read branch '{environment.branch}': {head.error}")
                continue
            if cursor.get(label) == head.sha:
                continue
            request, refusal = promotion_for(context.instance, fleet, service, environment, head.sha)
            if request:
                requests.append(request)
                cursor[label] = head.sha
            else:
                # The cursor stays: once the digest passes the previous stage, a later tick promotes it.
                notes.append(f"{label}: refused {head.sha[:12]}: {refusal}")
        for note in notes:
            context.log.warning(note)
        return dg.SensorResult(
            run_requests=requests,
            cursor=json.dumps(cursor, sort_keys=True),
            skip_reason=None if requests else ("; ".join(notes) or "no tracked branch moved"),
        )

    return branch_promotion


def promotion_for(instance, fleet: Fleet, service, environment, sha: str):
    """(RunRequest, None) when the head's digest may be promoted, else (None, the reason)."""
    built = next((r for r in history.history(instance, image_key(service)) if r.git_sha == sha), None)
    if built is None or not built.digest:
        return None, f"no image was built from {sha[:12]} (environments never build: commit to "
        f"'{service.branch}' first)"
    previous = previous_stage_key(fleet, service, environment)
    passed = history.record_with_digest(instance, previous, built.digest)
    if passed is None or blocking_checks_passed(instance, fleet, service, previous, built.digest):
        return None, f"its digest {built.digest} did not pass {previous.to_user_string()}"
    key = environment_key(service, environment)
    return dg.RunRequest(
        run_key=f"{service.name}:{environment.name}:{sha}",
        asset_selection=[key],
        run_config={"ops": {key.to_python_identifier(): {"config": {"digest": built.digest}}}},
        tags={**release_tags(service.name, sha, environment.name), TRIGGER_TAG: f"branch {environment.branch}",
              MAX_RETRIES_TAG: RUN_RETRIES_AFTER_A_CRASH},
    ), None
