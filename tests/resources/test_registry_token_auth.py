"""The registry token flow, for real: a `docker-registry` with `auth.token` on a free port, and a token service
this test runs beside it (what Docker Hub's auth.docker.io, Harbor or GitLab do): it checks basic credentials and
issues a JWT, signed with a key whose self-signed certificate the registry trusts (`rootcertbundle`; the
certificate travels in the token's `x5c` header), granting the actions asked for.

The registry answers 401 with `WWW-Authenticate: Bearer realm=...,service=...,scope=...`; release-graph asks the
realm with the fleet's credentials and retries with the token, reusing it for the repository until refused.
"""

from __future__ import annotations

import base64
import http.server
import json
import secrets as random_secrets
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from resources.containers import ContainerEngine
from resources.registry import Registry, RegistryError

pytestmark = pytest.mark.engine

USERNAME = "ci-bot"
SERVICE = "release-graph-test-registry"
ISSUER = "release-graph-test-token-service"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class TokenService:
    """A token service on 127.0.0.1:<port>: GET /token?service=&scope= with basic auth -> {"token": JWT}."""

    port: int
    username: str
    password: str
    key: object
    certificate_der: bytes
    requests: list[dict] = field(default_factory=list)
    _server: http.server.ThreadingHTTPServer | None = None

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def issue(self, scopes: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.certificate_der).decode()]}
        claims = {"iss": ISSUER, "sub": self.username, "aud": SERVICE, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": random_secrets.token_hex(8), "access": access}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"

    def start(self) -> TokenService:
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the standard library's name
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                expected = "Basic " + base64.b64encode(f"{service.username}:{service.password}".encode()).decode()
                authorization = self.headers.get("Authorization")
                service.requests.append({"scopes": query.get("scope", []), "service": query.get("service"),
                                         "authenticated": authorization is not None})
                if url.path != "/token" or authorization != expected:
                    self.send_response(401)
                    body = b'{"details": "incorrect username or password"}'
                else:
                    self.send_response(200)
                    body = json.dumps({"token": service.issue(query.get("scope", [])), "expires_in": 300}).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def self_signed(folder):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    bundle = folder / "token-ca.pem"
    bundle.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key, certificate.public_bytes(serialization.Encoding.DER), bundle


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def token_registry(tmp_path, free_port, throwaway_registry, monkeypatch, run_id):
    """(registry host, token service, environment variable holding the password)."""
    folder = tmp_path / "token-registry"
    folder.mkdir()
    password = f"pw-{run_id}-{random_secrets.token_hex(12)}"
    variable = f"RG_TEST_TOKEN_PASSWORD_{run_id.upper()}"
    monkeypatch.setenv(variable, password)
    key, certificate_der, bundle = self_signed(folder)
    service = TokenService(free_loopback_port(), USERNAME, password, key, certificate_der).start()
    try:
        with throwaway_registry(folder, free_port, token={"realm": service.realm, "service": SERVICE,
                                                          "issuer": ISSUER, "rootcertbundle": str(bundle)}):
            yield f"127.0.0.1:{free_port}", service, variable
    finally:
        service.stop()


def test_a_registry_that_wants_a_token_is_answered_with_one_from_its_realm(
    token_registry, busybox_as, run_id
):
    host, service, variable = token_registry
    registry = Registry(auth_registry=host, auth_username=USERNAME, auth_password_secret=f"env:{variable}")
    repository = f"{host}/{run_id}/orders"
    busybox_as(repository, "a1b2c3d4e5f6")
    # The engine pushes with the credentials (it runs the token flow itself with them)
    digest = ContainerEngine().push(f"{repository}:a1b2c3d4e5f6", registry=registry)
    before = len(service.requests)
    # release-graph's reads run the token flow: a 401 naming the realm, a token for the scope, the retry
    assert registry.manifest_digest(repository, "a1b2c3d4e5f6") == digest
    asked = service.requests[before:]
    assert asked == [{"scopes": [f"repository:{run_id}/orders:pull"], "service": [SERVICE], "authenticated": True}]
    # the token is reused for the repository: no new request to the token service
    assert registry.tags(repository) == ["a1b2c3d4e5f6"]
    assert registry.manifest(repository, digest) is not None
    assert len(service.requests) == before + 1
    # a delete needs another scope: the registry's new challenge is answered with a new token
    assert registry.delete(repository, digest) is True
    assert service.requests[-1]["scopes"] == [f"repository:{run_id}/orders:delete"]
    assert registry.manifest_digest(repository, "a1b2c3d4e5f6") is None


def test_the_token_service_refusing_is_named_with_the_credentials_source(token_registry, monkeypatch, run_id):
    host, service, _ = token_registry
    repository = f"{host}/{run_id}/orders"
    monkeypatch.setenv("RG_TEST_WRONG_TOKEN_PASSWORD", "not-the-password")
    wrong = Registry(auth_registry=host, auth_username=USERNAME,
                     auth_password_secret="env:RG_TEST_WRONG_TOKEN_PASSWORD")
    with pytest.raises(RegistryError) as caught:
        wrong.manifest_digest(repository, "latest")
    assert str(caught.value).startswith(
        f"registry {host}'s token service {service.realm} refused the credentials of secret "
        f"env:RG_TEST_WRONG_TOKEN_PASSWORD (user {USERNAME}): 401 Unauthorized (for HEAD http://{host}/v2/"
    )
    assert "not-the-password" not in str(caught.value)
    # without credentials the token is asked anonymously (public repositories allow that); this service refuses
    with pytest.raises(RegistryError, match=(
        rf"token service {service.realm} refused an anonymous token request: 401 Unauthorized .*: configure "
        r"credentials in the manifest's registry_auth"
    )):
        Registry().manifest_digest(repository, "latest")
    assert service.requests[-1]["authenticated"] is False
