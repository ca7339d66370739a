"""Release stories for the registry adapter, against the real local registry and throwaway ones.

A "stopped registry" is a real `docker-registry serve` this test starts on a free port with its own config
and storage, and then stops; the shared registry on 127.0.0.1:5000 is never stopped. Podman treats a
registry it has no registries.conf entry for as TLS; `ContainerEngine.push` passes Podman's `tlsVerify=false`
for loopback registries, so a registry on any loopback port works without touching that file (which the
engine's API service caches and would need a restart to re-read).
"""

from __future__ import annotations

import re
import socket
import time

import pytest

from resources.containers import ContainerEngine
from resources.registry import (
    IMAGE_MANIFEST_MEDIA_TYPES,
    Registry,
    RegistryError,
    RegistryUnavailable,
    is_loopback_host,
)

pytestmark = pytest.mark.engine

BASE_BUSYBOX = "base/busybox"
ECR_HOST = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")


@pytest.fixture
def registry() -> Registry:
    return Registry(timeout_seconds=5)


# --- reading the shared registry ------------------------------------------------------------------------


def test_given_the_base_image_in_the_registry_when_asked_then_it_exists_with_a_digest_and_a_tag(
    registry, registry_addr
):
    repository = f"{registry_addr}/{BASE_BUSYBOX}"

    assert registry.image_exists(repository, "latest") is True
    digest = registry.manifest_digest(repository, "latest")
    assert digest is not None and SHA256.match(digest)
    # Asking by digest confirms the same manifest: that is how a deployment pins it.
    assert registry.manifest_digest(repository, digest) == digest
    assert "latest" in registry.tags(repository)


def test_given_an_image_when_its_manifest_is_read_then_the_bytes_hash_to_its_digest(registry, registry_addr):
    import hashlib

    repository = f"{registry_addr}/{BASE_BUSYBOX}"
    digest = registry.manifest_digest(repository, "latest")
    manifest = registry.manifest(repository, digest, media_types=IMAGE_MANIFEST_MEDIA_TYPES)
    # untouched bytes: a copy put into another registry (ECR, for its scan) keeps the digest
    assert "sha256:" + hashlib.sha256(manifest.body).hexdigest() == digest
    assert manifest.media_type in IMAGE_MANIFEST_MEDIA_TYPES
    assert registry.manifest(repository, "latest", media_types=IMAGE_MANIFEST_MEDIA_TYPES) == manifest
    assert registry.manifest(repository, "sha256:" + "0" * 64) is None


def test_given_a_sha_never_built_when_asked_then_the_image_does_not_exist(registry, registry_addr, run_id):
    repository = f"{registry_addr}/{run_id}/never-built"

    assert registry.image_exists(repository, "0" * 40) is False
    assert registry.manifest_digest(repository, "0" * 40) is None
    assert registry.tags(repository) == []
    assert registry.delete(repository, "sha256:" + "0" * 64) is False


def test_given_a_pushed_release_when_deleted_by_digest_then_its_tag_is_gone(
    registry, registry_addr, run_id, docker_client, local_tags, busybox_as
):
    repository = f"{registry_addr}/{run_id}/registry-roundtrip"
    reference = busybox_as(repository, "release-1")
    digest = ContainerEngine().push(reference)
    try:
        assert registry.tags(repository) == ["release-1"]
        assert registry.manifest_digest(repository, "release-1") == digest
    finally:
        deleted = registry.delete(repository, digest)

    assert deleted is True
    assert registry.image_exists(repository, "release-1") is False
    assert registry.delete(repository, digest) is False


# --- failures ---------------------------------------------------------------------------------------------


def test_given_a_registry_that_was_stopped_when_asked_then_registry_unavailable_names_it_and_the_image(
    tmp_path, free_port, run_id, docker_client, registry_addr, local_tags, busybox_as
, throwaway_registry):
    address = f"127.0.0.1:{free_port}"
    repository = f"{address}/{run_id}/stopped"
    reference = busybox_as(repository, "1")
    with throwaway_registry(tmp_path, free_port) as stop:
        ContainerEngine().push(reference)
        assert Registry().image_exists(repository, "1") is True
        stop()

        with pytest.raises(RegistryUnavailable) as raised:
            Registry().image_exists(repository, "1")

    message = str(raised.value)
    assert f"registry {address} did not answer" in message
    assert f"{repository}" in message
    assert isinstance(raised.value, RegistryError)


def test_given_a_registry_that_accepts_but_never_answers_when_asked_then_it_times_out_as_unavailable(
    free_port, run_id
):
    address = f"127.0.0.1:{free_port}"
    # The kernel completes the TCP handshake for a listening socket nobody accepts from: a hung registry.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", free_port))
        hung.listen(8)
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable, match=rf"registry {re.escape(address)} did not answer \(no answer"):
            Registry(timeout_seconds=0.5).manifest_digest(f"{address}/{run_id}/hung", "1")
        assert time.monotonic() - started < 5


def test_given_a_registry_without_deletes_when_deleting_then_the_error_carries_status_and_body(
    tmp_path, free_port, run_id, docker_client, registry_addr, local_tags, busybox_as
, throwaway_registry):
    address = f"127.0.0.1:{free_port}"
    repository = f"{address}/{run_id}/no-deletes"
    reference = busybox_as(repository, "1")
    with throwaway_registry(tmp_path, free_port, delete_enabled=False):
        digest = ContainerEngine().push(reference)

        with pytest.raises(RegistryError) as raised:
            Registry().delete(repository, digest)

    message = str(raised.value)
    assert not isinstance(raised.value, RegistryUnavailable)
    assert f"registry {address} answered 405" in message
    assert "storage.delete.enabled" in message
    assert "UNSUPPORTED" in message  # the registry's own words, from the response body


@pytest.mark.parametrize(
    ("repository", "problem"),
    [
        ("127.0.0.1:5000/shop/orders:v1", "must not carry a tag or digest"),
        ("127.0.0.1:5000/Shop/orders", "must be lowercase"),
        ("", "is empty"),
    ],
)
def test_given_a_malformed_repository_when_asked_then_value_error_says_what_is_wrong(registry, repository, problem):
    with pytest.raises(ValueError, match=problem):
        registry.image_exists(repository, "latest")


def test_given_a_tag_instead_of_a_digest_when_deleting_then_value_error(registry, registry_addr, run_id):
    with pytest.raises(ValueError, match="delete needs a digest"):
        registry.delete(f"{registry_addr}/{run_id}/x", "latest")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:5000", True),
        ("127.1.2.3:5000", True),
        ("localhost:5000", True),
        ("localhost", True),
        ("[::1]:5000", True),
        ("registry.example.com", False),
        ("10.0.0.5:5000", False),
        (ECR_HOST, False),
    ],
)
def test_only_loopback_registries_are_spoken_to_in_plain_http(host, loopback):
    assert is_loopback_host(host) is loopback

