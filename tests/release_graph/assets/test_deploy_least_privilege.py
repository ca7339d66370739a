"""Given a fleet whose services read Secrets Manager secrets, when a deploy step starts, then the IAM policy the
service gets there is checked before anything changes: one that grants more than reading its own secrets is
refused, naming the service, the environment and the statement."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from release_graph.assets.deployment import verify_security_gate
from release_graph.fleet import load_fleet
from release_graph.release.errors import ReleaseStepError

MANIFEST = """\
fleet: shop
registry: 127.0.0.1:5000/shop
services:
  orders: {repo: repos/orders, build: {}}
  payments: {repo: repos/payments, build: {}}
environments:
  prod:
    target: docker
    secrets:
      orders: {DB_PASSWORD: {aws: ORDERS_SECRET}}
      payments: {PSP_KEY: {aws: shop/prod/psp-key}}
"""


# Without security.ecr the policy names the caller's region and account through IAM's policy variables.
SECRETS = "arn:aws:secretsmanager:${aws:RequestedRegion}:${aws:PrincipalAccount}:secret:"


def gate(tmp_path: Path, orders_secret: str, service: str = "orders") -> dict:
    text = MANIFEST.replace("ORDERS_SECRET", orders_secret)
    fleet = load_fleet(tmp_path / "fleet.yaml", check_files=False, text=text)
    context = SimpleNamespace(log=SimpleNamespace(warning=print), instance=None)
    digest = "sha256:" + "a" * 64
    return verify_security_gate(context, fleet, fleet.services[service], fleet.environments["prod"], digest)


def test_the_deploy_step_records_the_policy_it_checked(tmp_path):
    metadata = gate(tmp_path, "shop/prod/orders-db")
    assert metadata["iam_policy"].data["Statement"][0]["Resource"] == [
        SECRETS + "shop/prod/orders-db-??????"]
    assert metadata["iam_policy_check"].startswith("passed")


def test_a_secret_id_that_is_a_pattern_is_refused_at_deploy_because_the_policy_would_read_other_secrets(tmp_path):
    with pytest.raises(ReleaseStepError) as refused:
        gate(tmp_path, "'shop/prod/*'")
    message = refused.value.description
    assert message.startswith("service 'orders', environment 'prod': least privilege: the IAM policy of service "
                              "'orders' in environment 'prod' grants more than reading its own secrets there: "
                              "statement ReadOwnSecrets grants secretsmanager:GetSecretValue on "
                              + SECRETS + "shop/prod/*-??????")
    assert "the manifest's secret id 'shop/prod/*' is a pattern" in message
    # the other service's policy is its own and still passes
    assert gate(tmp_path, "'shop/prod/*'", service="payments")["iam_policy_check"].startswith("passed")
