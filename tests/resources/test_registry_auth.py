"""Release stories for a registry that wants a login: a real `docker-registry` with htpasswd auth on a free port.

The registry's users and their bcrypt hashes are written by the test (tests/conftest.py `htpasswd_line`); the
password lives only in an environment variable, Secrets Manager (moto_server) or a Docker config.json, as the
manifest's `registry_auth:` names them. Pushing (through the engine), resolving digests and scanning succeed with
the credentials and fail with words that say whose credentials were refused, or that none are configured, and
the password is never in a log line, an error, a resource's config or the engine's log.

Podman reaches a registry on any loopback port over plain HTTP because `ContainerEngine.push` passes
`tlsVerify=false` for loopback registries (no registries.conf entry is needed; see tests/resources/test_registry.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets as random_secrets
import socket
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from release_graph.security.vulnerabilities import ScanError
from resources.containers import ContainerEngine, ContainerEngineError, PushError
from resources.registry import IMAGE_MANIFEST_MEDIA_TYPES, Registry, RegistryError, RegistryUnavailable
from resources.registry_auth import Credentials
from resources.scanners import VulnerabilityScanner

pytestmark = pytest.mark.engine

BASE_BUSYBOX = "base/busybox"
USERNAME = "ci-bot"
ECR_ACCOUNT = "123456789012"  # moto's default account; its ECR password is "<account>-auth-token"
ECR_PASSWORD = f"{ECR_ACCOUNT}-auth-token"
REGION = "us-east-1"
PODMAN_LOG = Path("/var/lib/release-graph/podman-service.log")


@dataclass
class PrivateRegistry:
    host: str
    password: str
    variable: str  # the environment variable the password is kept in
    folder: Path

    def authed(self, **kwargs) -> Registry:
        return Registry(auth_registry=self.host, auth_username=USERNAME, auth_password_secret=f"env:{self.variable}",
                        **kwargs)

    def needles(self) -> list[bytes]:
        """The password as it could leak: raw, base64 (with and without padding), and inside a basic-auth pair."""
        raw = self.password.encode()
        pair = f"{USERNAME}:{self.password}".encode()
        return [raw, base64.b64encode(raw), base64.b64encode(raw).rstrip(b"="), base64.b64encode(pair).rstrip(b"="),
                base64.urlsafe_b64encode(raw).rstrip(b"=")]

    def assert_not_in(self, what: str, data: bytes | str) -> None:
        data = data.encode() if isinstance(data, str) else data
        for needle in self.needles():
            assert needle not in data, f"the registry password is in {what}"


@pytest.fixture
def aws(moto_server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return moto_server


@pytest.fixture
def private_registry(tmp_path, free_port, throwaway_registry, monkeypatch, run_id):
    """A registry on 127.0.0.1:<free port> that lets in `ci-bot` (password in $<variable>) and ECR's `AWS`."""
    password = f"pw-{run_id}-{random_secrets.token_hex(12)}"
    variable = f"RG_TEST_REGISTRY_PASSWORD_{run_id.upper()}"
    monkeypatch.setenv(variable, password)
    folder = tmp_path / "private-registry"
    with throwaway_registry(folder, free_port, htpasswd={USERNAME: password, "AWS": ECR_PASSWORD}):
        yield PrivateRegistry(f"127.0.0.1:{free_port}", password, variable, folder)


@pytest.fixture
def pushed(private_registry, docker_client, registry_addr, local_tags, busybox_as, run_id):
    """The busybox base image pushed to the private registry with the credentials: (repository, digest)."""
    repository = f"{private_registry.host}/{run_id}/orders"
    reference = busybox_as(repository, "a1b2c3d4e5f6")
    digest = ContainerEngine().push(reference, registry=private_registry.authed())
    return repository, digest


# --- with the credentials ------------------------------------------------------------------------------------


def test_with_the_secret_a_push_resolves_its_digest_lists_tags_and_deletes_and_the_password_is_nowhere(
    private_registry, docker_client, registry_addr, local_tags, busybox_as, run_id, caplog
):
    caplog.set_level(logging.DEBUG)
    podman_log_before = PODMAN_LOG.stat().st_size if PODMAN_LOG.exists() else 0
    registry = private_registry.authed()
    repository = f"{private_registry.host}/{run_id}/orders"
    reference = busybox_as(repository, "a1b2c3d4e5f6")
    lines: list[str] = []
    # When the engine pushes with the fleet's credentials
    digest = ContainerEngine().push(reference, on_log=lines.append, registry=registry)
    # then the registry serves it, and reading it back with the same credentials agrees
    assert digest.startswith("sha256:")
    assert registry.manifest_digest(repository, "a1b2c3d4e5f6") == digest
    manifest = registry.manifest(repository, digest, media_types=IMAGE_MANIFEST_MEDIA_TYPES)
    assert "sha256:" + hashlib.sha256(manifest.body).hexdigest() == digest
    assert registry.tags(repository) == ["a1b2c3d4e5f6"]
    assert registry.delete(repository, digest) is True
    assert registry.manifest_digest(repository, "a1b2c3d4e5f6") is None
    # and the password is in no log line, progress line, repr or resource config
    private_registry.assert_not_in("the Python log", caplog.text)
    private_registry.assert_not_in("the push's progress lines", "\n".join(lines))
    private_registry.assert_not_in("the resource's config", json.dumps(registry.model_dump()))
    private_registry.assert_not_in("the resource's repr", repr(registry))
    credentials = registry.credentials_for(private_registry.host)
    private_registry.assert_not_in("the credentials' repr", repr(credentials) + str(credentials))
    private_registry.assert_not_in("the registry's log", (private_registry.folder / "registry.log").read_bytes())
    if PODMAN_LOG.exists():  # the engine took the credentials in X-Registry-Auth: not written to its log
        with PODMAN_LOG.open("rb") as log:
            log.seek(podman_log_before)
            private_registry.assert_not_in("the engine's log", log.read())


def test_the_engine_pulls_with_the_credentials_and_without_them_says_the_registry_wants_some(private_registry, pushed):
    repository, digest = pushed
    ContainerEngine().pull(f"{repository}@{digest}", registry=private_registry.authed())
    with pytest.raises(ContainerEngineError, match=(
        rf"^pull of {repository}@{digest} from registry {private_registry.host} failed: registry "
        rf"{private_registry.host} wants credentials and none are configured for it"
    )):
        ContainerEngine().pull(f"{repository}@{digest}", registry=Registry())


def test_a_password_kept_in_secrets_manager_logs_in_too(private_registry, pushed, aws, run_id):
    repository, digest = pushed
    secret_id = f"{run_id}/registry-password"
    client = boto3.client("secretsmanager", region_name=REGION, endpoint_url=aws)
    client.create_secret(Name=secret_id, SecretString=private_registry.password)
    try:
        registry = Registry(auth_registry=private_registry.host, auth_username=USERNAME,
                            auth_password_secret=f"aws:{secret_id}", aws_endpoint_url=aws)
        assert registry.manifest_digest(repository, "a1b2c3d4e5f6") == digest
    finally:
        client.delete_secret(SecretId=secret_id, ForceDeleteWithoutRecovery=True)


def test_a_docker_config_json_logs_in_with_its_auths_entry(private_registry, pushed, tmp_path):
    repository, digest = pushed
    config = tmp_path / "docker-config.json"
    auth = base64.b64encode(f"{USERNAME}:{private_registry.password}".encode()).decode()
    config.write_text(json.dumps({"auths": {private_registry.host: {"auth": auth}}}))
    registry = Registry(auth_registry=private_registry.host, docker_config=str(config))
    assert registry.manifest_digest(repository, "a1b2c3d4e5f6") == digest
    assert registry.credentials_source(private_registry.host) == f"Docker config {config}"


def test_the_scan_reads_the_image_with_the_credentials(private_registry, pushed, aws):
    repository, digest = pushed
    scanner = VulnerabilityScanner(backend="ecr", ecr_region=REGION, ecr_endpoint_url=aws,
                                   ecr_poll_interval_seconds=0.2, timeout_seconds=30)
    ecr_repository = repository.split("/", 1)[1]
    try:
        report = scanner.scan_image(repository, digest, registry=private_registry.authed(), tag="a1b2c3d4e5f6")
        assert report.tool == "ecr" and report.digest == digest
        # without them it cannot read the image, and says why
        with pytest.raises(ScanError, match=rf"cannot read {repository}@{digest} to scan it: registry "
                                            rf"{private_registry.host} wants credentials"):
            scanner.scan_image(repository, digest, registry=Registry(), tag="a1b2c3d4e5f6")
    finally:
        scanner.ecr().delete_repository(ecr_repository)


# --- without them, or with the wrong ones --------------------------------------------------------------------


def test_without_credentials_push_digest_and_tags_say_the_registry_wants_some(
    private_registry, pushed, docker_client, registry_addr, local_tags, busybox_as, run_id
):
    repository, _ = pushed
    anonymous = Registry()
    with pytest.raises(RegistryError) as caught:
        anonymous.manifest_digest(repository, "a1b2c3d4e5f6")
    message = str(caught.value)
    assert message.startswith(f"registry {private_registry.host} wants credentials (401 Unauthorized to HEAD ")
    assert "none are configured for it: name where they are kept in the manifest's registry_auth" in message
    with pytest.raises(RegistryError, match="wants credentials"):
        anonymous.tags(repository)
    reference = busybox_as(f"{private_registry.host}/{run_id}/gateway", "b2")
    with pytest.raises(PushError, match=rf"push of {reference} to registry {private_registry.host} failed: registry "
                                        rf"{private_registry.host} wants credentials and none are configured"):
        ContainerEngine().push(reference, registry=anonymous)


def test_a_wrong_password_is_refused_naming_the_secret_and_user_never_the_password(
    private_registry, pushed, docker_client, registry_addr, local_tags, busybox_as, run_id, monkeypatch
):
    repository, _ = pushed
    wrong = f"wrong-{random_secrets.token_hex(8)}"
    monkeypatch.setenv("RG_TEST_WRONG_PASSWORD", wrong)
    registry = Registry(auth_registry=private_registry.host, auth_username=USERNAME,
                        auth_password_secret="env:RG_TEST_WRONG_PASSWORD")
    with pytest.raises(RegistryError) as caught:
        registry.manifest_digest(repository, "a1b2c3d4e5f6")
    assert str(caught.value).startswith(
        f"registry {private_registry.host} refused the credentials of secret env:RG_TEST_WRONG_PASSWORD "
        f"(user {USERNAME}): 401 Unauthorized to HEAD http://{private_registry.host}/v2/{repository.split('/', 1)[1]}"
    )
    reference = busybox_as(f"{private_registry.host}/{run_id}/gateway", "b2")
    with pytest.raises(PushError) as pushed_caught:
        ContainerEngine().push(reference, registry=registry)
    assert (f"failed: registry {private_registry.host} refused the credentials of secret env:RG_TEST_WRONG_PASSWORD "
            f"(user {USERNAME})") in str(pushed_caught.value)
    for error in (caught.value, pushed_caught.value):
        assert wrong not in str(error) and base64.b64encode(wrong.encode()).decode().rstrip("=") not in str(error)


def test_a_secret_that_is_not_there_is_named_before_anything_is_sent(private_registry, pushed, monkeypatch):
    repository, _ = pushed
    monkeypatch.delenv(private_registry.variable)
    with pytest.raises(RegistryError, match=(
        rf"^registry {private_registry.host}: no credentials: the password of registry {private_registry.host} "
        rf"\(registry_auth.password\): secret env:{private_registry.variable} is missing: environment variable "
        rf"{private_registry.variable} is not set$"
    )):
        private_registry.authed().manifest_digest(repository, "a1b2c3d4e5f6")


def test_credentials_go_to_the_fleets_registry_host_only(private_registry, pushed, registry_addr):
    registry = private_registry.authed()
    # the shared registry is anonymous: it is never sent the fleet's password
    assert registry.credentials_for(registry_addr) is None
    assert registry.engine_auth(registry_addr) == "e30="
    assert registry.manifest_digest(f"{registry_addr}/{BASE_BUSYBOX}", "latest")


# --- ECR: the authorization token flow ---------------------------------------------------------------------


def test_ecrs_authorization_token_becomes_the_basic_header_and_logs_into_the_registry(private_registry, pushed, aws):
    repository, digest = pushed
    token = boto3.client("ecr", region_name=REGION, endpoint_url=aws).get_authorization_token()
    expected = token["authorizationData"][0]["authorizationToken"]
    registry = Registry(auth_registry=private_registry.host, ecr_region=REGION, ecr_endpoint_url=aws)
    credentials = registry.credentials_for(private_registry.host)
    # ECR's token is base64 of AWS:<password>: exactly HTTP basic auth's credentials
    assert credentials.username == "AWS" and credentials.basic_authorization() == f"Basic {expected}"
    assert credentials.source == f"ECR authorization token (the caller's account, {REGION})"
    assert "auth-token" not in repr(credentials)
    engine_auth = json.loads(base64.urlsafe_b64decode(registry.engine_auth(private_registry.host)))
    assert engine_auth == {"username": "AWS", "password": ECR_PASSWORD, "serveraddress": private_registry.host}
    # the registry takes it: this one has the same user and password ECR's token carries
    assert registry.manifest_digest(repository, "a1b2c3d4e5f6") == digest
    # a named account's token is asked for that account
    other = Registry(auth_registry=private_registry.host, ecr_region=REGION, ecr_endpoint_url=aws,
                     ecr_registry_id="210987654321")
    assert other.credentials_for(private_registry.host).password == "210987654321-auth-token"
    with pytest.raises(RegistryError, match=r"refused the credentials of ECR authorization token \(210987654321, "):
        other.manifest_digest(repository, "a1b2c3d4e5f6")


def test_ecr_that_cannot_be_asked_is_named(private_registry, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        free_port = closed.getsockname()[1]
    registry = Registry(auth_registry=private_registry.host, ecr_region=REGION,
                        ecr_endpoint_url=f"http://127.0.0.1:{free_port}")
    with pytest.raises(RegistryUnavailable, match=(  # the step that asked is retried
        rf"registry {private_registry.host}: no credentials: ECR \(http://127.0.0.1:{free_port}\) could not be "
        rf"asked for an authorization token for registry {private_registry.host}: EndpointConnectionError"
    )):
        registry.manifest_digest(f"{private_registry.host}/x/y", "latest")


def test_credentials_never_show_their_password():
    credentials = Credentials("ci-bot", "hunter2-secret", source="secret env:X (user ci-bot)")
    assert "hunter2" not in repr(credentials) and "hunter2" not in str(credentials)
    assert "hunter2" not in f"{credentials!r} {credentials}"
