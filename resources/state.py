"""Where release-graph keeps its runtime state (git mirrors, haproxy state of published ports).

One answer for every process of an installation (UI, daemon, runs, CLI, sensors): they must agree on it.
"""

from __future__ import annotations

import os
from pathlib import Path

STATE_ENV = "RELEASE_GRAPH_STATE"
DEFAULT_STATE_DIR = ".dagster_home"  # the default DAGSTER_HOME of `make demo`


def state_dir() -> Path:
    """$RELEASE_GRAPH_STATE, else $DAGSTER_HOME, else ./.dagster_home; read at call time, never at import."""
    chosen = os.environ.get(STATE_ENV) or os.environ.get("DAGSTER_HOME") or DEFAULT_STATE_DIR
    return Path(chosen).expanduser().resolve()
