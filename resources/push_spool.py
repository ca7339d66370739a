"""The push spool: a folder of small "nudge" files, one per Git push the webhook receiver accepted.

The receiver (`release-graph webhooks`, release_graph/webhooks.py) writes one file per push of a tracked
branch; the Git commit sensor (sensors/git_commits.py) reads them on its next tick and looks at those branches
at once instead of waiting for its poll interval. A file is written atomically (a temporary name, then a
rename) and removed by the sensor only after a tick that handled it has stored its cursor, so a nudge may be
handled twice after a crash (the run key dedupes the build) but is never lost before it was looked at.

The folder is `<state>/git-pushes` (resources/state.py), resolved at call time; no I/O at import.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from resources.state import state_dir

SPOOL_FOLDER = "git-pushes"


def spool_dir() -> Path:
    """`<state>/git-pushes`: where the receiver and the sensor of one installation meet."""
    return state_dir() / SPOOL_FOLDER


@dataclass(frozen=True)
class Nudge:
    """One accepted push: the tracked branch (as the sensor's cursor names it), the pushed SHA, when."""

    name: str  # the file's name in the spool
    branch_key: str  # "<repo URL, credentials redacted>@<branch>", the sensor's cursor key
    sha: str
    received_at: str


def write_nudge(folder: Path, branch_key: str, repo: str, branch: str, sha: str) -> Path:
    """One file per push (a unique name: a second push never overwrites a nudge not yet handled)."""
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(branch_key.encode()).hexdigest()[:16]
    name = f"{digest}-{time.time_ns()}-{secrets.token_hex(3)}.json"
    document = {
        "branch_key": branch_key, "repo": repo, "branch": branch, "sha": sha,
        "received_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }
    temporary = folder / f".{name}.tmp"
    temporary.write_text(json.dumps(document, sort_keys=True) + "\n")
    os.replace(temporary, folder / name)
    return folder / name


def read_nudges(folder: Path) -> tuple[list[Nudge], list[str]]:
    """The nudges waiting, oldest first, and the names of files that are not nudges (unreadable: to remove)."""
    if not folder.is_dir():
        return [], []
    nudges, unreadable = [], []
    for path in sorted(folder.glob("*.json")):
        try:
            document = json.loads(path.read_text())
            nudges.append(Nudge(path.name, str(document["branch_key"]), str(document.get("sha", "")),
                                str(document.get("received_at", ""))))
        except FileNotFoundError:  # removed meanwhile
            continue
        except (ValueError, KeyError, TypeError, OSError):
            unreadable.append(path.name)
    return nudges, unreadable


def remove_nudges(folder: Path, names: list[str] | tuple[str, ...]) -> None:
    for name in names:
        if name and "/" not in name and not name.startswith("."):
            (folder / name).unlink(missing_ok=True)
