"""Image vulnerability scanner backends behind one method: `scan(reference) -> ScanReport`.

- `VulnerabilityScanner`: the `scanner` resource (release_graph/wiring.py configures it from the manifest's
  `security:`), the one way the vulnerability_scan check reaches a backend: `scan_image(repository, digest)`.

- `EcrScanner`: Amazon ECR image scanning (basic, or enhanced by Amazon Inspector) through boto3. With
  `endpoint_url` it talks to any ECR-compatible endpoint; the tests use `moto_server`, whose findings are canned.
- `CliScanner`: the Trivy or Grype command line, when its binary is installed. Their vulnerability databases
  are downloaded by the tools themselves, which hosts without outside network cannot do; the JSON reports are
  parsed by release_graph.security.vulnerabilities either way.
- `OsvScanner`: no tool and no network: the image's CycloneDX SBOM (read through the container engine, as the
  sbom check makes it) matched against an offline OSV database (release_graph/security/osv.py).

Nothing here does I/O at import or construction: clients and binaries are looked up on first use.
"""

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field, PrivateAttr

from release_graph.fleet import references
from release_graph.security import osv, sbom
from release_graph.security.vulnerabilities import (
    ScanError,
    ScannerMissing,
    ScanReport,
    parse_ecr_findings,
    parse_grype,
    parse_trivy,
)
from resources.containers import ContainerEngine
from resources.registry import IMAGE_MANIFEST_MEDIA_TYPES, Registry, RegistryError, RegistryUnavailable
from resources.registry_auth import Credentials

SCAN_DONE = {"COMPLETE", "ACTIVE"}  # ACTIVE: enhanced (Inspector) scanning keeps the image under watch
SCAN_FAILED = {"FAILED", "UNSUPPORTED_IMAGE", "FINDINGS_UNAVAILABLE", "SCAN_ELIGIBILITY_EXPIRED"}
CLI_HINTS = {
    "trivy": "install the trivy binary (it is not a Debian or PyPI package) and set `executable`, "
             "or choose another scanner backend",
    "grype": "install the grype binary (it is not a Debian or PyPI package) and set `executable`, "
             "or choose another scanner backend",
}


def split_reference(reference: str) -> tuple[str, str, str | None]:
    """(registry host, repository path, digest) of `host/path[:tag]@sha256:...` (a digest is required); the host
    is "" when the reference names none."""
    name, _tag, digest = references.split_reference(reference)
    if digest is None or not references.SHA256_DIGEST.match(digest):
        raise ValueError(f"image reference {reference!r}: scans address an image by digest (repo@sha256:<64 hex>)")
    host, path = references.split_host(name)
    return host or "", "/".join(path), digest


class EcrScanner(dg.ConfigurableResource):
    """Amazon ECR image scanning: `start_image_scan`, then `describe_image_scan_findings` until complete."""

    region_name: str = Field(default="us-east-1", description="AWS region of the ECR registry.")
    endpoint_url: str | None = Field(
        default=None, description="ECR endpoint; None = AWS. A moto_server URL in tests and demos."
    )
    registry_id: str | None = Field(default=None, description="AWS account id of the registry; None = the caller's.")
    poll_interval_seconds: float = Field(default=5.0, description="Pause between polls of a running scan.")
    timeout_seconds: float = Field(default=900.0, description="How long a scan may take before it is an error.")

    _client: Any = PrivateAttr(default=None)

    def client(self):
        if self._client is None:
            import boto3

            self._client = boto3.client("ecr", region_name=self.region_name, endpoint_url=self.endpoint_url)
        return self._client

    def _registry(self) -> dict[str, str]:
        return {"registryId": self.registry_id} if self.registry_id else {}

    def scan(self, reference: str) -> ScanReport:
        """Scan `<registry>/<repository>@sha256:...`; the repository path is the ECR repository name."""
        _, repository, digest = split_reference(reference)
        return self.scan_digest(repository, digest)

    def scan_digest(self, repository: str, digest: str) -> ScanReport:
        client = self.client()
        errors = client.exceptions
        image_id = {"imageDigest": digest}
        where = f"ECR image {repository}@{digest}"
        try:
            client.start_image_scan(repositoryName=repository, imageId=image_id, **self._registry())
        except errors.LimitExceededException:
            # ECR scans an image at most once a day: today's scan is the answer.
            pass
        except (errors.RepositoryNotFoundException, errors.ImageNotFoundException) as exc:
            raise ScanError(f"{where}: {exc.response['Error']['Message']}") from exc
        except errors.UnsupportedImageTypeException as exc:
            raise ScanError(f"{where}: ECR cannot scan this image: {exc.response['Error']['Message']}") from exc
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            pages = self._findings_pages(repository, image_id, where)
            status = (pages[0].get("imageScanStatus") or {}).get("status", "")
            if status in SCAN_DONE:
                break
            if status in SCAN_FAILED:
                description = (pages[0].get("imageScanStatus") or {}).get("description", "")
                raise ScanError(f"{where}: scan ended {status}: {description}")
            if time.monotonic() > deadline:
                raise ScanError(f"{where}: scan still {status or 'pending'} after {self.timeout_seconds:g} s")
            time.sleep(self.poll_interval_seconds)
        body = pages[0].get("imageScanFindings") or {}
        details = {"status": status}
        for key in ("imageScanCompletedAt", "vulnerabilitySourceUpdatedAt"):
            if body.get(key) is not None:
                details[key] = str(body[key])
        return ScanReport("ecr", f"{repository}@{digest}", digest, parse_ecr_findings(pages, where), details)

    def _findings_pages(self, repository: str, image_id: dict[str, str], where: str) -> list[dict[str, Any]]:
        client = self.client()
        pages: list[dict[str, Any]] = []
        token = None
        while True:
            kwargs = {"repositoryName": repository, "imageId": image_id, "maxResults": 1000, **self._registry()}
            if token:
                kwargs["nextToken"] = token
            try:
                page = client.describe_image_scan_findings(**kwargs)
            except client.exceptions.ScanNotFoundException as exc:
                raise ScanError(f"{where}: no scan found after start_image_scan: {exc}") from exc
            pages.append(page)
            token = page.get("nextToken")
            if not token:
                return pages

    def ensure_repository(self, repository: str) -> None:
        client = self.client()
        with contextlib.suppress(client.exceptions.RepositoryAlreadyExistsException):
            client.create_repository(repositoryName=repository, **self._registry())

    def mirror_manifest(self, repository: str, manifest: bytes, media_type: str, tag: str | None = None) -> str:
        """Put an image manifest into ECR under the digest it has everywhere (sha256 of its bytes).

        Real ECR accepts it only when the layers are already there; moto accepts any manifest, which is how
        the tests give the stand-in an image with the same digest as the one in the local registry.
        """
        digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        self.ensure_repository(repository)
        client = self.client()
        kwargs: dict[str, Any] = {
            "repositoryName": repository,
            "imageManifest": manifest.decode("utf-8"),
            "imageManifestMediaType": media_type,
            "imageDigest": digest,
            **self._registry(),
        }
        if tag:
            kwargs["imageTag"] = tag
        with contextlib.suppress(client.exceptions.ImageAlreadyExistsException):
            client.put_image(**kwargs)
        found = client.batch_get_image(repositoryName=repository, imageIds=[{"imageDigest": digest}],
                                       **self._registry())
        if not found.get("images"):
            failures = found.get("failures") or []
            raise ScanError(f"ECR image {repository}@{digest} is not there after put_image: {failures}")
        return digest

    def delete_repository(self, repository: str) -> None:
        client = self.client()
        with contextlib.suppress(client.exceptions.RepositoryNotFoundException):
            client.delete_repository(repositoryName=repository, force=True, **self._registry())


class CliScanner(dg.ConfigurableResource):
    """Trivy or Grype, run offline against an image reference; the JSON report is kept when asked."""

    tool: Literal["trivy", "grype"] = Field(description="Which scanner binary to run.")
    executable: str | None = Field(
        default=None, description="Path to the binary; None = look for `trivy`/`grype` on PATH at use time."
    )
    timeout_seconds: float = Field(default=900.0, description="Wall-clock limit for one scan.")
    offline: bool = Field(
        default=True,
        description="Never update the vulnerability database during a scan (it must be present already).",
    )

    def binary(self) -> Path:
        candidate = self.executable or shutil.which(self.tool)
        if not candidate or not Path(candidate).is_file() or not os.access(candidate, os.X_OK):
            looked = f"no executable at {self.executable}" if self.executable else f"no `{self.tool}` on PATH"
            raise ScannerMissing(f"{self.tool} is not installed ({looked}): {CLI_HINTS[self.tool]}")
        return Path(candidate)

    def command(self, reference: str, report: Path,
                credentials: Credentials | None = None) -> tuple[list[str], dict[str, str]]:
        """The tool's command line and environment; registry credentials go in its environment (Trivy's
        TRIVY_USERNAME/TRIVY_PASSWORD, Grype's GRYPE_REGISTRY_AUTH_*), never on the command line."""
        binary = str(self.binary())
        env = dict(os.environ)
        if credentials is not None:
            host, _, _ = split_reference(reference)
            if self.tool == "trivy":
                env.update(TRIVY_USERNAME=credentials.username, TRIVY_PASSWORD=credentials.password)
            else:
                env.update(GRYPE_REGISTRY_AUTH_AUTHORITY=host, GRYPE_REGISTRY_AUTH_USERNAME=credentials.username,
                           GRYPE_REGISTRY_AUTH_PASSWORD=credentials.password)
        if self.tool == "trivy":
            argv = [binary, "image", "--quiet", "--format", "json", "--output", str(report)]
            if self.offline:
                argv += ["--skip-db-update", "--skip-java-db-update", "--offline-scan"]
            return [*argv, reference], env
        if self.offline:
            env["GRYPE_DB_AUTO_UPDATE"] = "false"
            env["GRYPE_CHECK_FOR_APP_UPDATE"] = "false"
        return [binary, f"registry:{reference}", "-o", "json", "--file", str(report), "-q"], env

    def scan(self, reference: str, report_path: str | None = None,
             credentials: Credentials | None = None) -> ScanReport:
        """Scan `reference` (repo@sha256:...), reading it with `credentials` when given; the report is written
        to `report_path` when given."""
        _, _, digest = split_reference(reference)
        with tempfile.TemporaryDirectory(prefix=f"rg-{self.tool}-") as tmp:
            report = Path(report_path) if report_path else Path(tmp) / f"{self.tool}.json"
            argv, env = self.command(reference, report, credentials)
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout_seconds,
                                      env=env, check=False)
            except subprocess.TimeoutExpired as exc:
                raise ScanError(
                    f"{self.tool} did not finish scanning {reference} in {self.timeout_seconds:g} s"
                ) from exc
            if done.returncode != 0 or not report.is_file():
                raise ScanError(
                    f"{self.tool} failed on {reference} (exit {done.returncode}): {done.stderr.strip()[-800:]}"
                )
            text = report.read_text(encoding="utf-8")
        parse = parse_trivy if self.tool == "trivy" else parse_grype
        findings = parse(text, str(report_path or f"{self.tool} output"))
        return ScanReport(self.tool, reference, digest, findings, {"report": str(report_path or "")})


# One parsed database per process and per version of its files: a run's checks scan several images with it.
_OSV_DATABASES: dict[tuple[str, tuple[int, int]], osv.OsvDatabase] = {}


def _fingerprint(path: Path) -> tuple[int, int]:
    """(files, newest mtime) of a database folder, or (size, mtime) of a zip: changes when the data does."""
    if path.is_dir():
        stats = [p.stat().st_mtime_ns for p in path.rglob("*.json")]
        return len(stats), max(stats, default=0)
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def osv_database(path: str | Path) -> osv.OsvDatabase:
    """The OSV database at `path`, read once per process while its files are unchanged (OsvError if unusable)."""
    source = Path(path)
    if not source.exists():
        raise osv.OsvError(f"OSV database {source} does not exist (a folder of OSV JSON records or an OSV all.zip)")
    key = (str(source.resolve()), _fingerprint(source))
    if key not in _OSV_DATABASES:
        _OSV_DATABASES[key] = osv.load_database(source)
    return _OSV_DATABASES[key]


class OsvScanner(dg.ConfigurableResource):
    """The image's SBOM matched against an offline OSV database: no scanner binary, no network."""

    database: str = Field(description="A folder of OSV JSON records or an OSV all.zip (the manifest's security.osv).")

    def scan(self, engine: ContainerEngine, repository: str, digest: str, *, report_path: str | None = None,
             container_labels: dict[str, str] | None = None, container_name: str | None = None) -> ScanReport:
        """Read `repository@digest`'s packages into a CycloneDX SBOM (kept beside `report_path`) and match it.

        The report written to `report_path` lists every finding with the database and SBOM it came from."""
        reference = f"{repository}@{digest}"
        database = osv_database(self.database)  # a broken database fails before the image is read
        with tempfile.TemporaryDirectory(prefix="rg-osv-") as tmp:
            # A folder of its own: the sbom check of the same run writes its document beside the reports too.
            folder = Path(report_path).with_suffix("") if report_path else Path(tmp)
            started = time.monotonic()
            try:
                summary = sbom.generate_sbom(engine.client(), repository, digest, folder, labels=container_labels,
                                             container_name=container_name)
            except sbom.SbomError as exc:
                raise ScanError(f"osv scan of {reference}: {exc}") from exc
            sbom_seconds = time.monotonic() - started
            matched = osv.scan_sbom_file(summary.path, database)
            match_seconds = time.monotonic() - started - sbom_seconds
        details = {
            **database.details(),
            "sbom": str(summary.path) if report_path else "(not kept)",
            "packages_compared": str(matched.packages),
            "components_not_scanned": str(matched.unmatched_components),
            "versions_not_ordered": ", ".join(matched.unreadable_versions) or "none",
            "sbom_seconds": f"{sbom_seconds:.2f}",
            "match_seconds": f"{match_seconds:.3f}",
        }
        if report_path:
            report = {"image": reference, "details": details, "findings": [f.as_row() for f in matched.findings]}
            Path(report_path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            details["report"] = report_path
        return ScanReport("osv", reference, digest, matched.findings, details)


def is_ecr_host(host: str) -> bool:
    """Whether a registry host is an ECR registry (`<account>.dkr.ecr.<region>.amazonaws.com`)."""
    return ".dkr.ecr." in host and host.endswith(".amazonaws.com")


class VulnerabilityScanner(dg.ConfigurableResource):
    """The fleet's image scanner: the backend the manifest's `security.scanner` names, behind `scan_image`.

    With `ecr`, an image that lives in another registry is first put into ECR under the same digest (its
    manifest read through the `registry` resource the caller passes; real ECR also needs the layers, the moto
    stand-in takes the manifest alone).
    """

    backend: Literal["none", "ecr", "trivy", "grype", "osv"] = Field(
        default="none", description="The manifest's security.scanner; none: no image is scanned."
    )
    ecr_region: str = Field(default="us-east-1", description="AWS region of the ECR registry (backend ecr).")
    ecr_endpoint_url: str | None = Field(default=None, description="ECR endpoint; None = AWS (backend ecr).")
    ecr_registry_id: str | None = Field(default=None, description="AWS account id of the ECR registry.")
    ecr_poll_interval_seconds: float = Field(default=2.0, description="Pause between polls of a running scan.")
    timeout_seconds: float = Field(default=900.0, description="How long one scan may take.")
    executable: str | None = Field(default=None, description="trivy/grype binary; None = look it up on PATH.")
    osv_database: str | None = Field(
        default=None, description="The OSV database (a folder of records or an all.zip) of backend osv."
    )

    def ecr(self) -> EcrScanner:
        return EcrScanner(region_name=self.ecr_region, endpoint_url=self.ecr_endpoint_url,
                          registry_id=self.ecr_registry_id, poll_interval_seconds=self.ecr_poll_interval_seconds,
                          timeout_seconds=self.timeout_seconds)

    def scan_image(self, repository: str, digest: str, *, registry: Registry, tag: str | None = None,
                   report_path: str | None = None, engine: ContainerEngine | None = None,
                   container_labels: dict[str, str] | None = None, container_name: str | None = None) -> ScanReport:
        """Scan `repository@digest` (repository = `host[:port]/path`, read through `registry`). `tag` names the
        copy put into ECR; a CLI scanner's JSON report is kept at `report_path` when given. The osv backend
        reads the image through `engine` (its short-lived container carries `container_labels`)."""
        reference = f"{repository}@{digest}"
        if self.backend == "none":
            raise ScanError(f"no scanner is configured (security.scanner: none): {reference} cannot be scanned")
        if self.backend == "osv":
            if not self.osv_database:
                raise ScanError(f"scanner osv has no database (security.osv.database): {reference} cannot be scanned")
            if engine is None:
                raise ScanError(f"scanner osv reads the packages of {reference} through the container engine, "
                                "and none was given")
            return OsvScanner(database=self.osv_database).scan(
                engine, repository, digest, report_path=report_path, container_labels=container_labels,
                container_name=container_name)
        host, ecr_repository, _ = split_reference(reference)
        if self.backend != "ecr":
            try:
                credentials = registry.credentials_for(host)
            except RegistryUnavailable:
                raise  # transient: the step is retried
            except RegistryError as exc:
                raise ScanError(f"cannot scan {reference}: {exc}") from None
            return CliScanner(tool=self.backend, executable=self.executable,
                              timeout_seconds=self.timeout_seconds).scan(reference, report_path=report_path,
                                                                         credentials=credentials)
        scanner = self.ecr()
        if not is_ecr_host(host):
            try:
                manifest = registry.manifest(repository, digest, media_types=IMAGE_MANIFEST_MEDIA_TYPES)
            except RegistryUnavailable:
                raise  # transient: the step is retried
            except RegistryError as exc:  # credentials refused or missing: the scan cannot read the image
                raise ScanError(f"cannot read {reference} to scan it: {exc}") from None
            if manifest is None:
                raise ScanError(f"image {reference} is not in its registry: nothing to scan")
            mirrored = scanner.mirror_manifest(ecr_repository, manifest.body, manifest.media_type, tag=tag)
            if mirrored != digest:
                raise ScanError(f"the manifest of {reference} put into ECR has digest {mirrored}, not {digest}")
        return scanner.scan_digest(ecr_repository, digest)
