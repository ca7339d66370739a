"""`<service>/<environment>_approval`: a person approved one digest for an approval-gated environment.

Materialized with config (approver, ticket, optionally the digest) from the UI's launchpad or
`release-graph approve`; the rules (which digest, who may approve, how many, for how long) are in
release_graph/release/promotion.py. A run launched through the UI behind an authenticating proxy carries the
proxy's identity in a tag (release_graph/webserver.py): that identity approves, whatever the launchpad says.

No `from __future__ import annotations` here: Dagster reads the Config class's annotations at import.
"""

import time
from typing import Optional

import dagster as dg

from release_graph.assets.common import asset_attributes, describe
from release_graph.assets.stage_tracing import Stage, tag_release, traced_stage
from release_graph.fleet import Environment, Fleet, Service
from release_graph.release import metadata as M
from release_graph.release.keys import approval_key, environment_key, previous_environment, previous_stage_key
from release_graph.release.promotion import (
    approvable_digest,
    approver_identity,
    commit_author,
    digest_label,
    refuse,
    verify_new_approval,
)
from release_graph.release.tags import APPROVED_BY_TAG


class ApprovalConfig(dg.Config):
    # Who approves: an email (or, where the environment names no approvers, any name). Behind the
    # authenticating proxy the proxy's identity is used instead, and this may be left out.
    approver: Optional[str] = None  # noqa: UP045
    ticket: Optional[str] = None  # noqa: UP045
    digest: Optional[str] = None  # noqa: UP045 - default: the digest the previous environment runs


def materialize_approval(context, config: ApprovalConfig, fleet: Fleet, service: Service,
                         environment: Environment) -> dg.MaterializeResult:
    current = approvable_digest(context.instance, fleet, service, environment, config.digest)
    digest = current.digest
    identity, source = approver_identity(context.run.tags, config.approver)
    if not identity:
        raise refuse(service, environment, "an approval names who gives it: set approver in the run config "
                     "(release-graph approve --by <you>), or approve through the UI behind the authenticating proxy")
    if source != M.TYPED_IDENTITY and config.approver and config.approver.strip() != identity:
        context.log.warning(f"approver {config.approver!r} typed in the run config is ignored: the UI's proxy "
                            f"authenticated {identity!r}, who approves")
    before = verify_new_approval(context.instance, service, environment, digest, identity)
    now = time.time()
    tag_release(context, fleet, service, current.git_sha, environment.name, **{APPROVED_BY_TAG: identity})
    counted = len(before.counted) + 1
    context.log.info(f"{identity} approved {digest_label(digest, current.git_sha)} for {environment.name}: "
                     f"{counted} of {environment.approvals_required} distinct approvals")
    metadata = {
        M.DIGEST: digest,
        M.GIT_SHA: current.git_sha or "",
        M.APPROVER: identity,
        M.APPROVER_SOURCE: source,
        M.TICKET: config.ticket or "",
        "approved_at": dg.MetadataValue.timestamp(now),
        M.AUTHOR: commit_author(context.instance, service, digest),
        "approvals": f"{counted} of {environment.approvals_required}: "
                     + ", ".join([*before.given_by, identity]),
    }
    if environment.approval_expires_after_hours is not None:
        metadata["expires_at"] = dg.MetadataValue.timestamp(now + environment.approval_expires_after_hours * 3600)
    return dg.MaterializeResult(data_version=dg.DataVersion(digest), metadata=metadata)


def approval_asset(fleet: Fleet, service: Service, environment: Environment) -> dg.AssetsDefinition:
    before = previous_environment(fleet, environment)
    upstream = environment_key(service, before) if before else previous_stage_key(fleet, service, environment)
    who = ", ".join(environment.approvers) or "anyone"
    how_many = (f"{environment.approvals_required} distinct people must approve one digest"
                if environment.approvals_required > 1 else "one approval releases one digest")
    expiry = (f", an approval counts for {environment.approval_expires_after_hours:g} h"
              if environment.approval_expires_after_hours is not None else "")

    @dg.asset(
        key=approval_key(service, environment),
        deps=[upstream],
        description=describe(service, f"A person approved a digest of {service.name} for {environment.name} "
                              f"({who} may approve; {how_many}{expiry}). Materialize with config approver, "
                              f"ticket and optionally digest, or run `release-graph approve {service.name} "
                              f"--env {environment.name}`."),
        **asset_attributes(service),
    )
    @traced_stage(fleet, service, Stage(f"{environment.name}_approval", f"approval {environment.name}",
                                        environment=environment.name, after=upstream))
    def approval(context: dg.AssetExecutionContext, config: ApprovalConfig) -> dg.MaterializeResult:
        return materialize_approval(context, config, fleet, service, environment)

    return approval
