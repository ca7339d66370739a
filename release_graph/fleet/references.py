"""Image references, `[host[:port]/]path[:tag][@digest]`: the one parser of release-graph.

The grammar is distribution/reference's, spelled out so each part can say what is wrong. The manifest
validates `image` and `registry` with it, the registry adapter addresses images with it, promotion and the
scanners derive `repo@digest` from it. Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import NamedTuple

DEFAULT_REGISTRY = "docker.io"
MAX_NAME_LENGTH = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"^{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?$|^\[[0-9a-fA-F:.]+\](?::[0-9]+)?$")
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_SHA256_HEX = re.compile(r"^[a-f0-9]{64}$")
SHA256_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
# An ECR registry host: its account id and region (`123456789012.dkr.ecr.eu-west-1.amazonaws.com`).
ECR_HOST = re.compile(r"^(?P<account>[0-9]{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(:[0-9]+)?$")


class ImageReference(NamedTuple):
    """`registry/repository[:tag][@digest]`, split. A tuple, so `host, path, tag, digest = ...` works."""

    registry: str  # host[:port]; docker.io when the reference names none
    repository: str  # path inside the registry, e.g. shop/orders (library/redis for a bare `redis`)
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """registry/repository, the form `Registry` methods take."""
        return f"{self.registry}/{self.repository}"


def split_reference(ref: str) -> tuple[str, str | None, str | None]:
    """(name as written, tag, digest) without validating any part: `a:5000/b:1@sha256:..` → (a:5000/b, 1, sha256:..).

    The tag follows the last colon only when that colon comes after the last slash (else it is a port).
    """
    rest, digest = ref, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
    colon, slash = rest.rfind(":"), rest.rfind("/")
    if colon > slash:
        return rest[:colon], rest[colon + 1 :], digest
    return rest, None, digest


def split_host(name: str) -> tuple[str | None, list[str]]:
    """(registry host or None, path components) of a name without tag or digest.

    The first component is a host only when more follow and it looks like one (a dot, a port, `localhost`,
    an IPv6 literal), the way engines decide it.
    """
    parts = name.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        return first, parts[1:]
    return None, parts


def parse_image_reference(ref: str) -> ImageReference:
    """Split an image reference; a ValueError says which part is wrong and why.

    A bare Docker Hub name is normalised the way engines do it (`redis:7.2` → docker.io, library/redis).
    A reference without tag and digest keeps `tag=None`; callers decide whether that means `latest`.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise ValueError("image reference is empty")
    if ref != ref.strip() or any(c.isspace() for c in ref):
        raise ValueError(f"image reference {ref!r} contains whitespace")
    name, tag, digest = split_reference(ref)
    if digest is not None:
        _check_digest(ref, digest)
    if tag is not None and not _TAG.match(tag):
        raise ValueError(
            f"image reference {ref!r}: tag {tag!r} is invalid (letters, digits, '_', '.', '-'; "
            "at most 128 characters, not starting with '.' or '-')"
        )
    if not name:
        raise ValueError(f"image reference {ref!r} has no repository name")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"image reference {ref!r}: name is longer than {MAX_NAME_LENGTH} characters")
    registry, path_parts = split_host(name)
    if registry is not None:
        if not _DOMAIN.match(registry):
            raise ValueError(f"image reference {ref!r}: registry host {registry!r} is not a valid host[:port]")
    else:
        registry = DEFAULT_REGISTRY
        if len(path_parts) == 1:
            path_parts = ["library", *path_parts]
    for component in path_parts:
        if not component:
            raise ValueError(f"image reference {ref!r}: repository path has an empty component (check the '/')")
        if not _PATH_COMPONENT.match(component) and _PATH_COMPONENT.match(component.lower()):
            raise ValueError(f"image reference {ref!r}: repository name must be lowercase ({component!r})")
        if not _PATH_COMPONENT.match(component):
            raise ValueError(
                f"image reference {ref!r}: repository path component {component!r} is invalid "
                "(lowercase letters and digits, separated by '.', '_', '__' or '-')"
            )
    return ImageReference(registry, "/".join(path_parts), tag, digest)


def _check_digest(ref: str, digest: str) -> None:
    if not _DIGEST.match(digest):
        raise ValueError(f"image reference {ref!r}: digest {digest!r} is not <algorithm>:<hex>")
    algorithm, encoded = digest.split(":", 1)
    if algorithm == "sha256" and not _SHA256_HEX.match(encoded):
        raise ValueError(f"image reference {ref!r}: a sha256 digest has exactly 64 lowercase hex characters")


def is_image_reference(text: object) -> bool:
    """A valid reference whose digest, if any, is sha256 (what release-graph deploys and the manifest accepts)."""
    try:
        ref = parse_image_reference(text)
    except ValueError:
        return False
    return ref.digest is None or bool(SHA256_DIGEST.match(ref.digest))


def is_image_repository(text: object) -> bool:
    """A valid reference with neither tag nor digest, such as `127.0.0.1:5000/shop` (a fleet's registry)."""
    try:
        ref = parse_image_reference(text)
    except ValueError:
        return False
    return ref.tag is None and ref.digest is None


def repository_of(ref: str) -> str:
    """The reference as written, without tag and digest: `host:5000/shop/orders:1@sha256:…` → host:5000/shop/orders."""
    return split_reference(ref)[0]


def pinned(ref: str, digest: str) -> str:
    """`<repository of ref>@<digest>`: what a deployment of that digest pulls."""
    return f"{repository_of(ref)}@{digest}"
