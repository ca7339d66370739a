"""docker-compose files -> imported services, following the Compose specification.

Several files merge in the order given: mappings merge key by key, sequences append (ports, expose,
links, profiles, volumes, configs and secrets without duplicates), `environment`, `build.args` and
`depends_on` merge by name whatever form each file uses, `command`, `entrypoint` and `healthcheck.test`
are replaced, and the `!reset` / `!override` tags drop or replace what earlier files said. Each file is
interpolated on its own before merging; relative paths are relative to the first file's folder (the
project folder), as in Compose. `extends` is followed; top-level `include` is reported, not followed.
Services whose `profiles` are not active (`--profile`) are left out, like `docker compose up` does.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from release_graph.fleet import is_image_reference
from release_graph.importer import infra
from release_graph.importer.edges import (
    HOST_GATEWAYS,
    command_hosts,
    has_credentials,
    hosts_in_value,
    mask_credentials,
    wait_targets,
)
from release_graph.importer.environment import (
    command_holds_credentials,
    is_secret,
    review_environment,
    withhold,
)
from release_graph.importer.interpolation import InterpolationError, interpolate, read_dotenv
from release_graph.importer.model import (
    COMPOSE,
    BuildInfo,
    HostRef,
    ImportedFleet,
    ImportedService,
    Reference,
    Resolution,
)
from release_graph.importer.names import dns_name, rename_note
from release_graph.importer.yamlfiles import (
    InputError,
    LineDict,
    LineList,
    Override,
    Reset,
    empty_line_dict,
    load_documents,
)

COMPOSE_FILE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
_OVERRIDE_NAMES = {
    "compose.yaml": ("compose.override.yaml", "compose.override.yml"),
    "compose.yml": ("compose.override.yml", "compose.override.yaml"),
    "docker-compose.yaml": ("docker-compose.override.yaml", "docker-compose.override.yml"),
    "docker-compose.yml": ("docker-compose.override.yml", "docker-compose.override.yaml"),
}
_REPLACED_KEYS = {"command", "entrypoint"}
_HTTP_URL = re.compile(
    r"(?P<scheme>https?)://(?P<host>\[::1\]|[A-Za-z0-9_.-]+)(?::(?P<port>\d+))?(?P<path>/[^\s'\"|;&)<>]*)?"
)
_LOOPBACK = {"localhost", "127.0.0.1", "0.0.0.0", "[::1]"}
_GIT_CONTEXT = re.compile(r"^(?:(?:https?|git|ssh)://|[\w.-]+@[\w.-]+:).*")


@dataclass
class ComposeOptions:
    env_files: list[Path] | None = None  # None: the project folder's .env, when there is one
    env: dict[str, str] = field(default_factory=dict)  # --env NAME=VALUE, which wins over env files
    profiles: list[str] = field(default_factory=list)


def project_files(folder: Path) -> list[Path]:
    """The files `docker compose` reads in a folder: the preferred base file and its override file."""
    for name in COMPOSE_FILE_NAMES:
        base = folder / name
        if base.is_file():
            for override in _OVERRIDE_NAMES[name]:
                if (folder / override).is_file():
                    return [base, folder / override]
            return [base]
    return []


@dataclass(frozen=True)
class Prov:
    """A value with the file and line it came from (evidence must name where an edge was seen)."""

    value: Any
    label: str
    line: int


class _Reader:
    def __init__(self, files: list[Path], root: Path, options: ComposeOptions):
        self.files = files
        self.root = root
        self.options = options
        self.project_dir = files[0].parent
        self.unset: dict[str, str] = {}
        self.notes: list[str] = []
        self.variables: dict[str, str] = {}
        self.variable_origins: dict[str, str] = {}  # name -> ".env:3" or "--env": where its value was set
        self.repo_reviews: dict[str, None] = {}  # once per repository, not once per service

    def label(self, path: Path) -> str:
        try:
            return path.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return os.path.relpath(path.resolve(), self.root)

    # --- variables and files ------------------------------------------------------------------------

    def load_variables(self) -> None:
        env_files = self.options.env_files
        if env_files is None:
            default = self.project_dir / ".env"
            env_files = [default] if default.is_file() else []
        for path in env_files:
            if not path.is_file():
                raise InputError(f"{self.label(path)}: env file not found")
            label = self.label(path)
            lines: dict[str, int] = {}
            values = read_dotenv(path, label, {**self.variables, **self.options.env}, lines)
            self.variables.update(values)
            self.variable_origins.update({name: f"{label}:{line}" for name, line in lines.items()})
            self.notes.append(f"variables read from {label}: {', '.join(sorted(values)) or 'none'}")
        self.variables.update(self.options.env)
        self.variable_origins.update({name: "--env" for name in self.options.env})
        if self.options.env:
            self.notes.append(f"variables given with --env: {', '.join(sorted(self.options.env))}")
        self.notes.append("the shell environment is not read, so the same files always give the same fleet.yaml")

    def read_file(self, path: Path) -> LineDict:
        label = self.label(path)
        documents = [(doc, line) for doc, line in load_documents(path, label) if doc is not None]
        if not documents:
            # Compose reads a file holding only comments (an override kept as a template) as empty.
            self.notes.append(f"{label} holds no settings (only comments or nothing): nothing merged from it")
            return empty_line_dict(1)
        if len(documents) != 1:
            raise InputError(f"{label}:{documents[1][1]}: expected one compose document, found {len(documents)}")
        top = documents[0][0]
        if not isinstance(top, LineDict):
            raise InputError(f"{label}:{documents[0][1]}: expected a mapping with `services:`")
        return self.interpolated(top, label, top.line)

    def interpolated(self, value: Any, label: str, line: int) -> Any:
        if isinstance(value, str):
            def record(name: str) -> None:
                self.unset.setdefault(name, f"{label}:{line}")

            try:
                return interpolate(value, self.variables, record)
            except InterpolationError as exc:
                raise InputError(f"{label}:{line}: {exc}") from None
        if isinstance(value, LineDict):
            result = LineDict()
            result.line, result.key_lines = value.line, dict(value.key_lines)
            for key, item in value.items():
                if isinstance(key, str) and key.startswith("x-"):
                    result[key] = item  # extension fields may hold anything, even `$` text
                    continue
                result[key] = self.interpolated(item, label, value.line_of(key))
            return result
        if isinstance(value, LineList):
            result_list = LineList(self.interpolated(item, label, value.line_of(i)) for i, item in enumerate(value))
            result_list.line, result_list.item_lines = value.line, list(value.item_lines)
            return result_list
        if isinstance(value, Override):
            return Override(self.interpolated(value.value, label, value.line), value.line)
        return value


# --- canonical forms ---------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _mapping_of(value: Any, label: str, line: int, where: str) -> dict[str, Prov]:
    """`environment`, `build.args`, `labels`: list form `NAME=VALUE` / `NAME` or map form, by name."""
    result: dict[str, Prov] = {}
    if value is None:
        return result
    if isinstance(value, LineDict):
        for key, item in value.items():
            result[str(key)] = Prov(None if item is None else _text(item), label, value.line_of(key))
        return result
    if isinstance(value, LineList):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise InputError(f"{label}:{value.line_of(i)}: {where}: expected NAME=VALUE, got {item!r}")
            name, sep, text = item.partition("=")
            result[name.strip()] = Prov(text if sep else None, label, value.line_of(i))
        return result
    raise InputError(f"{label}:{line}: {where}: expected a list of NAME=VALUE or a mapping")


def _canonical(key: str, value: Any, label: str, line: int, base_dir: Path, where: str) -> Any:
    if isinstance(value, Reset):
        return value
    if isinstance(value, Override):
        return Override(_canonical(key, value.value, label, line, base_dir, where), value.line)
    if key == "environment":
        return _mapping_of(value, label, line, f"{where}.environment")
    if key == "env_file":
        items = value if isinstance(value, LineList) else [value]
        result: dict[str, Prov] = {}
        for i, item in enumerate(items):
            item_line = items.line_of(i) if isinstance(items, LineList) else line
            path, required = (item.get("path"), item.get("required", True)) if isinstance(item, dict) else (item, True)
            if not isinstance(path, str):
                raise InputError(f"{label}:{item_line}: {where}.env_file: expected a path, got {path!r}")
            absolute = (base_dir / path).resolve()
            result[str(absolute)] = Prov((absolute, bool(required)), label, item_line)
        return result
    if key == "depends_on":
        result = {}
        if isinstance(value, LineList):
            for i, name in enumerate(value):
                if not isinstance(name, str):
                    raise InputError(f"{label}:{value.line_of(i)}: {where}.depends_on: expected a service name")
                result[name] = Prov({"condition": "service_started", "required": True}, label, value.line_of(i))
        elif isinstance(value, LineDict):
            for name, settings in value.items():
                settings = settings if isinstance(settings, dict) else {}
                result[str(name)] = Prov(
                    {"condition": settings.get("condition", "service_started"),
                     "required": settings.get("required", True) is not False,
                     "restart": bool(settings.get("restart", False))},
                    label, value.line_of(name),
                )
        elif value is not None:
            raise InputError(f"{label}:{line}: {where}.depends_on: expected a list or a mapping of services")
        return result
    if key == "links":
        if value is not None and not isinstance(value, LineList):
            raise InputError(f"{label}:{line}: {where}.links: expected a list of SERVICE or SERVICE:ALIAS")
        result = {}
        for i, item in enumerate(value or []):
            text = str(item)
            target, _, alias = text.partition(":")
            result[text] = Prov((target, alias or target), label, value.line_of(i))
        return result
    if key == "build":
        if isinstance(value, str):
            value = {"context": value}
        if not isinstance(value, dict):
            raise InputError(f"{label}:{line}: {where}.build: expected a path or a mapping")
        build: dict[str, Any] = {"_where": Prov(None, label, line)}
        for build_key, item in value.items():
            item_line = value.line_of(build_key) if isinstance(value, LineDict) else line
            if isinstance(item, Reset | Override):
                build[build_key] = item
            elif build_key == "args":
                build["args"] = _mapping_of(item, label, item_line, f"{where}.build.args")
            elif build_key == "context":
                text = str(item)
                build["context"] = Prov(text if _GIT_CONTEXT.match(text) else str((base_dir / text).resolve()),
                                        label, item_line)
            else:
                build[build_key] = Prov(item, label, item_line)
        return build
    if key in ("ports", "expose", "profiles", "volumes", "configs", "secrets"):
        items = value if isinstance(value, LineList) else [value]
        result = {}
        for i, item in enumerate(items):
            item_line = items.line_of(i) if isinstance(items, LineList) else line
            result[repr(item) if isinstance(item, dict) else _text(item)] = Prov(item, label, item_line)
        return result
    if key == "networks":
        if isinstance(value, LineList):
            return {str(n): Prov({}, label, value.line_of(i)) for i, n in enumerate(value)}
        if isinstance(value, LineDict):
            return {str(n): Prov(s if isinstance(s, dict) else {}, label, value.line_of(n)) for n, s in value.items()}
        return {}
    if key == "healthcheck":
        if not isinstance(value, dict):
            return Prov(None, label, line)
        return {k: Prov(tuple(v) if isinstance(v, list) else v, label, value.line_of(k)) for k, v in value.items()}
    if key in _REPLACED_KEYS:
        return Prov(tuple(value) if isinstance(value, list) else value, label, line)
    return Prov(value, label, line)


def _merge(base: dict, override: dict) -> dict:
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, Reset):
            result.pop(key, None)
        elif isinstance(value, Override):
            result[key] = _strip_markers(value.value)
        elif key in result and isinstance(result[key], dict) and isinstance(value, dict):
            result[key] = _merge(result[key], value)
        else:
            result[key] = _strip_markers(value)
    return result


def _strip_markers(value: Any) -> Any:
    """Markers with nothing before them: `!reset` means "nothing", `!override` just its value."""
    if isinstance(value, Override):
        value = value.value
    if isinstance(value, dict):
        return {k: _strip_markers(v) for k, v in value.items() if not isinstance(v, Reset)}
    return value


# --- the reader --------------------------------------------------------------------------------------


def read_compose(files: list[Path], root: Path, options: ComposeOptions) -> ImportedFleet:
    reader = _Reader(files, root, options)
    reader.load_variables()
    merged: dict[str, dict] = {}
    first_seen: dict[str, Prov] = {}
    project_name = None
    for path in files:
        label = reader.label(path)
        top = reader.read_file(path)
        if isinstance(top.get("name"), str) and project_name is None:
            project_name = top["name"]
        if top.get("include"):
            reader.notes.append(f"{label}:{top.line_of('include')}: top-level `include` is not followed: "
                                "pass the included files to the import as well")
        services = top.get("services")
        if services is None:
            continue
        if not isinstance(services, LineDict):
            raise InputError(f"{label}:{top.line_of('services')}: `services` must be a mapping of service names")
        canonical = _canonical_services(reader, services, label, reader.project_dir)
        canonical = {name: _resolve_extends(reader, name, canonical, label, path, []) for name in canonical}
        for name, service in canonical.items():
            if service.get("!reset"):
                merged.pop(name, None)
                first_seen.pop(name, None)
                continue
            first_seen.setdefault(name, Prov(None, label, services.line_of(name)))
            merged[name] = _merge(merged[name], service) if name in merged else _strip_markers(service)

    if not merged:
        raise InputError(f"{', '.join(reader.label(f) for f in files)}: no services defined")

    active = set(options.profiles)
    enabled, disabled = {}, {}
    for name in sorted(merged):
        profiles = sorted(str(p.value) for p in merged[name].get("profiles", {}).values())
        if profiles and not active.intersection(profiles):
            disabled[name] = profiles
        else:
            enabled[name] = merged[name]
    _check_references(enabled, disabled, first_seen)
    fleet = _to_fleet(reader, enabled, disabled, first_seen)
    fleet.suggested_name = project_name
    return fleet


def _canonical_services(reader: _Reader, services: LineDict, label: str, base_dir: Path) -> dict[str, dict]:
    canonical: dict[str, dict] = {}
    for name, raw in services.items():
        line = services.line_of(name)
        if raw is None:
            raw = LineDict()
            raw.line, raw.key_lines = line, {}
        if isinstance(raw, Reset):
            canonical[str(name)] = {"!reset": True}  # a later file removes the service
            continue
        if not isinstance(raw, LineDict):
            raise InputError(f"{label}:{line}: services.{name}: expected a mapping of service settings")
        canonical[str(name)] = {
            key: _canonical(key, value, label, raw.line_of(key), base_dir, f"services.{name}")
            for key, value in raw.items()
        }
    return canonical


def _resolve_extends(reader: _Reader, name: str, services: dict[str, dict], label: str, path: Path,
                     chain: list[str]) -> dict:
    service = services[name]
    extends = service.get("extends")
    if extends is None:
        return service
    spec = extends.value
    where = f"{label}:{extends.line}: services.{name}.extends"
    target, file = (spec, None) if isinstance(spec, str) else (spec.get("service"), spec.get("file"))
    if not isinstance(target, str):
        raise InputError(f"{where}: expected a service name or {{service: ..., file: ...}}")
    key = f"{file or label}#{target}"
    if key in chain:
        raise InputError(f"{where}: extends forms a loop: {' -> '.join([*chain, key])}")
    if file:
        other = (path.parent / file).resolve()
        if not other.is_file():
            raise InputError(f"{where}: file {file} not found")
        other_label = reader.label(other)
        top = reader.read_file(other)
        others = top.get("services") or LineDict()
        if target not in others:
            raise InputError(f"{where}: service '{target}' is not defined in {other_label}")
        base_services = _canonical_services(reader, others, other_label, other.parent)
        base = _resolve_extends(reader, target, base_services, other_label, other, [*chain, key])
    else:
        if target not in services:
            raise InputError(f"{where}: service '{target}' is not defined in {label}")
        base = _resolve_extends(reader, target, services, label, path, [*chain, key])
    local = {k: v for k, v in service.items() if k != "extends"}
    return _merge(_strip_markers(base), local)


def _check_references(enabled: dict, disabled: dict, first_seen: dict[str, Prov]) -> None:
    problems = []
    for name, service in enabled.items():
        for target, prov in service.get("depends_on", {}).items():
            if target in enabled:
                continue
            if not prov.value.get("required", True):
                continue
            where = f"{prov.label}:{prov.line}: services.{name}.depends_on"
            if target in disabled:
                problems.append(f"{where}: service '{target}' is disabled by its profiles "
                                f"({', '.join(disabled[target])}): pass --profile {disabled[target][0]}")
            else:
                problems.append(f"{where}: service '{target}' is not defined "
                                f"(defined: {', '.join(sorted(enabled)) or 'none'})")
        for link, prov in service.get("links", {}).items():
            target = prov.value[0]
            if target not in enabled:
                state = "disabled by its profiles" if target in disabled else "not defined"
                problems.append(f"{prov.label}:{prov.line}: services.{name}.links: '{link}' names service "
                                f"'{target}', which is {state}")
    if problems:
        raise InputError(problems)


class ComposeHosts:
    """Compose DNS: service names, container names, hostnames, network aliases and link aliases; and the
    host gateway (`host.docker.internal:<port>`), which leads to the service that publishes that host port."""

    def __init__(self, names: dict[str, str], disabled: dict[str, list[str]], published: dict[int, tuple[str, str]]):
        self.names = names
        self.disabled = disabled
        self.published = published  # host port -> (service, "file:line" of its `ports` entry)

    def resolve(self, consumer: ImportedService, host: HostRef) -> Resolution:
        if host.host in HOST_GATEWAYS:
            if host.port in self.published:
                service, where = self.published[host.port]
                return Resolution(services=(service,), note=f"the host gateway: host port {host.port} is published "
                                  f"by {service} ({where})")
            reason = f"no service publishes host port {host.port}" if host.port else "no port names a service"
            return Resolution(unresolved=True, note=f"the host gateway, and {reason}")
        name = self.names.get(host.host)
        if name:
            return Resolution(services=(name,))
        if host.host in self.disabled:
            return Resolution(unresolved=True, note=f"service '{host.host}' is disabled by its profiles "
                              f"({', '.join(self.disabled[host.host])})")
        if "." in host.host:
            return Resolution(external=True, note="not a service of this compose project")
        return Resolution(unresolved=True, note="no service, container name, hostname or alias of that name")


def _to_fleet(reader: _Reader, enabled: dict, disabled: dict, first_seen: dict[str, Prov]) -> ImportedFleet:
    names: dict[str, str] = {}
    renames: list[str] = []
    taken: set[str] = set()
    for source_name in sorted(enabled):
        name = dns_name(source_name, taken)
        taken.add(name)
        names[source_name] = name
        if name != source_name:
            renames.append(rename_note(source_name, name))

    hosts: dict[str, str] = {}
    for source_name, service in enabled.items():
        for own_name in _own_names(source_name, service):
            hosts[own_name] = names[source_name]
        for prov in service.get("links", {}).values():
            target, alias = prov.value
            hosts.setdefault(alias.lower(), names[target])

    published: dict[int, tuple[str, str]] = {}
    for source_name in sorted(enabled):
        for prov in enabled[source_name].get("ports", {}).values():
            for port in _published_ports(prov.value):
                published.setdefault(port, (names[source_name], f"{prov.label}:{prov.line}"))

    imported: dict[str, ImportedService] = {}
    for source_name in sorted(enabled):
        imported[names[source_name]] = _service(reader, source_name, names, enabled[source_name],
                                                first_seen[source_name])

    fleet = ImportedFleet(
        kind=COMPOSE,
        root=str(reader.root),
        inputs=[reader.label(f) for f in reader.files],
        services=imported,
        resolver=ComposeHosts(hosts, disabled, published),
    )
    fleet.notes.extend(reader.notes)
    fleet.notes.extend(f"REVIEW: {note}" for note in reader.repo_reviews)
    fleet.notes.extend(renames)
    if reader.unset:
        fleet.notes.append(
            "variables not set, so they became empty text as in Compose: "
            + ", ".join(f"{name} (first at {where})" for name, where in sorted(reader.unset.items()))
            + "; pass --env NAME=VALUE or --env-file to set them"
        )
    for name, profiles in sorted(disabled.items()):
        fleet.skipped.append(f"service {name} ({first_seen[name].label}:{first_seen[name].line}): its profiles "
                             f"({', '.join(profiles)}) are not active; pass --profile {profiles[0]} to import it")
    return fleet


def _service(reader: _Reader, source_name: str, names: dict[str, str], raw: dict, where: Prov) -> ImportedService:
    name = names[source_name]
    service = ImportedService(name=name, source_name=source_name, origin=f"{where.label}:{where.line}")
    image_prov = raw.get("image")
    image = str(image_prov.value) if image_prov and image_prov.value is not None else None
    build = raw.get("build")

    known = (infra.by_image(image) if image else None) or infra.by_service_name(source_name)
    if known:
        service.infrastructure = True
        reason = f"image {image}" if image and infra.by_image(image) else f"service name '{source_name}'"
        service.notes.append(f"infrastructure ({known.category}): {reason} is well-known {known.name}; "
                             "deployed, never released")
    if build and not service.infrastructure:
        service.build = _build_info(reader, source_name, build)
        for note in service.build.notes:
            reader.repo_reviews[note] = None
        dockerfile_facts(service, reader.label)
        if image:
            service.notes.append(f"compose tags its build as {image}; release-graph pushes <registry>/{name}:<sha>")
    elif build:
        _built_infrastructure(reader, service, build, image, known)
    else:
        if image is None:
            raise InputError(f"{where.label}:{where.line}: services.{source_name}: neither `image` nor `build`: "
                             "Compose cannot run it and the importer cannot place it")
        if not is_image_reference(image):
            raise InputError(f"{image_prov.label}:{image_prov.line}: services.{source_name}.image: {image!r} is "
                             "not a valid image reference (an unset variable?)")
        service.image = image
        if not service.infrastructure:
            service.notes.append(f"prebuilt: compose runs image {image} and builds nothing; it is promoted, not built")
        unpinned = infra.unpinned_image_review(image)
        if unpinned:
            service.review.append(unpinned)

    health_port = _health(service, raw, known, _own_names(source_name, raw))
    _ports(service, raw, known, health_port)
    _environment(reader, service, raw)
    for target, prov in sorted(raw.get("depends_on", {}).items()):
        if target not in names:
            service.notes.append(f"depends_on {target} (required: false) names no service: ignored")
            continue
        if target == source_name:
            raise InputError(f"{prov.label}:{prov.line}: services.{source_name}.depends_on: a service cannot "
                             "depend on itself")
        settings = prov.value
        conditions = []
        if settings["condition"] != "service_started":
            conditions.append(f"condition: {settings['condition']}")
        if not settings.get("required", True):
            conditions.append("required: false")
        note = ", ".join(conditions)
        service.references.append(Reference(
            consumer=name, evidence=f"{prov.label}: {source_name}: depends_on", kind="depends_on",
            key="depends_on", display=target, startup=True, target=names[target], note=note,
        ))
    for link, prov in sorted(raw.get("links", {}).items()):
        target, alias = prov.value
        service.references.append(Reference(
            consumer=name, evidence=f"{prov.label}: {source_name}: links", kind="links", key="links",
            display=link, startup=True, target=names[target],
            note=f"link alias {alias}" if alias != target else "",
        ))
    for key in ("entrypoint", "command"):
        prov = raw.get(key)
        if prov is None or prov.value is None:
            continue
        arguments = _arguments(prov, f"services.{source_name}.{key}")
        evidence = f"{prov.label}: {source_name}: {key}"
        if command_holds_credentials(arguments):
            service.review.append(f"`{key}` ({prov.label}:{prov.line}) holds a credential, so it is not written: "
                                  "pass the credential in a secret variable and write the command by hand")
        else:
            setattr(service, key, arguments)
            service.notes.append(f"{key}: from {prov.label}:{prov.line}")
        waits = wait_targets(" ".join(shlex.quote(a) for a in arguments), urls=False)
        if waits:
            service.references.append(Reference(
                consumer=name, evidence=evidence, kind="wait", key=key,
                display="waits for " + ", ".join(f"{h.host}:{h.port}" if h.port else h.host for h in waits)
                + " before starting", startup=True, hosts=waits,
            ))
        calls = tuple(h for h in command_hosts(arguments) if h not in waits)
        if calls:
            service.references.append(Reference(
                consumer=name, evidence=evidence, kind="command", key=key, startup=False, hosts=calls,
                display=f"{key} calls " + ", ".join(f"{h.host}:{h.port}" if h.port else h.host for h in calls),
            ))
    _carry_hardening(service, raw)
    _not_carried(service, raw)
    review_environment(service)
    return service


def _carry_hardening(service: ImportedService, raw: dict) -> None:
    """Compose's `tmpfs` and `cap_add` as the manifest's `hardening:` (containers are immutable by default, so a
    folder the service writes or a capability it is given must be said there, a capability with its reason)."""
    prov = raw.get("tmpfs")
    if prov is not None and prov.value:
        entries = prov.value if isinstance(prov.value, list) else [prov.value]
        folders = sorted({str(entry).split(":", 1)[0] for entry in entries} - {"/tmp"})
        if folders:
            service.hardening["tmpfs"] = folders
            service.notes.append(f"hardening.tmpfs: from {prov.label}:{prov.line}")
    prov = raw.get("cap_add")
    if prov is not None and prov.value:
        service.give_capabilities(prov.value if isinstance(prov.value, list) else [prov.value],
                                  f"{prov.label}:{prov.line}", "compose", "the compose file")


def _arguments(prov: Prov, where: str) -> list[str]:
    """`command` / `entrypoint` as arguments: a list as written, a string split the way Compose splits it."""
    if not isinstance(prov.value, str):
        return [str(part) for part in prov.value]
    try:
        return shlex.split(prov.value)
    except ValueError as exc:
        raise InputError(f"{prov.label}:{prov.line}: {where}: {exc} in {prov.value!r}") from None


# Settings the deploy target decides for itself (restarts, limits, hardening: the docker target's `hardening`
# check reports what runs): without them the service still runs as it did.
_LEFT_TO_THE_TARGET = {"restart", "deploy", "logging", "labels", "stdin_open", "tty", "init", "mem_limit",
                       "mem_reservation", "cpus", "cpu_shares", "stop_grace_period", "pull_policy", "scale",
                       "read_only", "cap_drop", "security_opt"}
# Settings the importer reads.
_READ = {"image", "build", "ports", "expose", "healthcheck", "depends_on", "links", "environment", "env_file",
         "profiles", "extends", "container_name", "hostname", "networks", "command", "entrypoint", "tmpfs", "cap_add"}


def _not_carried(service: ImportedService, raw: dict) -> None:
    """Say what the manifest does not carry: a REVIEW note for what changes how the service runs (volumes,
    configs, user, capabilities, ...), a plain note for what the deploy target decides (restart, limits)."""
    left = sorted(k for k in raw if k in _LEFT_TO_THE_TARGET)
    if left:
        service.notes.append(f"left to the deploy target, not carried: {', '.join(left)}")
    missing = []
    for key in sorted(k for k in raw if k not in _READ and k not in _LEFT_TO_THE_TARGET and not k.startswith("x-")):
        prov = raw[key]
        detail = ""
        if isinstance(prov, dict):  # volumes, configs, secrets: one entry per mount
            detail = " (" + ", ".join(_mount_text(p.value) for p in prov.values()) + ")"
        elif isinstance(prov, Prov):
            detail = f" ({prov.label}:{prov.line})"
        missing.append(f"{key}{detail}")
    if missing:
        service.review.append("not carried by the manifest, so the service may run differently: "
                              + "; ".join(missing) + ". Bake files into the image, or add what it needs by hand")


def _mount_text(value: Any) -> str:
    if isinstance(value, dict):
        source, target = value.get("source"), value.get("target")
        return f"{source}:{target}" if source and target else str(source or target)
    return str(value)


def _own_names(source_name: str, raw: dict) -> set[str]:
    """The names a service answers to on its compose network: its own, container_name, hostname, aliases."""
    names = {source_name.lower()}
    for key in ("container_name", "hostname"):
        if key in raw and isinstance(raw[key].value, str):
            names.add(raw[key].value.lower())
    for settings in raw.get("networks", {}).values():
        names.update(str(alias).lower() for alias in (settings.value or {}).get("aliases") or [])
    return names


def _built_infrastructure(reader: _Reader, service: ImportedService, build: dict, image: str | None,
                          known: infra.WellKnown) -> None:
    # The manifest keeps infrastructure prebuilt. A compose file that builds its database (seed data,
    # config) names the resulting image; when that name is usable it is the image to deploy.
    context = build.get("context")
    context_text = reader.label(Path(context.value)) + "/" if context and not _GIT_CONTEXT.match(context.value) \
        else (context.value if context else ".")
    if image and is_image_reference(image):
        service.image = image
        service.notes.append(f"compose builds this from {context_text} and tags it {image}: the manifest keeps "
                             "infrastructure prebuilt, so build and push that image outside release-graph")
        return
    service.image = known.image
    written = f"{image!r}" if image is not None else "no image name"
    service.review.append(
        f"compose builds this from {context_text} (a custom {known.name} image) and gives {written}, which is "
        f"not a usable reference; the official image `{known.image}` stands in (untagged): replace it with the "
        "image you build, pinned to a version"
    )


def _build_info(reader: _Reader, source_name: str, build: dict) -> BuildInfo:
    where = build["_where"]
    context_prov = build.get("context")
    context = context_prov.value if context_prov else str(reader.project_dir.resolve())
    dockerfile_prov = build.get("dockerfile")
    dockerfile = str(dockerfile_prov.value) if dockerfile_prov and dockerfile_prov.value else "Dockerfile"
    target_prov = build.get("target")
    args = {}
    secret_args = []
    for arg, prov in sorted(build.get("args", {}).items()):
        if prov.value is None:
            continue
        if is_secret(arg, prov.value):
            secret_args.append(arg)
            continue
        args[arg] = prov.value
    if "dockerfile_inline" in build:
        prov = build["dockerfile_inline"]
        raise InputError(f"{prov.label}:{prov.line}: services.{source_name}.build.dockerfile_inline: release-graph "
                         "builds a Dockerfile from the repository; write it to a file and name it in `dockerfile`")
    if _GIT_CONTEXT.match(context):
        url, _, fragment = context.partition("#")
        ref, _, subdir = fragment.partition(":")
        info = BuildInfo(repo=url, path=subdir.strip("/") or ".", dockerfile=dockerfile,
                         target=target_prov.value if target_prov else None, args=args,
                         branch=ref or None, is_url=True)
    else:
        context_dir = Path(context)
        dockerfile_path = Path(dockerfile) if Path(dockerfile).is_absolute() else context_dir / dockerfile
        dockerfile_path = Path(os.path.normpath(dockerfile_path))
        try:
            dockerfile_rel = dockerfile_path.relative_to(context_dir).as_posix()
        except ValueError:
            line = dockerfile_prov.line if dockerfile_prov else where.line
            label = dockerfile_prov.label if dockerfile_prov else where.label
            raise InputError(
                f"{label}:{line}: services.{source_name}.build.dockerfile: {dockerfile} is outside the build "
                "context; release-graph builds with the Dockerfile inside the context: move it, or widen the context"
            ) from None
        repo, path, branch, note = locate_repo(context_dir, reader.project_dir.resolve())
        info = BuildInfo(repo=str(repo), path=path, dockerfile=dockerfile_rel,
                         target=target_prov.value if target_prov else None, args=args, branch=branch)
        info.notes = [note] if note else []
    info.secret_args = secret_args
    return info


def locate_repo(context: Path, project_dir: Path) -> tuple[Path, str, str | None, str]:
    """The git repository holding the build context: the nearest `.git` above the compose file when it
    holds the context too (a monorepo), else the compose file's folder."""
    git_root = next((p for p in (project_dir, *project_dir.parents) if (p / ".git").exists()), None)
    if git_root and context.is_relative_to(git_root):
        path = context.relative_to(git_root).as_posix() or "."
        return git_root, path, _git_branch(git_root), ""
    if context.is_relative_to(project_dir):
        return project_dir, context.relative_to(project_dir).as_posix() or ".", None, (
            f"{project_dir.name}/ is not a git repository yet: release-graph releases commits, so `git init` it"
        )
    return context, ".", None, f"the build context {context} lies outside the compose project: its own repo"


def _git_branch(git_root: Path) -> str | None:
    dot_git = git_root / ".git"
    try:
        if dot_git.is_file():
            pointer = dot_git.read_text().strip()
            if pointer.startswith("gitdir:"):
                dot_git = (git_root / pointer.split(":", 1)[1].strip()).resolve()
        head = (dot_git / "HEAD").read_text().strip()
    except OSError:
        return None
    if head.startswith("ref: refs/heads/"):
        branch = head[len("ref: refs/heads/"):]
        return None if branch == "main" else branch
    return None


_LANGUAGES = (
    (re.compile(r"(^|/)python(:|$)"), "python"),
    (re.compile(r"(^|/)(node|bun)(:|$)"), "node"),
    (re.compile(r"(^|/)golang(:|$)"), "go"),
    (re.compile(r"(^|/)(openjdk|eclipse-temurin|amazoncorretto|maven|gradle)(:|$)"), "java"),
    (re.compile(r"(^|/)ruby(:|$)"), "ruby"),
    (re.compile(r"(^|/)php(:|$)"), "php"),
    (re.compile(r"(^|/)rust(:|$)"), "rust"),
    (re.compile(r"dotnet/(sdk|aspnet|runtime)(:|$)"), "dotnet"),
)
_FROM = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(?P<image>\S+)(?:\s+AS\s+(?P<stage>\S+))?", re.I | re.M)


def dockerfile_facts(service: ImportedService, label: Callable[[Path], str]) -> None:
    """Read the Dockerfile when it is here: the `test` stage decides test_target, the first base image
    suggests the language (which picks the static-analysis tool)."""
    build = service.build
    for arg in build.secret_args:
        service.review.append(f"build arg {arg} is not written: its name says secret, and the manifest has no "
                              "secret build args; pass it at build time")
    if build.is_url:
        build.test_target = None
        service.notes.append(f"built from the git URL {build.repo}; its Dockerfile is not read at import, "
                             "so no test stage is assumed (test_target: null)")
        return
    context = Path(build.repo) / build.path
    dockerfile = context / build.dockerfile
    if not context.is_dir() or not dockerfile.is_file():
        build.test_target = None
        missing = f"build context {label(context)}/" if not context.is_dir() else f"Dockerfile {label(dockerfile)}"
        service.review.append(f"the {missing} does not exist: check the path before releasing; "
                              "no test stage is assumed (test_target: null)")
        return
    try:
        text = dockerfile.read_text(encoding="utf-8", errors="replace")
    except OSError:
        build.test_target = None
        return
    stages = [m.group("stage").lower() for m in _FROM.finditer(text) if m.group("stage")]
    if "test" in stages:
        build.test_target = "test"
        service.notes.append("the Dockerfile has a `test` stage: unit tests run there (test_target: test)")
    else:
        build.test_target = None
        service.notes.append("the Dockerfile has no `test` stage: no unit tests run until one is added "
                             "(test_target: null)")
    first = _FROM.search(text)
    if first:
        base = first.group("image").lower()
        for pattern, language in _LANGUAGES:
            if pattern.search(base):
                service.language = language
                service.notes.append(f"language {language}: the Dockerfile starts FROM {first.group('image')}")
                break


def _container_port(item: Any) -> int | None:
    if isinstance(item, dict):
        target = item.get("target")
        return int(target) if str(target).isdigit() else None
    text = str(item).split("/", 1)[0]
    container = text.rsplit(":", 1)[-1].split("-", 1)[0]
    return int(container) if container.isdigit() and 0 < int(container) < 65536 else None


def _published_ports(item: Any) -> list[int]:
    """Host ports a `ports` entry publishes: `5105:80`, `127.0.0.1:5105:80/tcp`, `5100-5101:80-81`, long syntax.
    A bare `80` publishes an ephemeral host port, which nobody can name."""
    if isinstance(item, dict):
        text = str(item.get("published") or "")
    else:
        parts = str(item).split("/", 1)[0].rsplit(":", 2)
        text = parts[-2] if len(parts) >= 2 else ""
    first, _, last = text.partition("-")
    if not first.isdigit() or (last and not last.isdigit()):
        return []
    return list(range(int(first), int(last or first) + 1))


def _ports(service: ImportedService, raw: dict, known: infra.WellKnown | None, health_port: int | None) -> None:
    """The service port: the one the HTTP health check calls when the file declares it (release-graph probes
    `health` on `port`), else the well-known port of infrastructure when declared (not its management port),
    else the first declared, else the health check's port or the well-known default."""
    declared = [(_container_port(p.value), p, "ports") for p in raw.get("ports", {}).values()]
    declared += [(_container_port(p.value), p, "expose") for p in raw.get("expose", {}).values()]
    usable = [(port, prov, key) for port, prov, key in declared if port]
    ports = [port for port, _, _ in usable]
    if usable:
        port, prov, key = usable[0]
        why = f"from `{key}` {prov.value!r} ({prov.label}:{prov.line})"
        if health_port in ports and health_port != port:
            port, why = health_port, f"the port the compose healthcheck calls, one of the declared ports {ports}"
        elif known and known.port in ports and known.port != port:
            port, why = known.port, f"the port clients of {known.name} use, one of the declared ports {ports}"
        service.port = port
        others = sorted(set(ports) - {port})
        service.notes.append(f"port {port}: {why}" + (f"; also declared: {', '.join(map(str, others))}"
                                                       if others and "declared ports" not in why else ""))
    elif health_port:
        service.port = health_port
        service.notes.append(f"port {health_port}: the port the compose healthcheck calls")
    elif known:
        service.port = known.port
        service.notes.append(f"port {known.port}: the default port of {known.name} (the compose file declares none)")
    if health_port and service.port != health_port:
        service.review.append(f"the compose healthcheck calls port {health_port}, the service port is {service.port}; "
                              "release-graph probes `health` on `port`")


def _health(service: ImportedService, raw: dict, known: infra.WellKnown | None, own_names: set[str]) -> int | None:
    """Set the health path from the compose healthcheck; return the port it calls (None: no HTTP check).

    An HTTP check calls the service itself: `localhost`, a loopback address, or one of its own names
    (`curl -f http://orders:8080/health`).
    """
    check = raw.get("healthcheck")
    if isinstance(check, Prov):
        check = None
    test = check.get("test") if check else None
    disabled = check and check.get("disable") and check["disable"].value is True
    if not test or disabled or test.value is None:
        if known and known.health:
            service.health = known.health
            service.notes.append(f"health {known.health}: the HTTP health endpoint of {known.name}")
        else:
            service.health = None
            service.notes.append("health: null: no HTTP health check in the compose file")
        return None
    value = test.value
    if isinstance(value, str):
        kind, command = "CMD-SHELL", value
    else:
        kind, command = (str(value[0]), " ".join(str(v) for v in value[1:])) if value else ("NONE", "")
    if kind == "NONE":
        service.health = None
        service.notes.append("health: null: the compose healthcheck is NONE")
        return None
    shown = mask_credentials(command)
    match = next((m for m in _HTTP_URL.finditer(command) if m.group("host").lower() in _LOOPBACK | own_names), None)
    if not match:
        service.health = None
        service.notes.append(f"health: null: the compose healthcheck is a command, not an HTTP check: {shown}")
        return None
    service.health = match.group("path") or "/"
    service.notes.append(f"health {service.health}: from the compose healthcheck ({test.label}:{test.line}): {shown}")
    if match.group("port"):
        return int(match.group("port"))
    return 443 if match.group("scheme") == "https" else 80


def _environment(reader: _Reader, service: ImportedService, raw: dict) -> None:
    values: dict[str, tuple[str | None, str, str]] = {}  # name -> (value, evidence, kind of source)
    for prov in raw.get("env_file", {}).values():
        path, required = prov.value
        label = reader.label(path)
        if not path.is_file():
            if required:
                raise InputError(f"{prov.label}:{prov.line}: services.{service.source_name}.env_file: "
                                 f"{label} not found")
            service.notes.append(f"env_file {label} (required: false) is absent")
            continue
        for env_name, env_value in read_dotenv(path, label).items():
            values[env_name] = (env_value, f"{label}: {service.source_name}: env_file.{env_name}", "env_file")
    from_project: dict[str, str] = {}  # bare names whose value the project's variables give -> where set
    for env_name, prov in raw.get("environment", {}).items():
        value = prov.value
        if value is None and env_name in reader.variables:
            # `- NAME` without a value: Compose takes it from its variables, env files and --env included.
            value = reader.variables[env_name]
            from_project[env_name] = reader.variable_origins.get(env_name, "the project's variables")
        values[env_name] = (value, f"{prov.label}: {service.source_name}: environment.{env_name}", "environment")
    if from_project:
        service.notes.append("values of bare `environment` names, from the project's variables: "
                             + ", ".join(f"{name} ({where})" for name, where in sorted(from_project.items())))

    passed_through, through_gateway = [], []
    for env_name in sorted(values):
        value, evidence, _ = values[env_name]
        if value is None:
            passed_through.append(env_name)
            continue
        secret = is_secret(env_name, value)
        if secret:
            withhold(service, env_name, value)
        else:
            service.env[env_name] = value
        hosts = hosts_in_value(value, env_name)
        gateways = [f"{h.host}:{h.port}" if h.port else h.host for h in hosts if h.host in HOST_GATEWAYS]
        if gateways:
            through_gateway.append(f"{env_name} ({', '.join(gateways)})")
        if hosts:
            shown = "<secret>" if secret and not has_credentials(value) else mask_credentials(value)
            service.references.append(Reference(
                consumer=service.name, evidence=evidence, kind="env", key=env_name,
                display=f"{env_name}={shown}", startup=False, hosts=hosts,
                note=f"value from {from_project[env_name]}" if env_name in from_project else "",
            ))
    if passed_through:
        service.notes.append(f"taken from the shell at run time, so not written: {', '.join(passed_through)}")
    if through_gateway:
        service.review.append(
            f"through the host gateway: {', '.join(through_gateway)}: in a release-graph environment that reaches "
            "only a port the environment publishes (`publish:`); call the service by its name instead"
        )
