"""A .NET Aspire manifest (`aspire-manifest.json`, written by Aspire's manifest publisher) -> imported services.

The manifest lists resources by type: containers (`container.v0`, `container.v1`), .NET projects
(`project.v0`, `project.v1`) and Dockerfiles (`dockerfile.v0`) become services; parameters, values and
databases (`parameter.v0`, `value.v0`, `*.database.v0`) are what connection strings are made of; cloud
resources (`azure.*`, `*.bicep.v0`) and executables are listed as skipped, executables with a REVIEW note.

Values are expressions over other resources: `{catalog-api.bindings.http.url}`,
`{catalogdb.connectionString}`, `{postgres-password.value}`. Each one that leads to a service is an
edge, with the env key (or argument) as evidence and the resources it went through as a note. The values
written to `env` are those expressions evaluated for a docker target: a binding's host is the service's
name and its port the container port (`targetPort`). A value that needs a secret parameter is a secret
reference; one that needs what the manifest does not say (a port left to the deployer, a cloud output)
is not written, with a REVIEW note.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from release_graph.importer import infra
from release_graph.importer.compose import dockerfile_facts, locate_repo
from release_graph.importer.edges import hosts_in_value
from release_graph.importer.environment import is_secret, review_environment, withhold
from release_graph.importer.model import (
    ASPIRE,
    BuildInfo,
    HostRef,
    ImportedFleet,
    ImportedService,
    Reference,
    Resolution,
)
from release_graph.importer.names import dns_name, rename_note
from release_graph.importer.yamlfiles import InputError, LineDict, load_documents

_EXPRESSION = re.compile(r"\{(?P<resource>[A-Za-z0-9_-]+)\.(?P<path>[A-Za-z0-9_.-]+)\}")
_SERVICE_TYPES = ("container.", "project.", "dockerfile.")
# Typed resources of early Aspire versions, which name the software but no image: `redis.v0`, `postgres.server.v0`.
_TYPED_INFRASTRUCTURE = re.compile(r"^(?P<software>[a-z]+)(?:\.server)?\.v\d+$")


@dataclass
class Evaluated:
    """An expression's value for a docker target, and what it leads to."""

    text: str | None  # None: not known here (a secret, a port left to the deployer, a cloud output)
    services: set[str] = field(default_factory=set)  # manifest names of the services it leads to
    via: list[str] = field(default_factory=list)  # resources it went through that are not services
    secret: str = ""  # why it is a secret, or ""
    unknown: list[str] = field(default_factory=list)  # why it is not known


def read_aspire(files: list[Path], root: Path) -> ImportedFleet:
    if len(files) != 1:
        raise InputError(f"{', '.join(f.name for f in files)}: import one Aspire manifest at a time")
    path = files[0]
    label = path.resolve().relative_to(root).as_posix() if path.resolve().is_relative_to(root) else str(path)
    resources = _resources(path, label)
    names: dict[str, str] = {}  # resource -> service name, for the resources that are services
    taken: set[str] = set()
    renames, skipped, reviews = [], [], []
    for resource in sorted(resources):
        kind = resources[resource]["type"]
        if kind.startswith(_SERVICE_TYPES) or _typed_infrastructure(kind):
            names[resource] = dns_name(resource, taken)
            taken.add(names[resource])
            if names[resource] != resource:
                renames.append(rename_note(resource, names[resource]))
        elif kind.startswith("executable."):
            reviews.append(f"REVIEW: {resource} ({label}:{resources[resource].line}) is an executable "
                           f"({resources[resource].get('command')}), not a container: release-graph deploys "
                           "images, so give it a Dockerfile and re-import, or deploy it another way")
            skipped.append(f"{resource} ({kind}): an executable, not a container")
        elif kind.startswith("azure.") or kind.endswith(".bicep.v0"):
            skipped.append(f"{resource} ({kind}): a cloud resource, provisioned outside release-graph")
        elif kind not in ("parameter.v0", "value.v0") and not kind.endswith(".database.v0"):
            skipped.append(f"{resource} ({kind}): a resource type the importer does not know")
    evaluator = _Evaluator(resources, names)
    # The folder that holds the AppHost and every project it builds (the solution's folder) is the repository
    # when no git repository above it holds them all, as the compose folder is for compose.
    contexts = [_build_context(resources[r], path) for r in names]
    solution = Path(os.path.commonpath([str(path.resolve().parent), *(str(c) for c in contexts if c)]))
    services = {names[r]: _service(r, resources[r], names[r], evaluator, path, label, solution)
                for r in sorted(names)}
    if not services:
        raise InputError(f"{label}: no container, project or Dockerfile resource: nothing to import")
    fleet = ImportedFleet(kind=ASPIRE, root=str(root), inputs=[label], services=services,
                          resolver=AspireHosts(set(names.values())))
    # A note about a repository (not a git repository yet) is said once, not once per service built from it.
    repo_notes = dict.fromkeys(n for s in services.values() if s.build for n in s.build.notes)
    fleet.notes.extend([*renames, *reviews, *(f"REVIEW: {note}" for note in repo_notes)])
    fleet.skipped.extend(skipped)
    app_host = path.resolve().parent.name
    fleet.suggested_name = app_host.removesuffix(".AppHost") if app_host.endswith(".AppHost") else None
    return fleet


def _resources(path: Path, label: str) -> LineDict:
    """The manifest's resources, with lines (JSON is YAML, so the line-keeping loader reads it)."""
    documents = load_documents(path, label)
    top = documents[0][0] if documents else None
    resources = top.get("resources") if isinstance(top, LineDict) else None
    if not isinstance(resources, LineDict):
        raise InputError(f"{label}: not an Aspire manifest: expected {{\"resources\": {{...}}}}")
    problems = [f"{label}:{resources.line_of(name)}: resource {name}: expected an object with a `type`"
                for name, resource in resources.items()
                if not (isinstance(resource, LineDict) and isinstance(resource.get("type"), str))]
    if problems:
        raise InputError(problems)
    return resources


def _build_context(resource: LineDict, path: Path) -> Path | None:
    """The folder a resource is built from: a project's folder, a Dockerfile's context; None: prebuilt."""
    if resource["type"].startswith("project."):
        return (path.parent / str(resource.get("path") or "")).resolve().parent
    build = resource.get("build") if isinstance(resource.get("build"), dict) else None
    if build is not None or resource["type"].startswith("dockerfile."):
        return (path.parent / str((build or resource).get("context") or ".")).resolve()
    return None


def _typed_infrastructure(kind: str) -> infra.WellKnown | None:
    match = _TYPED_INFRASTRUCTURE.match(kind)
    return infra.by_service_name(match.group("software")) if match and kind != "parameter.v0" else None


class AspireHosts:
    """Literal host names in values (expressions are resolved before): the fleet's service names."""

    def __init__(self, services: set[str]):
        self.services = services

    def resolve(self, consumer: ImportedService, host: HostRef) -> Resolution:
        if host.host in self.services:
            return Resolution(services=(host.host,))
        if "." in host.host:
            return Resolution(external=True, note="not a resource of this Aspire manifest")
        return Resolution(unresolved=True, note="no resource of that name in the Aspire manifest")


class _Evaluator:
    def __init__(self, resources: LineDict, names: dict[str, str]):
        self.resources = resources
        self.names = names

    def value(self, text: str, seen: tuple[str, ...] = ()) -> Evaluated:
        result = Evaluated("")
        pieces: list[str] = []
        last = 0
        for match in _EXPRESSION.finditer(text):
            part = self.expression(match.group("resource"), match.group("path"), seen)
            pieces.append(text[last:match.start()])
            last = match.end()
            result.services |= part.services
            result.via += [v for v in part.via if v not in result.via]
            result.secret = result.secret or part.secret
            result.unknown += part.unknown
            pieces.append(part.text or "")
        pieces.append(text[last:])
        result.text = None if (result.secret or result.unknown) else "".join(pieces)
        return result

    def expression(self, name: str, path: str, seen: tuple[str, ...]) -> Evaluated:
        resource = self.resources.get(name)
        if resource is None:
            return Evaluated(None, unknown=[f"{{{name}.{path}}} names no resource of the manifest"])
        kind = resource["type"]
        service = self.names.get(name)
        if path.startswith("bindings."):
            return self._binding(name, resource, path, service)
        if path == "connectionString":
            if name in seen:
                return Evaluated(None, unknown=[f"the connection string of {name} refers to itself"])
            text = resource.get("connectionString")
            if text is None and resource.get("parent"):  # a database of a server: the server's connection
                text = f"{{{resource['parent']}.connectionString}}"
            if not isinstance(text, str):
                return Evaluated(None, unknown=[f"{name} ({kind}) has no connection string"])
            result = self.value(text, (*seen, name))
            if service:
                result.services.add(service)
            elif name not in result.via:
                result.via.insert(0, name)
            return result
        if kind == "parameter.v0" and path in ("value", "inputs.value"):
            return self._parameter(name, resource)
        if path.startswith(("outputs.", "secretOutputs.")):
            return Evaluated(None, unknown=[f"{{{name}.{path}}} is an output of {name} ({kind}), known only once "
                                            "it is provisioned"])
        if isinstance(resource.get(path), str):  # `databaseName` and the like
            return Evaluated(resource[path], services={service} if service else set())
        return Evaluated(None, unknown=[f"{{{name}.{path}}} is not something the importer can evaluate"])

    def _binding(self, name: str, resource: LineDict, path: str, service: str | None) -> Evaluated:
        _, binding_name, field_name = (path.split(".", 2) + ["", ""])[:3]
        binding = (resource.get("bindings") or {}).get(binding_name)
        if not isinstance(binding, dict) or service is None:
            return Evaluated(None, unknown=[f"{{{name}.{path}}}: {name} has no binding {binding_name!r}"])
        port = binding.get("targetPort")
        scheme = str(binding.get("scheme") or "tcp")
        if field_name == "host":
            return Evaluated(service, {service})
        if field_name == "scheme":
            return Evaluated(scheme, {service})
        if port is None and field_name in ("port", "targetPort", "url"):
            return Evaluated(None, {service}, unknown=[
                f"{{{name}.{path}}}: the manifest leaves the port of {name}'s binding {binding_name} to the "
                "deployer (no targetPort)"])
        if field_name in ("port", "targetPort"):
            return Evaluated(str(port), {service})  # on a docker target callers reach the container port
        if field_name == "url":
            return Evaluated(f"{scheme}://{service}:{port}", {service})
        return Evaluated(None, unknown=[f"{{{name}.{path}}} is not something the importer can evaluate"])

    def _parameter(self, name: str, resource: LineDict) -> Evaluated:
        value_input = ((resource.get("inputs") or {}).get("value") or {})
        if value_input.get("secret"):
            return Evaluated(None, secret=f"the secret parameter {name}")
        default = (value_input.get("default") or {}).get("value")
        if isinstance(default, str):
            return Evaluated(default)
        return Evaluated(None, unknown=[f"parameter {name} has no value in the manifest (it is asked at deploy "
                                        "time)"])


def _service(resource_name: str, resource: LineDict, name: str, evaluator: _Evaluator, path: Path,
             label: str, solution: Path) -> ImportedService:
    kind = resource["type"]
    service = ImportedService(name=name, source_name=resource_name, origin=f"{label}:{resource.line} ({kind})")
    typed = _typed_infrastructure(kind)
    if typed:
        service.image, service.infrastructure = typed.image, True
        service.review.append(f"a {kind} resource names no image: the official image `{typed.image}` stands in "
                              "(untagged): pin the version you run")
    elif kind.startswith("project."):
        _project(service, resource, path, label, solution)
    elif isinstance(resource.get("build"), dict) or kind.startswith("dockerfile."):
        _dockerfile(service, resource, path, label, solution)
    else:
        image = resource.get("image")
        if not isinstance(image, str) or not image:
            raise InputError(f"{label}:{resource.line}: resource {resource_name} ({kind}): no `image`")
        service.image = image
        service.notes.append(f"prebuilt: the manifest runs image {image}; it is promoted, not built")
        review = infra.unpinned_image_review(image)
        if review:
            service.review.append(review)
    known = typed or (infra.by_image(service.image) if service.image else None)
    if known and not service.infrastructure:
        service.infrastructure = True
    if service.infrastructure:
        service.notes.append(f"infrastructure ({known.category}): well-known {known.name}; deployed, never released")
    _port(service, resource, known)
    service.health = None
    service.notes.append("health: null: an Aspire manifest declares no health endpoint (its health checks live "
                         "in the code)")
    _environment(service, resource, evaluator, label)
    _arguments(service, resource, evaluator, label)
    _not_carried(service, resource)
    review_environment(service)
    return service


def _project(service: ImportedService, resource: LineDict, path: Path, label: str, solution: Path) -> None:
    project = (path.parent / str(resource.get("path") or "")).resolve()
    folder = project.parent
    repo, repo_path, branch, note = locate_repo(folder, solution)
    service.build = BuildInfo(repo=str(repo), path=repo_path, branch=branch, notes=[note] if note else [])
    service.language = "dotnet"
    service.notes.append(f"built: the .NET project {resource.get('path')} ({label}:{resource.line_of('path')})")
    if (folder / "Dockerfile").is_file():
        dockerfile_facts(service, lambda p: p.as_posix())
    else:
        service.build.test_target = None
        service.review.append(f"{project.name} has no Dockerfile beside it (Aspire publishes .NET projects with "
                              "`dotnet publish -t:PublishContainer`): release-graph builds a Dockerfile, so add "
                              "one to the project folder")


def _dockerfile(service: ImportedService, resource: LineDict, path: Path, label: str, solution: Path) -> None:
    build = resource.get("build") if isinstance(resource.get("build"), dict) else resource
    context = (path.parent / str(build.get("context") or ".")).resolve()
    dockerfile = (path.parent / str(build.get("dockerfile") or build.get("path") or "Dockerfile")).resolve()
    if not dockerfile.is_relative_to(context):
        raise InputError(f"{label}:{resource.line}: resource {service.source_name}: the Dockerfile {dockerfile} is "
                         "outside the build context; release-graph builds with the Dockerfile inside the context")
    repo, repo_path, branch, note = locate_repo(context, solution)
    args = build.get("args") or build.get("buildArgs") or {}
    service.build = BuildInfo(repo=str(repo), path=repo_path, branch=branch,
                              dockerfile=dockerfile.relative_to(context).as_posix(), notes=[note] if note else [],
                              args={str(k): str(v) for k, v in args.items() if not is_secret(str(k), str(v))},
                              secret_args=[str(k) for k, v in args.items() if is_secret(str(k), str(v))])
    for arg in service.build.secret_args:
        service.review.append(f"build arg {arg} is not written: its name says secret, and the manifest has no "
                              "secret build args; pass it at build time")
    dockerfile_facts(service, lambda p: p.as_posix())


def _port(service: ImportedService, resource: LineDict, known: infra.WellKnown | None) -> None:
    bindings = resource.get("bindings") if isinstance(resource.get("bindings"), dict) else {}
    with_port = {n: b for n, b in bindings.items() if isinstance(b, dict) and isinstance(b.get("targetPort"), int)}
    chosen = next((n for n in ("http", "https", "tcp") if n in with_port), next(iter(with_port), None))
    if known and any(b["targetPort"] == known.port for b in with_port.values()):
        chosen = next(n for n, b in with_port.items() if b["targetPort"] == known.port)
    external = sorted(n for n, b in bindings.items() if isinstance(b, dict) and b.get("external"))
    if external:
        service.notes.append(f"bindings reachable from outside: {', '.join(external)}")
    if chosen:
        service.port = with_port[chosen]["targetPort"]
        service.notes.append(f"port {service.port}: the targetPort of binding {chosen}")
    elif bindings:
        service.review.append(f"bindings {', '.join(sorted(bindings))} have no targetPort: the manifest leaves the "
                              "port to the deployer (.NET listens on 8080 unless ASPNETCORE_HTTP_PORTS says "
                              "otherwise): set `port`")


def _environment(service: ImportedService, resource: LineDict, evaluator: _Evaluator, label: str) -> None:
    env = resource.get("env") if isinstance(resource.get("env"), dict) else {}
    not_known = []
    for variable in sorted(env):
        raw = str(env[variable])
        evaluated = evaluator.value(raw)
        evidence = f"{label}: {service.source_name}: env.{variable}"
        _add_references(service, evaluated, raw, evidence, "env", variable)
        if evaluated.secret:
            withhold(service, variable, why=f"it needs {evaluated.secret}")
        elif evaluated.text is None:
            not_known.append(f"{variable} ({'; '.join(evaluated.unknown)})")
        elif is_secret(variable, evaluated.text):
            withhold(service, variable, evaluated.text)
        else:
            service.env[variable] = evaluated.text
    if not_known:
        service.review.append("not written to env, since the manifest does not say their value: "
                              + "; ".join(not_known))


def _arguments(service: ImportedService, resource: LineDict, evaluator: _Evaluator, label: str) -> None:
    for key, target in (("entrypoint", "entrypoint"), ("args", "command")):
        value = resource.get(key)
        if value is None:
            continue
        parts = [value] if isinstance(value, str) else [str(p) for p in value]
        evaluated = [evaluator.value(p) for p in parts]
        evidence = f"{label}: {service.source_name}: {key}"
        for part, result in zip(parts, evaluated, strict=True):
            _add_references(service, result, part, evidence, "command", key)
        if any(r.secret for r in evaluated):
            service.review.append(f"`{key}` ({label}:{resource.line_of(key)}) needs a secret, so it is not written: "
                                  "pass it in a secret variable and write the command by hand")
        elif any(r.text is None for r in evaluated):
            unknown = "; ".join(u for r in evaluated for u in r.unknown)
            service.review.append(f"`{key}` is not written, since the manifest does not say all of it: {unknown}")
        else:
            setattr(service, target, [r.text for r in evaluated])


def _add_references(service: ImportedService, evaluated: Evaluated, raw: str, evidence: str, kind: str,
                    key: str) -> None:
    """Edges to every service a value leads to, and the literal hosts it names (expressions left out)."""
    shown = f"{key}={raw}"
    via = f"via {', '.join(evaluated.via)}" if evaluated.via else ""
    for provider in sorted(evaluated.services - {service.name}):
        service.references.append(Reference(consumer=service.name, evidence=evidence, kind=kind, key=key,
                                            display=shown, startup=False, target=provider, note=via))
    literal = _EXPRESSION.sub(" ", raw)
    hosts = hosts_in_value(literal, key)
    if hosts:
        service.references.append(Reference(consumer=service.name, evidence=evidence, kind=kind, key=key,
                                            display=shown, startup=False, hosts=hosts))


def _not_carried(service: ImportedService, resource: LineDict) -> None:
    mounts = [f"{m.get('name') or m.get('source')}:{m.get('target')}" for key in ("volumes", "bindMounts")
              for m in resource.get(key) or [] if isinstance(m, dict)]
    if mounts:
        service.review.append("mounts not carried by the manifest, so the service may run differently: "
                              + ", ".join(mounts) + ". Bake files into the image, or add what it needs by hand")
