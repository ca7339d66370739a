"""Real images for the security stories: built from the local base images, pushed to the local registry under
`<registry>/<run id>/...`, and removed from the engine and the registry afterwards."""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

TEST_RUN_LABEL = "release-graph.test-run"
MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])


def registry_digest(registry: str, path: str, tag: str) -> str:
    request = urllib.request.Request(f"http://{registry}/v2/{path}/manifests/{tag}", method="HEAD",
                                     headers={"Accept": MANIFEST_TYPES})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Docker-Content-Digest"]


def delete_from_registry(registry: str, path: str, digest: str) -> None:
    request = urllib.request.Request(f"http://{registry}/v2/{path}/manifests/{digest}", method="DELETE")
    with contextlib.suppress(urllib.error.HTTPError), urllib.request.urlopen(request, timeout=10):
        pass


@pytest.fixture
def push_image(docker_client, registry_addr, run_id, tmp_path):
    """push_image(name, dockerfile, files={}) -> (repository, digest) of an image built and pushed for real."""
    pushed: list[tuple[str, str, str]] = []

    def build_and_push(name: str, dockerfile: str, files: dict[str, str] | None = None, tag: str = "1"):
        context = tmp_path / f"context-{name}-{tag}"
        context.mkdir()
        (context / "Dockerfile").write_text(dockerfile)
        for relative, text in (files or {}).items():
            target = Path(context / relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        path = f"{run_id}/{name}"
        repository = f"{registry_addr}/{path}"
        docker_client.images.build(path=str(context), tag=f"{repository}:{tag}", pull=False, rm=True,
                                   labels={TEST_RUN_LABEL: run_id})
        for line in docker_client.images.push(repository, tag=tag, stream=True, decode=True):
            if "error" in line or "errorDetail" in line:
                raise AssertionError(f"push of {repository}:{tag} failed: {line}")
        digest = registry_digest(registry_addr, path, tag)
        pushed.append((path, digest, f"{repository}:{tag}"))
        return repository, digest

    yield build_and_push
    for path, digest, _reference in pushed:
        delete_from_registry(registry_addr, path, digest)  # local images go at the session's end


@pytest.fixture(scope="session")
def base_python(registry_addr):
    """(repository, digest) of the Python base image in the local registry."""
    return f"{registry_addr}/base/python", registry_digest(registry_addr, "base/python", "bookworm")
