"""Run tags: written by the steps and the sensors, read by the CLI and the UI's filters. One owner for each."""

from release_graph.release.tracing import ReleaseTrace

SERVICE_TAG = "release/service"
ENV_TAG = "release/env"
SHA_TAG = "release/git_sha"
SHORT_SHA_TAG = "release/short_sha"
APPROVED_BY_TAG = "release/approved_by"
# Who launched the run from the UI, as the authenticating reverse proxy in front of it said (its identity
# header): written by release_graph/webserver.py on every run launched through it, any value typed in the
# launchpad replaced or removed; the approval step takes it over the typed approver (docs/operations.md).
AUTHENTICATED_USER_TAG = "release/authenticated_user"
TRIGGER_TAG = "release/trigger"
TRACE_ID_TAG = "release/trace_id"  # the release's OpenTelemetry trace (release_graph/release/tracing.py)
# On a build run that coalesced commits: how many, and their SHAs (12 characters, space-separated, at most the
# Git sensor's MAX_LISTED_SKIPPED). Written with the run itself, so a Git tick cut short after it created the
# run (whose `<svc>/source` observation is then lost) still leaves the record of what the build holds.
COALESCED_COUNT_TAG = "release/coalesced_count"
COALESCED_COMMITS_TAG = "release/coalesced_commits"
# On a build run the Git sensor cancelled while it was still queued: the newer commit of the same branch whose
# build took it over (its run lists this one's commits under COALESCED_COMMITS_TAG).
SUPERSEDED_BY_TAG = "release/superseded_by"
FAILURE_TAG = "release/failure"  # "transient": the run gave up because something outside the commit was down
# Whole-run retries by the instance: dagster.yaml sets `retry_on_asset_or_op_failure: false`, so only a run
# whose process died (killed, out of memory, daemon restarted) is run again; a refused step stays refused.
MAX_RETRIES_TAG = "dagster/max_retries"
RUN_RETRIES_AFTER_A_CRASH = "2"


def release_tags(service: str, sha: str | None = None, environment: str | None = None, *,
                 fleet: str | None = None) -> dict[str, str]:
    """The tags that let the Runs page filter by service, environment and commit; with the fleet's name, the
    release's trace id too."""
    tags = {SERVICE_TAG: service}
    if environment:
        tags[ENV_TAG] = environment
    if sha:
        tags.update({SHA_TAG: sha, SHORT_SHA_TAG: sha[:12]})
        if fleet:
            tags[TRACE_ID_TAG] = ReleaseTrace(fleet, service, sha).trace_id_hex
    return tags

# `release-graph rollout promote|abort` asks a running rollout through its run's tags.
ROLLOUT_REQUEST_TAG = "release/rollout_request"
