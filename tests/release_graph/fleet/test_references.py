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
ECR_HOST = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("127.0.0.1:5000/shop/orders", ImageReference("127.0.0.1:5000", "shop/orders", None, None)),
        ("127.0.0.1:5000/shop/orders:" + "a" * 40, ImageReference("127.0.0.1:5000", "shop/orders", "a" * 40, None)),
        (
            "localhost:5000/vendor/collector@sha256:" + "b" * 64,
            ImageReference("localhost:5000", "vendor/collector", None, "sha256:" + "b" * 64),
        ),
        (
            f"{ECR_HOST}/shop/pay-ments:1.2@sha256:" + "c" * 64,
            ImageReference(ECR_HOST, "shop/pay-ments", "1.2", "sha256:" + "c" * 64),
        ),
        ("redis:7.2", ImageReference("docker.io", "library/redis", "7.2", None)),
        ("bitnami/redis", ImageReference("docker.io", "bitnami/redis", None, None)),
        ("localhost/x__y.z-w", ImageReference("localhost", "x__y.z-w", None, None)),
    ],
)
def test_valid_image_references_split_into_registry_repository_tag_and_digest(reference, expected):
    parsed = parse_image_reference(reference)

    assert parsed == expected
    host, path, tag, digest = parsed  # a plain tuple for callers that unpack it
    assert parsed.name == f"{host}/{path}"


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        ("", "image reference is empty"),
        ("127.0.0.1:5000/shop/orders ", "contains whitespace"),
        ("127.0.0.1:5000/Shop/orders", "repository name must be lowercase ('Shop')"),
        ("127.0.0.1:5000/shop//orders", "empty component"),
        ("127.0.0.1:5000/shop/orders/", "empty component"),
        ("127.0.0.1:5000/shop/-orders", "path component '-orders' is invalid"),
        ("127.0.0.1:5000/shop/orders:", "tag '' is invalid"),
        ("127.0.0.1:5000/shop/orders:.v1", "tag '.v1' is invalid"),
        ("127.0.0.1:5000/shop/orders:" + "t" * 129, "at most 128 characters"),
        ("127.0.0.1:5000/shop/orders@sha256:abc", "exactly 64 lowercase hex"),
        ("127.0.0.1:5000/shop/orders@md5", "is not <algorithm>:<hex>"),
        ("reg_istry.local:5000/shop/orders", "registry host 'reg_istry.local:5000' is not a valid host[:port]"),
        (":5000", "has no repository name"),
        ("127.0.0.1:5000/" + "a" * 256, "longer than 255"),
    ],
)
def test_invalid_image_references_are_rejected_with_the_reason(reference, problem):
    with pytest.raises(ValueError) as raised:
        parse_image_reference(reference)

    assert problem in str(raised.value)


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("[::1]:5000/x", ImageReference("[::1]:5000", "x", None, None)),
        ("127.0.0.1:5000/shop/orders@sha512:" + "d" * 128,
         ImageReference("127.0.0.1:5000", "shop/orders", None, "sha512:" + "d" * 128)),
    ],
)
def test_ipv6_hosts_and_other_digest_algorithms_parse(reference, expected):
    assert parse_image_reference(reference) == expected


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
