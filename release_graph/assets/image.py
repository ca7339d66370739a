"""Building `<service>/image`: the exact commit, built with the Docker Engine API, tagged with its SHA, pushed.

The digest the registry reports becomes the asset's data version, so a rebuild that yields the same digest
(or a second request for a SHA whose image exists) leaves everything downstream in sync.
"""


import io
import re
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import dagster as dg

from release_graph.assets.common import asset_attributes, describe, edges_metadata
from release_graph.assets.retry import retry_when_transient
from release_graph.assets.stage_tracing import Stage, tag_release, traced_stage
from release_graph.fleet import Fleet, Service, build_files_problem
from release_graph.fleet.references import split_reference
from release_graph.release import metadata as M
from release_graph.release.errors import ReleaseStepError
from release_graph.release.keys import image_key, source_key
from release_graph.release.tags import SERVICE_TAG, SHA_TAG
from release_graph.security import provenance
from resources import labels as L
from resources.containers import ContainerEngine
from resources.git import GitError, GitResource, redact_url
from resources.registry import Registry
from resources.secrets import SecretsError, SecretsResource

FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
# Build output lines that mark progress are worth an event in the run; the rest goes to the step's stdout.
# Podman prefixes the lines of a multi-stage build with the stage: `[1/4] STEP 1/5: FROM ...`.
BUILD_PROGRESS_LINE = re.compile(r"^(\[\d+/\d+\] )?(STEP \d+/\d+|Step \d+/\d+|COMMIT|Successfully (built|tagged))")


@dataclass(frozen=True)
class SourceAtCommit:
    sha: str
    short_sha: str
    author: str
    message: str
    committed_at: str


def resolve_sha(context: dg.AssetExecutionContext, service: Service, git) -> str:
    """The SHA pinned in the run's tags by the sensor or the CLI; otherwise the branch head right now.

    Pinning in tags matters: reading "the latest observed commit" at run time would race with newer commits.
    """
    sha = context.run.tags.get(SHA_TAG)
    if sha:
        if not FULL_SHA.match(sha):
            raise ReleaseStepError(f"service '{service.name}': run tag {SHA_TAG}={sha!r} is not a full 40-hex SHA")
        return sha
    # In a monorepo the release is the newest commit that changed the service's folder, not the head.
    try:
        return git.release_commit(service.repo_url, service.branch, service.path)
    except GitError as exc:
        raise ReleaseStepError(f"service '{service.name}': cannot read branch '{service.branch}': {exc}") from None


def image_labels(fleet: Fleet, service: Service, sha: str) -> dict[str, str]:
    return {
        "org.opencontainers.image.revision": sha,
        "org.opencontainers.image.source": service.repo or "",
        "org.opencontainers.image.title": service.name,
        "org.opencontainers.image.created": datetime.now(UTC).isoformat(timespec="seconds"),
        L.FLEET: fleet.name,
        L.SERVICE: service.name,
    }


def export_build_context(git, service: Service, sha: str, workdir: Path) -> Path:
    """Write exactly the tree of `sha` (never a working copy) and return the build context folder."""
    git.ensure_commit(service.repo_url, sha)
    git.export(service.repo_url, sha, workdir)
    problem = build_files_problem(workdir, service.path, service.build)
    if problem:
        raise ReleaseStepError(f"service '{service.name}', field 'build' at commit {sha[:12]}: {problem}")
    return workdir / service.path / service.build.context


def stream_to_run(context: dg.AssetExecutionContext):
    """Every build line goes to the step's stdout (the compute log); progress lines also become events."""

    def on_log(line: str) -> None:
        line = line.rstrip()
        if not line:
            return
        print(line, flush=True)
        if BUILD_PROGRESS_LINE.match(line):
            context.log.info(line)

    return on_log


def fleet_signing_key(fleet: Fleet, secrets) -> provenance.SigningKey | None:
    """The fleet's provenance key from the secret store (None: `security.provenance` is not configured). A key
    that cannot be found or read stops the step; the message names where it is kept, never the key."""
    settings = fleet.security.provenance
    if settings is None:
        return None
    what = f"the provenance signing key of fleet '{fleet.name}' ({settings.signing_key.describe()})"
    try:
        pem = secrets.resolve_value(settings.signing_key, what=what)
        return provenance.load_signing_key(pem, what=what)
    except (SecretsError, provenance.ProvenanceError) as exc:
        raise ReleaseStepError(f"{exc}: field 'security.provenance.signing_key' of the manifest") from None


def dockerfile_path(service: Service) -> str:
    """The Dockerfile's path inside the repository, as the statement names it."""
    return str(PurePosixPath(service.path, service.build.context, service.build.dockerfile))


def dockerfile_sha256(git, service: Service, sha: str) -> str:
    """sha256 of the Dockerfile exactly as it is in commit `sha` (read from the commit, not a working copy)."""
    path = PurePosixPath(dockerfile_path(service))
    tar = git.archive_bytes(service.repo_url, sha, str(path.parent))
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        member = archive.extractfile(path.name)
        if member is None:
            raise ReleaseStepError(f"service '{service.name}': {path} is not a file at commit {sha[:12]}")
        return provenance.sha256_hex(member.read())


def signed_provenance(context, fleet: Fleet, service: Service, git, key: provenance.SigningKey, *, sha: str,
                      digest: str, started_on: str) -> dict:
    """The image's signed in-toto/SLSA statement, as the image's metadata (the envelope and the key's id)."""
    started = time.perf_counter()
    statement = provenance.build_statement(
        repository=service.image_repository(fleet), digest=digest,
        source_repo=redact_url(service.repo_url or service.repo or ""),
        sha=sha, dockerfile=dockerfile_path(service), dockerfile_sha256=dockerfile_sha256(git, service, sha),
        build_args={"GIT_SHA": sha, **service.build.args}, target=service.build.target,
        invocation_id=context.run.run_id, started_on=started_on,
        finished_on=datetime.now(UTC).isoformat(timespec="seconds"),
        builder_version={"dagster": dg.__version__},
    )
    envelope = provenance.sign(statement, key)
    seconds = time.perf_counter() - started
    context.log.info(f"{service.name}: provenance of {digest} signed by key {key.public.keyid[:16]}")
    return {
        M.PROVENANCE: dg.MetadataValue.json(envelope),
        M.PROVENANCE_KEY_ID: key.public.keyid,
        "provenance_sign_ms": dg.MetadataValue.float(round(seconds * 1000, 3)),
    }


@retry_when_transient("building the image")
def materialize_image(context: dg.AssetExecutionContext, fleet: Fleet, service: Service, git, engine, registry,
                      secrets=None):
    # The key is read first: a fleet that signs its images builds nothing it could not sign.
    signing_key = fleet_signing_key(fleet, secrets)
    started_on = datetime.now(UTC).isoformat(timespec="seconds")
    sha = resolve_sha(context, service, git)
    repository = service.image_repository(fleet)
    reference = f"{repository}:{sha}"
    tag_release(context, fleet, service, sha)
    git.ensure_commit(service.repo_url, sha)
    commit = git.commit_info(service.repo_url, sha)

    existing_digest = registry.manifest_digest(repository, sha)
    size_bytes: int | None = None
    started = time.monotonic()
    if existing_digest:
        # Rebuilding a SHA whose image exists is skipped: same digest, same data version, nothing goes stale.
        digest = existing_digest
        context.log.info(f"{reference} already exists ({digest}): not rebuilt, digest recorded again")
        built = False
    else:
        on_log = stream_to_run(context)
        earlier = engine.built_image(reference, revision=sha)
        if earlier is not None:
            # An earlier attempt built this commit and its push failed (the registry was down): push that image.
            # Building again would make a second image of one commit (its labels carry the build time).
            context.log.info(f"{reference} was built by an earlier attempt ({earlier.image_id[:19]}): "
                             "pushing it, not building it again")
            result = earlier
        else:
            with tempfile.TemporaryDirectory(prefix=f"rg-build-{service.name}-") as tmp:
                context_dir = export_build_context(git, service, sha, Path(tmp))
                result = engine.build(
                    context_dir,
                    dockerfile=service.build.dockerfile,
                    tag=reference,
                    target=service.build.target,
                    labels=image_labels(fleet, service, sha),
                    # The commit is passed as GIT_SHA too, for services that report it (/version); an
                    # undeclared build arg is ignored by the engine.
                    buildargs={"GIT_SHA": sha, **service.build.args},
                    on_log=on_log,
                )
        size_bytes = result.size_bytes
        digest = engine.push(reference, on_log=on_log, registry=registry)
        built = True
    seconds = round(time.monotonic() - started, 2)

    metadata = {
        M.GIT_SHA: sha,
        M.SHORT_SHA: sha[:12],
        M.AUTHOR: commit.author_name + (f" <{commit.author_email}>" if commit.author_email else ""),
        M.AUTHOR_EMAIL: commit.author_email,
        "commit_message": commit.message.splitlines()[0] if commit.message else "",
        M.COMMITTED_AT: commit.committed_at,
        M.DIGEST: digest,
        "image": f"{repository}@{digest}",
        "tag": reference,
        "built": built,
        "build_seconds": dg.MetadataValue.float(seconds) if built else dg.MetadataValue.null(),
        "image_size_bytes": dg.MetadataValue.int(size_bytes) if size_bytes is not None else dg.MetadataValue.null(),
        "repo": service.repo or "",
        "branch": service.branch,
    }
    if signing_key is not None:
        metadata.update(signed_provenance(context, fleet, service, git, signing_key, sha=sha, digest=digest,
                                          started_on=started_on))
    return dg.MaterializeResult(data_version=dg.DataVersion(digest), metadata=metadata)


def pin_prebuilt_image(context: dg.AssetExecutionContext, service: Service, registry) -> dg.MaterializeResult:
    """Record the digest a prebuilt reference points to now, so every environment deploys that digest."""
    reference = service.image
    repository, tag, digest = split_reference(reference)
    if digest is None:
        digest = registry.manifest_digest(repository, tag or "latest")
        if digest is None:
            raise ReleaseStepError(f"service '{service.name}', field 'image': {reference} is not in its registry")
    context.instance.add_run_tags(context.run.run_id, {SERVICE_TAG: service.name})
    return dg.MaterializeResult(
        data_version=dg.DataVersion(digest),
        metadata={M.DIGEST: digest, "reference": reference, "image": f"{repository}@{digest}"},
    )


def image_asset(fleet: Fleet, service: Service) -> dg.AssetsDefinition:
    repository = service.image_repository(fleet)

    kinds = {"docker"} | ({service.language} if service.language else set())

    @dg.asset(
        key=image_key(service),
        deps=[source_key(service)],
        description=describe(
            service,
            f"`{repository}:<sha>`: the commit built with its Dockerfile (`{service.build.dockerfile}`), "
            "pushed; the data version is the image digest. Built only by the Git sensor, the UI or "
            "`release-graph build`.",
        ),
        kinds=kinds,
        metadata={"repository": repository, **edges_metadata(fleet, service)},
        **asset_attributes(service),
    )
    @traced_stage(fleet, service, Stage("image", "image", "build", root=True))
    def image(context: dg.AssetExecutionContext, git: GitResource, engine: ContainerEngine,
              registry: Registry, secrets: SecretsResource) -> dg.MaterializeResult:
        return materialize_image(context, fleet, service, git, engine, registry, secrets)

    return image


def prebuilt_image_asset(fleet: Fleet, service: Service) -> dg.AssetsDefinition:
    """A prebuilt image is promoted, never built: its image stage pins the reference to a digest."""
    role = "infrastructure (deployed, never released)" if service.infrastructure else "prebuilt application image"

    @dg.asset(
        key=image_key(service),
        description=describe(service, f"Prebuilt image `{service.image}`: {role}. Promoted, never built; "
                              "materializing it pins the reference to the digest the registry serves now."),
        kinds={"docker"},
        metadata={"reference": service.image, "infrastructure": service.infrastructure,
                  **edges_metadata(fleet, service)},
        **asset_attributes(service),
    )
    def image(context: dg.AssetExecutionContext, registry: Registry) -> dg.MaterializeResult:
        return pin_prebuilt_image(context, service, registry)

    return image
