"""Signed provenance through the real steps: the engine builds inventory, the image step signs an in-toto/SLSA
statement of the pushed digest with the fleet's key (from the secret store), dev's deploy step verifies it and
deploys. After the key is rotated, the same digest is refused by the deploy step (its statement is signed by
another key). Neither key is in any file of the instance (event log, run storage, compute logs), raw or base64."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from release_graph.release import metadata as M
from release_graph.security import provenance as P

INVENTORY_IMAGE = dg.AssetKey(["inventory", "image"])
INVENTORY_DEV = dg.AssetKey(["inventory", "dev"])


@pytest.mark.engine
def test_a_built_image_is_signed_verified_at_deploy_and_refused_once_the_key_is_rotated(
        release_world_factory, monkeypatch, run_id, assert_nowhere):
    variable = f"RG_TEST_PROVENANCE_KEY_{run_id.upper()}"
    pem = P.generate_key_pem()
    monkeypatch.setenv(variable, pem)
    key = P.load_signing_key(pem)
    world = release_world_factory(["inventory"], integration=False,
                                  extra_top=f"security:\n  provenance: {{signing_key: {{env: {variable}}}}}\n")
    world.automate()
    (request,) = world.tick("git_commits").run_requests
    run = world.execute(request)
    assert run.success, world.failures(run)

    # The image step recorded a statement of exactly what it pushed, signed by the fleet's key
    image = world.latest(INVENTORY_IMAGE)
    service = world.fleet.services["inventory"]
    statement = P.verify(image.value(M.PROVENANCE), key.public, digest=image.digest,
                         repository=service.image_repository(world.fleet))
    external = statement["predicate"]["buildDefinition"]["externalParameters"]
    assert external["source"]["digest"]["gitCommit"] == request.tags["release/git_sha"]
    assert external["dockerfile"]["path"] == "Dockerfile"
    assert external["dockerfile"]["digest"]["sha256"] == P.sha256_hex(
        (Path(service.repo_url) / "Dockerfile").read_bytes())

    # dev's deploy step verified it and deployed
    world.automate()
    dev = world.latest(INVENTORY_DEV)
    assert dev is not None and dev.digest == image.digest
    assert str(dev.value(M.PROVENANCE_VERIFIED)).startswith("verified: built from "), dev.metadata
    assert dev.value(M.PROVENANCE_KEY_ID) == key.public.keyid
    print(f"provenance in the real steps: signed in {image.value('provenance_sign_ms')} ms (with the Dockerfile "
          f"read from the commit), verified in {dev.value('provenance_verify_ms')} ms (with the history read)")

    # The key is rotated: the digest signed by the old key is refused, nothing deployed
    rotated = P.generate_key_pem()
    monkeypatch.setenv(variable, rotated)
    run = world.materialize([INVENTORY_DEV])
    assert not run.success
    text = world.failures(run)["inventory__dev"]
    assert (f"refused: {image.digest} has no provenance signed by this fleet's key: it is signed by another key "
            f"({key.public.keyid[:16]})") in text, text
    assert world.latest(INVENTORY_DEV).run_id == dev.run_id

    for key_pem in (pem, rotated):  # also its body without the armour lines
        assert_nowhere(world.root / "dagster_home", key_pem,
                       "".join(line for line in key_pem.splitlines() if "-----" not in line))
