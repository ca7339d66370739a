"""Metadata keys that one step writes and another reads back: one constant each, used on both sides.

Keys only shown to people (build seconds, image size, ...) stay literals where they are written.
"""

DIGEST = "digest"  # the image digest a stage is about; for an e2e run, the fingerprint of the tested set
GIT_SHA = "git_sha"
SHORT_SHA = "short_sha"
AUTHOR = "author"  # `Name <email>` of the commit, recorded by the image step
AUTHOR_EMAIL = "author_email"  # the commit's author email exactly as git has it (the author rule compares it)
COMMITTED_AT = "committed_at"  # the commit's time (ISO 8601, UTC), recorded by the image step: DORA's lead time
APPROVER = "approver"  # the identity that approved, recorded by the approval step
APPROVER_SOURCE = "approver_source"  # where that identity came from: PROXY_IDENTITY or TYPED_IDENTITY
PROXY_IDENTITY = "authenticating proxy"  # the UI's reverse proxy authenticated it (a run tag the UI wrote)
TYPED_IDENTITY = "typed"  # the run config's `approver`: `release-graph approve --by`, or the launchpad
TICKET = "ticket"
APPROVED_BY = "approved_by"  # the approvers (comma-separated), copied onto the deployment they released
APPROVAL_TICKET = "approval_ticket"
APPROVAL_RUN_ID = "approval_run_id"  # which approval a deployment used: one approval releases once
DEPLOYED_AT = "deployed_at"
TRACE_ID = "trace_id"  # on every stage (and check): the release's trace id, 32 hex digits, as trace viewers search it
CHANGED = "changed"  # on a deployment: False when the digest already ran there (not a change of production)
DEPLOYED_DIGESTS = "deployed_digests"  # the e2e run's tested set: {service: digest}
ROLLED_BACK_FROM = "rolled_back_from"  # on a deployment pinned by hand to an older digest: the digest it replaced
# On an image built with `security.provenance`: the DSSE envelope of its signed in-toto/SLSA statement (JSON;
# public: a payload and a signature, never the key), and the id of the key that signed it
PROVENANCE = "provenance"
PROVENANCE_KEY_ID = "provenance_keyid"
# On a deployment of a signed image: what the deploy step verified, in words ("verified: built from ...")
PROVENANCE_VERIFIED = "provenance_verified"

# A progressive rollout (release_graph/assets/rollout.py)
ROLLOUT_STRATEGY = "rollout_strategy"
ROLLOUT_STEPS = "rollout_steps"
ANALYSIS_VERDICT = "analysis"
ROLLED_BACK_BECAUSE = "rolled_back_because"
ROLLBACK_EVENT = "rollback"  # the `event` of the observation a rollback records on the environment's asset
ROLLBACK_BY = "rollback_by"  # `release-graph rollback --by`: who went back
ROLLBACK_REASON = "rollback_reason"
REMOVED_EVENT = "removed"  # the `event` of the observation `release-graph teardown` records on each service it removed
