"""Where the analysis tools live and how they are run: the one tool runner of release-graph (security
checks and release evidence alike).

semgrep and checkov pin libraries that clash with Dagster's, so each has its own venv under
`$RELEASE_GRAPH_TOOLS` (default `./.tools`, as `make tools` creates it), made by `scripts/install_tools.sh`.
hadolint and bandit come with the main venv (requirements.lock). A tool that is not there raises ToolMissing
with the command that installs it: a missing tool is "the check could not run", never a clean result.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

TOOLS_ENV = "RELEASE_GRAPH_TOOLS"
DEFAULT_TOOLS_DIR = ".tools"
INSTALL_SCRIPT = "scripts/install_tools.sh"
EXCERPT_CHARS = 800
# How often each tool was started by this process: what tells that a tool ran once, not once per check.
RUNS: Counter[str] = Counter()


class EvidenceError(Exception):
    """A tool run or a report that yields no usable evidence: the check could not run."""


class ToolError(EvidenceError):
    """A tool ran but gave no usable report (crash, timeout, output that is not its report)."""


class ToolMissing(EvidenceError):
    """A tool is not installed where release-graph looks for it (or could not be started)."""


def tools_dir() -> Path:
    """`$RELEASE_GRAPH_TOOLS`, else `./.tools`, read at call time (never at import)."""
    configured = os.environ.get(TOOLS_ENV)
    return Path(configured).expanduser() if configured else Path.cwd() / DEFAULT_TOOLS_DIR


def isolated_tool(name: str, base: Path | None = None) -> Path:
    """The executable of a tool installed in its own venv (`<tools>/<name>-venv/bin/<name>`)."""
    folder = Path(base) if base is not None else tools_dir()
    executable = folder / f"{name}-venv" / "bin" / name
    if not executable.is_file():
        raise ToolMissing(
            f"{name} is not installed: no {executable}. Install it with `bash {INSTALL_SCRIPT} {name}` "
            f"(it creates {folder / (name + '-venv')}; set ${TOOLS_ENV} to use another folder)"
        )
    return executable


def main_venv_tool(name: str, package: str, bin_dir: Path | None = None) -> Path:
    """A tool installed in the venv release-graph runs from (never whatever else is on PATH); `bin_dir` another."""
    executable = (Path(bin_dir) if bin_dir is not None else Path(sys.executable).parent) / name
    if not executable.is_file():
        raise ToolMissing(
            f"{name} is not installed: no {executable} (add `{package}` to requirements.in and install the lock)"
        )
    return executable


def run_tool(
    name: str,
    argv: list[str],
    *,
    timeout_seconds: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    RUNS[name] += 1
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_seconds, cwd=cwd, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{name} did not finish within {timeout_seconds:g} s ({' '.join(argv[:4])} ...)") from exc
    except OSError as exc:
        raise ToolMissing(f"{name} could not be started ({exc})") from exc


def excerpt(text: str | None) -> str:
    text = (text or "").strip()
    if not text:
        return "(no output)"
    return text if len(text) <= EXCERPT_CHARS else "…" + text[-EXCERPT_CHARS:]
