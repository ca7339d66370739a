"""Where registry credentials are read from, without a registry: a Docker config.json's entries, the challenge a
registry answers 401 with, and what a CLI scanner is given. No error ever repeats a password."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from resources.registry_auth import (
    Credentials,
    RegistryAuthError,
    from_docker_config,
    parse_challenge,
    token_from_answer,
)
from resources.scanners import CliScanner

HOST = "127.0.0.1:5005"
PASSWORD = "hunter2-not-to-be-seen"


def write_config(tmp_path, config) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config) if not isinstance(config, str) else config)
    return str(path)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize("key", [HOST, f"https://{HOST}", f"http://{HOST}"])
def test_an_auths_entry_is_found_under_the_host_as_docker_login_writes_it(tmp_path, key):
    path = write_config(tmp_path, {"auths": {key: {"auth": b64(f"ci-bot:{PASSWORD}")}, "other:5000": {}}})
    credentials = from_docker_config(path, HOST)
    assert (credentials.username, credentials.password) == ("ci-bot", PASSWORD)
    assert credentials.source == f"Docker config {path} (auths.{key})"
    assert PASSWORD not in repr(credentials)


def test_an_entry_with_username_and_password_fields_works_and_docker_hub_has_its_own_key(tmp_path):
    path = write_config(tmp_path, {"auths": {"https://index.docker.io/v1/": {"username": "u", "password": PASSWORD}}})
    assert from_docker_config(path, "docker.io").password == PASSWORD
    assert from_docker_config(path, HOST) is None  # nothing for this host: anonymous


def test_a_credential_helper_named_for_the_host_is_asked(tmp_path, monkeypatch):
    # A real helper program on PATH, speaking the docker-credential-helpers protocol (host on stdin, JSON out).
    helper = tmp_path / "bin" / "docker-credential-rgtest"
    helper.parent.mkdir()
    helper.write_text('#!/bin/sh\nread host\nprintf \'{"ServerURL":"%s","Username":"helper-user","Secret":"'
                      + PASSWORD + '"}\' "$host"\n')
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{helper.parent}{os.pathsep}{os.environ['PATH']}")
    path = write_config(tmp_path, {"credHelpers": {HOST: "rgtest"}})
    credentials = from_docker_config(path, HOST)
    assert (credentials.username, credentials.password) == ("helper-user", PASSWORD)
    assert "credential helper docker-credential-rgtest" in credentials.source
    # credsStore is the helper for every host
    assert from_docker_config(write_config(tmp_path, {"credsStore": "rgtest"}), "10.0.0.1:5000").username == \
        "helper-user"
    missing = write_config(tmp_path, {"credHelpers": {HOST: "not-installed-here"}})
    with pytest.raises(RegistryAuthError, match="docker-credential-not-installed-here is not installed"):
        from_docker_config(missing, HOST)


@pytest.mark.parametrize(("config", "expected"), [
    ("{not json", "is not JSON: Expecting property name"),
    ("[1]", "is not a JSON object"),
    ({"auths": {HOST: {"auth": "***" + PASSWORD}}}, "'auth' is not base64 of <username>:<password>"),
    ({"auths": {HOST: {"auth": b64(PASSWORD)}}}, "'auth' is not base64 of <username>:<password>"),
    ({"auths": {HOST: {"identitytoken": PASSWORD}}}, "holds an identity token"),
    ({"auths": {HOST: {"email": "a@b"}}}, "has neither 'auth' nor 'username' and 'password'"),
])
def test_a_config_json_that_cannot_be_used_is_named_with_its_path_and_never_echoed(tmp_path, config, expected):
    path = write_config(tmp_path, config)
    with pytest.raises(RegistryAuthError) as caught:
        from_docker_config(path, HOST)
    assert str(caught.value).startswith(f"Docker config {path}") and expected in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_a_missing_config_json_is_named(tmp_path):
    with pytest.raises(RegistryAuthError, match=r"config.json \(registry_auth.docker_config\) does not exist"):
        from_docker_config(tmp_path / "config.json", HOST)


def test_challenges_are_parsed_as_the_distribution_spec_writes_them():
    bearer = parse_challenge('Bearer realm="https://auth.example.com/token",service="registry.example.com",'
                             'scope="repository:shop/orders:pull,push"')
    assert bearer.scheme == "bearer"
    assert bearer.params == {"realm": "https://auth.example.com/token", "service": "registry.example.com",
                             "scope": "repository:shop/orders:pull,push"}
    assert bearer.token_url() == ("https://auth.example.com/token?service=registry.example.com"
                                  "&scope=repository%3Ashop%2Forders%3Apull%2Cpush")
    basic = parse_challenge('Basic realm="release-graph-test"')
    assert basic.scheme == "basic" and basic.params == {"realm": "release-graph-test"}
    assert parse_challenge(None) is None and parse_challenge("") is None
    assert parse_challenge("Bearer realm=http://t/token?x=1,service=s").token_url() == "http://t/token?x=1&service=s"


def test_a_token_service_answer_gives_its_token_or_access_token():
    assert token_from_answer(b'{"token": "abc", "expires_in": 300}') == "abc"
    assert token_from_answer(b'{"access_token": "xyz"}') == "xyz"
    assert token_from_answer(b"not json") is None and token_from_answer(b'{"token": ""}') is None


def test_the_engine_is_given_the_credentials_as_docker_auth_config():
    credentials = Credentials("ci-bot", PASSWORD, source="secret env:X (user ci-bot)")
    decoded = json.loads(base64.urlsafe_b64decode(credentials.engine_auth(HOST)))
    assert decoded == {"username": "ci-bot", "password": PASSWORD, "serveraddress": HOST}
    assert credentials.basic_authorization() == "Basic " + b64(f"ci-bot:{PASSWORD}")


@pytest.mark.parametrize(("tool", "variables"), [
    ("trivy", {"TRIVY_USERNAME": "ci-bot", "TRIVY_PASSWORD": PASSWORD}),
    ("grype", {"GRYPE_REGISTRY_AUTH_AUTHORITY": HOST, "GRYPE_REGISTRY_AUTH_USERNAME": "ci-bot",
               "GRYPE_REGISTRY_AUTH_PASSWORD": PASSWORD}),
])
def test_a_cli_scanner_gets_the_credentials_in_its_environment_never_on_its_command_line(tmp_path, tool, variables):
    binary = tmp_path / tool
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    credentials = Credentials("ci-bot", PASSWORD, source="secret env:X (user ci-bot)")
    reference = f"{HOST}/shop/orders@sha256:{'a' * 64}"
    argv, env = CliScanner(tool=tool, executable=str(binary)).command(reference, tmp_path / "r.json", credentials)
    assert {k: env[k] for k in variables} == variables
    assert not any(PASSWORD in arg for arg in argv)
    _, anonymous = CliScanner(tool=tool, executable=str(binary)).command(reference, tmp_path / "r.json")
    assert not set(variables) & set(anonymous) - set(os.environ)


def test_a_secret_store_that_does_not_answer_is_a_registry_that_cannot_be_reached_now(monkeypatch):
    import socket

    from resources.registry import Registry, RegistryUnavailable

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    registry = Registry(auth_registry=HOST, auth_username="ci-bot", auth_password_secret="aws:shop/registry",
                        aws_endpoint_url=f"http://127.0.0.1:{port}", timeout_seconds=1)
    # transient (the step is retried), naming the registry, the field and the secret
    with pytest.raises(RegistryUnavailable, match=(
        rf"^registry {HOST}: no credentials: the password of registry {HOST} \(registry_auth.password\): "
        r"secret aws:shop/registry: http://127.0.0.1:\d+ could not be asked"
    )):
        registry.credentials_for(HOST)
