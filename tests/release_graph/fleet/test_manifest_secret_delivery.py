"""How a service's containers receive their secrets (files unless it opts in to env), and the integration stage's
own declared secrets: a release manager reads every mistake with file, line, service and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from release_graph.fleet import ManifestError, load_fleet

SERVICES = """\
fleet: shop
registry: 127.0.0.1:5000/shop
services:
  orders:
    repo: repos/orders
    build: {dockerfile: Dockerfile}
    port: 8080
    depends_on: [payments]
  payments:
    repo: repos/payments
    build: {}
    port: 8080
    env: {LOG_LEVEL: info}
"""
ENVIRONMENTS = """\
environments:
  dev:
    target: docker
    secrets: {payments: {PAYMENTS_API_KEY: {env: SHOP_DEV_KEY}}}
"""


def write_fleet(tmp_path: Path, text: str) -> Path:
    for name in ("orders", "payments"):
        (tmp_path / "repos" / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "repos" / name / "Dockerfile").write_text("FROM scratch\n")
    path = tmp_path / "fleet.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_fleet(path)
    return caught.value.problems


def fleet_text(payments_extra: str = "", top: str = "") -> str:
    return SERVICES + payments_extra + ENVIRONMENTS + top


def test_secrets_are_files_by_default_env_where_a_service_opts_in_and_integration_declares_its_own(tmp_path):
    fleet = load_fleet(write_fleet(tmp_path, fleet_text(
        payments_extra="    secrets_as: env\n",
        top="integration:\n  secrets:\n    payments: {PAYMENTS_API_KEY: {env: SHOP_TEST_KEY}}\n"
            "    orders: {TOKEN: {aws: shop/integration/orders}}\n")))
    assert fleet.services["payments"].secrets_as == "env"
    assert fleet.services["orders"].secrets_as == "file"
    assert fleet.integration_secrets["payments"]["PAYMENTS_API_KEY"].describe() == "env:SHOP_TEST_KEY"
    assert fleet.integration_secrets["orders"]["TOKEN"].describe() == "aws:shop/integration/orders"
    # the environment's secret is still dev's own, and never the integration's
    assert fleet.environments["dev"].secrets["payments"]["PAYMENTS_API_KEY"].name == "SHOP_DEV_KEY"


def test_without_an_integration_block_no_service_receives_secrets_in_integration(tmp_path):
    fleet = load_fleet(write_fleet(tmp_path, fleet_text()))
    assert dict(fleet.integration_secrets) == {}
    assert fleet.services["payments"].secrets_as == "file"


def test_a_wrong_delivery_and_wrong_integration_secrets_name_file_line_service_and_field(tmp_path):
    problems = problems_of(write_fleet(tmp_path, fleet_text(
        payments_extra="    secrets_as: environment\n",
        top="integration:\n  secret: {}\n  secrets:\n    paymnts: {KEY: {env: X}}\n"
            "    payments: {PAYMENTS_API_KEY: {vault: x}, 1BAD: {env: Y}}\n")))
    assert problems == [
        "fleet.yaml:14: service 'payments', field 'secrets_as': expected file (the default: each secret a "
        "read-only file under /run/secrets, its path in <NAME>_FILE) or env (environment variables, shown by "
        "the engine's inspect), got 'environment'",
        "fleet.yaml:20: field 'integration.secret': unknown key (expected one of: secrets)",
        "fleet.yaml:22: field 'integration.secrets.paymnts': 'paymnts' is not a service of this fleet",
        "fleet.yaml:23: field 'integration.secrets.payments.PAYMENTS_API_KEY': "
        "expected {aws: <Secrets Manager secret id>} or {env: <VARIABLE of the orchestrator>}",
        "fleet.yaml:23: field 'integration.secrets.payments.1BAD': "
        "expected an environment variable name (letters, digits, '_')",
    ]


def test_integration_must_be_a_mapping(tmp_path):
    problems = problems_of(write_fleet(tmp_path, fleet_text(top="integration: [payments]\n")))
    assert problems == ["fleet.yaml:18: field 'integration': expected a mapping such as "
                        "{secrets: {<service>: {<NAME>: {env: <VARIABLE>}}}}"]
