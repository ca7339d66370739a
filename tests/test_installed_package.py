"""release-graph installed from its wheel (not `-e`) works away from the checkout: nothing in the package finds
files through the repository, and what it needs at run time (the semgrep rules) ships inside it.

The wheel is built with uv and installed into a fresh venv without dependencies; the dependencies come from
the project's venv through PYTHONPATH (a PYTHONPATH entry runs no .pth file, so the editable install's finder
stays out). Every command runs from a folder outside the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_FLEET = ROOT / "examples" / "shop" / "fleet.yaml"
SNAPSHOT_FILE = ROOT / "tests" / "release_graph" / "graph_snapshot.json"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(bin folder of a venv holding only the release-graph wheel, the environment to run it with)."""
    uv = shutil.which("uv")
    assert uv is not None, "uv is not installed: `make venv` installs it (the wheel is built with it)"
    tmp = tmp_path_factory.mktemp("installed")
    subprocess.run([uv, "build", "--wheel", "--quiet", "--out-dir", str(tmp / "dist"), str(ROOT)],
                   check=True, capture_output=True, text=True, timeout=120)
    (wheel,) = (tmp / "dist").glob("release_graph-*.whl")
    venv = tmp / "venv"
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, capture_output=True)
    subprocess.run([uv, "pip", "install", "--quiet", "--no-deps", "--python", str(venv / "bin" / "python"),
                    str(wheel)], check=True, capture_output=True, text=True, timeout=120)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RELEASE_GRAPH_", "PYTHON"))}
    env.update(PYTHONPATH=sysconfig.get_paths()["purelib"], PYTHONDONTWRITEBYTECODE="1",
               DAGSTER_HOME=str(tmp / "home"))
    (tmp / "home").mkdir()
    (tmp / "elsewhere").mkdir()
    return venv / "bin", env


def run(installed, *argv: str, **env: str) -> subprocess.CompletedProcess:
    bin_dir, base_env = installed
    done = subprocess.run(argv, cwd=Path(base_env["DAGSTER_HOME"]).parent / "elsewhere", env={**base_env, **env},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def test_the_installed_cli_validates_a_manifest_from_outside_the_checkout(installed):
    bin_dir, _ = installed
    # The demo's compliance policy names checkov rules, checked against the installed tools: where `make test`
    # installed them is named explicitly, as any installation names its tools folder.
    done = run(installed, str(bin_dir / "release-graph"), "validate", "--fleet", str(DEMO_FLEET),
               RELEASE_GRAPH_TOOLS=os.environ.get("RELEASE_GRAPH_TOOLS") or str(ROOT / ".tools"))
    assert "fleet 'shop' is valid" in done.stdout


def test_the_installed_package_builds_the_definitions_and_ships_the_semgrep_rules(installed):
    bin_dir, _ = installed
    code = (
        "import release_graph, resources, sensors\n"
        "from release_graph.definitions import defs\n"
        "from release_graph.security.sast import semgrep_rule_ids\n"
        "print(release_graph.__file__, resources.__file__, sensors.__file__)\n"
        "print(len(defs.resolve_asset_graph().get_all_asset_keys()), len(semgrep_rule_ids()))\n"
    )
    done = run(installed, str(bin_dir / "python"), "-c", code, RELEASE_GRAPH_FLEET=str(DEMO_FLEET))
    files, counts = done.stdout.splitlines()
    venv = bin_dir.parent
    assert all(Path(f).is_relative_to(venv) for f in files.split()), files
    assets, rules = (int(n) for n in counts.split())
    assert assets > 10 and rules > 0


def test_the_installed_snapshot_command_matches_the_committed_snapshot(installed):
    bin_dir, _ = installed
    done = run(installed, str(bin_dir / "python"), "-m", "release_graph.snapshot", "--fleet", str(DEMO_FLEET))
    assert done.stdout == SNAPSHOT_FILE.read_text()
