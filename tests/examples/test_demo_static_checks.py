"""The demo passes the static checks its releases get (bandit, hadolint) until a demo commit breaks them.

The image step judges every shop commit with bandit (blocking at medium) and hadolint (a warning), so the
shop's own sources must come out clean, and `demo commit --break sast` must really be caught.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from release_graph import demo

SHOP_DIR = Path(__file__).resolve().parents[2] / "examples" / "shop"
SERVICES = ("inventory", "payments", "orders", "gateway")
TOOLS = Path(sys.executable).parent


def bandit(folder: Path) -> list[tuple[str, str, str]]:
    done = subprocess.run([str(TOOLS / "bandit"), "-q", "-r", str(folder), "-f", "json"], capture_output=True,
                          text=True, timeout=120)
    report = json.loads(done.stdout)
    assert not report["errors"], report["errors"]
    return [(r["test_id"], r["issue_severity"], Path(r["filename"]).name) for r in report["results"]]


@pytest.mark.parametrize("service", SERVICES)
def test_bandit_finds_nothing_in_a_shop_service(service):
    assert bandit(SHOP_DIR / "services" / service) == []


@pytest.mark.parametrize("dockerfile", [*(f"services/{s}/Dockerfile" for s in SERVICES), "e2e/Dockerfile"])
def test_hadolint_finds_nothing_in_the_shop_dockerfiles(dockerfile):
    done = subprocess.run([str(TOOLS / "hadolint"), str(SHOP_DIR / dockerfile)], capture_output=True, text=True,
                          timeout=60)

    assert (done.returncode, done.stdout) == (0, "")


def test_a_demo_commit_that_breaks_sast_is_a_high_severity_bandit_finding(tmp_path):
    demo.sync_repos(SHOP_DIR / "services", tmp_path)
    demo.commit_change("payments", tmp_path, breakage="sast")

    findings = bandit(tmp_path / "payments")

    assert ("B602", "HIGH", "debug_shell.py") in findings
    assert {name for _rule, _severity, name in findings} == {"debug_shell.py"}
