"""Given an image in the registry and its manifest mirrored into ECR (moto_server stands in for AWS and answers
every scan with one canned HIGH finding, CVE-9999-9999), when the ECR backend scans it, then prod's
"no HIGH or CRITICAL" blocks it and staging's "no CRITICAL" lets it through. Given a CLI scanner whose binary
is not installed, the error names the tool. Given the demo's offline OSV records, the osv backend reads the real
base image's packages and finds the advisories of its pip and setuptools."""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import date
from pathlib import Path

import pytest

from release_graph.security.gate import GateBlocked, evaluate_gate
from release_graph.security.osv import OsvError
from release_graph.security.vulnerabilities import ScanError, ScannerMissing
from resources.containers import ContainerEngine
from resources.registry import Registry
from resources.scanners import CliScanner, EcrScanner, VulnerabilityScanner, split_reference

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
TODAY = date(2026, 3, 1)
MANIFEST_TYPES = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"


@pytest.fixture
def ecr(moto_server, monkeypatch, run_id):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    scanner = EcrScanner(region_name=REGION, endpoint_url=moto_server, poll_interval_seconds=0.2, timeout_seconds=30)
    yield scanner
    for repository in scanner.client().describe_repositories()["repositories"]:
        if repository["repositoryName"].startswith(f"{run_id}/"):
            scanner.delete_repository(repository["repositoryName"])


@pytest.fixture
def orders_in_ecr(ecr, registry_addr, run_id):
    """The busybox base image's real manifest, put into ECR as <run id>/orders under the same digest."""
    request = urllib.request.Request(f"http://{registry_addr}/v2/base/busybox/manifests/latest",
                                     headers={"Accept": MANIFEST_TYPES})
    with urllib.request.urlopen(request, timeout=10) as response:
        manifest = response.read()
        media_type = response.headers["Content-Type"]
        registry_digest = response.headers["Docker-Content-Digest"]
    repository = f"{run_id}/orders"
    digest = ecr.mirror_manifest(repository, manifest, media_type, tag="a1b2c3d4e5f6")
    assert digest == registry_digest
    return f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{repository}@{digest}"


def test_the_canned_high_finding_blocks_prod_and_passes_staging(ecr, orders_in_ecr):
    report = ecr.scan(orders_in_ecr)
    assert report.tool == "ecr" and report.digest == orders_in_ecr.split("@")[1]
    assert [(f.rule, f.severity, f.location) for f in report.findings] == [
        ("CVE-9999-9999", "HIGH", "moto_fake@9.9.9")]
    assert report.counts["HIGH"] == 1 and report.details["status"] == "COMPLETE"

    prod = evaluate_gate(report.findings, "no HIGH or CRITICAL", [], TODAY, "orders")
    staging = evaluate_gate(report.findings, "no CRITICAL", [], TODAY, "orders")
    assert not prod.passed and [f.rule for f in prod.blocking] == ["CVE-9999-9999"]
    assert staging.passed
    with pytest.raises(GateBlocked, match="CVE-9999-9999 \\(HIGH\\) at moto_fake@9.9.9"):
        prod.raise_if_blocked(f"deploy of {orders_in_ecr} to prod")


def test_a_second_scan_on_the_same_day_reads_todays_results(ecr, orders_in_ecr):
    first = ecr.scan(orders_in_ecr)
    # ECR allows one scan per image per day (LimitExceededException): the findings of today's scan are used.
    second = ecr.scan(orders_in_ecr)
    assert second.findings == first.findings


def test_inspector_enhanced_findings_are_read_as_well(ecr, orders_in_ecr, moto_server, run_id):
    repository, digest = orders_in_ecr.split("/", 1)[1].split("@")
    configured = {"results": [{
        "registryId": ACCOUNT, "repositoryName": repository, "imageId": {"imageDigest": digest},
        "imageScanStatus": {"status": "ACTIVE", "description": "Continuous scan is selected for image."},
        "imageScanFindings": {"enhancedFindings": [{
            "severity": "CRITICAL", "title": "CVE-2023-45853 - zlib1g", "status": "ACTIVE",
            "packageVulnerabilityDetails": {"vulnerabilityId": "CVE-2023-45853", "vulnerablePackages": [
                {"name": "zlib1g", "version": "1.2.13.dfsg", "epoch": 1, "release": "1"}]},
        }]},
    }], "region": REGION}
    request = urllib.request.Request(f"{moto_server}/moto-api/static/ecr/scan-finding-results",
                                     data=json.dumps(configured).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()

    report = ecr.scan(orders_in_ecr)
    assert [(f.rule, f.severity, f.location) for f in report.findings] == [
        ("CVE-2023-45853", "CRITICAL", "zlib1g@1:1.2.13.dfsg-1")]
    assert not evaluate_gate(report.findings, "no CRITICAL", [], TODAY, "orders").passed


def test_an_image_ecr_does_not_have_is_a_scan_error(ecr, run_id):
    ecr.ensure_repository(f"{run_id}/payments")
    missing = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{run_id}/payments@sha256:{'0' * 64}"
    with pytest.raises(ScanError, match=f"ECR image {run_id}/payments@sha256:0+: "):
        ecr.scan(missing)


def test_scans_address_images_by_digest():
    with pytest.raises(ValueError, match="scans address an image by digest"):
        split_reference("127.0.0.1:5000/shop/orders:latest")
    digest = "sha256:" + "a" * 64
    assert split_reference(f"127.0.0.1:5000/shop/orders@{digest}") == ("127.0.0.1:5000", "shop/orders", digest)
    assert split_reference(f"shop/orders:1@{digest}") == ("", "shop/orders", digest)


def test_a_cli_scanner_that_is_not_installed_names_the_tool(tmp_path, monkeypatch):
    reference = "127.0.0.1:5000/base/busybox@sha256:" + "a" * 64
    with pytest.raises(ScannerMissing) as raised:
        CliScanner(tool="trivy", executable=str(tmp_path / "bin" / "trivy")).scan(reference)
    assert str(raised.value).startswith(f"trivy is not installed (no executable at {tmp_path}/bin/trivy)")

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ScannerMissing, match=r"grype is not installed \(no `grype` on PATH\): install the grype"):
        CliScanner(tool="grype").scan(reference)


# --- the `scanner` resource: the one way the vulnerability_scan check reaches a backend ---------------------


def test_the_scanner_resource_puts_an_image_from_the_fleets_registry_into_ecr_and_scans_it(
        ecr, moto_server, registry_addr):
    registry = Registry()
    repository = f"{registry_addr}/base/busybox"
    digest = registry.manifest_digest(repository, "latest")
    scanner = VulnerabilityScanner(backend="ecr", ecr_region=REGION, ecr_endpoint_url=moto_server,
                                   ecr_poll_interval_seconds=0.2, timeout_seconds=30)
    try:
        report = scanner.scan_image(repository, digest, registry=registry, tag="a1b2c3d4e5f6")
        assert report.tool == "ecr" and report.digest == digest and report.image == f"base/busybox@{digest}"
        assert [f.rule for f in report.findings] == ["CVE-9999-9999"]
        (image,) = ecr.client().describe_images(repositoryName="base/busybox")["imageDetails"]
        assert image["imageDigest"] == digest and image["imageTags"] == ["a1b2c3d4e5f6"]
        # a digest the fleet's registry does not have cannot be put into ECR: the scan cannot run
        with pytest.raises(ScanError, match=r"is not in its registry: nothing to scan"):
            scanner.scan_image(repository, "sha256:" + "0" * 64, registry=registry)
    finally:
        ecr.delete_repository("base/busybox")


def test_the_scanner_resource_names_a_cli_backend_that_is_not_installed_and_refuses_without_a_backend(tmp_path):
    digest = "sha256:" + "a" * 64
    trivy = VulnerabilityScanner(backend="trivy", executable=str(tmp_path / "trivy"))
    with pytest.raises(ScannerMissing, match=r"^trivy is not installed \(no executable at "):
        trivy.scan_image("127.0.0.1:5000/shop/orders", digest, registry=Registry())
    with pytest.raises(ScanError, match=r"no scanner is configured \(security.scanner: none\)"):
        VulnerabilityScanner().scan_image("127.0.0.1:5000/shop/orders", digest, registry=Registry())


# --- the osv backend: the image's SBOM against offline OSV records ---------------------------------------------

DEMO_OSV = Path(__file__).resolve().parents[2] / "examples" / "shop" / "osv"


def test_the_osv_backend_finds_the_advisories_of_the_base_images_pip_and_setuptools(registry_addr, tmp_path):
    registry = Registry()
    repository = f"{registry_addr}/base/python"
    digest = registry.manifest_digest(repository, "bookworm")
    scanner = VulnerabilityScanner(backend="osv", osv_database=str(DEMO_OSV))
    started = time.monotonic()
    report = scanner.scan_image(repository, digest, registry=registry, engine=ContainerEngine(),
                                report_path=str(tmp_path / "base-osv.json"))
    seconds = time.monotonic() - started
    print(f"\nosv scan of {repository}@{digest[:19]}: {seconds:.2f} s (SBOM {report.details['sbom_seconds']} s, "
          f"matching {report.details['match_seconds']} s, {report.details['packages_compared']} packages)")
    assert report.tool == "osv" and report.digest == digest
    assert [(f.rule, f.severity, f.location, f.fixed_version) for f in report.findings] == [
        ("GHSA-5rjg-fvgr-3xxf", "HIGH", "setuptools@66.1.1", "78.1.1"),
        ("GHSA-cx63-2mw6-8hw5", "HIGH", "setuptools@66.1.1", "70.0.0"),
        ("GHSA-mq26-g339-26xf", "LOW", "pip@23.0.1", "23.3"),
    ]
    assert report.details["osv_records"] == "4" and int(report.details["packages_compared"]) > 100
    # The report and the SBOM it matched are kept beside each other as the scan's evidence
    kept = json.loads((tmp_path / "base-osv.json").read_text())
    assert [row["rule"] for row in kept["findings"]] == [f.rule for f in report.findings]
    assert Path(report.details["sbom"]).parent == tmp_path / "base-osv"
    # Prod's "no HIGH or CRITICAL" would refuse the image, staging's "no CRITICAL" takes it
    assert not evaluate_gate(report.findings, "no HIGH or CRITICAL", [], TODAY, "orders").passed
    assert evaluate_gate(report.findings, "no CRITICAL", [], TODAY, "orders").passed


def test_the_osv_backend_refuses_without_a_database_or_an_engine_and_names_a_broken_record(tmp_path):
    digest = "sha256:" + "a" * 64
    repository = "127.0.0.1:5000/shop/orders"
    with pytest.raises(ScanError, match=r"scanner osv has no database \(security.osv.database\)"):
        VulnerabilityScanner(backend="osv").scan_image(repository, digest, registry=Registry(),
                                                       engine=ContainerEngine())
    with pytest.raises(ScanError, match=r"reads the packages of .* through the container engine, and none was given"):
        VulnerabilityScanner(backend="osv", osv_database=str(DEMO_OSV)).scan_image(repository, digest,
                                                                                    registry=Registry())
    # A broken database fails before the image is read: the scan could not run (an error, never a clean result)
    (tmp_path / "osv").mkdir()
    (tmp_path / "osv" / "GHSA-broken.json").write_text('{"id": "GHSA-broken", "affected": "pip"}')
    broken = VulnerabilityScanner(backend="osv", osv_database=str(tmp_path / "osv"))
    with pytest.raises(OsvError, match=r"record osv/GHSA-broken.json \(GHSA-broken\): field 'affected' is not a list"):
        broken.scan_image(repository, digest, registry=Registry(), engine=ContainerEngine())
    with pytest.raises(OsvError, match=r"OSV database .*nowhere does not exist"):
        VulnerabilityScanner(backend="osv", osv_database=str(tmp_path / "nowhere")).scan_image(
            repository, digest, registry=Registry(), engine=ContainerEngine())
