"""Build the user-code image (deploy/Dockerfile) through the container engine's API, with no package index
inside the build.

    .venv/bin/python scripts/build_user_code_image.py --tag 127.0.0.1:5000/release-graph/user-code:dev --push

Why a script and not a bare `docker build`: a build container may reach no package index (none is written in
this repository, and a host's index may need a certificate the base image lacks). So every wheel the image
installs is downloaded first **on the host**, with the host's own pip configuration, into a wheelhouse cached by
the content of what it holds (requirements.lock with its hashes, the security tools' pins from
scripts/install_tools.sh, the package's build backend); the build binds it at deploy/wheels/ and installs with
PIP_NO_INDEX=1. The build context is only what the Dockerfile copies, never the venvs or the demo's repos.

Exit status 0 with the image's id and size on stdout; 1 with the reason (the step's log tail) otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = "deploy/Dockerfile"
# What deploy/Dockerfile copies from the repository root (deploy/wheels/ is filled here).
CONTEXT_FILES = ("requirements.lock", "pyproject.toml", "README.md", "scripts/install_tools.sh", DOCKERFILE)
CONTEXT_FOLDERS = ("release_graph", "resources", "sensors", "deploy/fleet")
DEFAULT_BASE_IMAGE = "127.0.0.1:5000/base/python:bookworm"  # scripts/setup_host.sh pushes it
DEFAULT_WHEELHOUSE = Path(os.environ.get("RELEASE_GRAPH_WHEELHOUSE", "/var/lib/release-graph/wheelhouse"))


class ImageBuildError(Exception):
    """The image could not be built: the message says which step and why."""


def tool_specs() -> list[str]:
    """The security tools' pinned requirements, from the script that installs them on a host."""
    out = subprocess.run(["bash", str(ROOT / "scripts/install_tools.sh"), "--specs"], capture_output=True,
                         text=True, check=True)
    return out.stdout.split()


def build_requirements() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]


def base_python_version(engine, base_image: str, timeout: float = 120) -> str:
    """The Python version of the base image (e.g. Debian bookworm's 3.11.2): the wheels must suit it, not the
    host's Python (a tool's dependency may require a newer patch release than the image has).

    Not `containers.run`: it waits for the container with no deadline, and Podman's wait never answers for a
    container removed meanwhile (a busy engine's clean-up), which left the build hanging."""
    container = None
    try:
        container = engine.client().containers.create(
            base_image, ["python3", "-c", "import platform; print(platform.python_version())"])
        container.start()
        deadline = time.monotonic() + timeout
        while True:
            container.reload()
            if container.status in ("exited", "dead"):
                break
            if time.monotonic() > deadline:
                raise ImageBuildError(f"python3 in the base image {base_image} did not answer within {timeout:g} s")
            time.sleep(0.2)
        version = container.logs(stdout=True, stderr=False).decode().strip()
        if not version:
            raise ImageBuildError(f"python3 in the base image {base_image} printed no version: "
                                  f"{container.logs(stdout=False, stderr=True).decode()[-500:]}")
        return version
    except ImageBuildError:
        raise
    except Exception as exc:  # the engine unreachable, the image missing, no python3 in it: each stops the build
        raise ImageBuildError(f"cannot run python3 in the base image {base_image}: {exc}") from exc
    finally:
        if container is not None:
            with contextlib.suppress(Exception):
                container.remove(force=True)


def wheelhouse_for(folder: Path, python_version: str, log=print) -> Path:
    """A folder with every wheel the image installs, for `python_version`, downloaded once per content of its
    inputs."""
    lock = (ROOT / "requirements.lock").read_bytes()
    extras = tool_specs() + build_requirements()
    key = hashlib.sha256(lock + "\n".join([python_version, *extras]).encode()).hexdigest()[:16]
    wheels = folder / key
    if (wheels / ".complete").exists():
        log(f"wheelhouse {wheels}: already complete")
        return wheels
    partial = folder / f"{key}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    # The host's python3 with pip (the project venv is made by uv and has none); its configuration names the
    # index. Binary wheels only: the image has no compiler. The lock is the whole set, hence --no-deps.
    pip = [shutil.which("python3") or "python3", "-m", "pip", "download", "-q", "--only-binary=:all:",
           "--python-version", python_version, "-d", str(partial)]
    steps = [("requirements.lock", [*pip, "--no-deps", "--require-hashes", "-r", str(ROOT / "requirements.lock")]),
             ("security tools and build backend", [*pip, *extras])]
    for what, argv in steps:
        started = time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            errors = [line for line in done.stderr.splitlines() if not line.startswith("WARNING:")]
            raise ImageBuildError(f"downloading the wheels of {what} failed (pip exit {done.returncode}): "
                                  + "\n".join(errors[-15:]))
        log(f"wheels of {what}: {time.monotonic() - started:.1f} s")
    (partial / ".complete").touch()
    if wheels.exists():  # another build completed the same wheelhouse meanwhile
        shutil.rmtree(partial, ignore_errors=True)
    else:
        partial.rename(wheels)
    return wheels


def build_context(into: Path, wheels: Path) -> Path:
    """The files deploy/Dockerfile copies, and the wheels hard-linked (or copied) into deploy/wheels/."""
    for name in CONTEXT_FILES:
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, into / name)
    for name in CONTEXT_FOLDERS:
        shutil.copytree(ROOT / name, into / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    target = into / "deploy" / "wheels"
    target.mkdir(parents=True)
    for wheel in wheels.glob("*.whl"):
        try:
            os.link(wheel, target / wheel.name)
        except OSError:  # another file system
            shutil.copy2(wheel, target / wheel.name)
    return into


def build(tag: str, *, base_image: str = DEFAULT_BASE_IMAGE, wheelhouse: Path = DEFAULT_WHEELHOUSE,
          push: bool = False, log=print) -> str:
    """Build (and push) the user-code image as `tag`; its image id."""
    sys.path.insert(0, str(ROOT))  # run as a script: the repository's resources package, as the project has it
    from resources.containers import ContainerEngine, ContainerEngineError

    engine = ContainerEngine(build_timeout_seconds=1800)
    python_version = base_python_version(engine, base_image)
    wheels = wheelhouse_for(wheelhouse, python_version, log)
    with tempfile.TemporaryDirectory(prefix="user-code-context-") as folder:
        context = build_context(Path(folder), wheels)
        started = time.monotonic()
        try:
            built = engine.build(context, dockerfile=DOCKERFILE, tag=tag,
                                 buildargs={"BASE_IMAGE": base_image, "PIP_NO_INDEX": "1"}, shares_layers=False)
        except ContainerEngineError as exc:
            raise ImageBuildError(str(exc)) from exc
    seconds = time.monotonic() - started
    log(f"built {tag} ({built.image_id[:19]}, {built.size_bytes / 2**20:.0f} MiB) in {seconds:.0f} s")
    if push:
        try:
            digest = engine.push(tag)
        except ContainerEngineError as exc:
            raise ImageBuildError(str(exc)) from exc
        log(f"pushed {tag}@{digest}")
    return built.image_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", required=True, help="e.g. 127.0.0.1:5000/release-graph/user-code:dev")
    parser.add_argument("--base-image", default=DEFAULT_BASE_IMAGE, help=f"(default {DEFAULT_BASE_IMAGE})")
    parser.add_argument("--wheelhouse", type=Path, default=DEFAULT_WHEELHOUSE,
                        help=f"where downloaded wheels are kept (default {DEFAULT_WHEELHOUSE})")
    parser.add_argument("--push", action="store_true", help="push the image to its registry after the build")
    args = parser.parse_args(argv)
    try:
        build(args.tag, base_image=args.base_image, wheelhouse=args.wheelhouse, push=args.push)
    except ImageBuildError as exc:
        reason = str(exc)
        print(f"build_user_code_image: {reason}", file=sys.stderr)
        if "\n" in reason.strip():  # a build log's tail follows the reason: say it again as the last line
            print(f"build_user_code_image: failed: {reason.strip().splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
