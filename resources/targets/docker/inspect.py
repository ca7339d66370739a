"""Reading what the engine reports about a container: its address and aliases on a network, its status, its
times, its last log lines; and engine failures turned into TargetError naming the engine and the operation.

Engine behaviour these helpers are written around (Podman 4.3, measured; see notes/host-facts.md):
- A stopped container keeps its network membership and aliases in `inspect`, without an address.
- Podman 4.3's log `tail=` counts each partial write as a line and returns them out of order: logs are read
  as a stream and cut here.
"""

import re
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import requests
from docker.errors import APIError, DockerException, NotFound

from resources.targets.interface import LOG_TAIL_LINES, TargetError


def iso(engine_time: str | None) -> str | None:
    """The engine's RFC 3339 time (nanoseconds, `Z`) as a Python ISO string in UTC; None for "never"."""
    if not engine_time or engine_time.startswith("0001-01-01"):
        return None
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?", engine_time)
    if not match:
        return engine_time
    base, fraction, zone = match.groups()
    text = base + (f".{fraction[:6].ljust(6, '0')}" if fraction else "") + ("+00:00" if zone in (None, "Z") else zone)
    return datetime.fromisoformat(text).astimezone(UTC).isoformat()


def epoch(engine_time: str | None) -> float:
    value = iso(engine_time)
    return datetime.fromisoformat(value).timestamp() if value else 0.0


def created(container) -> float:
    return epoch(container.attrs.get("Created"))


def container_labels(container) -> dict[str, str]:
    return container.attrs.get("Config", {}).get("Labels") or {}


def network_entry(container, network: str) -> dict[str, Any]:
    return ((container.attrs.get("NetworkSettings") or {}).get("Networks") or {}).get(network) or {}


def address(container, network: str) -> str | None:
    return network_entry(container, network).get("IPAddress") or None


def holds_alias(container, network: str, alias: str) -> bool:
    return alias in (network_entry(container, network).get("Aliases") or [])


def status(container) -> str:
    return str((container.attrs.get("State") or {}).get("Status") or container.status or "unknown")


def started_at(container) -> str | None:
    return iso((container.attrs.get("State") or {}).get("StartedAt"))


def logs_tail(container, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` log lines. Read as a stream and cut here: Podman 4.3's `tail=` counts each partial
    write as a line and returns them out of order (a Python `print` to stderr is several writes)."""
    tail: deque[bytes] = deque(maxlen=lines)
    pending = b""
    try:
        for chunk in container.logs(stdout=True, stderr=True, stream=True, follow=False):
            pending += chunk
            *complete, pending = pending.split(b"\n")
            tail.extend(complete)
    except (NotFound, APIError, requests.RequestException):
        return ""
    if pending:
        tail.append(pending)
    return b"\n".join(tail).decode("utf-8", "replace").rstrip("\n")


def describe(exc: BaseException) -> str:
    if isinstance(exc, APIError):
        return f"{exc.status_code} {exc.explanation or exc}"
    return f"{type(exc).__name__}: {exc}"


@contextmanager
def engine_errors(engine_address: str, what: str) -> Iterator[None]:
    """Engine failures as TargetError naming the engine and the operation (NotFound passes through)."""
    try:
        yield
    except (TargetError, NotFound):
        raise
    except (DockerException, requests.RequestException) as exc:
        raise TargetError(f"{what}: container engine at {engine_address}: {describe(exc)}") from exc
