"""Offline OSV matching: an image's CycloneDX SBOM against OSV records, with each ecosystem's version order.

The demo's database (examples/shop/osv) holds real published advisories; records made up to exercise a rule
carry `TEST-` ids, so nothing here passes for a published advisory it is not.
"""

from __future__ import annotations

import json
import zipfile
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from release_graph.fleet import load_fleet
from release_graph.security import osv, sbom
from release_graph.security.findings import parse_threshold
from release_graph.security.gate import evaluate_gate
from release_graph.security.waivers import WaiverError, fleet_owners, load_waivers

SHOP = Path(__file__).resolve().parents[3] / "examples" / "shop"
DEMO_DATABASE = SHOP / "osv"
IMAGE = "127.0.0.1:5000/shop/orders"
DIGEST = "sha256:" + "1" * 64


def pypi(name: str, version: str) -> sbom.Package:
    return sbom.Package("pypi", name, version, sbom.purl("pypi", None, name.lower(), version), "/usr/lib/python3")


def deb(name: str, version: str, source: str | None = None, release: str = "12") -> sbom.Package:
    qualifiers = {"arch": "amd64", "distro": f"debian-{release}"}
    if source:
        qualifiers["upstream"] = source
    return sbom.Package("deb", name, version, sbom.purl("deb", "debian", name, version, qualifiers),
                        sbom.DPKG_STATUS)


def sbom_of(*packages: sbom.Package) -> dict:
    return sbom.build_document(IMAGE, DIGEST, packages)


def found(database: osv.OsvDatabase, *packages: sbom.Package) -> list[tuple[str, str, str | None]]:
    return [(f.rule, f.location, f.fixed_version) for f in osv.scan_sbom(sbom_of(*packages), database).findings]


def record(record_id: str, ecosystem: str, package: str, *ranges: list[dict], **extra) -> dict:
    return {"id": record_id, "summary": f"{record_id} in {package}",
            "affected": [{"package": {"ecosystem": ecosystem, "name": package},
                          "ranges": [{"type": "ECOSYSTEM", "events": events} for events in ranges]}],
            **extra}


def database_of(tmp_path: Path, *records: dict) -> osv.OsvDatabase:
    folder = tmp_path / "osv"
    folder.mkdir(exist_ok=True)
    for item in records:
        (folder / f"{item['id']}.json").write_text(json.dumps(item))
    return osv.load_database(folder)


# --- matching ------------------------------------------------------------------------------------------------


def test_a_known_vulnerable_pip_is_found_and_the_fixed_one_is_not():
    database = osv.load_database(DEMO_DATABASE)
    assert found(database, pypi("pip", "23.0.1")) == [("GHSA-mq26-g339-26xf", "pip@23.0.1", "23.3")]
    assert found(database, pypi("pip", "23.3")) == []
    assert found(database, pypi("pip", "24.0")) == []
    # setuptools 66.1.1 (Debian bookworm's) is inside two ranges, and past the ReDoS fix of 65.5.1
    assert found(database, pypi("setuptools", "66.1.1")) == [
        ("GHSA-5rjg-fvgr-3xxf", "setuptools@66.1.1", "78.1.1"),
        ("GHSA-cx63-2mw6-8hw5", "setuptools@66.1.1", "70.0.0"),
    ]
    assert [f.rule for f in osv.scan_sbom(sbom_of(pypi("setuptools", "65.5.0")), database).findings] == [
        "GHSA-5rjg-fvgr-3xxf", "GHSA-cx63-2mw6-8hw5", "GHSA-r9hx-vwmv-q579"]


def test_python_names_match_in_their_normalised_form(tmp_path):
    database = database_of(tmp_path, record("TEST-PY-NAMES", "PyPI", "Zope.Interface",
                                            [{"introduced": "0"}, {"fixed": "5.0"}]))
    assert found(database, pypi("zope_interface", "4.7")) == [("TEST-PY-NAMES", "zope_interface@4.7", "5.0")]


def test_a_range_that_opens_and_closes_several_times_is_followed_event_by_event(tmp_path):
    # Written out of order on purpose: OSV asks evaluators to sort the events by version.
    events = [{"fixed": "2.0.4"}, {"introduced": "1.0"}, {"introduced": "2.0"}, {"fixed": "1.2.3"}]
    database = database_of(tmp_path, record("TEST-PY-TWO-RANGES", "PyPI", "shoplib", events))

    def affected(version: str) -> bool:
        return bool(found(database, pypi("shoplib", version)))

    assert [v for v in ("0.9", "1.0", "1.2.2", "1.2.3", "1.5", "2.0", "2.0.4rc1", "2.0.4", "2.1")
            if affected(v)] == ["1.0", "1.2.2", "2.0", "2.0.4rc1"]
    # The fixed version reported is the first fix above the installed one.
    assert found(database, pypi("shoplib", "1.1")) == [("TEST-PY-TWO-RANGES", "shoplib@1.1", "1.2.3")]
    assert found(database, pypi("shoplib", "2.0.1")) == [("TEST-PY-TWO-RANGES", "shoplib@2.0.1", "2.0.4")]


def test_last_affected_includes_that_version_and_listed_versions_match_without_a_range(tmp_path):
    database = database_of(
        tmp_path,
        record("TEST-PY-LAST", "PyPI", "shoplib", [{"introduced": "0"}, {"last_affected": "1.4"}]),
        {"id": "TEST-PY-LISTED", "affected": [{"package": {"ecosystem": "PyPI", "name": "oldlib"},
                                               "versions": ["0.1dev-r1234", "0.2"]}]},
    )
    assert found(database, pypi("shoplib", "1.4")) == [("TEST-PY-LAST", "shoplib@1.4", None)]
    assert found(database, pypi("shoplib", "1.4.1")) == []
    # A legacy version PEP 440 cannot read still matches as written.
    assert found(database, pypi("oldlib", "0.1dev-r1234")) == [("TEST-PY-LISTED", "oldlib@0.1dev-r1234", None)]
    assert found(database, pypi("oldlib", "0.3")) == []


def test_debian_versions_compare_with_epochs_revisions_and_tildes(tmp_path):
    database = database_of(
        tmp_path,
        # An epoch outranks every upstream version: 1:1.2.13 is above 1.3.
        record("TEST-DEB-EPOCH", "Debian:12", "zlib", [{"introduced": "0"}, {"fixed": "1:1.2.13.dfsg-1+deb12u1"}]),
        # A security update's ~deb12uN sorts below the revision it backports to.
        record("TEST-DEB-TILDE", "Debian:12", "openssl", [{"introduced": "0"}, {"fixed": "3.0.13-1~deb12u1"}]),
    )
    assert found(database, deb("zlib1g", "1:1.2.13.dfsg-1", source="zlib")) == [
        ("TEST-DEB-EPOCH", "zlib1g@1:1.2.13.dfsg-1", "1:1.2.13.dfsg-1+deb12u1")]
    assert found(database, deb("zlib1g", "1.3.dfsg-1", source="zlib")) != []  # epoch 0 < epoch 1
    assert found(database, deb("zlib1g", "1:1.2.13.dfsg-1+deb12u1", source="zlib")) == []
    assert found(database, deb("libssl3", "3.0.11-1~deb12u2", source="openssl")) == [
        ("TEST-DEB-TILDE", "libssl3@3.0.11-1~deb12u2", "3.0.13-1~deb12u1")]
    assert found(database, deb("libssl3", "3.0.13-1~deb12u1", source="openssl")) == []
    assert found(database, deb("libssl3", "3.0.13-1", source="openssl")) == []  # the revision it backports to


def test_debian_records_match_by_source_package_and_release(tmp_path):
    database = database_of(
        tmp_path,
        record("TEST-DEB-BOOKWORM", "Debian:12", "python-pip", [{"introduced": "0"}, {"fixed": "23.0.1+dfsg-2"}]),
        record("TEST-DEB-BULLSEYE", "Debian:11", "python-pip", [{"introduced": "0"}, {"fixed": "99"}]),
    )
    # python3-pip is built from python-pip: the SBOM's upstream qualifier says so.
    assert found(database, deb("python3-pip", "23.0.1+dfsg-1", source="python-pip")) == [
        ("TEST-DEB-BOOKWORM", "python3-pip@23.0.1+dfsg-1", "23.0.1+dfsg-2")]
    # Without the source, a binary package is its own source: no match for python3-pip.
    assert found(database, deb("python3-pip", "23.0.1+dfsg-1")) == []
    # A binNMU (+b1) is compared by the source version it was rebuilt from.
    assert found(database, deb("python3-pip", "23.0.1+dfsg-2+b1", source="python-pip@23.0.1+dfsg-2")) == []


def test_withdrawn_records_and_git_ranges_are_skipped(tmp_path):
    withdrawn = record("TEST-PY-WITHDRAWN", "PyPI", "shoplib", [{"introduced": "0"}], withdrawn="2026-01-01T00:00:00Z")
    git_only = record("TEST-PY-GIT", "PyPI", "shoplib", [{"introduced": "0"}])
    git_only["affected"][0]["ranges"] = [{"type": "GIT", "repo": "shoplib.git",
                                          "events": [{"introduced": "0"}, {"fixed": "9f1c0de"}]}]
    git_only["affected"][0]["versions"] = ["1.0"]
    database = database_of(tmp_path, withdrawn, git_only)
    assert (database.records, database.withdrawn) == (2, 1)
    assert found(database, pypi("shoplib", "1.0")) == [("TEST-PY-GIT", "shoplib@1.0", None)]
    assert found(database, pypi("shoplib", "1.1")) == []


def test_a_zip_as_osv_publishes_it_reads_like_the_folder(tmp_path):
    archive = tmp_path / "PyPI-all.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for path in sorted((DEMO_DATABASE / "PyPI").glob("*.json")):
            out.write(path, path.name)
    database = osv.load_database(archive)
    assert database.records == 4
    assert found(database, pypi("pip", "23.0.1")) == [("GHSA-mq26-g339-26xf", "pip@23.0.1", "23.3")]


# --- severities ----------------------------------------------------------------------------------------------


def test_severities_come_from_the_record_then_its_cvss_vector(tmp_path):
    demo = {f.rule: f.severity for f in osv.scan_sbom(
        sbom_of(pypi("pip", "23.0.1"), pypi("setuptools", "65.0")), osv.load_database(DEMO_DATABASE)).findings}
    # GitHub's words (MODERATE is MEDIUM); pip's record has only its CVSS 3.1 vector, which scores 3.3: LOW.
    assert demo == {"GHSA-5rjg-fvgr-3xxf": "HIGH", "GHSA-cx63-2mw6-8hw5": "HIGH", "GHSA-r9hx-vwmv-q579": "MEDIUM",
                    "GHSA-mq26-g339-26xf": "LOW"}
    assert osv.cvss3_base_score("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H") == 9.8
    assert osv.cvss3_base_score("CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N") == 6.1
    database = database_of(tmp_path, record("TEST-PY-UNRATED", "PyPI", "shoplib", [{"introduced": "0"}]))
    (unrated,) = osv.scan_sbom(sbom_of(pypi("shoplib", "1.0")), database).findings
    assert unrated.severity == "UNKNOWN"
    # A rating per package (ecosystem_specific) comes before the record's CVSS vector
    per_package = record("TEST-PY-PER-PACKAGE", "PyPI", "otherlib", [{"introduced": "0"}],
                         severity=[{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}])
    per_package["affected"][0]["ecosystem_specific"] = {"severity": "moderate"}
    database = database_of(tmp_path, per_package)
    (rated,) = osv.scan_sbom(sbom_of(pypi("otherlib", "1.0")), database).findings
    assert rated.severity == "MEDIUM"


# --- what cannot be used -------------------------------------------------------------------------------------


def test_a_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(osv.OsvError, match=f"OSV database {tmp_path / 'nowhere'} does not exist"):
        osv.load_database(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(osv.OsvError, match="holds no OSV records"):
        osv.load_database(tmp_path / "empty")
    (tmp_path / "all.zip").write_text("not a zip")
    with pytest.raises(osv.OsvError, match="all.zip: not a folder and not a readable zip"):
        osv.load_database(tmp_path / "all.zip")


@pytest.mark.parametrize(("broken", "message"), [
    ("{not json", r"OSV record osv/TEST-BROKEN.json: not JSON"),
    ({"summary": "no id"}, r"OSV record osv/TEST-BROKEN.json: field 'id' is missing or not text"),
    ({"id": "TEST-BROKEN", "affected": {"package": "pip"}},
     r"OSV record osv/TEST-BROKEN.json \(TEST-BROKEN\): field 'affected' is not a list"),
    (record("TEST-BROKEN", "PyPI", "pip", [{"introduced": "0"}, {"fixed": "not a version"}]),
     r"\(TEST-BROKEN\): affected\[0\].ranges\[0\].events\[1\].fixed: 'not a version' is not a PyPI version"),
    (record("TEST-BROKEN", "Debian:12", "openssl", [{"introduced": "0"}, {"fixed": "3.0 13"}]),
     r"affected\[0\].ranges\[0\].events\[1\].fixed: '3.0 13' is not a Debian version"),
    (record("TEST-BROKEN", "PyPI", "pip", [{"introduced": "0", "fixed": "1.0"}]),
     r"affected\[0\].ranges\[0\].events\[0\]: expected exactly one of introduced, fixed, last_affected, limit"),
    (record("TEST-BROKEN", "PyPI", "pip", [{"fixed": "1.0"}]),
     r"affected\[0\].ranges\[0\].events: no 'introduced' event"),
    ({"id": "TEST-BROKEN", "affected": [{"package": {"name": "pip"}, "versions": ["1.0"]}]},
     r"affected\[0\].package.ecosystem: missing or not text"),
    ({"id": "TEST-BROKEN", "affected": [{"package": {"ecosystem": "PyPI", "name": "pip"},
                                         "ranges": [{"type": "RANGE", "events": []}]}]},
     r"affected\[0\].ranges\[0\].type: expected one of ECOSYSTEM, SEMVER, GIT, got 'RANGE'"),
    ({"id": "TEST-BROKEN", "affected": [{"package": {"ecosystem": "PyPI", "name": "pip"}}]},
     r"affected\[0\]: neither 'ranges' nor 'versions'"),
    ({"id": "TEST-BROKEN", "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N"}],
      "affected": [{"package": {"ecosystem": "PyPI", "name": "pip"}, "versions": ["1.0"]}]},
     r"severity\[0\].score: 'CVSS:3.1/AV:N' lacks or misstates the base metric 'S'"),
])
def test_a_malformed_record_is_an_error_naming_the_file_and_field(tmp_path, broken, message):
    folder = tmp_path / "osv"
    folder.mkdir()
    (folder / "TEST-BROKEN.json").write_text(broken if isinstance(broken, str) else json.dumps(broken))
    with pytest.raises(osv.OsvError, match=message):
        osv.load_database(folder)


def test_a_document_that_is_not_a_cyclonedx_sbom_is_refused(tmp_path):
    database = osv.load_database(DEMO_DATABASE)
    with pytest.raises(osv.OsvError, match=r"SBOM report.json: not a CycloneDX JSON document"):
        osv.scan_sbom({"matches": []}, database, "report.json")
    (tmp_path / "sbom.json").write_text("{")
    with pytest.raises(osv.OsvError, match=r"SBOM .*sbom.json: cannot read a JSON document"):
        osv.scan_sbom_file(tmp_path / "sbom.json", database)


# --- the demo: what `make demo` shows --------------------------------------------------------------------------

# What the demo images hold of Python (Debian bookworm's pip, setuptools and wheel; tests/.../test_security_osv
# scans the real base image in the engine test below).
DEMO_IMAGE_PACKAGES = (pypi("pip", "23.0.1"), pypi("setuptools", "66.1.1"), pypi("wheel", "0.38.4"),
                       deb("python3-pip", "23.0.1+dfsg-1", source="python-pip"))


def demo_gate(fleet, environment: str, waivers, today: date):
    findings = osv.scan_sbom(sbom_of(*DEMO_IMAGE_PACKAGES), osv.load_database(fleet.security.osv.database)).findings
    threshold = parse_threshold(fleet.environments[environment].scan_threshold or "none")
    return evaluate_gate(findings, threshold, waivers, today, "orders")


def test_the_demo_scan_shows_the_advisories_waived_for_prod_and_passing_staging():
    fleet = load_fleet(SHOP / "fleet.yaml", check_files=False)
    assert (fleet.security.scanner, fleet.security.osv.database) == ("osv", DEMO_DATABASE)
    waivers = load_waivers(fleet.security.waivers, known_owners=fleet_owners(fleet), known_services=fleet.services)
    assert {(w.rule, w.owner, w.expires) for w in waivers} == {
        ("GHSA-cx63-2mw6-8hw5", "team:storefront", date(2027, 6, 30)),
        ("GHSA-5rjg-fvgr-3xxf", "team:storefront", date(2027, 6, 30)),
    }
    today = date(2026, 12, 5)
    staging = demo_gate(fleet, "staging", waivers, today)
    prod = demo_gate(fleet, "prod", waivers, today)
    assert [(row["rule"], row["severity"], row["status"]) for row in prod.table] == [
        ("GHSA-5rjg-fvgr-3xxf", "HIGH", "waived by team:storefront until 2027-06-30"),
        ("GHSA-cx63-2mw6-8hw5", "HIGH", "waived by team:storefront until 2027-06-30"),
        ("GHSA-mq26-g339-26xf", "LOW", "below threshold")]
    assert staging.passed and not staging.blocking
    # prod refuses HIGH: the two setuptools advisories would block it, and their waivers let it through.
    assert prod.passed and sorted(f.rule for f, _ in prod.waived) == ["GHSA-5rjg-fvgr-3xxf", "GHSA-cx63-2mw6-8hw5"]
    unwaived = demo_gate(fleet, "prod", [], today)
    assert not unwaived.passed and [f.rule for f in unwaived.blocking] == ["GHSA-5rjg-fvgr-3xxf",
                                                                           "GHSA-cx63-2mw6-8hw5"]
    assert demo_gate(fleet, "staging", [], today).passed


def test_a_demo_waiver_past_its_expiry_stops_the_gate_naming_it():
    fleet = load_fleet(SHOP / "fleet.yaml", check_files=False)
    waivers = load_waivers(fleet.security.waivers, known_owners=fleet_owners(fleet), known_services=fleet.services)
    assert demo_gate(fleet, "prod", waivers, date(2027, 6, 30)).passed  # valid through its expiry day
    with pytest.raises(WaiverError) as expired:
        demo_gate(fleet, "prod", waivers, date(2027, 7, 1))
    assert "GHSA-cx63-2mw6-8hw5" in str(expired.value) and "waivers.yaml:7" in str(expired.value)
    assert "team:storefront" in str(expired.value) and "2027-06-30" in str(expired.value)


def test_the_demo_waivers_still_hold_today():
    # The demo (and the live story) reach prod only while these waivers hold: when they lapse, this says what to do
    # before `make demo` stops at prod's gate.
    fleet = load_fleet(SHOP / "fleet.yaml", check_files=False)
    today = datetime.now(UTC).date()
    lapsed = [f"{w.source} {w.rule} (expired {w.expires})" for w in load_waivers(fleet.security.waivers)
              if w.expired(today)]
    assert not lapsed, ("the demo's waivers expired: renew them in examples/shop/waivers.yaml (and the dates in "
                        f"this file's demo tests, docs/security.md and examples/shop/README.md): {lapsed}")
