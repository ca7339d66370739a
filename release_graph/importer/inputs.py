"""What the inputs of an import are: compose files, Kubernetes manifests or an Aspire manifest, and which files.

Files are read as given. A folder means its compose project (`compose.yaml` and its override file), else
what lies below it: a repository root holds CI workflows, Helm charts and configuration next to its deploy
files, so every YAML file is looked at and only compose files and Kubernetes objects count. Helm charts
and files that are neither are skipped and listed; files that do not parse are all reported at once; when
the deploy files found are of several kinds or in several places, the error names the folders to pass.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from release_graph.importer.compose import COMPOSE_FILE_NAMES, project_files
from release_graph.importer.kubernetes import KUSTOMIZATION_FILES
from release_graph.importer.model import ASPIRE, COMPOSE, KUBERNETES
from release_graph.importer.yamlfiles import InputError, LineDict, load_documents, read_text

ASPIRE_MANIFEST = "aspire-manifest.json"
# Folders that hold dependencies or build output, never a fleet's deploy files.
_NOT_SCANNED = {"node_modules", "vendor", "bin", "obj", "target", "dist", "build", "__pycache__"}
_KINDS_SHOWN = {COMPOSE: "docker-compose files", KUBERNETES: "Kubernetes manifests", ASPIRE: "Aspire manifests"}


@dataclass
class Inputs:
    kind: str  # COMPOSE, KUBERNETES or ASPIRE
    files: list[Path]
    root: Path  # the folder file labels are relative to
    skipped: list[str] = field(default_factory=list)  # files looked at and not read, and why
    folders: list[str] = field(default_factory=list)  # where the deploy files lie, to suggest when reading fails


def classify_inputs(paths: list[Path]) -> Inputs:
    found: dict[str, list[Path]] = {COMPOSE: [], KUBERNETES: [], ASPIRE: []}
    anchors: list[Path] = []
    skipped: list[str] = []
    folders: list[str] = []
    for path in paths:
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        path = path.resolve()
        anchors.append(path if path.is_dir() else path.parent)
        if path.is_file():
            found[sniff(path)].append(path)
            continue
        project = project_files(path)
        if project:
            found[COMPOSE].extend(project)
            continue
        scan = scan_folder(path)
        kind, files = scan.choose()
        found[kind].extend(files)
        skipped.extend(scan.skipped_lines())
        folders.extend(scan.folder_lines())
    kinds = [kind for kind, files in found.items() if files]
    if len(kinds) > 1:
        raise InputError(
            "the inputs mix " + " and ".join(
                f"{_KINDS_SHOWN[kind]} ({', '.join(p.name for p in found[kind][:3])})" for kind in kinds)
            + ": they describe the same fleet twice; import one kind at a time"
        )
    kind = kinds[0]
    root = Path(os.path.commonpath([str(a) for a in anchors]))
    return Inputs(kind, list(dict.fromkeys(found[kind])), root, skipped, folders)


def sniff(path: Path) -> str:
    """The kind of one file given by name."""
    name = path.name
    if name in COMPOSE_FILE_NAMES or name.startswith(("docker-compose", "compose.")):
        return COMPOSE
    if name in KUSTOMIZATION_FILES:
        return KUBERNETES
    if path.suffix == ".json":
        if is_aspire_manifest(path):
            return ASPIRE
        raise InputError(f"{path}: a JSON file that is not an Aspire manifest (no `resources` of typed resources)")
    documents = [doc for doc, _ in load_documents(path, name) if doc is not None]
    if _has_kubernetes_objects(documents):
        return KUBERNETES
    if documents and isinstance(documents[0], LineDict) and "services" in documents[0]:
        return COMPOSE
    raise InputError(f"{path}: neither a compose file (no top-level `services:`) nor a Kubernetes manifest "
                     "(no `kind:`)")


def is_aspire_manifest(path: Path) -> bool:
    """An Aspire manifest: `{"resources": {"name": {"type": "container.v0", ...}, ...}}`."""
    try:
        document = json.loads(read_text(path, path.name))
    except ValueError:
        return False
    resources = document.get("resources") if isinstance(document, dict) else None
    return isinstance(resources, dict) and all(
        isinstance(r, dict) and isinstance(r.get("type"), str) for r in resources.values())


def _has_kubernetes_objects(documents: list) -> bool:
    return any(isinstance(doc, dict) and ("kind" in doc or "apiVersion" in doc) for doc in documents)


def is_aspire_app_host(project: Path) -> bool:
    """A .NET project that is an Aspire AppHost (its SDK or its hosting package says so)."""
    try:
        text = project.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "Aspire.AppHost.Sdk" in text or "Aspire.Hosting.AppHost" in text


def aspire_instructions(app_hosts: list[str]) -> str:
    project = app_hosts[0]
    return (f"{project} is a .NET Aspire AppHost: it describes the fleet in code, which the importer does not "
            "run. Produce its manifest and import that file: `aspire do publish-manifest --output-path "
            f"aspire-manifest.json` (Aspire 13 CLI), or `dotnet run --project {project} --publisher manifest "
            "--output-path aspire-manifest.json` (Aspire 8 and 9)")


@dataclass
class FolderScan:
    """Every file below a folder that could describe a fleet, by kind, and every file that does not."""

    folder: Path
    compose: list[Path] = field(default_factory=list)
    kubernetes: list[Path] = field(default_factory=list)
    aspire: list[Path] = field(default_factory=list)
    app_hosts: list[Path] = field(default_factory=list)
    helm_charts: dict[Path, int] = field(default_factory=dict)  # chart folder -> files not read
    other: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def label(self, path: Path) -> str:
        return path.relative_to(self.folder).as_posix() or "."

    def choose(self) -> tuple[str, list[Path]]:
        """(kind, files) to import, or InputError saying what is wrong and which folder to pass."""
        if self.errors:
            raise InputError([*self.errors, *self._suggestion()])
        compose_folders = sorted({p.parent for p in self.compose})
        kinds = [kind for kind, files in ((COMPOSE, compose_folders), (KUBERNETES, self.kubernetes),
                                          (ASPIRE, self.aspire)) if files]
        if len(kinds) > 1 or len(compose_folders) > 1 or len(self.aspire) > 1:
            raise InputError([f"{self.folder.name}/ holds deploy files of more than one fleet description; pass "
                              "the folder (or files) of the one to import:", *self._suggestion()])
        if kinds == [COMPOSE]:
            project = project_files(compose_folders[0])
            if not project:  # only variants (`docker-compose.prod.yml`): which ones merge is the user's choice
                raise InputError(f"{self.label(compose_folders[0])}/ holds compose files but none named "
                                 f"{', '.join(COMPOSE_FILE_NAMES)}: pass the files to merge, in order: "
                                 + ", ".join(self.label(p) for p in sorted(self.compose)))
            return COMPOSE, project
        if kinds == [KUBERNETES]:
            return KUBERNETES, self.kubernetes
        if kinds == [ASPIRE]:
            return ASPIRE, self.aspire
        if self.app_hosts:
            raise InputError(aspire_instructions([self.label(p) for p in self.app_hosts]))
        raise InputError([f"{self.folder}: no compose file ({', '.join(COMPOSE_FILE_NAMES)}), no Kubernetes "
                          f"manifest and no {ASPIRE_MANIFEST} in this folder or below it", *self.skipped_lines()])

    def folder_lines(self) -> list[str]:
        lines = [f"{self.label(p)}/ (docker-compose)" for p in sorted({p.parent for p in self.compose})]
        by_folder: dict[Path, int] = {}
        for path in self.kubernetes:
            by_folder[path.parent] = by_folder.get(path.parent, 0) + 1
        lines += [f"{self.label(p)}/ (Kubernetes manifests: {n} file{'' if n == 1 else 's'})"
                  for p, n in sorted(by_folder.items())]
        lines += [f"{self.label(p)} (Aspire manifest)" for p in self.aspire]
        return lines

    def skipped_lines(self) -> list[str]:
        lines = [f"Helm chart {self.label(chart)}/ ({count} files): not rendered; import the output of "
                 f"`helm template {self.label(chart)}`" for chart, count in sorted(self.helm_charts.items())]
        if self.other:
            lines.append(f"files that are neither compose files nor Kubernetes objects ({len(self.other)}): "
                         + ", ".join(self.label(p) for p in self.other))
        return lines

    def _suggestion(self) -> list[str]:
        return [f"  - {line}" for line in self.folder_lines()]


def scan_folder(folder: Path) -> FolderScan:
    scan = FolderScan(folder)
    charts = {p.parent for p in _files(folder) if p.name == "Chart.yaml"}
    for path in _files(folder):
        if path.name.endswith(".csproj") and is_aspire_app_host(path):
            scan.app_hosts.append(path)
        if path.name == ASPIRE_MANIFEST and is_aspire_manifest(path):
            scan.aspire.append(path)
        if path.suffix not in (".yaml", ".yml"):
            continue
        chart = next((c for c in charts if path.is_relative_to(c)), None)
        if chart is not None:
            scan.helm_charts[chart] = scan.helm_charts.get(chart, 0) + 1
            continue
        label = scan.label(path)
        try:
            documents = [doc for doc, _ in load_documents(path, label) if doc is not None]
        except InputError as exc:
            if "{{" in read_text(path, label):  # a template of some tool, not YAML until rendered
                scan.other.append(path)
            else:
                scan.errors.extend(exc.problems)
            continue
        if path.name in KUSTOMIZATION_FILES or _has_kubernetes_objects(documents):
            scan.kubernetes.append(path)
        elif path.name in COMPOSE_FILE_NAMES or (documents and isinstance(documents[0], LineDict)
                                                 and isinstance(documents[0].get("services"), dict)):
            scan.compose.append(path)
        else:
            scan.other.append(path)
    return scan


def _files(folder: Path) -> list[Path]:
    """Files below a folder in a stable order; hidden folders and dependency folders are not looked into."""
    found = []
    for path in folder.rglob("*"):
        parts = path.relative_to(folder).parts
        if any(part.startswith(".") or part in _NOT_SCANNED for part in parts[:-1]) or parts[-1].startswith("."):
            continue
        if path.is_file():
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())
