"""Image references, parsed in one place: the manifest, the registry, promotion and the scanners all use it."""

from __future__ import annotations

import pytest

from release_graph.fleet.references import (
    ImageReference,
    is_image_reference,
    is_image_repository,
    parse_image_reference,
    pinned,
    repository_of,
    split_host,
    split_reference,
)

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("reference", "parsed"),
    [
        ("127.0.0.1:5000/shop/orders:1.2", ImageReference("127.0.0.1:5000", "shop/orders", "1.2", None)),
        (f"127.0.0.1:5000/shop/orders@{DIGEST}", ImageReference("127.0.0.1:5000", "shop/orders", None, DIGEST)),
        (f"localhost/a:t@{DIGEST}", ImageReference("localhost", "a", "t", DIGEST)),
        ("redis:7.2", ImageReference("docker.io", "library/redis", "7.2", None)),
        ("bitnami/redis", ImageReference("docker.io", "bitnami/redis", None, None)),
        ("[::1]:5000/x", ImageReference("[::1]:5000", "x", None, None)),
    ],
)
def test_a_reference_splits_into_registry_repository_tag_and_digest(reference, parsed):
    assert parse_image_reference(reference) == parsed


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        ("", "is empty"),
        ("shop/orders latest", "contains whitespace"),
        ("shop/Orders", "must be lowercase"),
        ("shop//orders", "empty component"),
        ("shop/orders:-x", "tag '-x' is invalid"),
        ("shop/orders@sha256:abc", "exactly 64 lowercase hex"),
        ("shop/orders@latest", "is not <algorithm>:<hex>"),
        ("bad_host.com:x/y", "is not a valid host"),
    ],
)
def test_a_bad_reference_says_which_part_is_wrong(reference, problem):
    with pytest.raises(ValueError, match=problem):
        parse_image_reference(reference)


def test_the_name_as_written_without_tag_and_digest():
    assert split_reference(f"h:5000/shop/orders:1@{DIGEST}") == ("h:5000/shop/orders", "1", DIGEST)
    assert split_reference("h:5000/shop/orders") == ("h:5000/shop/orders", None, None)
    assert split_host("h:5000/shop/orders") == ("h:5000", ["shop", "orders"])
    assert split_host("shop/orders") == (None, ["shop", "orders"])
    assert repository_of("redis:7.2") == "redis"
    assert pinned(f"127.0.0.1:5000/vendor/collector:2@{'sha256:' + 'b' * 64}", DIGEST) == (
        f"127.0.0.1:5000/vendor/collector@{DIGEST}"
    )


def test_what_the_manifest_accepts_as_image_and_as_registry():
    assert is_image_reference(f"127.0.0.1:5000/vendor/collector@{DIGEST}")
    assert is_image_reference("redis:7.2") and is_image_reference("redis")
    assert not is_image_reference("redis@sha512:" + "a" * 128)  # only sha256 digests are deployed
    assert not is_image_reference("Not An Image") and not is_image_reference(None)
    assert is_image_repository("127.0.0.1:5000/shop") and is_image_repository("registry.example.com/shop")
    assert not is_image_repository("127.0.0.1:5000/shop:1") and not is_image_repository(f"shop@{DIGEST}")
