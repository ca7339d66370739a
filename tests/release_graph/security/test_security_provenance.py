"""Given the digests that the fleet's image asset produced, when someone pushes an image to the registry by
hand, then promotion refuses its digest, while the digest the image asset built is accepted."""

from __future__ import annotations

import pytest

from release_graph.security import provenance

BUILT = 'FROM 127.0.0.1:5000/base/busybox:latest\nLABEL io.release-graph.service="orders"\nCMD ["true"]\n'
BY_HAND = 'FROM 127.0.0.1:5000/base/busybox:latest\nLABEL note="pushed by hand"\nCMD ["true"]\n'


def test_a_digest_pushed_by_hand_is_refused_at_promotion(push_image):
    repository, built_digest = push_image("orders", BUILT, tag="a1b2c3")
    hand_repository, hand_digest = push_image("orders", BY_HAND, tag="hotfix")
    assert hand_repository == repository and hand_digest != built_digest
    produced = {built_digest}  # what the `orders/image` materializations recorded

    accepted = provenance.verify(f"{repository}@{built_digest}", produced, expected_repository=repository)
    assert accepted.ok and accepted.digest == built_digest

    refused = provenance.verify(f"{repository}@{hand_digest}", produced, expected_repository=repository)
    assert not refused
    assert refused.reason == (
        f"{hand_digest} was not produced by this fleet's image asset (1 digest(s) on record): "
        "it was pushed from elsewhere, e.g. by hand, and is refused"
    )
    with pytest.raises(provenance.ProvenanceError, match=f"promotion of orders to prod refused: {hand_digest}"):
        provenance.require(hand_digest, produced, what="promotion of orders to prod")
    assert provenance.require(built_digest, produced) == built_digest


def test_a_tag_is_never_enough_and_another_repository_is_refused():
    digest = "sha256:" + "a" * 64
    by_tag = provenance.verify("127.0.0.1:5000/shop/orders:latest", {digest})
    assert not by_tag.ok and "is not addressed by digest" in by_tag.reason
    elsewhere = provenance.verify(f"127.0.0.1:5000/other/orders@{digest}", {digest},
                                  expected_repository="127.0.0.1:5000/shop/orders")
    assert not elsewhere.ok
    assert elsewhere.reason.endswith(
        "is in repository 127.0.0.1:5000/other/orders, expected 127.0.0.1:5000/shop/orders")
