"""The imported fleet as fleet.yaml text: deterministic, commented, and checked against its own data.

Every decision the importer took is a comment next to what it decided: each edge's evidence, why an
edge is soft or startup-only, unresolved references, infrastructure, skipped objects, kustomizations.
Nothing in the text depends on time, the machine or dictionary order, so the same input gives the
same bytes. The text is parsed back and compared with the data it was meant to hold before anyone
sees it.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from release_graph.importer.cycles import CycleReport
from release_graph.importer.edges import EdgeReport, InferredEdge, describe_host
from release_graph.importer.environment import ENV_VAR_NAME, orchestrator_variable
from release_graph.importer.model import COMPOSE, KUBERNETES, ImportedFleet, ImportedService

WIDTH = 110
# The cluster version written for imported Kubernetes fleets: one whose schemas kubernetes-validate holds; the
# fleet's owner sets the real one (the comment above it says so)
KUBERNETES_VERSION_WRITTEN = "1.33"
_PLAIN = re.compile(r"^[A-Za-z0-9_./+][A-Za-z0-9_./:@+=-]*$")


def scalar(value: Any) -> str:
    """A YAML scalar that reads back as exactly `value` (plain when safe, double-quoted otherwise)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if _PLAIN.match(text) and not text.endswith(":"):
        try:
            if yaml.safe_load(text) == text:
                return text
        except yaml.YAMLError:
            pass
    return json.dumps(text, ensure_ascii=True)


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


@dataclass
class _Out:
    lines: list[str]

    def comment(self, indent: int, text: str, first: str = "", hang: str | None = None) -> None:
        """A wrapped comment; continuation lines are indented by `hang` (default: under `first`, plus 2)."""
        prefix = " " * indent + "# "
        hang = " " * len(first) + "  " if hang is None else hang
        wrapped = textwrap.wrap(text, width=max(40, WIDTH - len(prefix) - max(len(first), len(hang))),
                                break_long_words=False, break_on_hyphens=False) or [""]
        for i, piece in enumerate(wrapped):
            self.lines.append((prefix + (first if i == 0 else hang) + piece).rstrip())

    def line(self, text: str = "") -> None:
        self.lines.append(text)


def _edge_comment_lines(edge: InferredEdge) -> list[str]:
    lines = []
    for item in sorted(edge.items, key=lambda i: i.evidence):
        detail = [item.display] if item.display and item.kind not in ("depends_on", "links") else []
        if item.note:
            detail.append(item.note)
        lines.append(item.evidence + (f" ({'; '.join(detail)})" if detail else ""))
    if edge.soft:
        lines.append(f"soft: {edge.soft_reason}")
    elif edge.startup_only:
        lines.append("startup only: only a start-up ordering names it, no call was seen in the deploy files")
    return lines


def render(fleet: ImportedFleet, report: EdgeReport, cycles: CycleReport, *, fleet_name: str, registry: str,
           out_dir: Path) -> tuple[str, dict]:
    """(text, data): the fleet.yaml text and the plain data it must parse back to."""
    out = _Out([])
    data: dict[str, Any] = {"fleet": fleet_name, "registry": registry, "services": {}, "environments": {}}
    apps = sorted(n for n, s in fleet.services.items() if not s.infrastructure)
    infra_names = sorted(n for n, s in fleet.services.items() if s.infrastructure)
    unit_of = {member: unit for unit, members in cycles.units.items() for member in members}

    _header(out, fleet, report, cycles, fleet_name, out_dir, len(apps), len(infra_names))
    out.line(f"fleet: {scalar(fleet_name)}")
    out.line(f"registry: {scalar(registry)}")
    out.line()
    out.line("services:")
    for title, names in (("application services: built from source or promoted as prebuilt images", apps),
                         ("infrastructure: deployed so lineage shows it, never released", infra_names)):
        if not names:
            continue
        out.comment(2, f"---- {title} ----")
        out.line()
        for name in names:
            service = fleet.services[name]
            data["services"][name] = _service(out, service, report, unit_of.get(name), cycles, out_dir)
            out.line()

    target = "kubernetes" if fleet.kind == KUBERNETES else "docker"
    out.comment(0, "Environments in promotion order. One to start with, on the target the deploy files were written "
                   "for; add staging and prod (approval: required) as the fleet grows.")
    out.line("environments:")
    out.line("  dev:")
    out.line(f"    target: {target}")
    data["environments"] = {"dev": {"target": target}}
    if target == "kubernetes":
        cluster = {"namespace": fleet.namespace or "default", "version": KUBERNETES_VERSION_WRITTEN}
        data["environments"]["dev"]["kubernetes"] = cluster
        out.comment(4, "The cluster: the namespace the deploy files use"
                       + ("" if fleet.namespace else " (they use several: one is needed here)")
                       + ", and the cluster's version, which every generated object is validated against: set yours.")
        out.line(f"    kubernetes: {{namespace: {scalar(cluster['namespace'])}, version: '{cluster['version']}'}}")
    secrets = _secret_references(fleet)
    if secrets:
        data["environments"]["dev"]["secrets"] = secrets
        out.comment(4, "Credentials found in the deploy files, as references: each value is read from this variable "
                       "of the orchestrator's environment at deploy time and never stored (see each service's REVIEW).")
        out.line("    secrets:")
        for name, references in secrets.items():
            out.line(f"      {scalar(name)}:")
            for variable, reference in references.items():
                out.line(f"        {scalar(variable)}: {{env: {scalar(reference['env'])}}}")
    text = "\n".join(out.lines).rstrip("\n") + "\n"
    parsed = yaml.safe_load(text)
    if parsed != data:
        raise AssertionError("importer bug: the written fleet.yaml does not read back as the imported data")
    return text, data


def _secret_references(fleet: ImportedFleet) -> dict[str, dict[str, dict[str, str]]]:
    """service -> variable -> {env: ORCHESTRATOR_VARIABLE}, for every secret a target can receive."""
    references = {}
    for name in sorted(fleet.services):
        variables = sorted(v for v in fleet.services[name].secrets if ENV_VAR_NAME.match(v))
        if variables:
            references[name] = {v: {"env": orchestrator_variable(name, v)} for v in variables}
    return references


def _header(out: _Out, fleet: ImportedFleet, report: EdgeReport, cycles: CycleReport, fleet_name: str,
            out_dir: Path, app_count: int, infra_count: int) -> None:
    kind = {COMPOSE: "docker-compose files", KUBERNETES: "Kubernetes manifests"}.get(fleet.kind, "an Aspire manifest")
    out.comment(0, f"Fleet {fleet_name}, written by `release-graph import` from {kind}. The same input files "
                   "give the same bytes. Comments say what each value was derived from; REVIEW marks what a "
                   "person should check before the first release.")
    out.comment(0, "")
    root = os.path.relpath(fleet.root, out_dir)
    out.comment(0, f"Inputs (in {Path(root).as_posix()}/{', merged in this order' if fleet.kind == COMPOSE else ''}):")
    for label in fleet.inputs:
        out.comment(0, label, first="  - ")
    edges = list(report.edges.values())
    soft = sum(1 for e in edges if e.soft)
    startup = sum(1 for e in edges if not e.soft and e.startup_only)
    out.comment(0, "")
    out.comment(0, f"Summary: {app_count + infra_count} services ({app_count} application, {infra_count} "
                   f"infrastructure); {len(edges)} edges ({len(edges) - soft} hard, of which {startup} startup-only; "
                   f"{soft} soft); {plural(len(report.unresolved), 'unresolved reference')}; "
                   f"{plural(len(cycles.cycles), 'cycle')}; {plural(len(cycles.units), 'deploy unit')}.")
    sections = [
        ("Notes", fleet.notes),
        ("Unresolved references: named in the deploy files but not deployed by them, so no edge was written",
         [f"{u.consumer} -> {describe_host(u.host)}: {u.evidence} ({u.display}): {u.reason}"
          for u in report.unresolved]),
        ("External hosts named (outside this fleet; no edge)",
         [f"{u.consumer} -> {describe_host(u.host)}: {u.evidence}" for u in report.external]),
        ("Cycles of calls (soft edges break them; what still cycles deploys as one unit)",
         _cycle_lines(report, cycles)),
        ("Skipped: not services of this fleet", fleet.skipped),
        ("Kustomizations", fleet.kustomizations),
    ]
    for title, items in sections:
        if not items:
            continue
        out.comment(0, "")
        out.comment(0, f"{title}:")
        for item in items:
            out.comment(0, item, first="  - ")
    out.comment(0, "")
    out.comment(0, "Edges come only from what the deploy files show (environment values, depends_on, links, "
                   "start-up waits). Calls hard-coded in the services' source are invisible here: add them "
                   "to depends_on by hand.")
    out.line()


def _cycle_lines(report: EdgeReport, cycles: CycleReport) -> list[str]:
    lines = []
    for cycle in cycles.cycles:
        path = " -> ".join([*cycle, cycle[0]])
        softened = [e for e in report.edges.values()
                    if e.soft and e.consumer in cycle and e.provider in cycle]
        units = [u for u, members in cycles.units.items() if set(members) & set(cycle)]
        parts = [f"cycle {path}"]
        for edge in sorted(softened, key=lambda e: (e.consumer, e.provider)):
            parts.append(f"{edge.consumer} -> {edge.provider} is soft ({edge.soft_reason})")
        for unit in units:
            parts.append(f"{', '.join(cycles.units[unit])} still call each other in a cycle: they share "
                         f"deploy_unit {unit} and deploy together")
        if not units:
            parts.append("broken by the soft edges")
        lines.append("; ".join(parts))
    return lines


def _service(out: _Out, service: ImportedService, report: EdgeReport, unit: str | None, cycles: CycleReport,
             out_dir: Path) -> dict:
    data: dict[str, Any] = {}
    heading = f"{service.name}: {service.origin}"
    if service.source_name != service.name:
        heading += f" (named '{service.source_name}' there)"
    out.comment(2, heading)
    for note in service.notes:
        out.comment(2, note, first="  ")
    for unresolved in (u for u in report.unresolved if u.consumer == service.name):
        out.comment(2, f"unresolved: {describe_host(unresolved.host)} ({unresolved.evidence}): {unresolved.reason}",
                    first="  ")
    for external in (u for u in report.external if u.consumer == service.name):
        out.comment(2, f"external host {describe_host(external.host)} ({external.evidence}): no edge", first="  ")
    for own, evidence in report.self_references:
        if own == service.name:
            out.comment(2, f"{evidence} names the service itself: no edge", first="  ")
    for review in service.review:
        out.comment(2, review, first="  REVIEW: ", hang="    ")
    out.line(f"  {scalar(service.name)}:")

    build = service.build
    if build is not None:
        repo = build.repo if build.is_url else Path(os.path.relpath(build.repo, out_dir)).as_posix()
        data["repo"] = repo
        out.line(f"    repo: {scalar(repo)}")
        if build.branch and build.branch != "main":
            data["branch"] = build.branch
            out.line(f"    branch: {scalar(build.branch)}")
        if build.path != ".":
            data["path"] = build.path
            out.line(f"    path: {scalar(build.path)}")
        build_data: dict[str, Any] = {}
        if build.dockerfile != "Dockerfile":
            build_data["dockerfile"] = build.dockerfile
        if build.target:
            build_data["target"] = build.target
        if build.test_target != "test":
            build_data["test_target"] = build.test_target
        if build.args:
            build_data["args"] = dict(sorted(build.args.items()))
        data["build"] = build_data
        if not build_data:
            out.line("    build: {}")
        else:
            out.line("    build:")
            for key, value in build_data.items():
                if key == "args":
                    out.line("      args:")
                    for arg, arg_value in value.items():
                        out.line(f"        {scalar(arg)}: {scalar(arg_value)}")
                else:
                    out.line(f"      {key}: {scalar(value)}")
    else:
        data["image"] = service.image
        out.line(f"    image: {scalar(service.image)}")
        if service.infrastructure:
            data["infrastructure"] = True
            out.line("    infrastructure: true")
    if service.language:
        data["language"] = service.language
        out.line(f"    language: {scalar(service.language)}")
    if service.port is not None:
        data["port"] = service.port
        out.line(f"    port: {service.port}")
    data["health"] = service.health
    out.line(f"    health: {scalar(service.health)}")
    if unit:
        data["deploy_unit"] = unit
        out.comment(4, f"deploy_unit {unit}: {', '.join(cycles.units[unit])} call each other in a cycle with no "
                       "edge judged soft, so they deploy as one unit")
        out.line(f"    deploy_unit: {scalar(unit)}")
    for key in ("entrypoint", "command"):
        arguments = getattr(service, key)
        if arguments is not None:
            data[key] = list(arguments)
            out.line(f"    {key}:" + ("" if arguments else " []"))
            for argument in arguments:
                out.line(f"      - {scalar(argument)}")
    if service.env:
        data["env"] = dict(sorted(service.env.items()))
        out.line("    env:")
        for key, value in data["env"].items():
            out.line(f"      {scalar(key)}: {scalar(value)}")
    if any(ENV_VAR_NAME.match(variable) for variable in service.secrets):
        # Its deploy files hand it its secrets as variables, so that is what its code reads.
        data["secrets_as"] = "env"
        out.comment(4, "secrets_as env: the deploy files gave this service its secrets as environment variables, "
                       "which the engine's inspect shows; once it reads each from the file <NAME>_FILE names, "
                       "remove this line (files are the default)")
        out.line("    secrets_as: env")
    if service.hardening:
        data["hardening"] = service.hardening
        out.line("    hardening:")
        if "tmpfs" in service.hardening:
            out.line(f"      tmpfs: [{', '.join(scalar(path) for path in service.hardening['tmpfs'])}]")
        if "capabilities" in service.hardening:
            granted = service.hardening["capabilities"]
            out.line(f"      capabilities: {{add: [{', '.join(scalar(n) for n in granted['add'])}], "
                     f"reason: {scalar(granted['reason'])}}}")

    edges = report.of(service.name)
    if edges:
        data["depends_on"] = []
        out.line("    depends_on:")
        for edge in edges:
            entry: dict[str, Any] = {"name": edge.provider}
            for line in _edge_comment_lines(edge):
                out.comment(6, line, first="")
            out.line(f"      - name: {scalar(edge.provider)}")
            if edge.soft:
                entry["soft"] = True
                out.line("        soft: true")
            if edge.startup_only:
                entry["startup_only"] = True
                out.line("        startup_only: true")
            entry["evidence"] = edge.evidence
            out.line("        evidence:")
            for evidence in edge.evidence:
                out.line(f"          - {scalar(evidence)}")
            data["depends_on"].append(entry)
    return data
