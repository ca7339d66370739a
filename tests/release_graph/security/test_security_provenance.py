"""Signed provenance, the pure part: an in-toto statement with an SLSA v1 predicate, signed in a DSSE envelope
with an ed25519 key, verified with its public half; a changed payload, a changed signature, another key or a
statement about another image is refused with the reason. Also: how long signing and verifying take."""

from __future__ import annotations

import base64
import json
import time

import pytest

from release_graph.security import provenance as P

DIGEST = "sha256:" + "b" * 64
OTHER = "sha256:" + "c" * 64
REPOSITORY = "127.0.0.1:5000/shop/orders"
SHA = "1a2b3c4d" * 5


def statement(digest: str = DIGEST, repository: str = REPOSITORY) -> dict:
    return P.build_statement(
        repository=repository, digest=digest, source_repo="https://git.shop.example/orders.git", sha=SHA,
        dockerfile="services/orders/Dockerfile", dockerfile_sha256="e" * 64,
        build_args={"GIT_SHA": SHA, "PYTHON": "3.11"}, target="runtime", invocation_id="run-1",
        started_on="2026-12-05T11:00:00+00:00", finished_on="2026-12-05T11:01:00+00:00",
    )


@pytest.fixture(scope="module")
def key() -> P.SigningKey:
    return P.load_signing_key(P.generate_key_pem())


@pytest.fixture(scope="module")
def other_key() -> P.SigningKey:
    return P.load_signing_key(P.generate_key_pem())


def test_the_statement_is_slsa_v1_provenance_of_the_image_with_its_source_dockerfile_and_build_args():
    s = statement()
    assert s["_type"] == "https://in-toto.io/Statement/v1"
    assert s["predicateType"] == "https://slsa.dev/provenance/v1"
    assert s["subject"] == [{"name": REPOSITORY, "digest": {"sha256": "b" * 64}}]
    definition = s["predicate"]["buildDefinition"]
    assert definition["buildType"] == P.BUILD_TYPE
    external = definition["externalParameters"]
    assert external["source"] == {"uri": "https://git.shop.example/orders.git", "digest": {"gitCommit": SHA}}
    assert external["dockerfile"] == {"path": "services/orders/Dockerfile", "digest": {"sha256": "e" * 64}}
    assert external["buildArgs"] == {"GIT_SHA": SHA, "PYTHON": "3.11"}
    run = s["predicate"]["runDetails"]
    assert run["builder"]["id"] == P.DEFAULT_BUILDER_ID
    assert run["metadata"] == {"invocationId": "run-1", "startedOn": "2026-12-05T11:00:00+00:00",
                               "finishedOn": "2026-12-05T11:01:00+00:00"}


def test_a_signed_statement_verifies_with_the_public_half_of_its_key(key):
    envelope = P.sign(statement(), key)
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert envelope["signatures"][0]["keyid"] == key.public.keyid
    assert P.verify(envelope, key.public, digest=DIGEST, repository=REPOSITORY) == statement()
    # as stored (JSON text), and with the public key given as PEM instead of derived
    public = P.VerifyKey.from_pem(key.public.public_pem())
    assert P.verify(json.dumps(envelope), public, digest=DIGEST)["subject"][0]["name"] == REPOSITORY


def test_a_changed_payload_is_refused(key):
    envelope = P.sign(statement(), key)
    forged = statement()
    forged["predicate"]["buildDefinition"]["externalParameters"]["source"]["digest"]["gitCommit"] = "f" * 40
    envelope["payload"] = base64.b64encode(json.dumps(forged, sort_keys=True).encode()).decode()
    with pytest.raises(P.ProvenanceError, match="does not match the payload .the statement or its signature was"):
        P.verify(envelope, key.public, digest=DIGEST)


def test_a_changed_signature_is_refused(key):
    envelope = P.sign(statement(), key)
    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    sig[0] ^= 1
    envelope["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    with pytest.raises(P.ProvenanceError, match="does not match the payload"):
        P.verify(envelope, key.public, digest=DIGEST)


def test_a_statement_signed_by_another_key_is_refused_naming_both_keys(key, other_key):
    envelope = P.sign(statement(), other_key)
    with pytest.raises(P.ProvenanceError, match=rf"signed by another key \({other_key.public.keyid[:16]}\), "
                       rf"not by this fleet's key {key.public.keyid[:16]}"):
        P.verify(envelope, key.public, digest=DIGEST)
    # Claiming our key id does not help: the signature is checked, not the label
    envelope["signatures"][0]["keyid"] = key.public.keyid
    with pytest.raises(P.ProvenanceError, match="does not match the payload"):
        P.verify(envelope, key.public, digest=DIGEST)


def test_a_valid_statement_about_another_image_is_refused(key):
    envelope = P.sign(statement(OTHER), key)
    with pytest.raises(P.ProvenanceError, match=f"about another image, not {DIGEST}"):
        P.verify(envelope, key.public, digest=DIGEST)
    envelope = P.sign(statement(repository="evil.example/orders"), key)
    with pytest.raises(P.ProvenanceError, match=f"names {DIGEST} in evil.example/orders, not in {REPOSITORY}"):
        P.verify(envelope, key.public, digest=DIGEST, repository=REPOSITORY)


@pytest.mark.parametrize("envelope, reason", [
    ("not json", "not JSON"),
    ({"payloadType": "text/plain", "payload": "", "signatures": []}, "payloadType is 'text/plain'"),
    ({"payloadType": P.PAYLOAD_TYPE, "payload": "e30=", "signatures": []}, "carries no signature"),
    ({"payloadType": P.PAYLOAD_TYPE, "payload": "%%%", "signatures": [{}]}, "payload is not valid base64"),
])
def test_a_malformed_envelope_is_refused_saying_what_is_wrong(key, envelope, reason):
    with pytest.raises(P.ProvenanceError, match=reason):
        P.verify(envelope, key.public, digest=DIGEST)


def test_a_key_that_is_not_an_ed25519_pem_is_refused_without_echoing_it():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    with pytest.raises(P.ProvenanceError, match="^the key is not an unencrypted PEM private key$"):
        P.load_signing_key("hunter2-not-a-key", what="the key")
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    with pytest.raises(P.ProvenanceError, match="not an ed25519 key") as refused:
        P.load_signing_key(ec_pem)
    assert "PRIVATE KEY" not in str(refused.value)
    assert "PRIVATE" not in repr(P.load_signing_key(P.generate_key_pem()))


def test_signing_and_verifying_take_well_under_a_millisecond_each(key, capsys):
    """The figures of one deploy's provenance work (printed; `-s` shows them): build + sign one statement at
    the image step, verify one at each deployment."""
    rounds = 200
    started = time.perf_counter()
    for _ in range(rounds):
        envelope = P.sign(statement(), key)
    sign_ms = (time.perf_counter() - started) * 1000 / rounds
    started = time.perf_counter()
    for _ in range(rounds):
        P.verify(envelope, key.public, digest=DIGEST, repository=REPOSITORY)
    verify_ms = (time.perf_counter() - started) * 1000 / rounds
    with capsys.disabled():
        print(f"\nprovenance: sign {sign_ms:.3f} ms, verify {verify_ms:.3f} ms per statement ({rounds} rounds)")
    assert sign_ms < 50 and verify_ms < 50  # generous: a shared 2-core machine
