"""The fleet package is plain Python: loading a manifest imports no Dagster, no adapter and runs no tool."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SHOP_FLEET = Path(__file__).resolve().parents[3] / "examples" / "shop" / "fleet.yaml"


def test_loading_the_demo_manifest_imports_nothing_beyond_the_fleet_package():
    code = (
        "import sys\n"
        "from release_graph.fleet import load_fleet\n"
        f"load_fleet({str(SHOP_FLEET)!r}, check_files=False)\n"
        "loaded = [m for m in ('dagster', 'subprocess', 'resources', 'release_graph.security') if m in sys.modules]\n"
        "print(loaded)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
