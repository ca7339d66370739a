"""An image registry through the Distribution (OCI) v2 HTTP API, with nothing but the standard library.

Why not the container engine: Podman 4.3 answers `get_registry_data` with 404, and asking the registry
itself is the only answer that holds for every engine (the digest it serves is what a deployment pulls).

Addresses come from the image reference (`127.0.0.1:5000/shop/orders`): loopback registries speak plain
HTTP, every other host HTTPS. Credentials (resources/registry_auth.py) are configured from the manifest's
`registry_auth:` and given to the fleet's registry host only. A request goes without an `Authorization` header
until the registry answers 401 with its challenge; `_authorization` answers it (Basic with the credentials, or
Bearer with a token from the challenge's realm) and the answer is reused for that repository until it is
refused. A 401 that stays says whose credentials were refused, or that none are configured, never the password.
The engine's push takes the same credentials (`engine_auth`), and the scanners read images through this class.

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
from pydantic import Field, PrivateAttr

# The one image-reference parser (shared vocabulary); re-exported for the adapters that import it from here.
from release_graph.fleet.references import DEFAULT_REGISTRY, SHA256_DIGEST, ImageReference, parse_image_reference
from resources import registry_auth as auth
from resources.registry_auth import (
    ANONYMOUS_ENGINE_AUTH,
    Challenge,
    Credentials,
    CredentialsUnavailable,
    RegistryAuthError,
)

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
    """Reads and deletes images in any registry that speaks the Distribution v2 API, logged in where configured.

    The fields say where credentials are kept, never what they are: they are part of the run's resource config.
    """

    timeout_seconds: float = Field(default=5, description="Per-request timeout for the registry's HTTP API.")
    auth_registry: str | None = Field(
        default=None, description="host[:port] the username/password or ECR credentials are for (the fleet's "
                                  "registry); no other host is sent them.")
    auth_username: str | None = Field(default=None, description="Username for auth_registry.")
    auth_password_secret: str | None = Field(
        default=None, description="Where the password is kept: env:<VARIABLE> or aws:<Secrets Manager id>.")
    docker_config: str | None = Field(
        default=None, description="A Docker config.json whose auths / credential helpers give any host's credentials.")
    ecr_region: str | None = Field(default=None, description="ECR region: auth_registry logs in with ECR's token.")
    ecr_endpoint_url: str | None = Field(default=None, description="ECR endpoint (moto_server in tests); None: AWS.")
    ecr_registry_id: str | None = Field(default=None, description="ECR account id; None: the caller's.")
    aws_endpoint_url: str | None = Field(default=None, description="Secrets Manager endpoint for aws: passwords.")
    aws_region: str = Field(default="us-east-1", description="Secrets Manager region for aws: passwords.")

    _credentials: dict = PrivateAttr(default_factory=dict)  # registry -> Credentials | None
    _answers: dict = PrivateAttr(default_factory=dict)  # (registry, repository) -> Authorization header value

    # --- credentials ------------------------------------------------------------------------------------

    def credentials_for(self, registry: str) -> Credentials | None:
        """The credentials configured for `registry` (None: anonymous). RegistryError when they are configured
        but cannot be had (a missing secret, an unreadable config.json, ECR refusing a token)."""
        cached = self._credentials.get(registry)
        if cached is not None and cached.fresh():
            return cached
        if cached is None and registry in self._credentials:
            return None
        try:
            found = self._find_credentials(registry)
        except CredentialsUnavailable as exc:  # transient: a step is retried (release_graph/assets/retry.py)
            raise RegistryUnavailable(f"registry {registry}: no credentials: {exc}") from None
        except RegistryAuthError as exc:
            raise RegistryError(f"registry {registry}: no credentials: {exc}") from None
        self._credentials[registry] = found
        return found

    def _find_credentials(self, registry: str) -> Credentials | None:
        if registry == self.auth_registry:
            if self.ecr_region:
                return auth.from_ecr(region=self.ecr_region, endpoint_url=self.ecr_endpoint_url,
                                     registry_id=self.ecr_registry_id, registry=registry,
                                     timeout_seconds=max(self.timeout_seconds, 10))
            if self.auth_username and self.auth_password_secret:
                source, _, name = self.auth_password_secret.partition(":")
                return auth.from_secret(self.auth_username, source, name, aws_endpoint_url=self.aws_endpoint_url,
                                        aws_region=self.aws_region, registry=registry)
        if self.docker_config:
            return auth.from_docker_config(self.docker_config, registry)
        return None

    def engine_auth(self, registry: str) -> str:
        """The `X-Registry-Auth` value for the container engine's push or pull to `registry` (anonymous `e30=`)."""
        credentials = self.credentials_for(registry)
        return credentials.engine_auth(registry) if credentials else ANONYMOUS_ENGINE_AUTH

    def credentials_source(self, registry: str) -> str | None:
        """Where `registry`'s credentials come from, in words, without fetching them; None: anonymous."""
        if registry == self.auth_registry and self.ecr_region:
            account = self.ecr_registry_id or "the caller's account"
            return f"ECR authorization token ({account}, {self.ecr_region})"
        if registry == self.auth_registry and self.auth_username and self.auth_password_secret:
            return f"secret {self.auth_password_secret} (user {self.auth_username})"
        if self.docker_config:
            return f"Docker config {self.docker_config}"
        return None

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

    def _authorization(self, registry: str, challenge: Challenge | None, what: str) -> str | None:
        """The Authorization header that answers `registry`'s 401 challenge; None when there is nothing to answer
        with (no credentials, and a challenge a token cannot be had for anonymously)."""
        credentials = self.credentials_for(registry)
        if challenge is None or challenge.scheme == "basic":
            return credentials.basic_authorization() if credentials else None
        if challenge.scheme == "bearer" and challenge.params.get("realm"):
            return f"Bearer {self._token(registry, challenge, credentials, what)}"
        raise RegistryError(
            f"registry {registry} asks for {challenge.scheme} authentication for {what}, which release-graph does "
            "not speak (it answers Basic and the registry token flow's Bearer)"
        )

    def _token(self, registry: str, challenge: Challenge, credentials: Credentials | None, what: str) -> str:
        """A token from the challenge's realm (the Distribution token flow), asked with the credentials (or
        anonymously without any, as public repositories allow). The answer's body is never shown: it is the
        token."""
        url = challenge.token_url()
        request = urllib.request.Request(url, method="GET")
        if credentials:
            request.add_header("Authorization", credentials.basic_authorization())
        realm_host = urllib.parse.urlsplit(url).netloc
        opener = _DIRECT if is_loopback_host(realm_host) else _FROM_ENVIRONMENT
        whose = f"the credentials of {credentials.source}" if credentials else "an anonymous token request"
        try:
            with opener.open(request, timeout=self.timeout_seconds) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            body = _read_quietly(exc)
            if exc.code in (401, 403):
                hint = "" if credentials else ": configure credentials in the manifest's registry_auth"
                raise RegistryError(
                    f"registry {registry}'s token service {challenge.params.get('realm')} refused {whose}: "
                    f"{exc.code} {exc.reason} (for {what}){hint}: {_excerpt(body)}"
                ) from None
            raise RegistryError(
                f"registry {registry}'s token service {challenge.params.get('realm')} answered {exc.code} "
                f"{exc.reason} (for {what}): {_excerpt(body)}"
            ) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            raise RegistryUnavailable(
                f"registry {registry}'s token service {challenge.params.get('realm')} did not answer "
                f"({getattr(exc, 'reason', exc)}) for {what}"
            ) from None
        token = auth.token_from_answer(body)
        if not token:
            raise RegistryError(f"registry {registry}'s token service {challenge.params.get('realm')} answered "
                                f"without a token (for {what})")
        return token

    def _request(self, method: str, ref: ImageReference, path: str, accept: str | None = None):
        """One request to `/v2/<name>/<path>`, answering one 401 challenge. None on 404; raises for anything else
        that is not 2xx."""
        url = f"{self._base_url(ref.registry)}/v2/{ref.repository}/{path}"
        what = f"{method} {url}"
        key = (ref.registry, ref.repository)
        authorization = self._answers.get(key)  # what answered this repository's last challenge
        answered = False
        while True:
            try:
                return self._send(method, ref, url, accept, authorization)
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                body = _read_quietly(exc)
                if exc.code == 401 and not answered:
                    self._answers.pop(key, None)
                    challenge = auth.parse_challenge(exc.headers.get("WWW-Authenticate"))
                    authorization = self._authorization(ref.registry, challenge, what)
                    if authorization is not None:
                        self._answers[key] = authorization
                        answered = True
                        continue
                raise RegistryError(self._refusal(exc, body, ref, method, what, answered)) from None
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                if isinstance(reason, socket.timeout | TimeoutError):
                    reason = f"no answer within {self.timeout_seconds:g} s"
                raise RegistryUnavailable(
                    f"registry {ref.registry} did not answer ({reason}) while looking up {ref.name} ({what})"
                ) from exc

    def _send(self, method: str, ref: ImageReference, url: str, accept: str | None, authorization: str | None):
        request = urllib.request.Request(url, method=method)
        if accept:
            request.add_header("Accept", accept)
        if authorization:
            request.add_header("Authorization", authorization)
        # A loopback registry is on this machine: never route it through an HTTP(S)_PROXY from the environment.
        opener = _DIRECT if is_loopback_host(ref.registry) else _FROM_ENVIRONMENT
        with opener.open(request, timeout=self.timeout_seconds) as response:
            body = response.read() if method != "HEAD" else b""
            return _Response(response.status, response.headers, body)

    def _refusal(self, exc: urllib.error.HTTPError, body: bytes, ref: ImageReference, method: str, what: str,
                 answered: bool) -> str:
        """The words for a non-2xx answer; whose credentials were refused, never what they are."""
        status = f"{exc.code} {exc.reason}"
        if exc.code in (401, 403):
            source = self.credentials_source(ref.registry)
            if source and (answered or exc.code == 403):
                verb = "refused the credentials of" if exc.code == 401 else "denied it to the credentials of"
                return f"registry {ref.registry} {verb} {source}: {status} to {what}: {_excerpt(body)}"
            if exc.code == 401:
                return (f"registry {ref.registry} wants credentials ({status} to {what}) and none are configured "
                        f"for it: name where they are kept in the manifest's registry_auth: {_excerpt(body)}")
        hint = ""
        if exc.code == 405 and method == "DELETE":
            hint = " (the registry does not allow deletes: set storage.delete.enabled: true)"
        return f"registry {ref.registry} answered {status} to {what}{hint}: {_excerpt(body)}"


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
