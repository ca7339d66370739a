"""Given findings from tools that each speak their own severity words, when they are normalised and judged by an
environment's threshold, then "no HIGH or CRITICAL" means the same whichever tool reported them."""

from __future__ import annotations

import pytest

from release_graph.security.findings import (
    SEVERITIES,
    Finding,
    ThresholdError,
    count_by_severity,
    finding,
    normalise_severity,
    parse_threshold,
    top_rows,
)


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("CRITICAL", "CRITICAL"), ("Critical", "CRITICAL"),
        ("HIGH", "HIGH"), ("ERROR", "HIGH"), ("error", "HIGH"),
        ("MEDIUM", "MEDIUM"), ("WARNING", "MEDIUM"), ("warning", "MEDIUM"), ("Moderate", "MEDIUM"),
        ("LOW", "LOW"), ("Low", "LOW"),
        ("INFO", "INFO"), ("INFORMATIONAL", "INFO"), ("Negligible", "INFO"), ("style", "INFO"),
        ("UNDEFINED", "UNKNOWN"), ("UNTRIAGED", "UNKNOWN"), (None, "UNKNOWN"), ("bogus", "UNKNOWN"),
    ],
)
def test_each_tools_severity_word_maps_to_one_level(word, expected):
    assert normalise_severity(word) == expected


def test_a_finding_with_an_unnormalised_severity_is_refused():
    with pytest.raises(ValueError, match="'Warning' is not normalised"):
        Finding("semgrep", "rg-python-eval-exec", "Warning", "app.py:3", "eval")


@pytest.mark.parametrize(
    ("text", "floor"),
    [
        ("no CRITICAL", "CRITICAL"),
        ("no HIGH or CRITICAL", "HIGH"),
        ("no high or critical", "HIGH"),
        ("no MEDIUM, HIGH or CRITICAL", "MEDIUM"),
        ("no MEDIUM or above", "MEDIUM"),
        ("HIGH", "HIGH"),
        ("low+", "LOW"),
        ("none", None),
    ],
)
def test_threshold_texts_name_the_lowest_blocked_severity(text, floor):
    assert parse_threshold(text).floor == floor


def test_staging_and_prod_thresholds_judge_the_same_high_finding_differently():
    high = finding("ecr", "CVE-9999-9999", "HIGH", "moto_fake@9.9.9", "canned")
    assert parse_threshold("no HIGH or CRITICAL").blocks(high)
    assert not parse_threshold("no CRITICAL").blocks(high)
    assert not parse_threshold("none").blocks(finding("trivy", "CVE-1", "CRITICAL", "x@1", "worst"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no LOW or CRITICAL", "blocks LOW but not HIGH, MEDIUM"),
        ("no SEVERE", "names 'SEVERE'"),
        ("no UNKNOWN", "names 'UNKNOWN'"),
        ("", "expected text"),
        (3, "expected text"),
    ],
)
def test_a_threshold_that_cannot_be_understood_names_where_it_was_written(text, message):
    where = "fleet.yaml: environment 'prod', field 'scan_threshold'"
    with pytest.raises(ThresholdError) as raised:
        parse_threshold(text, where)
    assert str(raised.value).startswith(where)
    assert message in str(raised.value)


def test_counts_list_every_level_and_the_table_puts_the_worst_first():
    findings = [
        finding("trivy", "CVE-2024-1", "LOW", "zlib@1.2", "minor"),
        finding("trivy", "CVE-2024-2", "CRITICAL", "openssl@3.0.11", "remote code execution", "3.0.13"),
        finding("trivy", "CVE-2024-3", "HIGH", "curl@7.88", "overflow"),
        finding("trivy", "CVE-2024-4", "HIGH", "bash@5.2", "injection"),
    ]
    counts = count_by_severity(findings)
    assert list(counts) == list(SEVERITIES)
    assert counts == {"CRITICAL": 1, "HIGH": 2, "MEDIUM": 0, "LOW": 1, "INFO": 0, "UNKNOWN": 0}
    rows = top_rows(findings, limit=3)
    assert [r["rule"] for r in rows] == ["CVE-2024-2", "CVE-2024-3", "CVE-2024-4"]
    assert rows[0] == {
        "severity": "CRITICAL", "rule": "CVE-2024-2", "location": "openssl@3.0.11", "tool": "trivy",
        "message": "remote code execution", "fixed_version": "3.0.13",
    }
