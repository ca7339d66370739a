"""Signed build provenance: an in-toto statement with an SLSA v1 provenance predicate, in a DSSE envelope.

The image step builds one statement per image (`build_statement`: the subject is the image repository and
its digest; the predicate names the source repository, the commit, the Dockerfile and its sha256, the build
arguments and the builder) and signs it with the fleet's ed25519 key (`sign`). The deploy step checks the
envelope recorded for a digest with the public half of that key (`verify`) before anything changes: a missing
envelope, a payload or signature that was changed, another key, or a statement about another image is a
`ProvenanceError` whose message says which.

The key is a PEM private key held in the secret store; only its public half (and its key id, a sha256 of the
raw public key) ever leaves this module. No message here contains the key or any part of it.

Plain Python (`cryptography`), no Dagster: the step wiring is in release_graph/assets/image.py and
release_graph/assets/deployment.py, the rule in release_graph/release/promotion.py (`verify_provenance`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
# What this orchestrator's build is: the buildType names how externalParameters are to be read.
BUILD_TYPE = "https://release-graph.dev/image-build/v1"
DEFAULT_BUILDER_ID = "https://release-graph.dev/builder/image-step"


class ProvenanceError(Exception):
    """A statement is missing, malformed, changed, signed by another key or about another image; or a key
    cannot be read. Messages never contain key material."""


@dataclass(frozen=True)
class SigningKey:
    """The fleet's ed25519 private key (never printed: no repr of the key) and its public half."""

    private: Ed25519PrivateKey
    public: VerifyKey

    def __repr__(self) -> str:
        return f"SigningKey(keyid={self.public.keyid})"


@dataclass(frozen=True)
class VerifyKey:
    """The public key statements are checked with, and its id (sha256 of the raw 32-byte public key)."""

    key: Ed25519PublicKey
    keyid: str

    @classmethod
    def from_public(cls, key: Ed25519PublicKey) -> VerifyKey:
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(key=key, keyid=hashlib.sha256(raw).hexdigest())

    @classmethod
    def from_pem(cls, pem: str | bytes) -> VerifyKey:
        """A PEM public key (SubjectPublicKeyInfo), e.g. the one `public_pem` wrote."""
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError):
            raise ProvenanceError("the provenance public key is not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ProvenanceError(f"the provenance public key is {type(key).__name__}, not an ed25519 key")
        return cls.from_public(key)

    def public_pem(self) -> str:
        return self.key.public_bytes(serialization.Encoding.PEM,
                                     serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_signing_key(pem: str | bytes, *, what: str = "the provenance signing key") -> SigningKey:
    """The ed25519 private key of a PEM (PKCS#8, unencrypted). The error names `what`, never the value."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ProvenanceError(f"{what} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ProvenanceError(f"{what} is a {type(key).__name__.lstrip('_')}, not an ed25519 key")
    return SigningKey(private=key, public=VerifyKey.from_public(key.public_key()))


def generate_key_pem() -> str:
    """A new ed25519 private key as PKCS#8 PEM (`release-graph`'s demo and tests make theirs with it)."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_statement(*, repository: str, digest: str, source_repo: str, sha: str, dockerfile: str,
                    dockerfile_sha256: str, build_args: Mapping[str, str], target: str | None = None,
                    builder_id: str = DEFAULT_BUILDER_ID, invocation_id: str = "", started_on: str = "",
                    finished_on: str = "", builder_version: Mapping[str, str] | None = None) -> dict[str, Any]:
    """An in-toto v1 statement about `repository@digest` with an SLSA v1 provenance predicate.

    externalParameters are what the commit alone does not fix: where it came from (repository and commit),
    which Dockerfile (path and sha256), its build arguments and target. Timestamps are RFC 3339 text.
    """
    algorithm, _, value = digest.partition(":")
    if not value or algorithm != "sha256":
        raise ProvenanceError(f"the subject digest {digest!r} is not a sha256:<hex> digest")
    external: dict[str, Any] = {
        "source": {"uri": source_repo, "digest": {"gitCommit": sha}},
        "dockerfile": {"path": dockerfile, "digest": {"sha256": dockerfile_sha256}},
        "buildArgs": dict(sorted(build_args.items())),
    }
    if target:
        external["target"] = target
    metadata = {key: value for key, value in (("invocationId", invocation_id), ("startedOn", started_on),
                                              ("finishedOn", finished_on)) if value}
    builder: dict[str, Any] = {"id": builder_id}
    if builder_version:
        builder["version"] = dict(builder_version)
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": repository, "digest": {"sha256": value}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "resolvedDependencies": [{"uri": f"git+{source_repo}@{sha}", "digest": {"gitCommit": sha}}],
            },
            "runDetails": {"builder": builder, "metadata": metadata},
        },
    }


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is signed (the type is signed too, so it cannot be swapped)."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def sign(statement: Mapping[str, Any], key: SigningKey) -> dict[str, Any]:
    """A DSSE envelope of `statement` signed by `key`: {payloadType, payload (base64), signatures}."""
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    signature = key.private.sign(pae(PAYLOAD_TYPE, payload))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": key.public.keyid, "sig": base64.b64encode(signature).decode()}],
    }


def _b64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ProvenanceError(f"the envelope's {what} is not base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ProvenanceError(f"the envelope's {what} is not valid base64") from None


def verify(envelope: Any, key: VerifyKey, *, digest: str, repository: str | None = None) -> dict[str, Any]:
    """The statement of `envelope` when one of its signatures is `key`'s over exactly its payload and the
    statement is SLSA provenance of `digest` (and, given, of `repository`); ProvenanceError saying why not."""
    if isinstance(envelope, str):
        try:
            envelope = json.loads(envelope)
        except ValueError:
            raise ProvenanceError("the recorded envelope is not JSON") from None
    if not isinstance(envelope, Mapping):
        raise ProvenanceError("the recorded envelope is not a DSSE envelope (a mapping)")
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        raise ProvenanceError(f"the envelope's payloadType is {envelope.get('payloadType')!r}, not {PAYLOAD_TYPE}")
    payload = _b64(envelope.get("payload"), "payload")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise ProvenanceError("the envelope carries no signature")
    signed = pae(PAYLOAD_TYPE, payload)
    ours = [s for s in signatures if isinstance(s, Mapping) and s.get("keyid") == key.keyid]
    others = [s for s in signatures if isinstance(s, Mapping) and s.get("keyid") != key.keyid]
    # A signature naming another key id may still be ours (key ids are hints): every signature is tried.
    for candidate in ours + others:
        try:
            key.key.verify(_b64(candidate.get("sig"), "signature"), signed)
            break
        except (InvalidSignature, ProvenanceError):
            continue
    else:
        if ours:
            raise ProvenanceError(f"the signature of key {key.keyid[:16]} does not match the payload "
                                  "(the statement or its signature was changed)")
        named = ", ".join(sorted({str(s.get("keyid", "?"))[:16] for s in others})) or "no key id"
        raise ProvenanceError(f"it is signed by another key ({named}), not by this fleet's key {key.keyid[:16]}")
    try:
        statement = json.loads(payload)
    except ValueError:
        raise ProvenanceError("the signed payload is not JSON") from None
    if not isinstance(statement, Mapping) or statement.get("_type") != STATEMENT_TYPE:
        raise ProvenanceError(f"the signed payload is not an in-toto statement ({STATEMENT_TYPE})")
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise ProvenanceError(f"the statement's predicate is {statement.get('predicateType')!r}, "
                              f"not SLSA provenance ({PREDICATE_TYPE})")
    want = digest.partition(":")[2]
    subjects = statement.get("subject") if isinstance(statement.get("subject"), list) else []
    matching = [s for s in subjects if isinstance(s, Mapping) and isinstance(s.get("digest"), Mapping)
                and s["digest"].get("sha256") == want]
    if not matching:
        raise ProvenanceError(f"the statement is about another image, not {digest}")
    if repository is not None and not any(s.get("name") == repository for s in matching):
        names = ", ".join(str(s.get("name")) for s in matching)
        raise ProvenanceError(f"the statement names {digest} in {names}, not in {repository}")
    return dict(statement)


def summary(statement: Mapping[str, Any]) -> dict[str, str]:
    """What a person reads about a verified statement: source, commit, Dockerfile and its digest, builder."""
    predicate = statement.get("predicate", {})
    external = predicate.get("buildDefinition", {}).get("externalParameters", {})
    return {
        "source": str(external.get("source", {}).get("uri", "")),
        "commit": str(external.get("source", {}).get("digest", {}).get("gitCommit", "")),
        "dockerfile": str(external.get("dockerfile", {}).get("path", "")),
        "dockerfile_sha256": str(external.get("dockerfile", {}).get("digest", {}).get("sha256", "")),
        "builder": str(predicate.get("runDetails", {}).get("builder", {}).get("id", "")),
    }
