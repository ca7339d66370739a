"""Secrets as files: what the engine's `inspect` never shows.

A container whose secrets are delivered as files (`DeploymentSpec.secrets_as == "file"`, the default) gets, for
each secret, a read-only bind mount `/run/secrets/<NAME>` of a file in a folder of its own under `root` (by default
`/dev/shm/release-graph-secrets`, a tmpfs: the value never touches a disk), and the variable `<NAME>_FILE` naming
that path. `inspect` shows the mount's source path and the variable, never the value; no image layer holds it
(the image is not changed, nothing is copied into the container's writable layer).

On the host the folder is the orchestrator's alone (0700; the root folder too), the files 0444 inside it so that
a container running as any user can read its own (a bind-mounted file's parent folder is not in the container).
The folder goes when the container goes: `remove` removes a container and then its folder, and `sweep` removes
the folders of containers that are gone some other way (removed by hand, a killed process).

Engine requirement: the engine must run on this host (a unix socket, as the docker target's bridge pinning also
assumes), since the mount source is a path of this host. Podman 4.3 through its Docker-compatible API: measured.
"""

import os
import secrets as _random
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from docker.types import Mount

from resources.targets.interface import SECRETS_DIR_IN_CONTAINER

DEFAULT_ROOT = "/dev/shm/release-graph-secrets"
FOLDER_PREFIX = "c-"
# A folder is written a moment before its container is created (perhaps by another run): `sweep` leaves younger
# folders alone.
SWEEP_GRACE_SECONDS = 600


def _private_folder(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def write(root: str | os.PathLike, secrets: Mapping[str, str]) -> tuple[Path, list[Mount]]:
    """A new folder under `root` holding one file per secret, and the read-only mounts that show each file as
    `/run/secrets/<NAME>`. The caller removes the folder if the container is never created (`discard`)."""
    base = Path(root)
    _private_folder(base)
    folder = base / f"{FOLDER_PREFIX}{_random.token_hex(8)}"
    folder.mkdir(mode=0o700)
    mounts = []
    try:
        for name, value in secrets.items():
            path = folder / name
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(value)
            os.chmod(path, 0o444)  # readable by the container's user; the 0700 folder keeps the host out
            mounts.append(Mount(target=f"{SECRETS_DIR_IN_CONTAINER}/{name}", source=str(path), type="bind",
                                read_only=True))
    except BaseException:
        discard(root, folder)
        raise
    return folder, mounts


def discard(root: str | os.PathLike, folder: str | os.PathLike | None) -> None:
    """Remove one of our folders under `root` (anything else is left alone)."""
    if folder is None:
        return
    folder = Path(folder)
    if folder.parent == Path(root) and folder.name.startswith(FOLDER_PREFIX):
        shutil.rmtree(folder, ignore_errors=True)


def folders_of(root: str | os.PathLike, attrs: Mapping) -> set[Path]:
    """The folders under `root` a container's mounts come from (its `inspect`)."""
    base = Path(root)
    found = set()
    for mount in attrs.get("Mounts") or ():
        source = Path(mount.get("Source") or "")
        if source.parent.parent == base and source.parent.name.startswith(FOLDER_PREFIX):
            found.add(source.parent)
    return found


def read(root: str | os.PathLike, attrs: Mapping) -> dict[str, str] | None:
    """The secrets a container was given as files (NAME -> value), read back from this host for comparing in
    memory; None when one of its files is gone."""
    values = {}
    for mount in attrs.get("Mounts") or ():
        source = Path(mount.get("Source") or "")
        destination = mount.get("Destination") or ""
        if source.parent.parent != Path(root) or not destination.startswith(SECRETS_DIR_IN_CONTAINER + "/"):
            continue
        try:
            values[destination.rsplit("/", 1)[1]] = source.read_text(encoding="utf-8")
        except OSError:
            return None
    return values


def remove(root: str | os.PathLike, container) -> None:
    """Remove `container` (forced) and then the folder its secrets came from."""
    folders = folders_of(root, container.attrs or {})
    container.remove(force=True)
    for folder in folders:
        discard(root, folder)


def sweep(root: str | os.PathLike, containers_attrs: Iterable[Mapping],
          grace_seconds: float = SWEEP_GRACE_SECONDS) -> list[Path]:
    """Remove every folder under `root` older than `grace_seconds` that no existing container mounts
    (`containers_attrs`: the `inspect` of every container on the engine, running or not). Returns those removed."""
    base = Path(root)
    if not base.is_dir():
        return []
    used = set()
    for attrs in containers_attrs:
        used |= folders_of(root, attrs)
    removed = []
    for folder in base.iterdir():
        if not (folder.is_dir() and folder.name.startswith(FOLDER_PREFIX)) or folder in used:
            continue
        try:
            young = time.time() - folder.stat().st_mtime < grace_seconds
        except OSError:
            continue
        if not young:
            discard(root, folder)
            removed.append(folder)
    return removed
