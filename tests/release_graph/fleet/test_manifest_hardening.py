"""Immutable containers by default: a service declares the folders it writes to, and opts out of a lock only with
the reason why. Every mistake names the file, line, service and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from release_graph.fleet import Hardening, ManifestError, load_fleet

FLEET = """\
fleet: shop
registry: 127.0.0.1:5000/shop
services:
  orders:
    repo: repos/orders
    build: {}
    port: 8080
  web:
    repo: repos/web
    build: {}
    port: 80
"""


def write_fleet(tmp_path: Path, web_extra: str) -> Path:
    for name in ("orders", "web"):
        (tmp_path / "repos" / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "repos" / name / "Dockerfile").write_text("FROM scratch\n")
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET + web_extra.rstrip(" ") + "environments:\n  dev: {target: docker}\n")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_fleet(path)
    return caught.value.problems


def test_a_service_is_immutable_unless_it_says_which_folders_it_writes_and_why_it_needs_more(tmp_path):
    fleet = load_fleet(write_fleet(tmp_path, """\
            hardening:
              tmpfs: [/var/cache/nginx, /var/run]
              capabilities: {add: [net_bind_service], reason: nginx listens on port 80}
              writable_root: the vendor image rewrites its config at start
        """.replace("            ", "    ")))
    assert fleet.services["orders"].hardening == Hardening()
    web = fleet.services["web"].hardening
    assert web.tmpfs == ("/var/cache/nginx", "/var/run")
    assert web.writable_folders == ("/tmp", "/var/cache/nginx", "/var/run")
    assert (web.capabilities, web.capabilities_reason) == (("NET_BIND_SERVICE",), "nginx listens on port 80")
    assert web.writable_root == "the vendor image rewrites its config at start"
    assert web.run_as_root is None and web.privilege_escalation is None


def test_an_opt_out_without_a_reason_and_a_wrong_folder_or_capability_are_refused_by_line_and_field(tmp_path):
    problems = problems_of(write_fleet(tmp_path, """\
            hardening:
              tmpfs: [var/cache, /]
              run_as_root: ""
              privilege_escalation: true
              capabilities: {add: [NET_BIND_SERVICE, CAP_TELEPORT]}
              read_only: false
        """.replace("            ", "    ")))
    assert problems == [
        "fleet.yaml:17: service 'web', field 'read_only': unknown key (expected one of: capabilities, "
        "privilege_escalation, run_as_root, tmpfs, writable_root)",
        "fleet.yaml:13: service 'web', field 'hardening.tmpfs': expected a list of absolute folders inside the "
        "container, such as [/var/cache/app], got ['var/cache', '/']",
        "fleet.yaml:14: service 'web', field 'hardening.run_as_root': expected the reason this service needs it "
        "(text), got ''",
        "fleet.yaml:15: service 'web', field 'hardening.privilege_escalation': expected the reason this service "
        "needs it (text), got True",
        "fleet.yaml:16: service 'web', field 'hardening.capabilities.add': unknown Linux capabilities "
        "['TELEPORT'] (capabilities(7), e.g. NET_BIND_SERVICE)",
        "fleet.yaml:16: service 'web', field 'hardening.capabilities.reason': expected the reason this service "
        "needs these capabilities (text)",
    ]


def test_hardening_must_be_a_mapping(tmp_path):
    assert problems_of(write_fleet(tmp_path, "    hardening: read-only\n")) == [
        "fleet.yaml:12: service 'web', field 'hardening': expected a mapping such as {tmpfs: [/var/cache/app]} "
        "or {writable_root: <why it must write>}"]
