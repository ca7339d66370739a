"""Given a waivers file in the fleet repo, when it is read, then every mistake is reported with file and line,
and when it is applied, a waiver covers only its rule, service and location until it expires."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from release_graph.security.findings import finding
from release_graph.security.waivers import WaiverError, apply_waivers, load_waivers

OWNERS = {"team:orders", "team:payments", "ada@example.com"}
SERVICES = {"orders", "payments"}
TODAY = date(2026, 3, 1)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "waivers.yaml"
    path.write_text(text)
    return path


def problems_of(path: Path, **known) -> list[str]:
    with pytest.raises(WaiverError) as raised:
        load_waivers(path, **known)
    assert str(path) in str(raised.value)
    return raised.value.problems


def test_a_valid_file_yields_waivers_that_remember_their_line(tmp_path):
    path = write(tmp_path, """\
waivers:
  - rule: CVE-2024-12345
    service: orders
    owner: team:orders
    reason: >
      no fix upstream yet;
      the parser is not reachable
    expires: 2026-06-30
  - rule: B602
    service: '*'
    location: "tools/*.py:*"
    owner: ada@example.com
    reason: build helper scripts, never shipped
    expires: "2026-04-01"
""")
    first, second = load_waivers(path, known_owners=OWNERS, known_services=SERVICES)
    assert (first.rule, first.service, first.owner, first.expires) == (
        "CVE-2024-12345", "orders", "team:orders", date(2026, 6, 30))
    assert first.reason == "no fix upstream yet; the parser is not reachable"
    assert first.source == "waivers.yaml:2"
    assert (second.service, second.location, second.expires, second.source) == (
        "*", "tools/*.py:*", date(2026, 4, 1), "waivers.yaml:9")


def test_no_file_and_an_empty_list_mean_no_waivers(tmp_path):
    assert load_waivers(tmp_path / "waivers.yaml") == []
    assert load_waivers(write(tmp_path, "waivers: []\n")) == []
    assert load_waivers(write(tmp_path, "")) == []


def test_a_file_that_is_not_yaml_names_the_line(tmp_path):
    problems = problems_of(write(tmp_path, "waivers:\n  - rule: B602\n    owner: [team:orders\n"))
    assert len(problems) == 1
    assert problems[0].startswith("waivers.yaml:4: not valid YAML")


def test_an_unquoted_star_for_every_service_gets_a_hint(tmp_path):
    problems = problems_of(write(tmp_path, "waivers:\n  - rule: B602\n    service: *\n"))
    assert "write service: '*'" in problems[0]


def test_every_problem_of_every_waiver_is_reported_at_once(tmp_path):
    path = write(tmp_path, """\
waiver:
  - rule: B602
waivers:
  - rule: B602
    owner: team:orders
    reason: fine
    expires: 2026-06-30
    ticket: SEC-1
  - rule: CVE-2024-1
    reason: no owner given
    expires: 2026-06-30
  - rule: CKV_DOCKER_2
    owner: team:nobody
    reason: owner unknown to the fleet
    expires: 30/06/2026
    service: billing
  - rule: DL3008
    owner: not-an-owner
    reason: ""
    expires: 2026-13-01
  - just a string
""")
    problems = problems_of(path, known_owners=OWNERS, known_services=SERVICES)
    assert problems == [
        "waivers.yaml:1: unknown key 'waiver' (expected: waivers)",
        "waivers.yaml:8: waiver #1: unknown key 'ticket' (expected one of: rule, service, location, owner, reason, "
        "expires)",
        "waivers.yaml:9: waiver #2 (CVE-2024-1): missing `owner`",
        "waivers.yaml:13: waiver #3, field `owner`: 'team:nobody' is not an owner of any service in the fleet "
        "(known owners: ada@example.com, team:orders, team:payments)",
        "waivers.yaml:15: waiver #3, field `expires`: expected a date YYYY-MM-DD, got '30/06/2026'",
        "waivers.yaml:16: waiver #3, field `service`: no service 'billing' in the fleet (services: orders, payments)",
        "waivers.yaml:17: waiver #4 (DL3008): missing `reason`",
        "waivers.yaml:18: waiver #4, field `owner`: 'not-an-owner' is neither an email address nor team:<name>",
        "waivers.yaml:20: waiver #4, field `expires`: expected a date YYYY-MM-DD, got '2026-13-01'",
        "waivers.yaml:21: waiver #5: expected a mapping with keys rule, service, location, owner, reason, expires",
    ]


def test_the_same_rule_waived_twice_for_the_same_service_is_an_error(tmp_path):
    path = write(tmp_path, """\
waivers:
  - {rule: B602, service: orders, owner: team:orders, reason: a, expires: 2026-06-30}
  - {rule: b602, service: orders, owner: team:orders, reason: b, expires: 2026-07-30}
""")
    assert problems_of(path) == [
        "waivers.yaml:3: waiver #2 (b602): the same rule, service and location are already waived at waivers.yaml:2"
    ]


def test_a_waiver_covers_only_its_rule_service_and_location(tmp_path):
    path = write(tmp_path, """\
waivers:
  - {rule: B602, service: orders, location: "tools/*", owner: team:orders, reason: helper, expires: 2026-06-30}
  - {rule: CVE-2024-1, service: '*', owner: team:payments, reason: not reachable, expires: 2026-06-30}
""")
    waivers = load_waivers(path)
    shell_in_tools = finding("bandit", "B602", "HIGH", "tools/release.py:4", "shell=True")
    shell_in_app = finding("bandit", "B602", "HIGH", "app.py:10", "shell=True")
    cve = finding("trivy", "CVE-2024-1", "HIGH", "openssl@3", "bad")
    other = finding("trivy", "CVE-2024-2", "HIGH", "openssl@3", "worse")

    remaining, waived = apply_waivers([shell_in_tools, shell_in_app, cve, other], waivers, TODAY, "orders")
    assert remaining == [shell_in_app, other]
    assert [(f, w.rule) for f, w in waived] == [(shell_in_tools, "B602"), (cve, "CVE-2024-1")]

    remaining, waived = apply_waivers([shell_in_tools, cve], waivers, TODAY, "payments")
    assert remaining == [shell_in_tools]
    assert [w.owner for _, w in waived] == ["team:payments"]


def test_a_waiver_is_valid_through_its_expiry_day_and_an_error_after_it(tmp_path):
    path = write(tmp_path, """\
waivers:
  - {rule: B602, service: orders, owner: team:orders, reason: helper, expires: 2026-03-01}
  - {rule: B105, service: '*', owner: ada@example.com, reason: test fixture, expires: 2026-02-28}
  - {rule: B106, service: payments, owner: team:payments, reason: theirs, expires: 2026-01-01}
""")
    waivers = load_waivers(path)
    shell = finding("bandit", "B602", "HIGH", "app.py:3", "shell=True")
    _, waived = apply_waivers([shell], waivers[:1], date(2026, 3, 1), "orders")
    assert len(waived) == 1

    with pytest.raises(WaiverError) as raised:
        apply_waivers([shell], waivers, date(2026, 3, 2), "orders")
    # Both expired waivers that apply to orders are listed, payments' own is not orders' problem.
    assert raised.value.problems == [
        "waivers.yaml:2: B602 for service 'orders' (owner team:orders) expired on 2026-03-01",
        "waivers.yaml:3: B105 for service '*' (owner ada@example.com) expired on 2026-02-28",
    ]
    assert "expired waivers for service 'orders' (today is 2026-03-02)" in str(raised.value)
