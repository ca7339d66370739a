"""The environment matrix: which version of every service runs where, since when, approved by whom.

One function reads it from the event log, for the `fleet/environments` asset and `release-graph status`;
drift (what actually runs differs from what was recorded) is added when a deploy target is at hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import dagster as dg

from release_graph.fleet import Environment, Fleet, Service
from release_graph.release import history
from release_graph.release import metadata as M
from release_graph.release.keys import environment_key


@dataclass
class MatrixCell:
    service: str
    environment: str
    short_sha: str = ""
    digest: str = ""
    deployed_at: str = ""
    approved_by: str = ""
    running_digest: str | None = None  # filled in by `with_drift`
    drift: str = ""  # "" = in sync (or not observed); otherwise what differs
    waiting_for: str = ""  # "" = up to date; otherwise what the stage waits for (release-graph why)

    @property
    def deployed(self) -> bool:
        return bool(self.digest)


def _when(value) -> str:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")
    return str(value or "")


def read_matrix(instance: dg.DagsterInstance, fleet: Fleet) -> list[MatrixCell]:
    from release_graph.release.why import waiting_for

    cells = []
    for service in fleet.services.values():
        for environment in fleet.environments.values():
            record = history.latest(instance, environment_key(service, environment))
            cell = MatrixCell(service=service.name, environment=environment.name)
            if record is not None:
                cell.short_sha = record.value(M.SHORT_SHA, "") or ""
                cell.digest = record.digest or ""
                cell.deployed_at = _when(record.value(M.DEPLOYED_AT)) or record.recorded_at
                cell.approved_by = record.value(M.APPROVED_BY, "") or ""
            cell.waiting_for = waiting_for(instance, fleet, service, environment.name)
            cells.append(cell)
    return cells


def with_drift(cells: list[MatrixCell], fleet: Fleet, targets) -> list[MatrixCell]:
    """Compare each recorded deployment with what its environment's target (`targets.target_of`, the
    `deploy_targets` resource) actually runs; environments whose target is not configured are left as recorded."""
    from resources.targets import TargetNotConfigured

    for environment in fleet.environments.values():
        try:
            target = targets.target_of(environment)
        except TargetNotConfigured:
            continue
        running = target.running_services(fleet.name, environment.name)
        for cell in cells:
            if cell.environment != environment.name:
                continue
            actual = running.get(cell.service)
            cell.running_digest = actual.digest if actual else None
            cell.drift = drift_reason(cell.digest, actual)
    return cells


def drift_reason(recorded_digest: str, actual) -> str:
    """Why what runs differs from what was recorded, in words; "" when it matches."""
    if not recorded_digest:
        return "" if actual is None else f"runs {actual.digest or actual.image} but no deployment was recorded"
    if actual is None:
        return f"recorded {recorded_digest} but nothing runs"
    if not actual.running:
        return f"recorded {recorded_digest} but its container {actual.container_name} is {actual.status}"
    if actual.digest is None:
        return f"recorded {recorded_digest} but {actual.container_name}, started outside release-graph, serves it"
    if actual.digest != recorded_digest:
        return f"recorded {recorded_digest} but {actual.digest} runs"
    if not actual.digest_matches:
        return (f"recorded {recorded_digest} but container {actual.container_name} runs another image "
                f"({', '.join(actual.image_digests) or actual.image_id})")
    return ""


def short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12] if digest else ""


def as_markdown(cells: list[MatrixCell], fleet: Fleet) -> str:
    envs = list(fleet.environments)
    lines = ["| service | " + " | ".join(envs) + " |", "|---|" + "---|" * len(envs)]
    by_key = {(c.service, c.environment): c for c in cells}
    for service in fleet.services:
        row = []
        for env in envs:
            cell = by_key[(service, env)]
            if not cell.deployed:
                row.append("—" + (f" _{cell.waiting_for}_" if cell.waiting_for else ""))
                continue
            text = f"`{cell.short_sha or short(cell.digest)}` since {cell.deployed_at}"
            if cell.approved_by:
                text += f", approved by {cell.approved_by}"
            if cell.drift:
                text += f" **DRIFT: {cell.drift}**"
            if cell.waiting_for:
                text += f" _{cell.waiting_for}_"
            row.append(text)
        lines.append(f"| {service} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def as_table(cells: list[MatrixCell]) -> dg.TableMetadataValue:
    columns = ["service", "environment", "short_sha", "digest", "deployed_at", "approved_by", "waiting_for"]
    return dg.MetadataValue.table(
        records=[dg.TableRecord({c: getattr(cell, c) for c in columns}) for cell in cells],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in columns]),
    )


def as_text(cells: list[MatrixCell], fleet: Fleet) -> str:
    """A terminal table: one row per service, one column per environment."""
    envs = list(fleet.environments)
    by_key = {(c.service, c.environment): c for c in cells}
    header = ["SERVICE", *[e.upper() for e in envs]]
    rows = []
    for service in fleet.services:
        row = [service]
        for env in envs:
            cell = by_key[(service, env)]
            text = "-" if not cell.deployed else (cell.short_sha or short(cell.digest))
            if cell.approved_by:
                text += f" ({cell.approved_by})"
            if cell.drift:
                text += " DRIFT"
            row.append(text)
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    drifted = [c for c in cells if c.drift]
    lines += [f"drift: {c.service}/{c.environment}: {c.drift}" for c in drifted]
    lines += [f"{c.service}/{c.environment}: {c.waiting_for}" for c in cells if c.waiting_for]
    return "\n".join(lines)


def as_json(cells: list[MatrixCell]) -> list[dict]:
    return [asdict(c) for c in cells]


def in_sync_evaluation(fleet: Fleet, service: Service, environment: Environment, recorded_digest: str,
                       actual) -> tuple[bool, dict]:
    reason = drift_reason(recorded_digest, actual)
    return not reason, {
        M.DIGEST: recorded_digest,
        "running_digest": actual.digest if actual else "none",
        "container": actual.container_name if actual else "none",
        "drift": reason or "none",
    }


def network_policy_evaluation(fleet: Fleet, service: Service, refused: Mapping) -> tuple[bool, dict]:
    """Whether the network refused calls to or from `service` lately (`refused`: the target's "caller -> callee"
    -> RefusedCalls for its environment), and what to show: the refused calls, and who may call it. A refusal
    older than the target's window no longer fails the check; it stays listed."""
    own = _refused_of(service, refused)
    recent = {call: calls for call, calls in own.items() if calls.recent}
    callers = ", ".join(fleet.callers_of(service.name)) or "none"
    if recent:
        description = "refused: " + "; ".join(f"{call} ({calls.line()}): no edge in the manifest"
                                              for call, calls in sorted(recent.items()))
    else:
        description = f"no call to or from {service.name} refused lately; allowed callers: {callers}"
    return not recent, {"refused_calls": "; ".join(f"{call}: {calls.line()}" for call, calls in sorted(own.items()))
                        or "none", "allowed_callers": callers, "drift": description}


def network_policy_answer(service: Service, refused: Mapping) -> str:
    """What the network_policy check's evaluation depends on, as one stable value (the drift sensor's cursor): the
    refused calls' totals and whether each is recent, not the recent counts, which decay minute by minute."""
    return "; ".join(f"{call}: {calls.total}{' recent' if calls.recent else ''}"
                     for call, calls in sorted(_refused_of(service, refused).items()))


def _refused_of(service: Service, refused: Mapping) -> dict:
    """The refused calls to or from `service`."""
    return {call: calls for call, calls in refused.items()
            if call.endswith(f" -> {service.name}") or call.startswith(f"{service.name} -> ")}
