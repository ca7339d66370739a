"""Waivers: findings a person accepted, with who, why and until when. They live in the fleet repo:

```yaml
# waivers.yaml
waivers:
  - rule: CVE-2024-12345          # a rule or finding id: CVE-..., B602, DL3008, CKV_DOCKER_2, rg-python-eval-exec
    service: orders               # optional; '*' (the default) means every service
    location: "app/db.py:*"       # optional glob on the finding's location (file:line or package@version)
    owner: team:orders            # an email address or team:<name>; must own a service of the fleet
    reason: no fix upstream yet; the vulnerable parser is not reachable from the API
    expires: 2026-09-30           # YYYY-MM-DD, valid through that day
```

A waived finding does not block until its waiver expires. An expired waiver is an error, never silently
ignored: the file has to be cleaned up (renewed with a new reason, or removed once the finding is fixed).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from release_graph.security.findings import Finding

WAIVER_KEYS = ("rule", "service", "location", "owner", "reason", "expires")
REQUIRED_KEYS = ("rule", "owner", "reason", "expires")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
TEAM = re.compile(r"^team:[A-Za-z0-9][A-Za-z0-9_.-]*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
RULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$")
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
ALL_SERVICES = "*"


class WaiverError(Exception):
    """A waivers file that cannot be used, or waivers that expired; `problems` lists each, one line apiece."""

    def __init__(self, problems: list[str], headline: str = "waivers cannot be applied"):
        self.problems = problems
        super().__init__(f"{headline}:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class Waiver:
    rule: str
    owner: str
    reason: str
    expires: date
    service: str = ALL_SERVICES
    location: str | None = None  # glob on Finding.location
    source: str = ""  # "waivers.yaml:12", for messages and metadata

    def applies_to_service(self, service: str) -> bool:
        return self.service in (ALL_SERVICES, service)

    def matches(self, item: Finding, service: str) -> bool:
        return (
            self.applies_to_service(service)
            and item.rule.upper() == self.rule.upper()
            and (self.location is None or fnmatch.fnmatchcase(item.location, self.location))
        )

    def expired(self, today: date) -> bool:
        return today > self.expires

    def as_row(self) -> dict[str, str]:
        return {
            "rule": self.rule,
            "service": self.service,
            "location": self.location or "",
            "owner": self.owner,
            "reason": self.reason,
            "expires": self.expires.isoformat(),
            "source": self.source,
        }


def load_waivers(
    path: str | Path,
    *,
    known_owners: Iterable[str] | None = None,
    known_services: Iterable[str] | None = None,
) -> list[Waiver]:
    """Read and validate a waivers file; every problem is reported at once, each as `file:line: ...`.

    A file that does not exist means no waivers. `known_owners` (e.g. every owner in the fleet manifest)
    and `known_services`, when given, must contain each waiver's owner and service.
    """
    source = Path(path)
    if not source.exists():
        return []
    label = source.name
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WaiverError([f"{label}: cannot read: {exc}"], f"invalid waivers file {source}") from None
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{label}:{mark.line + 1}" if mark else label
        problem = getattr(exc, "problem", None) or str(exc)
        if "alias" in f"{getattr(exc, 'context', '')} {problem}":
            problem += " (a bare * starts a YAML alias: write service: '*')"
        raise WaiverError([f"{where}: not valid YAML: {problem}"], f"invalid waivers file {source}") from None
    if root is None:
        return []
    problems: list[str] = []
    owners = set(known_owners) if known_owners is not None else None
    services = set(known_services) if known_services is not None else None

    def at(node: yaml.Node) -> str:
        return f"{label}:{node.start_mark.line + 1}"

    if not isinstance(root, yaml.MappingNode):
        raise WaiverError(
            [f"{at(root)}: expected a mapping with one key, `waivers`, holding a list of waivers"],
            f"invalid waivers file {source}",
        )
    entries_node = None
    for key_node, value_node in root.value:
        if _scalar(key_node) == "waivers":
            entries_node = value_node
        else:
            problems.append(f"{at(key_node)}: unknown key {_scalar(key_node)!r} (expected: waivers)")
    if entries_node is None:
        problems.append(f"{at(root)}: missing key `waivers`")
        raise WaiverError(problems, f"invalid waivers file {source}")
    if isinstance(entries_node, yaml.ScalarNode) and entries_node.tag.endswith(":null"):
        entries_node = yaml.SequenceNode("tag:yaml.org,2002:seq", [], entries_node.start_mark, entries_node.end_mark)
    if not isinstance(entries_node, yaml.SequenceNode):
        problems.append(f"{at(entries_node)}: `waivers` must be a list")
        raise WaiverError(problems, f"invalid waivers file {source}")

    waivers: list[Waiver] = []
    seen: dict[tuple[str, str, str | None], str] = {}
    for index, entry in enumerate(entries_node.value):
        where = f"{at(entry)}: waiver #{index + 1}"
        if not isinstance(entry, yaml.MappingNode):
            problems.append(f"{where}: expected a mapping with keys {', '.join(WAIVER_KEYS)}")
            continue
        values: dict[str, Any] = {}
        lines: dict[str, str] = {}
        for key_node, value_node in entry.value:
            key = _scalar(key_node)
            if key not in WAIVER_KEYS:
                problems.append(f"{at(key_node)}: waiver #{index + 1}: unknown key {key!r} "
                                f"(expected one of: {', '.join(WAIVER_KEYS)})")
                continue
            if key in values:
                problems.append(f"{at(key_node)}: waiver #{index + 1}: key {key!r} is given twice")
                continue
            values[key] = _value(value_node)
            lines[key] = at(value_node)
        rule_label = f" ({values['rule']})" if isinstance(values.get("rule"), str) else ""
        for key in REQUIRED_KEYS:
            if key not in values or values[key] in (None, ""):
                problems.append(f"{where}{rule_label}: missing `{key}`")
        entry_problems = _check_fields(values, lines, index, owners, services)
        problems.extend(entry_problems)
        if entry_problems or any(values.get(k) in (None, "") for k in REQUIRED_KEYS):
            continue
        waiver = Waiver(
            rule=values["rule"],
            owner=values["owner"],
            reason=" ".join(values["reason"].split()),
            expires=_as_date(values["expires"]),
            service=values.get("service") or ALL_SERVICES,
            location=values.get("location"),
            source=at(entry),
        )
        identity = (waiver.rule.upper(), waiver.service, waiver.location)
        if identity in seen:
            problems.append(
                f"{where} ({waiver.rule}): the same rule, service and location are already waived at {seen[identity]}"
            )
            continue
        seen[identity] = waiver.source
        waivers.append(waiver)
    if problems:
        raise WaiverError(problems, f"invalid waivers file {source}")
    return waivers


def _check_fields(
    values: dict[str, Any], lines: dict[str, str], index: int, owners: set[str] | None, services: set[str] | None
) -> list[str]:
    problems = []

    def bad(key: str, message: str) -> None:
        problems.append(f"{lines[key]}: waiver #{index + 1}, field `{key}`: {message}")

    rule = values.get("rule")
    if "rule" in values and rule not in (None, "") and not (isinstance(rule, str) and RULE_ID.match(rule)):
        bad("rule", f"expected a rule or finding id such as CVE-2024-1234, B602 or CKV_DOCKER_2, got {rule!r}")
    owner = values.get("owner")
    if "owner" in values and owner not in (None, ""):
        if not (isinstance(owner, str) and (EMAIL.match(owner) or TEAM.match(owner))):
            bad("owner", f"{owner!r} is neither an email address nor team:<name>")
        elif owners is not None and owner not in owners:
            known = ", ".join(sorted(owners)) or "none"
            bad("owner", f"{owner!r} is not an owner of any service in the fleet (known owners: {known})")
    reason = values.get("reason")
    if "reason" in values and reason not in (None, "") and not (isinstance(reason, str) and reason.strip()):
        bad("reason", f"expected text saying why the finding is accepted, got {reason!r}")
    if "expires" in values and values["expires"] not in (None, "") and _as_date(values["expires"]) is None:
        bad("expires", f"expected a date YYYY-MM-DD, got {values['expires']!r}")
    if "service" in values:
        service = values["service"]
        if not (isinstance(service, str) and (service == ALL_SERVICES or DNS_LABEL.match(service))):
            bad("service", f"expected a service name or '*', got {service!r}")
        elif services is not None and service != ALL_SERVICES and service not in services:
            bad("service", f"no service {service!r} in the fleet (services: {', '.join(sorted(services))})")
    if "location" in values and not (isinstance(values["location"], str) and values["location"].strip()):
        bad("location", f"expected a glob on the finding's location (e.g. 'app/db.py:*'), got {values['location']!r}")
    return problems


def _scalar(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else f"<{node.id}>"


def _value(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except (ValueError, yaml.YAMLError):
        # e.g. a timestamp-looking 2026-13-01: keep the text, so the field check can say what is wrong with it.
        return node.value if isinstance(node, yaml.ScalarNode) else None
    finally:
        loader.dispose()


def _as_date(value: Any) -> date | None:
    if isinstance(value, date):
        return value
    if isinstance(value, str) and ISO_DATE.match(value.strip()):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            return None
    return None


def apply_waivers(
    findings: Iterable[Finding], waivers: Iterable[Waiver], today: date, service: str
) -> tuple[list[Finding], list[tuple[Finding, Waiver]]]:
    """Split findings into (not waived, [(waived finding, its waiver)]) for `service` on `today`.

    Raises WaiverError listing every expired waiver that applies to the service (expired ones for other
    services are that service's problem), whether or not it still matches a finding: a stale exception
    must be renewed or removed by a person, not dropped by the pipeline.
    """
    applicable = [w for w in waivers if w.applies_to_service(service)]
    expired = [w for w in applicable if w.expired(today)]
    if expired:
        raise WaiverError(
            [f"{w.source}: {w.rule} for service {w.service!r} (owner {w.owner}) expired on {w.expires.isoformat()}"
             for w in expired],
            f"expired waivers for service '{service}' (today is {today.isoformat()}): renew them with a new "
            "expiry and reason, or remove them",
        )
    remaining: list[Finding] = []
    waived: list[tuple[Finding, Waiver]] = []
    for item in findings:
        waiver = next((w for w in applicable if w.matches(item, service)), None)
        if waiver is None:
            remaining.append(item)
        else:
            waived.append((item, waiver))
    return remaining, waived


def fleet_owners(fleet: Any) -> set[str]:
    """Every owner named by a service of the fleet: the owners a waiver may name."""
    return {owner for svc in fleet.services.values() for owner in svc.owners}
