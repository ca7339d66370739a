"""Vulnerabilities without the internet: an image's CycloneDX SBOM matched against an offline OSV database.

The database is what OSV publishes per ecosystem (`<ecosystem>/all.zip`: one JSON record per advisory, in the
OSV schema), either that zip or a folder of `*.json` records (searched recursively), kept beside the fleet
manifest. Nothing is downloaded: the scan is as fresh as the copy, whose newest `modified` date is reported.

Matching follows the OSV schema:
- a package is `affected[].package` (`ecosystem`, `name`): `PyPI` matches the SBOM's `pkg:pypi/...` components
  (names compared in their PEP 503 form), `Debian:<release>` its `pkg:deb/debian/...` components of that
  release (by source package, the purl's `upstream` qualifier, as Debian's advisories name source packages;
  a component whose release the SBOM does not say is matched against every release, which over-reports rather
  than misses);
- a version is affected when it is listed in `versions`, or when an `ECOSYSTEM` range says so: its events
  (`introduced`, `fixed`, `last_affected`, `limit`) sorted in the ecosystem's order, the last one at or below the
  version decides (introduced: affected; fixed: not), so a range may open and close several times. Versions
  are ordered by PEP 440 (`packaging`) for PyPI and by Debian's rules (`python-debian`: epochs, upstream
  versions, revisions, `~`) for Debian. `GIT` ranges name commits, which an installed package does not carry:
  they are skipped (PyPI records list the affected versions as well).
- the severity is the record's own word (`database_specific.severity`, as GitHub's advisories write it), else
  the affected entry's (`ecosystem_specific` / `database_specific` severity), else the rating of the CVSS v3
  base score of its `severity[]` vector, else UNKNOWN (counted and shown, never blocking on a threshold).

A database that cannot be used (missing, not JSON, a record without an id, an event version the ecosystem
cannot read) is an `OsvError` naming the file and the field: a broken database is "the scan could not run",
never a clean result. Withdrawn records are skipped; ecosystems other than PyPI and Debian are skipped and
counted.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
import urllib.parse
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from debian.debian_support import Version as DebianVersion
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion
from packaging.version import Version as PythonVersion

from release_graph.security.findings import Finding, finding, normalise_severity, sort_findings
from release_graph.security.tools import ToolError

SUPPORTED_ECOSYSTEMS = ("PyPI", "Debian")
RANGE_TYPES = ("ECOSYSTEM", "SEMVER", "GIT")
EVENT_KINDS = ("introduced", "fixed", "last_affected", "limit")


class OsvError(ToolError):
    """An OSV database or SBOM that cannot be used; the message names the file and the field."""


# --- versions ------------------------------------------------------------------------------------------------


def _python_version(text: str) -> PythonVersion:
    return PythonVersion(text)


def _debian_version(text: str) -> DebianVersion:
    if not text or not re.fullmatch(r"(\d+:)?[0-9][A-Za-z0-9.+~:-]*", text):
        raise ValueError(f"{text!r} is not a Debian version")
    return DebianVersion(text)


PARSERS = {"PyPI": _python_version, "Debian": _debian_version}
LOWEST = object()  # `introduced: "0"`: before every version


def parse_version(ecosystem: str, text: str) -> Any:
    """An orderable version of `ecosystem` (PyPI or Debian); ValueError when the ecosystem cannot read it."""
    try:
        return PARSERS[ecosystem](text)
    except InvalidVersion as exc:
        raise ValueError(f"{text!r} is not a PyPI version (PEP 440)") from exc


# --- records -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """One ECOSYSTEM (or SEMVER) range: its events in the ecosystem's order, `introduced: 0` first."""

    events: tuple[tuple[str, Any, str], ...]  # (kind, parsed version or LOWEST, version as written)

    def affects(self, version: Any) -> tuple[bool, str | None]:
        """(affected, the first fixed version above it) for a parsed version."""
        affected = False
        for kind, bound, _text in self.events:
            if kind == "limit":
                continue
            if bound is not LOWEST and bound > version:
                break
            if kind == "introduced":
                affected = True
            elif kind == "fixed" or (kind == "last_affected" and bound is not LOWEST and version > bound):
                affected = False
        limits = [bound for kind, bound, _ in self.events if kind == "limit" and bound is not LOWEST]
        if affected and any(version >= bound for bound in limits):
            affected = False
        fixed = next((text for kind, bound, text in self.events
                      if kind == "fixed" and bound is not LOWEST and bound > version), None)
        return affected, fixed


@dataclass(frozen=True)
class Affected:
    """One `affected[]` entry of a record: a package of one ecosystem (and Debian release) and its ranges."""

    advisory: Advisory
    ecosystem: str  # PyPI or Debian
    release: str | None  # "12" for Debian:12; None: every release
    name: str  # as compared: PEP 503 for PyPI, as written for Debian
    ranges: tuple[Range, ...]
    versions: frozenset[str]  # listed affected versions, compared as written (and parsed, when they parse)
    parsed_versions: tuple[Any, ...]
    severity: str | None  # this entry's own severity word, when the record gives one per package

    def affects(self, version_text: str, version: Any) -> tuple[bool, str | None]:
        """(affected, the first fixed version above it); `version` None: one the ecosystem cannot order, which
        only the listed versions can match."""
        if version is not None:
            for item in self.ranges:
                affected, fixed = item.affects(version)
                if affected:
                    return True, fixed
        if version_text in self.versions or (version is not None and version in self.parsed_versions):
            return True, None
        return False, None


@dataclass(frozen=True)
class Advisory:
    id: str
    aliases: tuple[str, ...]
    summary: str
    severity_word: str | None  # the record's own word (database_specific.severity), normalised
    cvss_severity: str | None  # the rating of its CVSS v3 vector's base score
    modified: str
    source: str  # "osv/PyPI/GHSA-....json" or "all.zip:GHSA-....json", for messages


@dataclass
class OsvDatabase:
    source: Path
    by_package: dict[tuple[str, str], list[Affected]] = field(default_factory=dict)
    records: int = 0
    withdrawn: int = 0
    other_ecosystems: int = 0  # affected entries of ecosystems this scanner does not read
    newest_modified: str = ""

    def candidates(self, ecosystem: str, name: str) -> list[Affected]:
        return self.by_package.get((ecosystem, name), [])

    def details(self) -> dict[str, str]:
        return {
            "osv_database": str(self.source),
            "osv_records": str(self.records),
            "osv_newest_record": self.newest_modified or "unknown",
            "osv_withdrawn_skipped": str(self.withdrawn),
            "osv_other_ecosystem_entries": str(self.other_ecosystems),
        }


def load_database(path: str | Path) -> OsvDatabase:
    """Every record of an OSV folder (`**/*.json`) or zip (OSV's `all.zip`), indexed by ecosystem and package."""
    source = Path(path)
    if not source.exists():
        raise OsvError(f"OSV database {source} does not exist (a folder of OSV JSON records or an OSV all.zip)")
    database = OsvDatabase(source=source)
    for label, text in _record_texts(source):
        _add_record(database, label, text)
    if database.records == 0:
        raise OsvError(f"OSV database {source} holds no OSV records (*.json)")
    return database


def _record_texts(source: Path) -> Iterator[tuple[str, bytes]]:
    if source.is_dir():
        for path in sorted(source.rglob("*.json")):
            try:
                yield str(path.relative_to(source.parent)), path.read_bytes()
            except OSError as exc:
                raise OsvError(f"OSV record {path}: cannot read: {exc}") from exc
        return
    try:
        with zipfile.ZipFile(source) as archive:
            for member in sorted(archive.namelist()):
                if member.endswith(".json"):
                    yield f"{source.name}:{member}", archive.read(member)
    except (zipfile.BadZipFile, OSError) as exc:
        raise OsvError(f"OSV database {source}: not a folder and not a readable zip: {exc}") from exc


def _add_record(database: OsvDatabase, label: str, data: bytes) -> None:
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OsvError(f"OSV record {label}: not JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise OsvError(f"OSV record {label}: expected a JSON object (one OSV record), got {type(record).__name__}")
    record_id = record.get("id")
    if not isinstance(record_id, str) or not record_id.strip():
        raise OsvError(f"OSV record {label}: field 'id' is missing or not text")
    where = f"OSV record {label} ({record_id})"
    database.records += 1
    modified = record.get("modified")
    if isinstance(modified, str) and modified > database.newest_modified:
        database.newest_modified = modified
    if record.get("withdrawn"):
        database.withdrawn += 1
        return
    affected_list = record.get("affected", [])
    if not isinstance(affected_list, list):
        raise OsvError(f"{where}: field 'affected' is not a list")
    aliases = record.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise OsvError(f"{where}: field 'aliases' is not a list of ids")
    summary = record.get("summary") or record.get("details") or record_id
    if not isinstance(summary, str):
        raise OsvError(f"{where}: field 'summary' is not text")
    advisory = Advisory(
        id=record_id, aliases=tuple(aliases), summary=summary.strip().splitlines()[0] if summary.strip() else record_id,
        severity_word=record_severity_word(record), cvss_severity=record_cvss_severity(record, where),
        modified=str(modified or ""), source=label,
    )
    for index, entry in enumerate(affected_list):
        parsed = _parse_affected(advisory, entry, f"{where}: affected[{index}]")
        if parsed is None:
            database.other_ecosystems += 1
            continue
        database.by_package.setdefault((parsed.ecosystem, parsed.name), []).append(parsed)


def _parse_affected(advisory: Advisory, entry: Any, where: str) -> Affected | None:
    if not isinstance(entry, dict):
        raise OsvError(f"{where}: expected an object with 'package'")
    package = entry.get("package")
    if not isinstance(package, dict):
        raise OsvError(f"{where}.package: missing (expected {{ecosystem, name}})")
    ecosystem_text, name = package.get("ecosystem"), package.get("name")
    if not isinstance(ecosystem_text, str) or not ecosystem_text:
        raise OsvError(f"{where}.package.ecosystem: missing or not text")
    if not isinstance(name, str) or not name:
        raise OsvError(f"{where}.package.name: missing or not text")
    ecosystem, _, release = ecosystem_text.partition(":")
    if ecosystem not in SUPPORTED_ECOSYSTEMS:
        return None
    ranges = []
    for r_index, item in enumerate(entry.get("ranges") or []):
        parsed = _parse_range(ecosystem, item, f"{where}.ranges[{r_index}]")
        if parsed is not None:
            ranges.append(parsed)
    versions = entry.get("versions") or []
    if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
        raise OsvError(f"{where}.versions: expected a list of version strings")
    parsed_versions = []
    for text in versions:
        # Old PyPI releases carry legacy version strings PEP 440 cannot order: they still match as written.
        with contextlib.suppress(ValueError):
            parsed_versions.append(parse_version(ecosystem, text))
    if not ranges and not versions:
        raise OsvError(f"{where}: neither 'ranges' nor 'versions': which versions are affected is not said")
    specific = entry.get("ecosystem_specific") or {}
    database_specific = entry.get("database_specific") or {}
    own = (specific.get("severity") if isinstance(specific, dict) else None) or (
        database_specific.get("severity") if isinstance(database_specific, dict) else None)
    return Affected(
        advisory=advisory, ecosystem=ecosystem, release=release or None,
        name=canonicalize_name(name) if ecosystem == "PyPI" else name,
        ranges=tuple(ranges), versions=frozenset(versions), parsed_versions=tuple(parsed_versions),
        severity=normalise_severity(own) if isinstance(own, str) else None,
    )


def _parse_range(ecosystem: str, item: Any, where: str) -> Range | None:
    if not isinstance(item, dict):
        raise OsvError(f"{where}: expected an object with 'type' and 'events'")
    kind = item.get("type")
    if kind not in RANGE_TYPES:
        raise OsvError(f"{where}.type: expected one of {', '.join(RANGE_TYPES)}, got {kind!r}")
    if kind == "GIT":
        return None  # commits: nothing an installed package can be compared with
    events = item.get("events")
    if not isinstance(events, list) or not events:
        raise OsvError(f"{where}.events: expected a non-empty list such as [{{introduced: '0'}}, {{fixed: '1.2'}}]")
    parsed = []
    for e_index, event in enumerate(events):
        event_where = f"{where}.events[{e_index}]"
        if not isinstance(event, dict) or len(event) != 1 or next(iter(event)) not in EVENT_KINDS:
            raise OsvError(f"{event_where}: expected exactly one of {', '.join(EVENT_KINDS)}, got {event!r}")
        (event_kind, text), = event.items()
        if not isinstance(text, str) or not text:
            raise OsvError(f"{event_where}.{event_kind}: expected a version string, got {text!r}")
        if event_kind == "introduced" and text == "0":
            parsed.append((event_kind, LOWEST, text))
            continue
        try:
            parsed.append((event_kind, parse_version(ecosystem, text), text))
        except ValueError as exc:
            raise OsvError(f"{event_where}.{event_kind}: {exc}") from exc
    if not any(kind == "introduced" for kind, _, _ in parsed):
        raise OsvError(f"{where}.events: no 'introduced' event, so no version is affected by this range")
    return Range(tuple(_in_osv_order(parsed)))


def _in_osv_order(events: list[tuple[str, Any, str]]) -> list[tuple[str, Any, str]]:
    """By version, `introduced: 0` first; at the same version an introduction comes before what closes it.
    (python-debian's versions compare but do not sort by key, hence the comparison function.)"""
    order = {"introduced": 0, "last_affected": 1, "limit": 2, "fixed": 2}

    def compare(a: tuple[str, Any, str], b: tuple[str, Any, str]) -> int:
        if a[1] is LOWEST or b[1] is LOWEST:
            return (b[1] is LOWEST) - (a[1] is LOWEST) or order[a[0]] - order[b[0]]
        if a[1] != b[1]:
            return -1 if a[1] < b[1] else 1
        return order[a[0]] - order[b[0]]

    return sorted(events, key=functools.cmp_to_key(compare))


# --- severities ----------------------------------------------------------------------------------------------


def record_severity_word(record: dict[str, Any]) -> str | None:
    """The record's own severity word (GitHub's LOW/MODERATE/HIGH/CRITICAL), normalised; None without one."""
    specific = record.get("database_specific")
    if isinstance(specific, dict) and isinstance(specific.get("severity"), str):
        return normalise_severity(specific["severity"])
    return None


def record_cvss_severity(record: dict[str, Any], where: str) -> str | None:
    """The rating of the record's CVSS v3 vector (its base score, as CVSS rates it); None without one. A vector
    that cannot be scored is an error, as the record then says something this scanner cannot read."""
    for index, entry in enumerate(record.get("severity") or []):
        if isinstance(entry, dict) and str(entry.get("type", "")).startswith("CVSS_V3"):
            return cvss_rating(cvss3_base_score(str(entry.get("score", "")), f"{where}: severity[{index}].score"))
    return None


def finding_severity(entry: Affected) -> str:
    """The record's word, else the affected entry's, else the CVSS rating, else UNKNOWN."""
    advisory = entry.advisory
    for severity in (advisory.severity_word, entry.severity, advisory.cvss_severity):
        if severity and severity != "UNKNOWN":
            return severity
    return "UNKNOWN"


_CVSS3_WEIGHTS = {
    "AV": {"N": 0.85, "A": 0.62, "L": 0.55, "P": 0.2},
    "AC": {"L": 0.77, "H": 0.44},
    "UI": {"N": 0.85, "R": 0.62},
    "C": {"H": 0.56, "L": 0.22, "N": 0.0},
    "I": {"H": 0.56, "L": 0.22, "N": 0.0},
    "A": {"H": 0.56, "L": 0.22, "N": 0.0},
}


def cvss3_base_score(vector: str, where: str = "CVSS vector") -> float:
    """The CVSS v3.0/v3.1 base score of a vector (`CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H` is 9.8)."""
    parts = vector.split("/")
    if not parts or not re.fullmatch(r"CVSS:3\.[01]", parts[0]):
        raise OsvError(f"{where}: {vector!r} is not a CVSS v3 vector (CVSS:3.1/AV:.../A:...)")
    metrics = dict(part.split(":", 1) for part in parts[1:] if ":" in part)
    try:
        scope_changed = metrics["S"] == "C"
        privileges = {"N": 0.85, "L": 0.68 if scope_changed else 0.62, "H": 0.5 if scope_changed else 0.27}
        pr = privileges[metrics["PR"]]
        av, ac, ui = (_CVSS3_WEIGHTS[k][metrics[k]] for k in ("AV", "AC", "UI"))
        c, i, a = (_CVSS3_WEIGHTS[k][metrics[k]] for k in ("C", "I", "A"))
        if metrics["S"] not in ("U", "C"):
            raise KeyError("S")
    except KeyError as exc:
        raise OsvError(f"{where}: {vector!r} lacks or misstates the base metric {exc}") from None
    impact_sub = 1 - (1 - c) * (1 - i) * (1 - a)
    impact = (7.52 * (impact_sub - 0.029) - 3.25 * (impact_sub - 0.02) ** 15) if scope_changed else 6.42 * impact_sub
    exploitability = 8.22 * av * ac * pr * ui
    if impact <= 0:
        return 0.0
    raw = min(1.08 * (impact + exploitability), 10) if scope_changed else min(impact + exploitability, 10)
    return _round_up(raw)


def _round_up(value: float) -> float:
    # CVSS v3.1's Roundup: the smallest number with one decimal at or above value, free of float noise.
    scaled = round(value * 100000)
    return scaled / 100000.0 if scaled % 10000 == 0 else (math.floor(scaled / 10000) + 1) / 10.0


def cvss_rating(score: float) -> str:
    if score >= 9.0:
        return "CRITICAL"
    if score >= 7.0:
        return "HIGH"
    if score >= 4.0:
        return "MEDIUM"
    if score > 0:
        return "LOW"
    return "INFO"


# --- the SBOM ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SbomPackage:
    ecosystem: str  # PyPI or Debian
    release: str | None  # Debian release ("12"), from the purl's distro qualifier
    name: str  # as matched: PEP 503 for PyPI, the source package for Debian
    version: str  # as matched: the source version for a Debian binNMU, else the installed version
    location: str  # what the finding names: package@installed version


def sbom_packages(document: Any, origin: str) -> tuple[list[SbomPackage], int]:
    """The PyPI and Debian packages of a CycloneDX document, and how many components were of other kinds."""
    if not isinstance(document, dict) or document.get("bomFormat") != "CycloneDX":
        raise OsvError(f"SBOM {origin}: not a CycloneDX JSON document (bomFormat is not 'CycloneDX')")
    components = document.get("components") or []
    if not isinstance(components, list):
        raise OsvError(f"SBOM {origin}: field 'components' is not a list")
    packages, others = [], 0
    for index, component in enumerate(components):
        purl = component.get("purl") if isinstance(component, dict) else None
        if not isinstance(purl, str):
            others += 1
            continue
        package = _package_of_purl(purl, f"SBOM {origin}: components[{index}].purl")
        if package is None:
            others += 1
        else:
            packages.append(package)
    return packages, others


def _package_of_purl(purl: str, where: str) -> SbomPackage | None:
    match = re.fullmatch(r"pkg:([a-z]+)/(?:([^/@?#]+)/)?([^/@?#]+)@([^?#]+)(?:\?([^#]*))?(?:#.*)?", purl)
    if not match:
        return None
    kind, namespace, name, version, query = match.groups()
    name, version = urllib.parse.unquote(name), urllib.parse.unquote(version)
    qualifiers = dict(urllib.parse.parse_qsl(query or ""))
    if kind == "pypi":
        return SbomPackage("PyPI", None, canonicalize_name(name), version, f"{name}@{version}")
    if kind == "deb" and (namespace or "").lower() == "debian":
        distro = qualifiers.get("distro", "")
        release_match = re.fullmatch(r"debian-(\d+)(?:\.\d+)*", distro)
        source, _, source_version = (qualifiers.get("upstream") or "").partition("@")
        return SbomPackage("Debian", release_match.group(1) if release_match else None, source or name,
                           source_version or version, f"{name}@{version}")
    return None


# --- the scan ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OsvScan:
    findings: list[Finding]
    packages: int  # PyPI and Debian packages compared
    unmatched_components: int  # components of other ecosystems (not scanned)
    unreadable_versions: list[str]  # package@version the ecosystem cannot order (matched by listed versions only)


def scan_sbom(document: Any, database: OsvDatabase, origin: str = "(document)") -> OsvScan:
    """Every (advisory, package) of the SBOM that the database says is affected, as findings (tool `osv`).

    A finding's rule is the record's id (what a waiver names), its location `package@installed version`, its
    fixed version the first `fixed` event above the installed version, and its message the summary with the
    aliases (CVE ids) the record lists.
    """
    packages, others = sbom_packages(document, origin)
    findings, unreadable = [], []
    for package in packages:
        candidates = database.candidates(package.ecosystem, package.name)
        if not candidates:
            continue
        try:
            version = parse_version(package.ecosystem, package.version)
        except ValueError:
            version = None
            unreadable.append(package.location)
        for entry in candidates:
            if entry.release and package.release and entry.release != package.release:
                continue
            affected, fixed = entry.affects(package.version, version)
            if not affected:
                continue
            advisory = entry.advisory
            aliases = f" ({', '.join(advisory.aliases)})" if advisory.aliases else ""
            findings.append(finding("osv", advisory.id, finding_severity(entry), package.location,
                                    f"{advisory.summary}{aliases}", fixed))
    return OsvScan(sort_findings(dict.fromkeys(findings)), len(packages), others, unreadable)


def scan_sbom_file(path: str | Path, database: OsvDatabase) -> OsvScan:
    source = Path(path)
    try:
        document = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OsvError(f"SBOM {source}: cannot read a JSON document: {exc}") from exc
    return scan_sbom(document, database, str(source))

