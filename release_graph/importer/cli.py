"""`release-graph import <files or folders> [-o fleet.yaml]`: write a fleet manifest from deploy files.

Reads docker-compose files (merged in the order given) or Kubernetes manifests (files and folders),
infers services, infrastructure and edges with their evidence, and writes a commented fleet.yaml.
The file is written only after everything succeeded and the manifest loader accepted it: a temporary
file next to the output, renamed over it at the end. Bad input prints `file:line: what is wrong` and
exits 2 with nothing written.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from release_graph.fleet import DNS_LABEL, ManifestError, is_image_repository, load_fleet
from release_graph.importer.aspire import read_aspire
from release_graph.importer.compose import ComposeOptions, read_compose
from release_graph.importer.cycles import CycleReport, resolve_cycles
from release_graph.importer.edges import EdgeReport, describe_host, infer_edges
from release_graph.importer.inputs import classify_inputs
from release_graph.importer.kubernetes import read_kubernetes
from release_graph.importer.model import COMPOSE, KUBERNETES, ImportedFleet
from release_graph.importer.names import dns_name
from release_graph.importer.writer import plural, render
from release_graph.importer.yamlfiles import InputError

EXIT_OK = 0
EXIT_BAD_INPUT = 2
DEFAULT_REGISTRY_HOST = "127.0.0.1:5000"
# Folder names that say where manifests live rather than what the fleet is called.
_GENERIC_FOLDERS = {"kubernetes-manifests", "kubernetes", "k8s", "kube", "manifests", "deploy", "deployment",
                    "deployments", "base", "overlays", "compose", "docker", "docker-compose", "release", "config",
                    "yaml", "src"}


@dataclass
class ImportResult:
    text: str
    fleet: ImportedFleet
    edges: EdgeReport
    cycles: CycleReport
    fleet_name: str
    registry: str
    warnings: list[str] = field(default_factory=list)


def default_fleet_name(fleet: ImportedFleet) -> str:
    if fleet.suggested_name:
        return dns_name(fleet.suggested_name, set(), reserved=set())
    folder = Path(fleet.root)
    while folder.name.lower() in _GENERIC_FOLDERS and folder.parent != folder:
        folder = folder.parent
    return dns_name(folder.name or "imported", set(), reserved=set())


def import_fleet(inputs: list[Path], output: Path, *, fleet_name: str | None = None, registry: str | None = None,
                 compose_options: ComposeOptions | None = None) -> ImportResult:
    """Read the inputs and return the fleet.yaml text for `output` (repo paths are relative to its folder)."""
    found = classify_inputs(inputs)
    if found.kind != COMPOSE and compose_options and (
            compose_options.profiles or compose_options.env or compose_options.env_files):
        raise InputError("--profile, --env and --env-file apply to docker-compose files, and the inputs are "
                         f"{'Kubernetes manifests' if found.kind == KUBERNETES else 'an Aspire manifest'}")
    try:
        if found.kind == COMPOSE:
            fleet = read_compose(found.files, found.root, compose_options or ComposeOptions())
        elif found.kind == KUBERNETES:
            fleet = read_kubernetes(found.files, found.root)
        else:
            fleet = read_aspire(found.files, found.root)
    except InputError as exc:
        if len(found.folders) > 1:  # a folder scan found deploy files in several places: say which to pass
            exc.problems.extend(["the deploy files found lie in several folders; pass one of them:",
                                 *(f"  - {folder}" for folder in found.folders)])
        raise
    fleet.skipped.extend(found.skipped)
    name = fleet_name or default_fleet_name(fleet)
    if not DNS_LABEL.match(name):
        raise InputError(f"--fleet-name {name!r}: expected a DNS label (lowercase letters, digits, '-')")
    registry = registry or f"{DEFAULT_REGISTRY_HOST}/{name}"
    if not is_image_repository(registry):
        raise InputError(f"--registry {registry!r}: expected an image repository such as 127.0.0.1:5000/{name}")
    edges = infer_edges(fleet)
    cycles = resolve_cycles(edges, fleet.services)
    text, _ = render(fleet, edges, cycles, fleet_name=name, registry=registry, out_dir=output.parent)
    return ImportResult(text, fleet, edges, cycles, name, registry)


def write_fleet_file(result: ImportResult, output: Path) -> list[str]:
    """Write atomically once the loader accepts the text; return the loader's file-check findings."""
    output.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    temporary_path = Path(temporary)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(result.text)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary_path, 0o666 & ~umask)
        try:
            load_fleet(temporary_path, check_files=False)
        except ManifestError as exc:
            raise InputError(["importer bug: the manifest loader rejects the written fleet.yaml:",
                              *(p.replace(temporary_path.name, output.name) for p in exc.problems)]) from None
        findings: list[str] = []
        try:
            load_fleet(temporary_path, check_files=True)
        except ManifestError as exc:
            findings = [p.replace(temporary_path.name, output.name) for p in exc.problems]
        os.replace(temporary_path, output)
        return findings
    finally:
        if temporary_path.exists():
            temporary_path.unlink()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="release-graph import",
        description="Write a commented fleet.yaml from docker-compose files, Kubernetes manifests or a .NET Aspire "
        "manifest (aspire-manifest.json).",
        epilog="Compose files merge in the order given, like `docker compose -f a -f b`. A folder means its "
               "compose file (and override file), or else every .yaml/.yml manifest below it.",
    )
    parser.add_argument("inputs", nargs="+", type=Path, metavar="FILE_OR_FOLDER")
    parser.add_argument("-o", "--output", type=Path, default=Path("fleet.yaml"),
                        help="the manifest to write (default: ./fleet.yaml)")
    parser.add_argument("--fleet-name", help="the fleet's name (default: compose `name:`, the namespace, or the "
                                             "inputs' folder)")
    parser.add_argument("--registry", help="where built images are pushed (default: 127.0.0.1:5000/<fleet>)")
    parser.add_argument("--env-file", type=Path, action="append", dest="env_files", metavar="FILE",
                        help="compose variables from this file instead of the project's .env (repeatable)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a compose variable; wins over env files (repeatable)")
    parser.add_argument("--profile", action="append", default=[], help="an active compose profile (repeatable)")
    parser.add_argument("--force", action="store_true", help="replace the output file if it exists")
    return parser


def run(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage or help
        return int(exc.code or 0)
    started = time.perf_counter()
    output = args.output.expanduser().resolve()
    try:
        variables = {}
        for item in args.env:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise InputError(f"--env {item!r}: expected NAME=VALUE")
            variables[name] = value
        resolved_inputs = {p.expanduser().resolve() for p in args.inputs}
        if output in resolved_inputs:
            raise InputError(f"{output}: the output is one of the inputs")
        if output.exists() and not args.force:
            raise InputError(f"{output}: exists; pass --force to replace it (hand edits in it would be lost)")
        options = ComposeOptions(
            env_files=[p.expanduser().resolve() for p in args.env_files] if args.env_files else None,
            env=variables, profiles=list(args.profile),
        )
        result = import_fleet([p.expanduser() for p in args.inputs], output, fleet_name=args.fleet_name,
                              registry=args.registry, compose_options=options)
        findings = write_fleet_file(result, output)
    except InputError as exc:
        print("release-graph import: nothing written:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _print_summary(result, output, findings, time.perf_counter() - started)
    return EXIT_OK


def _print_summary(result: ImportResult, output: Path, findings: list[str], seconds: float) -> None:
    fleet = result.fleet
    services = fleet.services.values()
    infra_count = sum(1 for s in services if s.infrastructure)
    edges = list(result.edges.edges.values())
    soft = sum(1 for e in edges if e.soft)
    startup = sum(1 for e in edges if not e.soft and e.startup_only)
    kind = {COMPOSE: "docker-compose file", KUBERNETES: "Kubernetes file"}.get(fleet.kind, "Aspire manifest")
    print(f"wrote {output} (fleet {result.fleet_name}, from {plural(len(fleet.inputs), kind)} in {seconds:.2f}s)")
    print(f"  services: {len(fleet.services)} ({len(fleet.services) - infra_count} application, "
          f"{infra_count} infrastructure)")
    print(f"  edges: {len(edges)} ({len(edges) - soft} hard, {startup} of them startup-only; {soft} soft)")
    for unresolved in result.edges.unresolved:
        print(f"  unresolved: {unresolved.consumer} -> {describe_host(unresolved.host)} ({unresolved.evidence})")
    for cycle in result.cycles.cycles:
        print(f"  cycle: {' -> '.join([*cycle, cycle[0]])}")
    for unit, members in result.cycles.units.items():
        print(f"  deploy unit {unit}: {', '.join(members)}")
    for line in fleet.skipped:
        print(f"  skipped: {line.split(':', 1)[0]}")
    for line in fleet.kustomizations:
        print(f"  kustomization: {line.split(':', 1)[0]} (reported, not followed)")
    reviewed = sorted({s.name for s in services if s.review})
    count = sum(len(s.review) for s in services) + sum(1 for n in fleet.notes if n.startswith("REVIEW"))
    if count:
        where = f" (services: {', '.join(reviewed)})" if reviewed else ""
        print(f"  REVIEW: {plural(count, 'note')} in the file{where}")
    for finding in findings:
        print(f"  file check: {finding}")
