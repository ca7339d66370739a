"""Release stories for secrets: AWS Secrets Manager (a real moto_server) and the orchestrator's environment.

Every secret this module creates is named after the run id; values are random, so a search for them can only
find what leaked.
"""

import secrets
import socket
from dataclasses import dataclass

import boto3
import pytest

from resources.secrets import (
    MissingSecret,
    SecretRef,
    SecretsResource,
    SecretsUnavailable,
    parse_secret_ref,
)


@pytest.fixture
def aws_credentials(monkeypatch):
    # moto accepts any credentials; boto3 refuses to sign without some.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def secretsmanager(moto_server, aws_credentials):
    return boto3.client("secretsmanager", region_name="us-east-1", endpoint_url=moto_server)


@pytest.fixture
def resource(moto_server, aws_credentials) -> SecretsResource:
    return SecretsResource(aws_endpoint_url=moto_server)


def _value() -> str:
    return f"v-{secrets.token_hex(16)}"


def test_given_a_secret_in_secrets_manager_when_orders_deploys_to_staging_then_it_resolves_to_its_value(
    resource, secretsmanager, run_id
):
    value = _value()
    secretsmanager.create_secret(Name=f"{run_id}/orders/api-key", SecretString=value)

    resolved = resource.resolve(
        {"API_KEY": {"aws": f"{run_id}/orders/api-key"}}, environment="staging", service="orders"
    )

    assert resolved == {"API_KEY": value}


def test_a_secret_updated_in_secrets_manager_resolves_to_its_new_value(resource, secretsmanager, run_id):
    name = f"{run_id}/orders/rotated"
    secretsmanager.create_secret(Name=name, SecretString=_value())
    rotated = _value()
    secretsmanager.put_secret_value(SecretId=name, SecretString=rotated)

    assert resource.resolve({"TOKEN": {"aws": name}}, environment="prod", service="orders") == {"TOKEN": rotated}


def test_given_a_secret_that_does_not_exist_then_missing_secret_names_reference_variable_service_and_environment(
    resource, secretsmanager, run_id, monkeypatch
):
    present = _value()
    secretsmanager.create_secret(Name=f"{run_id}/present", SecretString=present)
    monkeypatch.delenv(f"{run_id.upper()}_UNSET", raising=False)

    with pytest.raises(MissingSecret) as failure:
        resource.resolve(
            {
                "PRESENT": {"aws": f"{run_id}/present"},
                "DB_PASSWORD": {"aws": f"{run_id}/payments/db-password"},
                "WEBHOOK_TOKEN": {"env": f"{run_id.upper()}_UNSET"},
            },
            environment="staging",
            service="payments",
        )

    message = str(failure.value)
    assert "service payments in environment staging" in message
    assert f"DB_PASSWORD (aws:{run_id}/payments/db-password): no such secret in {resource.aws_endpoint_url}" in message
    assert f"WEBHOOK_TOKEN (env:{run_id.upper()}_UNSET): environment variable {run_id.upper()}_UNSET is not set" in (
        message
    )
    assert present not in message and present not in repr(failure.value.missing)
    assert [m.variable for m in failure.value.missing] == ["WEBHOOK_TOKEN", "DB_PASSWORD"]
    assert (failure.value.service, failure.value.environment) == ("payments", "staging")


def test_a_secret_scheduled_for_deletion_is_missing_too(resource, secretsmanager, run_id):
    name = f"{run_id}/deleted"
    secretsmanager.create_secret(Name=name, SecretString=_value())
    secretsmanager.delete_secret(SecretId=name, RecoveryWindowInDays=7)

    with pytest.raises(MissingSecret, match=rf"OLD \(aws:{run_id}/deleted\)"):
        resource.resolve({"OLD": {"aws": name}}, environment="dev", service="orders")


def test_given_secrets_manager_is_down_then_secrets_unavailable_names_the_endpoint(aws_credentials):
    with socket.socket() as s:  # a port nothing listens on: the endpoint is really down
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    resource = SecretsResource(aws_endpoint_url=down, timeout_seconds=1)

    with pytest.raises(SecretsUnavailable) as failure:
        resource.resolve({"API_KEY": {"aws": "orders/api-key"}}, environment="staging", service="orders")

    assert failure.value.endpoint == down
    assert down in str(failure.value) and "API_KEY (aws:orders/api-key)" in str(failure.value)
    assert "service orders in environment staging" in str(failure.value)


def test_env_references_read_the_orchestrators_environment(monkeypatch, run_id):
    value = _value()
    monkeypatch.setenv(f"{run_id.upper()}_SMTP_PASSWORD", value)

    resolved = SecretsResource().resolve(  # no AWS reference: no AWS client, no endpoint needed
        {"SMTP_PASSWORD": SecretRef("env", f"{run_id.upper()}_SMTP_PASSWORD")}, environment="dev", service="mailer"
    )

    assert resolved == {"SMTP_PASSWORD": value}


def test_an_empty_environment_variable_is_a_value_not_a_missing_secret(monkeypatch, run_id):
    monkeypatch.setenv(f"{run_id.upper()}_EMPTY", "")
    assert SecretsResource().resolve({"X": {"env": f"{run_id.upper()}_EMPTY"}}, environment="dev", service="a") == {
        "X": ""
    }


def test_references_from_the_manifest_model_are_accepted():
    @dataclass(frozen=True)
    class ManifestRef:  # the manifest's own (source, name) reference type
        source: str
        name: str

    assert parse_secret_ref(ManifestRef("aws", "shop/orders")) == SecretRef("aws", "shop/orders")
    assert parse_secret_ref({"env": "SMTP_PASSWORD"}) == SecretRef("env", "SMTP_PASSWORD")
    assert str(parse_secret_ref({"aws": "arn:aws:secretsmanager:us-east-1:123:secret:x-AbC"})) == (
        "aws:arn:aws:secretsmanager:us-east-1:123:secret:x-AbC"
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("hunter2-the-value-itself", "got a string; secret values never belong in the manifest"),
        ({}, "got an empty mapping"),
        ({"vault": "kv/orders"}, "exactly one key, 'aws' (Secrets Manager id) or 'env' (environment variable name), "
                                 "got 'vault'"),
        ({"aws": "a", "env": "B"}, "got 'aws', 'env'"),
        ({"aws": ""}, "'aws' must name the secret with a non-empty string, got an empty string"),
        ({"aws": 42}, "'aws' must name the secret with a non-empty string, got a int"),
        ({"env": "1NOT-A-NAME"}, "'env' must be an environment variable name"),
        ({"aws": "has spaces in it"}, "'aws' must be a Secrets Manager name or ARN"),
        (["aws", "x"], "got a list"),
    ],
)
def test_a_malformed_reference_is_refused_with_a_clear_message_that_does_not_repeat_it(raw, expected):
    with pytest.raises(ValueError) as failure:
        parse_secret_ref(raw)
    assert expected in str(failure.value)
    for value in ("hunter2-the-value-itself", "kv/orders", "1NOT-A-NAME", "has spaces in it"):
        assert value not in str(failure.value)


def test_resolve_refuses_a_malformed_reference_naming_service_environment_and_variable():
    with pytest.raises(ValueError, match="service orders in environment prod: secret API_KEY: expected a reference"):
        SecretsResource().resolve({"API_KEY": "plain-value"}, environment="prod", service="orders")
    with pytest.raises(ValueError, match="secret variable 'not valid' is not an environment variable name"):
        SecretsResource().resolve({"not valid": {"env": "X"}}, environment="prod", service="orders")


def test_no_value_reaches_the_logs(resource, secretsmanager, run_id, caplog):
    value = _value()
    secretsmanager.create_secret(Name=f"{run_id}/logged", SecretString=value)
    caplog.set_level("DEBUG")

    resource.resolve({"K": {"aws": f"{run_id}/logged"}}, environment="dev", service="orders")

    assert value not in caplog.text
