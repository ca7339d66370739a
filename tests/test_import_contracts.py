"""The import rules of docs/architecture.md hold, and lint-imports really enforces them.

Each story copies the three source packages and pyproject.toml (where the contracts live) to a temporary folder,
adds one forbidden import, and runs lint-imports there, with that folder first on PYTHONPATH so the copy, not
the installed checkout, is analysed. The untouched copy passes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("release_graph", "resources", "sensors")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def copy_sources(destination: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, destination / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "semgrep_rules"))
    shutil.copy(ROOT / "pyproject.toml", destination / "pyproject.toml")
    return destination


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def add_import(root: Path, module: str, line: str) -> None:
    path = root / module
    path.write_text(path.read_text() + f"\n{line}  # added by the story\n")


def test_the_sources_as_they_are_keep_every_contract(tmp_path):
    result = lint_imports(copy_sources(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "contract", "violation"), [
    ("release_graph/fleet/__init__.py", "import dagster",
     "release_graph.fleet and release_graph.security are plain Python: no Dagster BROKEN",
     "release_graph.fleet is not allowed to import dagster"),
    ("release_graph/security/findings.py", "from dagster_aws.ecr import ECRPublicResource",
     "release_graph.fleet and release_graph.security are plain Python: no Dagster BROKEN",
     "release_graph.security is not allowed to import dagster_aws"),
    ("release_graph/security/findings.py", "from release_graph.release import keys",
     "release_graph.fleet and release_graph.security import nothing above them BROKEN",
     "release_graph.security is not allowed to import release_graph.release"),
    ("sensors/drift.py", "from release_graph.assets.common import describe",
     "sensors do not import the asset factories BROKEN",
     "sensors is not allowed to import release_graph.assets"),
    ("resources/registry.py", "from release_graph.wiring import default_resources",
     "interfaces they implement BROKEN",
     "resources is not allowed to import release_graph.wiring"),
    ("release_graph/release/keys.py", "from release_graph.cli import main",
     "release_graph.release (rules, history, keys) does not import the assets or the \nCLI BROKEN",
     "release_graph.release is not allowed to import release_graph.cli"),
    ("release_graph/assets/common.py", "from release_graph.cli import operations",
     "no import cycles between sibling packages or modules BROKEN",
     "No cycles are allowed in release_graph"),
])
def test_a_forbidden_import_breaks_the_contract_that_names_it(tmp_path, module, line, contract, violation):
    root = copy_sources(tmp_path)
    add_import(root, module, line)
    result = lint_imports(root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert contract in result.stdout and violation in result.stdout, result.stdout
