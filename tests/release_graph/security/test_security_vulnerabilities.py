"""Given vulnerability reports written in Trivy's and Grype's documented JSON formats (their databases cannot be
downloaded on this host, so the reports are written here), when they are read, then each vulnerability becomes
a Finding with its id, package@version, normalised severity and fixed version."""

from __future__ import annotations

import json
from datetime import date

import pytest

from release_graph.security.gate import evaluate_gate
from release_graph.security.vulnerabilities import (
    ScanError,
    parse_ecr_findings,
    parse_grype,
    parse_report_file,
    parse_trivy,
)

TRIVY_REPORT = {
    "SchemaVersion": 2,
    "CreatedAt": "2026-03-01T10:00:00Z",
    "ArtifactName": "127.0.0.1:5000/shop/orders@sha256:" + "1" * 64,
    "ArtifactType": "container_image",
    "Metadata": {"OS": {"Family": "debian", "Name": "12.5"}, "ImageID": "sha256:" + "2" * 64},
    "Results": [
        {
            "Target": "127.0.0.1:5000/shop/orders (debian 12.5)",
            "Class": "os-pkgs",
            "Type": "debian",
            "Vulnerabilities": [
                {"VulnerabilityID": "CVE-2024-2511", "PkgID": "libssl3@3.0.11-1~deb12u2", "PkgName": "libssl3",
                 "InstalledVersion": "3.0.11-1~deb12u2", "FixedVersion": "3.0.13-1~deb12u1", "Status": "fixed",
                 "Severity": "HIGH", "Title": "openssl: Unbounded memory growth with session handling in TLSv1.3",
                 "PrimaryURL": "https://avd.aquasec.com/nvd/cve-2024-2511"},
                {"VulnerabilityID": "CVE-2023-45853", "PkgName": "zlib1g", "InstalledVersion": "1:1.2.13.dfsg-1",
                 "Status": "will_not_fix", "Severity": "CRITICAL",
                 "Title": "zlib: integer overflow and resultant heap-based buffer overflow in zipOpenNewFileInZip4_6"},
                {"VulnerabilityID": "CVE-2011-3374", "PkgName": "apt", "InstalledVersion": "2.6.1",
                 "Severity": "LOW", "Description": "It was found that apt-key in apt does not correctly validate"},
            ],
        },
        {"Target": "Python", "Class": "lang-pkgs", "Type": "python-pkg", "Vulnerabilities": [
            {"VulnerabilityID": "GHSA-9wx4-h78v-vm56", "PkgName": "requests", "InstalledVersion": "2.31.0",
             "FixedVersion": "2.32.0", "Severity": "MEDIUM", "Title": "Requests session object does not verify"},
        ]},
        {"Target": "app/requirements.txt", "Class": "lang-pkgs", "Type": "pip"},
    ],
}

GRYPE_REPORT = {
    "matches": [
        {
            "vulnerability": {
                "id": "CVE-2024-2511", "dataSource": "https://security-tracker.debian.org/tracker/CVE-2024-2511",
                "namespace": "debian:distro:debian:12", "severity": "High",
                "urls": ["https://security-tracker.debian.org/tracker/CVE-2024-2511"],
                "description": "Issue summary: Some non-default TLS server configurations can cause unbounded memory",
                "fix": {"versions": ["3.0.13-1~deb12u1"], "state": "fixed"},
            },
            "relatedVulnerabilities": [],
            "matchDetails": [{"type": "exact-direct-match", "matcher": "dpkg-matcher"}],
            "artifact": {"id": "3b6c", "name": "libssl3", "version": "3.0.11-1~deb12u2", "type": "deb",
                         "purl": "pkg:deb/debian/libssl3@3.0.11-1~deb12u2?arch=amd64&distro=debian-12"},
        },
        {
            "vulnerability": {"id": "CVE-2005-2541", "severity": "Negligible", "description": "Tar 1.15.1 ...",
                              "fix": {"versions": [], "state": "wont-fix"}},
            "artifact": {"name": "tar", "version": "1.34+dfsg-1.2+deb12u1", "type": "deb"},
        },
        {
            "vulnerability": {"id": "GHSA-9wx4-h78v-vm56", "severity": "Medium",
                              "fix": {"versions": ["2.32.0"], "state": "fixed"}},
            "artifact": {"name": "requests", "version": "2.31.0", "type": "python"},
        },
    ],
    "source": {"type": "image", "target": {"userInput": "127.0.0.1:5000/shop/orders@sha256:" + "1" * 64}},
    "distro": {"name": "debian", "version": "12"},
    "descriptor": {"name": "grype", "version": "0.74.0", "db": {"built": "2026-02-28T01:23:45Z"}},
}


def test_a_trivy_report_becomes_findings_worst_first(tmp_path):
    path = tmp_path / "trivy.json"
    path.write_text(json.dumps(TRIVY_REPORT))
    findings = parse_report_file(path)
    assert [(f.rule, f.severity, f.location, f.fixed_version) for f in findings] == [
        ("CVE-2023-45853", "CRITICAL", "zlib1g@1:1.2.13.dfsg-1", None),
        ("CVE-2024-2511", "HIGH", "libssl3@3.0.11-1~deb12u2", "3.0.13-1~deb12u1"),
        ("GHSA-9wx4-h78v-vm56", "MEDIUM", "requests@2.31.0", "2.32.0"),
        ("CVE-2011-3374", "LOW", "apt@2.6.1", None),
    ]
    assert findings[1].message == (
        "openssl: Unbounded memory growth with session handling in TLSv1.3 [127.0.0.1:5000/shop/orders (debian 12.5)]")
    assert {f.tool for f in findings} == {"trivy"}
    # "no CRITICAL" for staging blocks the zlib finding only.
    staging = evaluate_gate(findings, "no CRITICAL", [], date(2026, 3, 1), "orders")
    assert [f.rule for f in staging.blocking] == ["CVE-2023-45853"]


def test_a_grype_report_becomes_findings_with_fixed_versions(tmp_path):
    path = tmp_path / "grype.json"
    path.write_text(json.dumps(GRYPE_REPORT))
    findings = parse_report_file(path)
    assert [(f.rule, f.severity, f.location, f.fixed_version) for f in findings] == [
        ("CVE-2024-2511", "HIGH", "libssl3@3.0.11-1~deb12u2", "3.0.13-1~deb12u1"),
        ("GHSA-9wx4-h78v-vm56", "MEDIUM", "requests@2.31.0", "2.32.0"),
        ("CVE-2005-2541", "INFO", "tar@1.34+dfsg-1.2+deb12u1", None),
    ]
    assert findings[0].message.endswith("[deb]") and findings[0].tool == "grype"


def test_a_clean_trivy_report_has_no_findings():
    assert parse_trivy(json.dumps({"SchemaVersion": 2, "ArtifactName": "x", "Results": []})) == []
    assert parse_trivy(json.dumps({"SchemaVersion": 2, "ArtifactName": "x"})) == []


@pytest.mark.parametrize(
    ("parser", "text", "message"),
    [
        (parse_trivy, "", "trivy report r.json is empty"),
        (parse_trivy, "FATAL init error: DB not found", "trivy report r.json is not JSON"),
        (parse_trivy, '{"matches": []}', "not a Trivy JSON report"),
        (parse_trivy, '{"SchemaVersion": 2, "Results": [{"Vulnerabilities": [{"PkgName": "x"}]}]}',
         r"Results\[0\].Vulnerabilities\[0\] lacks 'VulnerabilityID'"),
        (parse_grype, '{"SchemaVersion": 2}', "not a Grype JSON report"),
        (parse_grype, '{"matches": [{"vulnerability": {"id": "CVE-1"}}]}', r"matches\[0\] lacks 'artifact'"),
    ],
)
def test_a_report_that_is_not_one_is_an_error_never_a_clean_scan(parser, text, message):
    with pytest.raises(ScanError, match=message):
        parser(text, "r.json")


def test_ecr_enhanced_inspector_findings_are_read_per_vulnerable_package():
    page = {
        "imageScanStatus": {"status": "ACTIVE"},
        "imageScanFindings": {"enhancedFindings": [{
            "severity": "CRITICAL", "title": "CVE-2023-45853 - zlib1g",
            "packageVulnerabilityDetails": {
                "vulnerabilityId": "CVE-2023-45853",
                "vulnerablePackages": [
                    {"name": "zlib1g", "version": "1.2.13.dfsg", "epoch": 1, "release": "1", "packageManager": "OS"},
                ],
            },
        }]},
    }
    (item,) = parse_ecr_findings([page])
    assert (item.rule, item.severity, item.location) == ("CVE-2023-45853", "CRITICAL", "zlib1g@1:1.2.13.dfsg-1")
