"""`<service>/source`: the head commit of the service's branch, observed by the Git sensor (sensors/git_commits.py).

The data version is the SHA; a new one is what the sensor turns into a build of `<service>/image`.
"""

import dagster as dg

from release_graph.assets.common import asset_attributes, describe
from release_graph.fleet import Service
from release_graph.release.errors import ReleaseStepError
from release_graph.release.keys import source_key
from resources.git import GitError, GitResource


def source_asset(service: Service) -> dg.SourceAsset:
    @dg.observable_source_asset(
        key=source_key(service),
        description=describe(service, f"Head commit of branch `{service.branch}` of `{service.repo}`"
                              + (f" (path `{service.path}`)" if service.path != "." else "")
                              + ". Observed by the `git_commits` sensor; the data version is the SHA."),
        metadata={"repo": service.repo, "branch": service.branch, "path": service.path},
        **{k: v for k, v in asset_attributes(service).items() if k != "tags"},
    )
    def source(git: GitResource) -> dg.DataVersion:
        try:
            return dg.DataVersion(git.release_commit(service.repo_url, service.branch, service.path))
        except GitError as exc:
            raise ReleaseStepError(f"service '{service.name}': cannot read {service.repo}: {exc}") from None

    return source
