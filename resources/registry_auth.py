"""Registry credentials: where they are kept, and the HTTP challenges they answer.

Kept in one of three places (the manifest's `registry_auth:`, docs/manifest.md), and given only to the fleet's
registry host:

- a username with a password held in the secret store (`{env: VARIABLE}` or `{aws: <Secrets Manager id>}`),
- a Docker `config.json`: its `auths` entry for the host, or the credential helper it names (`credHelpers`,
  `credsStore`: `docker-credential-<name> get`),
- ECR: boto3's `ecr.get_authorization_token`, whose token is base64 `AWS:<password>` (valid for 12 hours).

A registry asks for them with a 401 and a `WWW-Authenticate` challenge: `Basic` is answered with the
credentials themselves; `Bearer realm=...,service=...,scope=...` (the registry token flow of the Distribution
spec) by asking the realm for a token with the credentials (anonymously without any) and sending that token.

`Credentials` never shows its password: not in `repr`, `str`, an error or a log line. Errors name where the
credentials came from (`secret env:SHOP_REGISTRY_PASSWORD`, `Docker config /root/.docker/config.json`) instead.
Nothing here touches the network, a file or a process at import or construction time.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
# An ECR token is reused until this long before it expires.
ECR_TOKEN_MARGIN = timedelta(minutes=5)
CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


class RegistryAuthError(Exception):
    """The credentials for a registry could not be had (a missing secret, a bad config.json, ECR refused).
    The message names where they were looked for, never a value."""


class CredentialsUnavailable(RegistryAuthError):
    """Where the credentials are kept did not answer (the secret store, ECR's endpoint): worth trying again."""


@dataclass(frozen=True)
class Credentials:
    """A username and password for one registry; `source` says where they came from, in words."""

    username: str
    password: str = field(repr=False)
    source: str
    expires_at: datetime | None = field(default=None, compare=False)

    def __repr__(self) -> str:  # the dataclass one would be fine too; this one is explicit about the password
        return f"Credentials(username={self.username!r}, source={self.source!r}, password=<hidden>)"

    __str__ = __repr__

    def basic_authorization(self) -> str:
        """The `Authorization` header value for HTTP basic auth."""
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
        return f"Basic {token}"

    def engine_auth(self, registry: str) -> str:
        """The `X-Registry-Auth` header value the Docker Engine API (and Podman's) takes for a push or pull:
        base64url of the JSON auth config."""
        config = {"username": self.username, "password": self.password, "serveraddress": registry}
        return base64.urlsafe_b64encode(json.dumps(config).encode()).decode("ascii")

    def fresh(self, now: datetime | None = None) -> bool:
        if self.expires_at is None:
            return True
        return (now or datetime.now(UTC)) < self.expires_at - ECR_TOKEN_MARGIN


ANONYMOUS_ENGINE_AUTH = "e30="  # base64("{}")


@dataclass(frozen=True)
class Challenge:
    """A parsed `WWW-Authenticate` header: the scheme (lower case) and its parameters."""

    scheme: str
    params: dict[str, str]

    def token_url(self) -> str:
        realm = self.params.get("realm", "")
        query = {k: v for k, v in self.params.items() if k in ("service", "scope") and v}
        if not query:
            return realm
        separator = "&" if urllib.parse.urlsplit(realm).query else "?"
        return realm + separator + urllib.parse.urlencode(query)


def parse_challenge(header: str | None) -> Challenge | None:
    """`Basic realm="x"` or `Bearer realm="https://auth/token",service="registry",scope="repository:a:pull"`."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)).replace('\\"', '"')
              for m in CHALLENGE_PARAM.finditer(rest)}
    return Challenge(scheme.lower(), params)


def token_from_answer(body: bytes) -> str | None:
    """The token of a token service's JSON answer (`token`, or OAuth2's `access_token`); None without one."""
    try:
        answer = json.loads(body or b"{}")
    except ValueError:
        return None
    if not isinstance(answer, dict):
        return None
    token = answer.get("token") or answer.get("access_token")
    return token if isinstance(token, str) and token else None


# --- where credentials are kept -----------------------------------------------------------------------------


def from_secret(username: str, source: str, name: str, *, aws_endpoint_url: str | None, aws_region: str,
                registry: str) -> Credentials:
    """A username and the password the secret store holds under `source:name` (env or aws)."""
    from resources.secrets import SecretRef, SecretsError, SecretsResource, SecretsUnavailable

    ref = SecretRef(source, name)  # type: ignore[arg-type]
    try:
        password = SecretsResource(aws_endpoint_url=aws_endpoint_url, aws_region=aws_region).resolve_value(
            ref, what=f"the password of registry {registry} (registry_auth.password)"
        )
    except SecretsUnavailable as exc:
        raise CredentialsUnavailable(str(exc)) from None
    except SecretsError as exc:
        raise RegistryAuthError(str(exc)) from None
    return Credentials(username, password, source=f"secret {ref} (user {username})")


def docker_config_hosts(registry: str) -> list[str]:
    """The keys a Docker config.json may file `registry`'s credentials under, most specific first."""
    if registry in DOCKER_HUB_HOSTS:
        return [DOCKER_HUB_CONFIG_KEY, *DOCKER_HUB_HOSTS, *(f"https://{h}" for h in DOCKER_HUB_HOSTS)]
    return [registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/",
            f"https://{registry}/v2/"]


def from_docker_config(path: str | os.PathLike, registry: str) -> Credentials | None:
    """The credentials a Docker config.json holds for `registry` (its `auths`, or the credential helper it names
    for the host or for every host); None when it holds none for this host."""
    path = Path(path)
    where = f"Docker config {path}"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryAuthError(f"{where} (registry_auth.docker_config) does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryAuthError(f"{where} (registry_auth.docker_config) cannot be read: {exc}") from None
    except ValueError as exc:
        # json's message names a line and column, never the text there
        raise RegistryAuthError(f"{where} (registry_auth.docker_config) is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise RegistryAuthError(f"{where} (registry_auth.docker_config) is not a JSON object")
    keys = docker_config_hosts(registry)
    helpers = config.get("credHelpers") or {}
    helper = next((helpers[k] for k in keys if isinstance(helpers, dict) and k in helpers), None)
    auths = config.get("auths") or {}
    entry = next((auths[k] for k in keys if isinstance(auths, dict) and k in auths), None)
    if helper is None and not (isinstance(entry, dict) and entry) and config.get("credsStore"):
        helper = config["credsStore"]
    if helper is not None:
        return _from_helper(str(helper), registry, where)
    if not isinstance(entry, dict) or not entry:
        return None
    source = f"{where} (auths.{next(k for k in keys if k in auths)})"
    if entry.get("identitytoken"):
        raise RegistryAuthError(f"{source} holds an identity token (OAuth2 refresh token); release-graph takes a "
                                "username and password (auth, or username and password) there")
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        try:
            decoded = base64.b64decode(entry["auth"], validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise RegistryAuthError(f"{source}: 'auth' is not base64 of <username>:<password>") from None
        username, colon, password = decoded.partition(":")
        if not colon or not username:
            raise RegistryAuthError(f"{source}: 'auth' is not base64 of <username>:<password>")
        return Credentials(username, password, source=source)
    username, password = entry.get("username"), entry.get("password")
    if isinstance(username, str) and username and isinstance(password, str):
        return Credentials(username, password, source=source)
    raise RegistryAuthError(f"{source} has neither 'auth' nor 'username' and 'password'")


def _from_helper(helper: str, registry: str, where: str) -> Credentials:
    binary = f"docker-credential-{helper}"
    source = f"{where} (credential helper {binary})"
    try:
        done = subprocess.run([binary, "get"], input=registry, capture_output=True, text=True, timeout=60,
                              check=False)
    except FileNotFoundError:
        raise RegistryAuthError(f"{source}: {binary} is not installed") from None
    except subprocess.TimeoutExpired:
        raise RegistryAuthError(f"{source}: no answer within 60 s") from None
    if done.returncode != 0:
        # A helper's error output is its own message ("credentials not found in native keychain"), not a secret.
        raise RegistryAuthError(f"{source} has no credentials for {registry} (exit {done.returncode}): "
                                f"{done.stdout.strip()[:200] or done.stderr.strip()[:200]}")
    try:
        answer = json.loads(done.stdout)
        username, secret = answer["Username"], answer["Secret"]
    except (ValueError, KeyError, TypeError):
        raise RegistryAuthError(f"{source} answered with something that is not {{Username, Secret}}") from None
    return Credentials(str(username), str(secret), source=source)


def from_ecr(*, region: str, endpoint_url: str | None, registry_id: str | None, registry: str,
             timeout_seconds: float = 10) -> Credentials:
    """ECR's authorization token for `registry_id` (None: the caller's account): user `AWS`, a 12-hour password."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    where = f"ECR ({endpoint_url or f'AWS {region}'})"
    client = boto3.session.Session().client(
        "ecr", region_name=region, endpoint_url=endpoint_url,
        config=Config(connect_timeout=timeout_seconds, read_timeout=timeout_seconds,
                      retries={"max_attempts": 2, "mode": "standard"}),
    )
    try:
        answer = client.get_authorization_token(**({"registryIds": [registry_id]} if registry_id else {}))
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise RegistryAuthError(f"{where} refused an authorization token for registry {registry}: "
                                f"{error.get('Code', 'error')}: {error.get('Message', '')}") from None
    except BotoCoreError as exc:
        raise CredentialsUnavailable(f"{where} could not be asked for an authorization token for registry {registry}: "
                                f"{type(exc).__name__}: {exc}") from None
    data = (answer.get("authorizationData") or [{}])[0]
    try:
        decoded = base64.b64decode(data.get("authorizationToken") or "", validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        decoded = ""
    username, colon, password = decoded.partition(":")
    if not colon or not username:
        raise RegistryAuthError(f"{where} answered get_authorization_token without a token of the form "
                                "base64(<user>:<password>)")
    expires = data.get("expiresAt")
    account = registry_id or "the caller's account"
    return Credentials(username, password, source=f"ECR authorization token ({account}, {region})",
                       expires_at=expires if isinstance(expires, datetime) else None)
