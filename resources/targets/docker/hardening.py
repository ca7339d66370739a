"""How a container is locked down on the Docker target: the manifest's `hardening:` as engine options."""

from __future__ import annotations

from release_graph.fleet.model import Hardening


def hardened(hardening: Hardening) -> dict:
    """The engine options that make a container what its deployment's `hardening` check asks: the image's files
    cannot be changed at run time (scratch files go to in-memory folders), no Linux capability is kept, and a
    setuid binary gains nothing. Each opt-out is the manifest's, with its reason (`hardening:`)."""
    options: dict = {"tmpfs": {path: "" for path in hardening.writable_folders}, "cap_drop": ["ALL"]}
    if hardening.writable_root is None:
        options["read_only"] = True
    if hardening.capabilities:
        options["cap_add"] = list(hardening.capabilities)
    if hardening.privilege_escalation is None:
        options["security_opt"] = ["no-new-privileges"]
    return options
