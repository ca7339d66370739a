"""Supply-chain integrity: only a digest that this fleet's image asset produced may be promoted.

An image pushed to the registry by hand (or by another pipeline) has a digest no `<service>/image`
materialization recorded; promoting it would deploy code that was never built from a reviewed commit, tested
or scanned here. The caller passes the digests of the image asset's materializations.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class ProvenanceError(Exception):
    """Raised by `require`: the image may not be promoted; the message says why."""


@dataclass(frozen=True)
class ProvenanceResult:
    ok: bool
    digest: str | None
    reason: str

    def __bool__(self) -> bool:
        return self.ok


def split_digest(reference: str) -> tuple[str | None, str | None]:
    """(repository or None, digest or None) of `sha256:...` or `repo@sha256:...`; a tag is not a digest."""
    if "@" in reference:
        repository, _, digest = reference.partition("@")
        return repository or None, digest if DIGEST.match(digest) else None
    return None, reference if DIGEST.match(reference) else None


def verify(
    digest_or_reference: str,
    produced_digests: Iterable[str],
    *,
    expected_repository: str | None = None,
) -> ProvenanceResult:
    """Whether the image may be promoted: addressed by digest, and that digest among `produced_digests`.

    `expected_repository` (the service's `<registry>/<service>`), when given, must also match a reference's
    repository: the right digest under another name would be pulled from somewhere else.
    """
    repository, digest = split_digest(digest_or_reference.strip())
    if digest is None:
        return ProvenanceResult(
            False, None,
            f"{digest_or_reference!r} is not addressed by digest (repo@sha256:<64 hex>); deployments never use tags",
        )
    if expected_repository and repository and repository != expected_repository:
        return ProvenanceResult(
            False, digest, f"{digest_or_reference} is in repository {repository}, expected {expected_repository}"
        )
    produced = {d.strip() for d in produced_digests if d}
    if digest not in produced:
        return ProvenanceResult(
            False, digest,
            f"{digest} was not produced by this fleet's image asset ({len(produced)} digest(s) on record): "
            "it was pushed from elsewhere, e.g. by hand, and is refused",
        )
    return ProvenanceResult(True, digest, f"{digest} was built by this fleet's image asset")


def require(digest_or_reference: str, produced_digests: Iterable[str], *, expected_repository: str | None = None,
            what: str = "promotion") -> str:
    """For the deploy step: the verified digest, or ProvenanceError naming what was refused and why."""
    result = verify(digest_or_reference, produced_digests, expected_repository=expected_repository)
    if not result.ok:
        raise ProvenanceError(f"{what} refused: {result.reason}")
    return result.digest
