"""A CycloneDX 1.5 SBOM of an image: the Debian packages and Python distributions found in its filesystem.

The files are read out of a created (never started) container through the engine's archive API: dpkg's
status database, os-release, and the `*.dist-info/METADATA` / `*.egg-info` files under the usual Python
install roots. Nothing in the image runs, so an image without a shell or Python is read the same way.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath
from typing import Any

DPKG_STATUS = "/var/lib/dpkg/status"
OS_RELEASE_PATHS = ("/usr/lib/os-release", "/etc/os-release")
# Where Python distributions are installed in practice: Debian's dist-packages, pip and python.org builds
# under /usr/local, and the usual homes of virtual environments and application folders.
PYTHON_ROOTS = ("/usr/lib/python3", "/usr/local/lib", "/opt", "/app", "/srv", "/usr/src/app", "/venv", "/home", "/root")
MAX_METADATA_BYTES = 2 * 1024 * 1024
CYCLONEDX_SPEC = "1.5"
TOOL_NAME = "release-graph"


class SbomError(Exception):
    """The image could not be read (missing image, engine error) or the output not written."""


@dataclass(frozen=True)
class Package:
    kind: str  # deb or pypi
    name: str
    version: str
    purl: str
    location: str  # where in the image it was found
    license: str | None = None
    license_is_expression: bool = False  # an SPDX expression (License-Expression), not a free-text name
    arch: str | None = None


@dataclass(frozen=True)
class SbomSummary:
    path: Path
    sha256: str  # of the document's bytes, so the metadata pins exactly what was stored
    serial_number: str
    image: str
    digest: str
    counts: dict[str, int]  # {"deb": n, "pypi": m}
    components: int

    def metadata(self) -> dict[str, object]:
        return {
            "sbom_path": str(self.path),
            "sbom_sha256": self.sha256,
            "sbom_serial_number": self.serial_number,
            "sbom_format": f"CycloneDX {CYCLONEDX_SPEC} JSON",
            "sbom_components": self.components,
            **{f"sbom_{kind}_packages": count for kind, count in sorted(self.counts.items())},
        }


# --- reading the image ---------------------------------------------------------------------------------------


class _ChunkReader(io.RawIOBase):
    """A file object over docker-py's archive chunks, so tarfile can stream without holding the whole tar."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


def _archive_files(container, path: str, wanted) -> Iterator[tuple[str, bytes]]:
    """(path in the image, bytes) of each regular file under `path` for which wanted(name) is true."""
    import docker.errors

    try:
        chunks, _ = container.get_archive(path)
    except docker.errors.NotFound:
        return
    parent = PurePosixPath(path).parent
    with tarfile.open(fileobj=io.BufferedReader(_ChunkReader(chunks), 1 << 20), mode="r|") as archive:
        for member in archive:
            if not member.isfile() or not wanted(member.name) or member.size > MAX_METADATA_BYTES:
                continue
            handle = archive.extractfile(member)
            if handle is not None:
                yield str(parent / member.name), handle.read()


def _is_python_metadata(name: str) -> bool:
    parts = PurePosixPath(name).parts
    if len(parts) >= 2 and parts[-2].endswith(".dist-info") and parts[-1] == "METADATA":
        return True
    if len(parts) >= 2 and parts[-2].endswith(".egg-info") and parts[-1] == "PKG-INFO":
        return True
    return bool(parts) and parts[-1].endswith(".egg-info")  # a single-file egg-info


# --- parsing -------------------------------------------------------------------------------------------------


def parse_os_release(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            values[key.strip()] = value.strip().strip('"').strip("'")
    return values


def parse_dpkg_status(text: str, distro_id: str = "debian", distro_version: str | None = None) -> list[Package]:
    """Installed packages of a dpkg status database (paragraphs whose Status is `install ok installed`)."""
    packages = []
    for paragraph in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        current = None
        for line in paragraph.splitlines():
            if line[:1] in (" ", "\t") and current:
                continue  # continuation lines (descriptions, conffiles) are not needed
            key, sep, value = line.partition(":")
            if sep:
                current = key.strip()
                fields[current] = value.strip()
        name, version = fields.get("Package"), fields.get("Version")
        if not name or not version or fields.get("Status", "").split()[-1:] != ["installed"]:
            continue
        arch = fields.get("Architecture") or None
        qualifiers = {"arch": arch} if arch else {}
        if distro_version:
            qualifiers["distro"] = f"{distro_id}-{distro_version}"
        upstream = source_package(fields.get("Source"), name, version)
        if upstream:
            qualifiers["upstream"] = upstream
        packages.append(
            Package("deb", name, version, purl("deb", distro_id, name, version, qualifiers), DPKG_STATUS, arch=arch)
        )
    return packages


def source_package(source_field: str | None, name: str, version: str) -> str | None:
    """The purl `upstream` qualifier (as Syft writes it): the Debian source package a binary package was built
    from, `name` or `name@version` when the binary's version differs (a binNMU's `+b1`). None when the source is
    the package itself. Debian's security data (and OSV's Debian records) name source packages, so a scanner
    needs this to match `libssl3` against an advisory for `openssl`."""
    if not source_field:
        return None
    match = re.fullmatch(r"\s*(\S+)(?:\s+\((\S+)\))?\s*", source_field)
    if not match:
        return None
    source_name, source_version = match.group(1), match.group(2)
    if source_version and source_version != version:
        return f"{source_name}@{source_version}"
    return source_name if source_name != name else None


def parse_python_metadata(text: str, location: str) -> Package | None:
    """A Python distribution from METADATA / PKG-INFO (RFC 822 headers); None without Name and Version."""
    headers = HeaderParser().parsestr(text, headersonly=True)
    name, version = headers.get("Name"), headers.get("Version")
    if not name or not version:
        return None
    name, version = name.strip(), version.strip()
    expression = (headers.get("License-Expression") or "").strip()
    license_text = expression or (headers.get("License") or "").strip()
    # The License field often holds the whole license text: only a short, one-line value is a name.
    license_value = license_text if license_text and len(license_text) <= 100 and "\n" not in license_text else None
    normalised = re.sub(r"[-_.]+", "-", name).lower()
    return Package("pypi", name, version, purl("pypi", None, normalised, version), location, license=license_value,
                   license_is_expression=bool(expression) and license_value is not None)


def purl(kind: str, namespace: str | None, name: str, version: str, qualifiers: dict[str, str] | None = None) -> str:
    """A package URL (purl spec): components percent-encoded, qualifiers sorted by key."""

    def enc(value: str) -> str:
        return urllib.parse.quote(value, safe=".-_~")

    text = f"pkg:{kind}/" + (f"{enc(namespace)}/" if namespace else "") + f"{enc(name)}@{enc(version)}"
    if qualifiers:
        text += "?" + "&".join(f"{k}={enc(v)}" for k, v in sorted(qualifiers.items()) if v)
    return text


def image_purl(repository: str, digest: str) -> str:
    """pkg:oci/<name>@<digest>?repository_url=<registry/path> for the image itself."""
    name = repository.rsplit("/", 1)[-1]
    return purl("oci", None, name, digest, {"repository_url": repository})


# --- the document --------------------------------------------------------------------------------------------


def build_document(
    repository: str, digest: str, packages: Iterable[Package], *, serial_number: str | None = None,
    timestamp: datetime | None = None,
) -> dict[str, Any]:
    """The CycloneDX 1.5 JSON document (a dict) for the image `repository@digest`."""
    image_ref = image_purl(repository, digest)
    components = []
    seen: set[str] = set()
    for package in sorted(packages, key=lambda p: (p.kind, p.name.lower(), p.version)):
        if package.purl in seen:
            continue
        seen.add(package.purl)
        component: dict[str, Any] = {
            "type": "library",
            "bom-ref": package.purl,
            "name": package.name,
            "version": package.version,
            "purl": package.purl,
            "properties": [
                {"name": f"{TOOL_NAME}:package-type", "value": package.kind},
                {"name": f"{TOOL_NAME}:location", "value": package.location},
            ],
        }
        if package.license:
            component["licenses"] = (
                [{"expression": package.license}] if package.license_is_expression
                else [{"license": {"name": package.license}}]
            )
        components.append(component)
    return {
        "bomFormat": "CycloneDX",
        "specVersion": CYCLONEDX_SPEC,
        "serialNumber": serial_number or f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": (timestamp or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "tools": {"components": [{"type": "application", "name": TOOL_NAME}]},
            "component": {
                "type": "container",
                "bom-ref": image_ref,
                "name": repository,
                "version": digest,
                "purl": image_ref,
                "hashes": [{"alg": "SHA-256", "content": digest.removeprefix("sha256:")}],
            },
        },
        "components": components,
        "dependencies": [{"ref": image_ref, "dependsOn": [c["bom-ref"] for c in components]}],
    }


def read_image_packages(client, reference: str, *, python_roots: Iterable[str] = PYTHON_ROOTS,
                        labels: dict[str, str] | None = None, name: str | None = None,
                        pull: Callable[[str], None] | None = None) -> list[Package]:
    """Every Debian package and Python distribution in the image `reference`, pulled when not local: by `pull`
    when given (the engine's pull, with the registry's credentials; its errors are raised as they are), else by
    docker-py anonymously."""
    import docker.errors

    try:
        try:
            client.images.get(reference)
        except docker.errors.ImageNotFound:
            if pull is not None:
                pull(reference)
            else:
                client.images.pull(reference)
        container = client.containers.create(
            reference, command=["true"], labels=labels or {}, name=name, network_disabled=True
        )
    except docker.errors.DockerException as exc:
        raise SbomError(f"SBOM of {reference}: cannot create a container from the image: {exc}") from exc
    try:
        os_release: dict[str, str] = {}
        for path in OS_RELEASE_PATHS:
            found = list(_archive_files(container, path, lambda _name: True))
            if found:
                os_release = parse_os_release(found[0][1].decode("utf-8", "replace"))
                break
        packages: list[Package] = []
        for _, data in _archive_files(container, DPKG_STATUS, lambda _name: True):
            packages += parse_dpkg_status(
                data.decode("utf-8", "replace"), os_release.get("ID") or "debian", os_release.get("VERSION_ID")
            )
        for root in python_roots:
            for location, data in _archive_files(container, root, _is_python_metadata):
                package = parse_python_metadata(data.decode("utf-8", "replace"), location)
                if package is not None:
                    packages.append(package)
        return packages
    except docker.errors.DockerException as exc:
        raise SbomError(f"SBOM of {reference}: reading files from the image failed: {exc}") from exc
    finally:
        container.remove(force=True)


def generate_sbom(
    client,
    repository: str,
    digest: str,
    output_dir: str | Path,
    *,
    python_roots: Iterable[str] = PYTHON_ROOTS,
    labels: dict[str, str] | None = None,
    container_name: str | None = None,
    pull: Callable[[str], None] | None = None,
) -> SbomSummary:
    """Write `sbom-<digest hex[:12]>.cdx.json` for `repository@digest` into `output_dir`; return its summary.

    `client` is a docker-py DockerClient (ContainerEngine.client()); `labels` and `container_name` mark the
    short-lived container so a crashed run's leftovers can be found and removed.
    """
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise SbomError(f"SBOM of {repository}: {digest!r} is not a digest (sha256:<64 hex>)")
    reference = f"{repository}@{digest}"
    packages = read_image_packages(client, reference, python_roots=python_roots, labels=labels, name=container_name,
                                   pull=pull)
    document = build_document(repository, digest, packages)
    data = (json.dumps(document, indent=2, sort_keys=False) + "\n").encode("utf-8")
    folder = Path(output_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"sbom-{digest.removeprefix('sha256:')[:12]}.cdx.json"
        path.write_bytes(data)
    except OSError as exc:
        raise SbomError(f"SBOM of {reference}: cannot write into {folder}: {exc}") from exc
    counts: dict[str, int] = {"deb": 0, "pypi": 0}
    for component in document["components"]:
        kind = component["purl"].split(":", 1)[1].split("/", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    return SbomSummary(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        serial_number=document["serialNumber"],
        image=repository,
        digest=digest,
        counts=counts,
        components=len(document["components"]),
    )
