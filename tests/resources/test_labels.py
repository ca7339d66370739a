"""Labels: one namespace, `io.release-graph.*`, and what earlier versions wrote (`release-graph.*`) still read."""

import pytest

from resources import labels as L


def test_every_label_release_graph_writes_is_in_the_io_release_graph_namespace():
    for key in (*L.TARGET_OWNED, L.GIT_SHA, L.STEP):
        assert key.startswith("io.release-graph."), key


def test_a_label_written_by_an_earlier_version_is_read_under_its_old_name():
    old = {"release-graph": "1", "release-graph.fleet": "shop", "release-graph.digest": "sha256:old"}
    assert L.read(old, L.FLEET) == "shop" and L.read(old, L.DIGEST) == "sha256:old"
    assert L.has(old, L.MANAGED) and not L.has(old, L.EPHEMERAL)
    assert L.read(old, L.PORT) is None and L.read(old, L.PORT, "") == ""
    both = {**old, L.DIGEST: "sha256:new"}
    assert L.read(both, L.DIGEST) == "sha256:new"  # today's name wins
    assert L.read(None, L.FLEET) is None


def test_selectors_ask_the_engine_once_per_namespace():
    assert L.selectors((L.MANAGED, "1"), (L.FLEET, "shop"), L.SERVICE) == [
        ["io.release-graph.managed=1", "io.release-graph.fleet=shop", "io.release-graph.service"],
        ["release-graph=1", "release-graph.fleet=shop", "release-graph.service"],
    ]


def test_only_target_owned_and_legacy_labels_are_reserved():
    assert L.reserved(L.DIGEST) and L.reserved("release-graph") and L.reserved("release-graph.anything")
    assert not L.reserved(L.GIT_SHA) and not L.reserved("org.opencontainers.image.revision")
    with pytest.raises(ValueError, match="not a release-graph label"):
        L.legacy("org.opencontainers.image.revision")
