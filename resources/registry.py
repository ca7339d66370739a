"""An image registry through the Distribution (OCI) v2 HTTP API, with nothing but the standard library.

Why not the container engine: Podman 4.3 answers `get_registry_data` with 404, and asking the registry
itself is the only answer that holds for every engine (the digest it serves is what a deployment pulls).

Addresses come from the image reference (`127.0.0.1:5000/shop/orders`): loopback registries speak plain
HTTP, every other host HTTPS. No credentials are sent yet; `_authorization` is the one place a token or
basic-auth header would be added (a 401 says so instead of looking like a missing image).

Nothing here touches the network at import or construction time.
"""

import http.client
import ipaddress
import json
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import NamedTuple

import dagster as dg
from pydantic import Field

# The one image-reference parser (shared vocabulary); re-exported for the adapters that import it from here.
from release_graph.fleet.references import DEFAULT_REGISTRY, SHA256_DIGEST, ImageReference, parse_image_reference

MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
# Single-platform image manifests: what a scanner that takes a manifest (ECR's put_image) can be given.
IMAGE_MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
BODY_EXCERPT_CHARS = 300

def is_loopback_host(registry: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost, with or without a port: those registries speak plain HTTP."""
    host = registry
    if host.startswith("["):
        host = host[1 : host.index("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Manifest(NamedTuple):
    """An image manifest as the registry serves it: the exact bytes (their sha256 is the digest) and media type."""

    body: bytes
    media_type: str


class RegistryError(Exception):
    """The registry answered, but not with what was asked for (the status and its words are in the message)."""


class RegistryUnavailable(RegistryError):
    """The registry did not answer at all (refused, timed out, unreachable)."""


class Registry(dg.ConfigurableResource):
    """Reads and deletes images in any registry that speaks the Distribution v2 API."""

    timeout_seconds: float = Field(default=5, description="Per-request timeout for the registry's HTTP API.")

    def image_exists(self, repository: str, tag: str) -> bool:
        """Whether `repository:tag` (repository = `host[:port]/path`) has a manifest in the registry."""
        return self.manifest_digest(repository, tag) is not None

    def manifest_digest(self, repository: str, tag_or_digest: str) -> str | None:
        """The digest the registry serves for a tag (or confirms for a digest); None when it has none."""
        ref = self._reference(repository, tag_or_digest)
        response = self._request(
            "HEAD", ref, f"manifests/{urllib.parse.quote(tag_or_digest, safe=':')}",
            accept=", ".join(MANIFEST_MEDIA_TYPES),
        )
        if response is None:
            return None
        digest = response.headers.get("Docker-Content-Digest")
        if not digest:
            raise RegistryError(
                f"registry {ref.registry} answered HEAD for {_show(ref, tag_or_digest)} without a "
                "Docker-Content-Digest header"
            )
        return digest

    def manifest(self, repository: str, tag_or_digest: str,
                 media_types: tuple[str, ...] = MANIFEST_MEDIA_TYPES) -> Manifest | None:
        """The manifest of `repository:tag` or `repository@digest` in one of `media_types`; None when there is none.

        The bytes are returned untouched, so a copy put elsewhere keeps the digest.
        """
        ref = self._reference(repository, tag_or_digest)
        response = self._request("GET", ref, f"manifests/{urllib.parse.quote(tag_or_digest, safe=':')}",
                                 accept=", ".join(media_types))
        if response is None:
            return None
        media_type = (response.headers.get("Content-Type") or media_types[0]).split(";")[0].strip()
        return Manifest(response.body, media_type)

    def tags(self, repository: str) -> list[str]:
        """Every tag of the repository, following the registry's pagination; [] when it has none."""
        ref = self._reference(repository, None)
        tags: list[str] = []
        path = "tags/list?n=1000"
        while path:
            response = self._request("GET", ref, path)
            if response is None:
                return tags
            try:
                tags.extend(json.loads(response.body or b"{}").get("tags") or [])
            except (ValueError, AttributeError) as exc:
                raise RegistryError(
                    f"registry {ref.registry} answered tags/list for {ref.name} with something that is not "
                    f"JSON: {_excerpt(response.body)}"
                ) from exc
            path = _next_page(response.headers.get("Link"), ref)
        return tags

    def delete(self, repository: str, digest: str) -> bool:
        """Delete the manifest `repository@digest` (and so every tag on it). False when it was not there.

        The registry must run with `storage.delete.enabled: true`; otherwise it answers 405, raised here.
        """
        if not SHA256_DIGEST.match(digest):
            raise ValueError(f"delete needs a digest (sha256:<64 hex>), not {digest!r}: registries delete by digest")
        ref = self._reference(repository, digest)
        return self._request("DELETE", ref, f"manifests/{digest}") is not None

    # --- HTTP -------------------------------------------------------------------------------------------

    def problem(self, repository: str) -> str | None:
        """None when the registry holding `repository` answers now; else what is wrong, in words."""
        try:
            self.tags(repository)
        except RegistryError as exc:  # RegistryUnavailable included
            return str(exc)
        return None

    def _reference(self, repository: str, tag_or_digest: str | None) -> ImageReference:
        try:
            parsed = parse_image_reference(repository)
        except ValueError as exc:
            raise ValueError(f"registry repository {repository!r} is invalid: {exc}") from exc
        if parsed.tag or parsed.digest:
            raise ValueError(
                f"registry repository {repository!r} must not carry a tag or digest; pass them separately"
            )
        if tag_or_digest is not None and not tag_or_digest:
            raise ValueError(f"an empty tag or digest was given for {repository!r}")
        return parsed

    def _base_url(self, registry: str) -> str:
        scheme = "http" if is_loopback_host(registry) else "https"
        host = "registry-1.docker.io" if registry == DEFAULT_REGISTRY else registry
        return f"{scheme}://{host}"

    def _authorization(self, registry: str) -> str | None:
        """The Authorization header for `registry`. None: anonymous access (token auth would go here)."""
        return None

    def _request(self, method: str, ref: ImageReference, path: str, accept: str | None = None):
        """One request to `/v2/<name>/<path>`. None on 404; raises for anything else that is not 2xx."""
        url = f"{self._base_url(ref.registry)}/v2/{ref.repository}/{path}"
        request = urllib.request.Request(url, method=method)
        if accept:
            request.add_header("Accept", accept)
        authorization = self._authorization(ref.registry)
        if authorization:
            request.add_header("Authorization", authorization)
        what = f"{method} {url}"
        # A loopback registry is on this machine: never route it through an HTTP(S)_PROXY from the environment.
        opener = _DIRECT if is_loopback_host(ref.registry) else _FROM_ENVIRONMENT
        try:
            with opener.open(request, timeout=self.timeout_seconds) as response:
                body = response.read() if method != "HEAD" else b""
                return _Response(response.status, response.headers, body)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            body = _read_quietly(exc)
            hint = ""
            if exc.code == 401:
                hint = " (the registry wants credentials; release-graph sends none yet)"
            elif exc.code == 405 and method == "DELETE":
                hint = " (the registry does not allow deletes: set storage.delete.enabled: true)"
            raise RegistryError(
                f"registry {ref.registry} answered {exc.code} {exc.reason} to {what}{hint}: {_excerpt(body)}"
            ) from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, socket.timeout | TimeoutError):
                reason = f"no answer within {self.timeout_seconds:g} s"
            raise RegistryUnavailable(
                f"registry {ref.registry} did not answer ({reason}) while looking up {ref.name} ({what})"
            ) from exc


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_FROM_ENVIRONMENT = urllib.request.build_opener()


class _Response(NamedTuple):
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def _show(ref: ImageReference, tag_or_digest: str) -> str:
    separator = "@" if ":" in tag_or_digest else ":"
    return f"{ref.name}{separator}{tag_or_digest}"


def _read_quietly(exc: urllib.error.HTTPError) -> bytes:
    try:
        return exc.read() or b""
    except OSError:
        return b""


def _excerpt(body: bytes | None) -> str:
    text = (body or b"").decode("utf-8", "replace").strip()
    if not text:
        return "(empty body)"
    return text if len(text) <= BODY_EXCERPT_CHARS else text[:BODY_EXCERPT_CHARS] + "…"


def _next_page(link_header: str | None, ref: ImageReference) -> str | None:
    """The path after `/v2/<name>/` of the `rel="next"` page, if the registry paginates."""
    if not link_header:
        return None
    match = re.search(r"<([^>]+)>\s*;\s*rel=\"?next\"?", link_header)
    if not match:
        return None
    target = urllib.parse.urlsplit(match.group(1))
    prefix = f"/v2/{ref.repository}/"
    if not target.path.startswith(prefix):
        return None
    return target.path[len(prefix) :] + (f"?{target.query}" if target.query else "")
