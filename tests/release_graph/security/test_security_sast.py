"""Given a service's source with an injected vulnerable pattern, when SAST runs (semgrep with the shipped rules,
and bandit), then the finding blocks the release; a valid waiver lets it through and is listed; an expired one
stops the gate. The shipped rules themselves are checked against annotated samples in every language."""

from __future__ import annotations

import re
import shutil
from datetime import date
from pathlib import Path

import pytest

from release_graph.security import sast
from release_graph.security.gate import evaluate_gate
from release_graph.security.tools import ToolError, ToolMissing
from release_graph.security.waivers import WaiverError, load_waivers

SAMPLES = Path(__file__).parent / "semgrep_samples"
ANNOTATION = re.compile(r"^\s*(#|//)\s*(ruleid|ok):\s*([\w.-]+)\s*$")
TODAY = date(2026, 3, 1)
SAST_THRESHOLD = "MEDIUM"  # the manifest's default sast_threshold

SERVICE_FILES = {
    "app.py": '''\
"""orders: takes orders and asks inventory for stock."""
import json
import os


def handle(body: bytes) -> dict:
    order = json.loads(body)
    return {"id": order["id"], "region": os.environ.get("REGION", "eu")}
''',
    "tests/test_app.py": "from app import handle\n\n\ndef test_handle():\n    assert handle(b'{}') is not None\n",
}
INJECTED = '''\
import subprocess


def archive(order_id: str) -> None:
    subprocess.run("tar czf /tmp/" + order_id + ".tgz /data/" + order_id, shell=True)
'''


def annotated_expectations(folder: Path) -> set[tuple[str, int, str]]:
    """(file, line, rule) for every `ruleid:` annotation: the finding belongs on the next line."""
    expected = set()
    for path in sorted(folder.iterdir()):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines, start=1):
            match = ANNOTATION.match(line)
            if match and match.group(2) == "ruleid":
                expected.add((path.name, number + 1, match.group(3)))
    return expected


def test_every_shipped_rule_fires_exactly_where_the_samples_say(tmp_path):
    # Copied out of the repository: a scan inside a git work tree would skip untracked files and tests/ folders.
    work = tmp_path / "samples"
    shutil.copytree(SAMPLES, work)
    report = sast.run_semgrep(work)

    found = {(f.location.rsplit(":", 1)[0], int(f.location.rsplit(":", 1)[1]), f.rule) for f in report.findings}
    assert found == annotated_expectations(SAMPLES)
    assert {rule for _, _, rule in found} == set(sast.semgrep_rule_ids())  # every rule has a sample
    assert set(report.scanned_files) == {p.name for p in SAMPLES.iterdir()}
    assert report.not_analysed == ()
    severities = {f.rule: f.severity for f in report.findings}
    assert severities["rg-python-subprocess-shell-true"] == "HIGH"  # semgrep ERROR
    assert severities["rg-python-hardcoded-password"] == "MEDIUM"  # semgrep WARNING


@pytest.fixture(scope="module")
def orders_sources(tmp_path_factory):
    """The orders service twice: as it is, and with an injected `shell=True` call."""
    base = tmp_path_factory.mktemp("orders")
    clean, injected = base / "clean", base / "injected"
    for folder in (clean, injected):
        for name, text in SERVICE_FILES.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
    (injected / "archive.py").write_text(INJECTED)
    return clean, injected


@pytest.fixture(scope="module")
def injected_report(orders_sources):
    return sast.run_sast(orders_sources[1])


def test_the_clean_service_passes_sast(orders_sources):
    report = sast.run_sast(orders_sources[0])
    assert report.tools == ("semgrep", "bandit")
    result = evaluate_gate(report.findings, SAST_THRESHOLD, [], TODAY, "orders")
    assert result.passed, result.table


def test_an_injected_shell_call_fails_sast_with_the_finding_listed(injected_report):
    result = evaluate_gate(injected_report.findings, SAST_THRESHOLD, [], TODAY, "orders")
    assert not result.passed
    blocking = {(f.tool, f.rule, f.location) for f in result.blocking}
    assert ("semgrep", "rg-python-subprocess-shell-true", "archive.py:5") in blocking
    assert ("bandit", "B602", "archive.py:5") in blocking
    rows = [row for row in result.table if row["status"] == "blocking"]
    assert {"rule": "rg-python-subprocess-shell-true", "location": "archive.py:5", "severity": "HIGH"}.items() <= \
        next(r for r in rows if r["tool"] == "semgrep").items()


WAIVERS = """\
waivers:
  - rule: rg-python-subprocess-shell-true
    service: orders
    location: "archive.py:*"
    owner: team:orders
    reason: order ids are UUIDs validated at the API; replaced by tarfile in ORD-142
    expires: {expires}
  - rule: B602
    service: orders
    location: "archive.py:*"
    owner: team:orders
    reason: same call as above (bandit's rule id)
    expires: {expires}
"""


def test_with_a_valid_waiver_it_passes_and_the_waiver_is_listed(injected_report, tmp_path):
    path = tmp_path / "waivers.yaml"
    path.write_text(WAIVERS.format(expires="2026-06-30"))
    waivers = load_waivers(path, known_owners={"team:orders"}, known_services={"orders"})

    result = evaluate_gate(injected_report.findings, SAST_THRESHOLD, waivers, TODAY, "orders")
    assert result.passed, result.summary()
    assert {(row["rule"], row["owner"], row["expires"]) for row in result.metadata()["waivers_used"]} == {
        ("rg-python-subprocess-shell-true", "team:orders", "2026-06-30"), ("B602", "team:orders", "2026-06-30")}


def test_with_an_expired_waiver_it_fails(injected_report, tmp_path):
    path = tmp_path / "waivers.yaml"
    path.write_text(WAIVERS.format(expires="2026-02-27"))
    waivers = load_waivers(path, known_owners={"team:orders"})
    with pytest.raises(WaiverError) as raised:
        evaluate_gate(injected_report.findings, SAST_THRESHOLD, waivers, TODAY, "orders")
    assert raised.value.problems == [
        "waivers.yaml:2: rg-python-subprocess-shell-true for service 'orders' (owner team:orders) expired on "
        "2026-02-27",
        "waivers.yaml:8: B602 for service 'orders' (owner team:orders) expired on 2026-02-27",
    ]


def test_semgrep_not_installed_names_the_tool_and_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("RELEASE_GRAPH_TOOLS", str(tmp_path / "no-tools"))
    (tmp_path / "src").mkdir()
    with pytest.raises(ToolMissing) as raised:
        sast.run_semgrep(tmp_path / "src")
    message = str(raised.value)
    assert message.startswith(f"semgrep is not installed: no {tmp_path}/no-tools/semgrep-venv/bin/semgrep")
    assert "bash scripts/install_tools.sh semgrep" in message


def test_a_broken_rule_file_is_an_error_not_a_clean_result(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "bad.yaml").write_text("rules:\n  - id: broken\n    languages: [python]\n    severity: ERROR\n"
                                    "    message: m\n    pattern: eval(\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("eval(x)\n")
    with pytest.raises(ToolError, match="semgrep"):
        sast.run_semgrep(tmp_path / "src", rules_dir=rules)


def test_semgrep_output_that_is_not_a_report_is_an_error():
    with pytest.raises(ToolError, match="not JSON"):
        sast.parse_semgrep("Traceback (most recent call last): ...")
    with pytest.raises(ToolError, match="no `results` list"):
        sast.parse_semgrep('{"errors": []}')
