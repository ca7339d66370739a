"""Given an image's findings, when the gate of an environment judges them, then the deploy step and the check
see one decision: what blocks, what was waived by whom until when, and the counts."""

from __future__ import annotations

from datetime import date

import pytest

from release_graph.security.compliance import CompliancePolicy
from release_graph.security.findings import finding, parse_threshold
from release_graph.security.gate import GateBlocked, evaluate_gate
from release_graph.security.waivers import Waiver, WaiverError

TODAY = date(2026, 3, 1)
CRITICAL = finding("trivy", "CVE-2024-0001", "CRITICAL", "openssl@3.0.11", "remote code execution", "3.0.13")
HIGH = finding("trivy", "CVE-2024-0002", "HIGH", "curl@7.88.1", "heap overflow")
LOW = finding("trivy", "CVE-2024-0003", "LOW", "zlib@1.2.13", "minor")
WAIVE_CRITICAL = Waiver("CVE-2024-0001", "team:orders", "not reachable from the API", date(2026, 6, 30),
                        service="orders", source="waivers.yaml:2")


def test_prod_blocks_what_staging_lets_through():
    staging = evaluate_gate([HIGH, LOW], "no CRITICAL", [], TODAY, "orders")
    prod = evaluate_gate([HIGH, LOW], parse_threshold("no HIGH or CRITICAL"), [], TODAY, "orders")
    assert staging.passed and staging.blocking == []
    assert not prod.passed and prod.blocking == [HIGH]
    assert prod.counts == {"CRITICAL": 0, "HIGH": 1, "MEDIUM": 0, "LOW": 1, "INFO": 0, "UNKNOWN": 0}
    assert prod.summary().startswith("blocked: 1 blocking finding(s) under threshold 'no HIGH or CRITICAL'")
    assert "CVE-2024-0002 (HIGH) at curl@7.88.1" in prod.summary()


def test_a_waived_critical_does_not_block_and_is_listed_with_owner_and_expiry():
    result = evaluate_gate([LOW, CRITICAL, HIGH], "no CRITICAL", [WAIVE_CRITICAL], TODAY, "orders")
    assert result.passed
    assert result.waived == [(CRITICAL, WAIVE_CRITICAL)]
    assert result.waiver_rows == [{
        "finding": "CVE-2024-0001 at openssl@3.0.11", "severity": "CRITICAL", "rule": "CVE-2024-0001",
        "service": "orders", "location": "", "owner": "team:orders", "reason": "not reachable from the API",
        "expires": "2026-06-30", "source": "waivers.yaml:2",
    }]
    assert [row["status"] for row in result.table] == [
        "waived by team:orders until 2026-06-30", "below threshold", "below threshold"]
    # The same waiver says nothing about another service.
    assert not evaluate_gate([CRITICAL], "no CRITICAL", [WAIVE_CRITICAL], TODAY, "payments").passed


def test_the_table_puts_blocking_findings_first_and_is_cut_at_the_limit():
    many_lows = [finding("trivy", f"CVE-2024-1{i:03d}", "LOW", f"pkg{i}@1", "minor") for i in range(30)]
    result = evaluate_gate([*many_lows, HIGH], "no HIGH or CRITICAL", [], TODAY, "orders", table_limit=5)
    assert len(result.table) == 5 and result.total == 31
    assert result.table[0]["status"] == "blocking" and result.table[0]["rule"] == "CVE-2024-0002"


def test_metadata_is_plain_data_for_the_check():
    metadata = evaluate_gate([CRITICAL, HIGH], "no CRITICAL", [WAIVE_CRITICAL], TODAY, "orders").metadata()
    assert metadata["passed"] is True
    assert metadata["threshold"] == "no CRITICAL"
    assert (metadata["blocking_findings"], metadata["waived_findings"], metadata["total_findings"]) == (0, 1, 2)
    assert (metadata["critical_findings"], metadata["high_findings"]) == (1, 1)
    assert metadata["waivers_used"][0]["owner"] == "team:orders"


def test_the_deploy_step_refuses_with_the_reason():
    result = evaluate_gate([CRITICAL], "no CRITICAL", [], TODAY, "orders")
    with pytest.raises(GateBlocked, match=r"image scan of orders for prod refused: blocked: 1 blocking") as raised:
        result.raise_if_blocked("image scan of orders for prod")
    assert raised.value.result is result
    evaluate_gate([LOW], "no CRITICAL", [], TODAY, "orders").raise_if_blocked("never raised")


def test_an_expired_waiver_stops_the_gate():
    expired = Waiver("CVE-2024-0001", "team:orders", "old", date(2026, 2, 1), service="orders",
                     source="waivers.yaml:7")
    with pytest.raises(WaiverError, match="waivers.yaml:7: CVE-2024-0001 .* expired on 2026-02-01"):
        evaluate_gate([CRITICAL], "no CRITICAL", [expired], TODAY, "orders")


def test_a_compliance_policy_blocks_by_rule_id_whatever_the_severity():
    no_healthcheck = finding("checkov", "CKV_DOCKER_2", None, "Dockerfile:1", "HEALTHCHECK missing")
    unpinned = finding("hadolint", "DL3008", "warning", "Dockerfile:2", "Pin versions")
    result = evaluate_gate([no_healthcheck, unpinned], CompliancePolicy(frozenset({"CKV_DOCKER_2"}), "CKV_DOCKER_2"),
                           [], TODAY, "orders")
    assert not result.passed and result.blocking == [no_healthcheck]
    assert "blocks rules CKV_DOCKER_2" in result.summary()
