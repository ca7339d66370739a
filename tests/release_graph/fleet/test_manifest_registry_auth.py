"""A fleet's registry wants a login: the manifest says where the credentials are kept (a secret, a Docker
config.json, ECR), never what they are; every mistake names the file, the line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from release_graph.fleet import ManifestError, SecretRef, load_fleet
from release_graph.wiring import registry_resource

ECR_REGISTRY = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/shop"
GOOD = """\
fleet: shop
registry: 127.0.0.1:5000/shop
services:
  orders:
    repo: repos/orders
    build: {}
    port: 8080
environments:
  staging: {target: docker}
"""


def write_fleet(tmp_path: Path, text: str) -> Path:
    (tmp_path / "repos" / "orders").mkdir(parents=True, exist_ok=True)
    (tmp_path / "repos" / "orders" / "Dockerfile").write_text("FROM scratch\n")
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_fleet(path)
    return caught.value.problems


def replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def with_auth(block: str, registry: str | None = None) -> str:
    text = replace(GOOD, "services:\n", block + "services:\n")
    if registry:
        text = replace(text, "registry: 127.0.0.1:5000/shop\n", f"registry: {registry}\n")
    return text


def test_a_password_kept_in_the_secret_store_is_named_and_given_to_the_fleets_registry_only(tmp_path):
    fleet = load_fleet(write_fleet(tmp_path, with_auth(
        "registry_auth: {username: ci-bot, password: {env: SHOP_REGISTRY_PASSWORD}}\n")))
    auth = fleet.registry_auth
    assert auth.kind == "password" and auth.username == "ci-bot"
    assert auth.password == SecretRef("env", "SHOP_REGISTRY_PASSWORD")
    assert fleet.registry_host == "127.0.0.1:5000"
    registry = registry_resource(fleet)
    assert registry.auth_registry == "127.0.0.1:5000" and registry.auth_username == "ci-bot"
    assert registry.auth_password_secret == "env:SHOP_REGISTRY_PASSWORD"
    assert registry.credentials_source("127.0.0.1:5000") == "secret env:SHOP_REGISTRY_PASSWORD (user ci-bot)"
    assert registry.credentials_source("127.0.0.1:5001") is None  # another host is never sent them

    aws = load_fleet(write_fleet(tmp_path, with_auth(
        "registry_auth:\n  username: ci-bot\n  password: {aws: shop/registry-password}\n"))).registry_auth
    assert aws.password == SecretRef("aws", "shop/registry-password")


def test_a_docker_config_json_is_found_beside_the_manifest_or_by_absolute_path(tmp_path):
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "config.json").write_text('{"auths": {}}')
    fleet = load_fleet(write_fleet(tmp_path, with_auth("registry_auth: {docker_config: docker/config.json}\n")))
    assert fleet.registry_auth.kind == "docker_config"
    assert fleet.registry_auth.docker_config == tmp_path / "docker" / "config.json"
    assert registry_resource(fleet).docker_config == str(tmp_path / "docker" / "config.json")
    absolute = load_fleet(write_fleet(tmp_path, with_auth(
        f"registry_auth: {{docker_config: {tmp_path / 'docker' / 'config.json'}}}\n"))).registry_auth
    assert absolute.docker_config == tmp_path / "docker" / "config.json"
    # read away from the orchestrator's host, a missing config.json is not the manifest's fault
    away = write_fleet(tmp_path, with_auth("registry_auth: {docker_config: elsewhere/config.json}\n"))
    assert load_fleet(away, check_files=False).registry_auth.docker_config == tmp_path / "elsewhere" / "config.json"


def test_an_ecr_registry_logs_in_through_ecr_with_region_and_account_from_its_host(tmp_path, monkeypatch):
    monkeypatch.setenv("RELEASE_GRAPH_AWS_ENDPOINT_URL", "http://127.0.0.1:5999")
    # without registry_auth
    fleet = load_fleet(write_fleet(tmp_path, with_auth("", registry=ECR_REGISTRY)))
    assert fleet.registry_auth is None
    registry = registry_resource(fleet)
    assert registry.auth_registry == "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    assert (registry.ecr_region, registry.ecr_registry_id) == ("eu-west-1", "123456789012")
    assert registry.ecr_endpoint_url == "http://127.0.0.1:5999"
    # `ecr:` with nothing under it takes the same from the host
    fleet = load_fleet(write_fleet(tmp_path, with_auth("registry_auth: {ecr: }\n", registry=ECR_REGISTRY)))
    assert fleet.registry_auth.ecr.region == "eu-west-1" and fleet.registry_auth.ecr.registry_id == "123456789012"
    # any registry can be logged into with ECR's token when its settings are given
    fleet = load_fleet(write_fleet(tmp_path, with_auth(
        "registry_auth:\n  ecr: {region: us-east-2, endpoint_url: 'http://127.0.0.1:5002'}\n")))
    registry = registry_resource(fleet)
    assert (registry.auth_registry, registry.ecr_region) == ("127.0.0.1:5000", "us-east-2")
    assert registry.ecr_endpoint_url == "http://127.0.0.1:5002" and registry.ecr_registry_id is None


def test_an_anonymous_registry_gets_no_credentials(tmp_path):
    fleet = load_fleet(write_fleet(tmp_path, GOOD))
    assert fleet.registry_auth is None
    registry = registry_resource(fleet)
    assert registry.auth_registry is None and registry.credentials_source("127.0.0.1:5000") is None


@pytest.mark.parametrize(("block", "expected"), [
    ("registry_auth: {username: ci-bot, password: hunter2-literal}\n",
     "fleet.yaml:3: field 'registry_auth.password': the password is a secret: name where it is kept"),
    ("registry_auth: {username: ci-bot}\n",
     "fleet.yaml:3: field 'registry_auth.password': the password is a secret"),
    ("registry_auth: {password: {env: SHOP_REGISTRY_PASSWORD}}\n",
     "fleet.yaml:3: field 'registry_auth.username': expected the user name the registry knows"),
    ("registry_auth: {username: 'ci bot', password: {env: SHOP_REGISTRY_PASSWORD}}\n",
     "field 'registry_auth.username': expected the user name the registry knows"),
    ("registry_auth: {username: ci, password: {env: 'not a variable'}}\n",
     "field 'registry_auth.password': expected an environment variable name"),
    ("registry_auth: {username: ci, password: {vault: x}}\n", "field 'registry_auth.password': the password is"),
    ("registry_auth: {username: ci, password: {env: X}, docker_config: c.json}\n",
     "field 'registry_auth': give one way to log in, not username/password and docker_config"),
    ("registry_auth: {docker_config: missing/config.json}\n",
     "field 'registry_auth.docker_config': Docker config file 'missing/config.json' does not exist"),
    ("registry_auth: {docker_config: [a]}\n",
     "field 'registry_auth.docker_config': expected the path of a Docker config.json"),
    ("registry_auth: {ecr: {region: mars}}\n",
     "field 'registry_auth.ecr.region': expected an AWS region such as eu-west-1, got 'mars'"),
    ("registry_auth: {ecr: }\n", "field 'registry_auth.ecr': expected {region: <AWS region>}"),
    ("registry_auth: {token: abc}\n", "field 'registry_auth.token': unknown key"),
    ("registry_auth: ci:hunter2\n", "field 'registry_auth': expected one of {username: <name>"),
])
def test_registry_auth_mistakes_name_file_line_and_field_and_never_echo_a_value(tmp_path, block, expected):
    problems = problems_of(write_fleet(tmp_path, with_auth(block)))
    assert any(expected in problem for problem in problems), problems
    assert not any("hunter2" in problem for problem in problems), problems
