"""A fleet whose registry wants a login, for real: a `docker-registry` with htpasswd auth on a free port, the
password in the orchestrator's environment as the manifest's `registry_auth:` names it. The image step pushes
with it, resolves the digest with it, the ECR scan (moto_server) reads the image with it, and the password is in
none of the instance's files (run config, event log, compute logs), searched raw and base64. A fleet that names no
credentials fails its image step saying the registry wants some."""

from __future__ import annotations

import secrets as random_secrets

import dagster as dg
import pytest

INVENTORY_IMAGE = dg.AssetKey(["inventory", "image"])
USERNAME = "ci-bot"


@pytest.fixture
def aws_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture
def private_registry(tmp_path, free_port, throwaway_registry, monkeypatch, run_id):
    """(host, environment variable, password) of a registry that lets in ci-bot only."""
    password = f"pw-{run_id}-{random_secrets.token_hex(12)}"
    variable = f"RG_TEST_REGISTRY_PASSWORD_{run_id.upper()}"
    monkeypatch.setenv(variable, password)
    with throwaway_registry(tmp_path / "private-registry", free_port, htpasswd={USERNAME: password}):
        yield f"127.0.0.1:{free_port}", variable, password


@pytest.mark.engine
def test_a_fleet_releases_through_a_registry_that_wants_a_login_and_its_password_is_stored_nowhere(
    private_registry, moto_server, aws_credentials, release_world_factory, assert_nowhere
):
    import boto3

    host, variable, password = private_registry
    world = release_world_factory(
        ["inventory"], integration=False, registry_host=host, files={"waivers.yaml": "waivers: []\n"},
        extra_top=(f"registry_auth: {{username: {USERNAME}, password: {{env: {variable}}}}}\n"
                   f"security:\n  scanner: ecr\n  ecr: {{region: us-east-1, endpoint_url: '{moto_server}'}}\n"),
    )
    ecr = boto3.client("ecr", region_name="us-east-1", endpoint_url=moto_server)
    try:
        world.automate()
        # When the Git sensor's run builds inventory's head
        (request,) = world.tick("git_commits").run_requests
        run = world.execute(request)
        assert run.success, world.failures(run)
        # then the image is in the private registry under the SHA, its digest read back with the credentials
        image = world.latest(INVENTORY_IMAGE)
        repository = world.fleet.services["inventory"].image_repository(world.fleet)
        assert world.registry.manifest_digest(repository, request.tags["release/git_sha"]) == image.digest
        assert world.registry.credentials_source(host) == f"secret env:{variable} (user {USERNAME})"
        # and the ECR scan read its manifest from there
        scan = world.check_evaluation(INVENTORY_IMAGE, "vulnerability_scan")
        assert scan is not None and scan.metadata["digest"].value == image.digest
        # and it is deployed
        world.automate()
        assert world.latest(dg.AssetKey(["inventory", "dev"])).digest == image.digest
        # The password is in no file of the instance: run config and resource config, event log, compute logs
        assert_nowhere(world.root / "dagster_home", password)
        assert_nowhere(world.root / "dagster_home", f"{USERNAME}:{password}")
    finally:
        ecr.delete_repository(repositoryName=f"{world.fleet.name}/inventory", force=True)


@pytest.mark.engine
def test_a_fleet_that_names_no_credentials_is_told_the_registry_wants_some(private_registry, release_world_factory):
    host, _, _ = private_registry
    world = release_world_factory(["inventory"], integration=False, registry_host=host)
    # The Git sensor's first look asks the registry which images exist: it postpones the branch, saying why
    tick = world.tick("git_commits")
    assert tick.run_requests == []
    skipped = tick.skip_reason.skip_message
    assert "first look at this branch postponed, the registry cannot say which images exist: " in skipped
    assert f"registry {host} wants credentials (401 Unauthorized to HEAD http://{host}/v2/" in skipped
    assert "none are configured for it: name where they are kept in the manifest's registry_auth" in skipped
    # and building it by hand fails its image step with the same words
    run = world.materialize([INVENTORY_IMAGE])
    assert not run.success
    text = world.failures(run)["inventory__image"]
    assert f"registry {host} wants credentials (401 Unauthorized to HEAD http://{host}/v2/" in text
    assert "none are configured for it" in text
