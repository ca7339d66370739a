"""`<service>/<environment>_approval`: a person approved one digest for an approval-gated environment.

Materialized with config (approver, ticket, optionally the digest) from the UI's launchpad or
`release-graph approve`; the rules (which digest, who may approve) are in release_graph/release/promotion.py.

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
from release_graph.release.promotion import approvable_digest, commit_author, verify_approver
from release_graph.release.tags import APPROVED_BY_TAG


class ApprovalConfig(dg.Config):
    approver: str
    ticket: Optional[str] = None  # noqa: UP045
    digest: Optional[str] = None  # noqa: UP045 - default: the digest the previous environment runs


def materialize_approval(context, config: ApprovalConfig, fleet: Fleet, service: Service,
                         environment: Environment) -> dg.MaterializeResult:
    current = approvable_digest(context.instance, fleet, service, environment, config.digest)
    digest = current.digest
    author = commit_author(context.instance, service, digest)
    verify_approver(service, environment, config.approver, author)
    tag_release(context, fleet, service, current.git_sha, environment.name, **{APPROVED_BY_TAG: config.approver})
    return dg.MaterializeResult(
        data_version=dg.DataVersion(digest),
        metadata={
            M.DIGEST: digest,
            M.GIT_SHA: current.git_sha or "",
            M.APPROVER: config.approver,
            M.TICKET: config.ticket or "",
            "approved_at": dg.MetadataValue.timestamp(time.time()),
            M.AUTHOR: author,
        },
    )


def approval_asset(fleet: Fleet, service: Service, environment: Environment) -> dg.AssetsDefinition:
    before = previous_environment(fleet, environment)
    upstream = environment_key(service, before) if before else previous_stage_key(fleet, service, environment)
    who = ", ".join(environment.approvers) or "anyone"

    @dg.asset(
        key=approval_key(service, environment),
        deps=[upstream],
        description=describe(service, f"A person approved a digest of {service.name} for {environment.name} "
                              f"({who} may approve). Materialize with config approver, ticket and optionally "
                              f"digest, or run `release-graph approve {service.name} --env {environment.name}`."),
        **asset_attributes(service),
    )
    @traced_stage(fleet, service, Stage(f"{environment.name}_approval", f"approval {environment.name}",
                                        environment=environment.name, after=upstream))
    def approval(context: dg.AssetExecutionContext, config: ApprovalConfig) -> dg.MaterializeResult:
        return materialize_approval(context, config, fleet, service, environment)

    return approval
