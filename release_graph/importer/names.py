"""Manifest names: services are DNS labels, so deploy-file names like `my_service` are rewritten."""

from __future__ import annotations

import re

RESERVED = {"fleet"}  # the fleet-level asset group


def dns_name(source: str, taken: set[str], reserved: set[str] = RESERVED) -> str:
    """A DNS label for `source`, unique among `taken` (the caller adds the result to it)."""
    name = re.sub(r"[^a-z0-9-]+", "-", source.lower()).strip("-")[:63].strip("-") or "service"
    if name in reserved:
        name = f"{name}-service"
    candidate, counter = name, 2
    while candidate in taken:
        suffix = f"-{counter}"
        candidate = name[: 63 - len(suffix)].rstrip("-") + suffix
        counter += 1
    return candidate


def rename_note(source: str, name: str) -> str:
    return f"'{source}' is written as service '{name}': manifest service names are DNS labels (not 'fleet')"
