"""Kubernetes manifests -> imported services.

Deployments, StatefulSets and DaemonSets become services; the Services that select them give the
names other workloads call (with their port -> targetPort mapping); ConfigMaps feed `env` and
`envFrom`. Every other built-in kind is listed as skipped, custom resources too. A kind that the
document's own apiVersion group does not have (a typo such as `Deploymnet`) is an error naming file
and line. A kustomization is reported, never followed: the importer reads the files it is given.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from release_graph.fleet import is_image_reference
from release_graph.importer import infra
from release_graph.importer.edges import (
    HOST_GATEWAYS,
    command_hosts,
    expand_shell,
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
from release_graph.importer.model import (
    KUBERNETES,
    HostRef,
    ImportedFleet,
    ImportedService,
    Reference,
    Resolution,
)
from release_graph.importer.names import dns_name, rename_note
from release_graph.importer.yamlfiles import InputError, LineDict, LineList, load_documents

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")

# Built-in API groups and their kinds ("" is the core group, apiVersion `v1`).
BUILTIN_KINDS: dict[str, set[str]] = {
    "": {"Pod", "Service", "ConfigMap", "Secret", "ServiceAccount", "Namespace", "PersistentVolume",
         "PersistentVolumeClaim", "Endpoints", "Event", "LimitRange", "ResourceQuota", "ReplicationController",
         "PodTemplate", "Node", "Binding", "ComponentStatus", "List"},
    "apps": {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ControllerRevision"},
    "batch": {"Job", "CronJob"},
    "autoscaling": {"HorizontalPodAutoscaler"},
    "policy": {"PodDisruptionBudget", "PodSecurityPolicy", "Eviction"},
    "networking.k8s.io": {"Ingress", "IngressClass", "NetworkPolicy", "IPAddress", "ServiceCIDR"},
    "rbac.authorization.k8s.io": {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"},
    "storage.k8s.io": {"StorageClass", "CSIDriver", "CSINode", "CSIStorageCapacity", "VolumeAttachment",
                       "VolumeAttributesClass"},
    "apiextensions.k8s.io": {"CustomResourceDefinition"},
    "admissionregistration.k8s.io": {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
                                     "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
                                     "MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"},
    "apiregistration.k8s.io": {"APIService"},
    "scheduling.k8s.io": {"PriorityClass"},
    "coordination.k8s.io": {"Lease", "LeaseCandidate"},
    "node.k8s.io": {"RuntimeClass"},
    "discovery.k8s.io": {"EndpointSlice"},
    "events.k8s.io": {"Event"},
    "certificates.k8s.io": {"CertificateSigningRequest", "ClusterTrustBundle"},
    "flowcontrol.apiserver.k8s.io": {"FlowSchema", "PriorityLevelConfiguration"},
    "resource.k8s.io": {"ResourceClaim", "ResourceClaimTemplate", "DeviceClass", "ResourceSlice"},
    "extensions": {"Deployment", "DaemonSet", "ReplicaSet", "Ingress", "NetworkPolicy", "PodSecurityPolicy"},
    "kustomize.config.k8s.io": {"Kustomization", "Component"},
}
_K8S_VARIABLE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@dataclass
class K8sObject:
    kind: str
    api_version: str
    name: str
    namespace: str
    doc: LineDict
    label: str
    line: int


def _group(api_version: str) -> str:
    return api_version.split("/", 1)[0] if "/" in api_version else ""


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _get(mapping: Any, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if not isinstance(mapping, dict):
            return default
        mapping = mapping.get(key)
    return default if mapping is None else mapping


class _Reader:
    def __init__(self, files: list[Path], root: Path):
        self.files = files
        self.root = root
        self.objects: list[K8sObject] = []
        self.skipped: dict[str, list[str]] = {}
        self.kustomizations: list[tuple[Path, str, LineDict]] = []

    def label(self, path: Path) -> str:
        try:
            return path.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return os.path.relpath(path.resolve(), self.root)

    def read(self) -> None:
        problems: list[str] = []
        for path in self.files:
            label = self.label(path)
            documents = load_documents(path, label)
            if path.name in KUSTOMIZATION_FILES:
                doc = documents[0][0] if documents else None
                self.kustomizations.append((path, label, doc if isinstance(doc, LineDict) else LineDict()))
                continue
            for index, (doc, line) in enumerate(documents, start=1):
                if doc is None:
                    continue
                try:
                    self._classify(doc, label, line, index)
                except InputError as exc:
                    problems.extend(exc.problems)
        if problems:
            raise InputError(problems)

    def _classify(self, doc: Any, label: str, line: int, index: int) -> None:
        if not isinstance(doc, LineDict):
            raise InputError(f"{label}:{line}: document {index} is not a Kubernetes object (expected a mapping)")
        kind, api_version = doc.get("kind"), doc.get("apiVersion")
        if not isinstance(kind, str) or not kind:
            raise InputError(f"{label}:{line}: document {index} is not a Kubernetes object: no `kind`")
        if not isinstance(api_version, str) or not api_version:
            raise InputError(f"{label}:{doc.line_of('kind')}: {kind}: no `apiVersion`")
        kind_line = doc.line_of("kind")
        if kind == "List" and _group(api_version) == "":
            for i, item in enumerate(_list(doc.get("items"))):
                items = doc["items"]
                item_line = items.line_of(i) if isinstance(items, LineList) else kind_line
                self._classify(item, label, item_line, index)
            return
        group = _group(api_version)
        name = str(_get(doc, "metadata", "name", default="")) or "(unnamed)"
        if group in BUILTIN_KINDS:
            if kind not in BUILTIN_KINDS[group]:
                owners = sorted(g or "v1" for g, kinds in BUILTIN_KINDS.items() if kind in kinds)
                hint = f" ({kind} belongs to {', '.join(owners)})" if owners else ""
                raise InputError(f"{label}:{kind_line}: unknown kind {kind!r} for apiVersion {api_version}{hint}")
            if kind == "Kustomization" or kind == "Component":
                self.kustomizations.append((self.root / label, label, doc))
                return
        else:
            self.skipped.setdefault(f"{kind} (custom resource, {api_version})", []).append(f"{name} ({label})")
            return
        namespace = str(_get(doc, "metadata", "namespace", default="default"))
        obj = K8sObject(kind, api_version, name, namespace, doc, label, kind_line)
        if kind in WORKLOAD_KINDS or kind in ("Service", "ConfigMap", "Namespace"):
            self.objects.append(obj)
            if kind == "Namespace":
                self.skipped.setdefault(kind, []).append(name)
        elif kind == "Secret":
            self.skipped.setdefault(kind, []).append(f"{name} ({label}; its values are never read)")
        else:
            self.skipped.setdefault(kind, []).append(f"{name} ({label})")


def read_kubernetes(files: list[Path], root: Path) -> ImportedFleet:
    reader = _Reader(sorted(files, key=lambda p: p.resolve().as_posix()), root)
    reader.read()
    workloads = [o for o in reader.objects if o.kind in WORKLOAD_KINDS]
    services = [o for o in reader.objects if o.kind == "Service"]
    config_maps = {(o.namespace, o.name): o for o in reader.objects if o.kind == "ConfigMap"}
    namespaces = {"default"} | {o.namespace for o in reader.objects} | {
        o.name for o in reader.objects if o.kind == "Namespace"}
    if not workloads:
        raise InputError(f"{', '.join(reader.label(f) for f in reader.files)}: no Deployment, StatefulSet or "
                         "DaemonSet found: nothing to import")

    seen: dict[tuple[str, str, str], K8sObject] = {}
    for obj in workloads:
        key = (obj.kind, obj.namespace, obj.name)
        if key in seen:
            first = seen[key]
            raise InputError(f"{obj.label}:{obj.line}: {obj.kind} {obj.name} (namespace {obj.namespace}) is "
                             f"defined twice (first in {first.label}:{first.line})")
        seen[key] = obj

    # Names: the workload name, made a DNS label; qualified by namespace when several namespaces share it.
    by_name: dict[str, list[K8sObject]] = {}
    for obj in workloads:
        by_name.setdefault(obj.name, []).append(obj)
    names: dict[int, str] = {}
    taken: set[str] = set()
    notes: list[str] = []
    for obj in sorted(workloads, key=lambda o: (o.name, o.namespace, o.kind)):
        wanted = obj.name if len({o.namespace for o in by_name[obj.name]}) == 1 else f"{obj.name}-{obj.namespace}"
        name = dns_name(wanted, taken)
        taken.add(name)
        names[id(obj)] = name
        if name != obj.name:
            notes.append(rename_note(f"{obj.kind} {obj.name} (namespace {obj.namespace})", name))

    selected: dict[int, list[K8sObject]] = {id(o): [] for o in workloads}
    service_targets: dict[tuple[str, str], list[str]] = {}
    service_objects: dict[tuple[str, str], K8sObject] = {}
    for svc in services:
        selector = _get(svc.doc, "spec", "selector", default={})
        matches = []
        if isinstance(selector, dict) and selector:
            for obj in workloads:
                labels = _get(obj.doc, "spec", "template", "metadata", "labels", default={})
                labels = labels if isinstance(labels, dict) else {}
                if obj.namespace == svc.namespace and all(labels.get(k) == v for k, v in selector.items()):
                    matches.append(obj)
                    selected[id(obj)].append(svc)
        service_targets[(svc.namespace, svc.name)] = sorted(names[id(o)] for o in matches)
        service_objects[(svc.namespace, svc.name)] = svc
        if not matches:
            kind = _get(svc.doc, "spec", "type", default="ClusterIP")
            reason = ("an ExternalName to " + str(_get(svc.doc, "spec", "externalName"))) if kind == "ExternalName" \
                else "it selects no workload in the input"
            reader.skipped.setdefault("Service", []).append(f"{svc.name} ({svc.label}): {reason}")

    imported: dict[str, ImportedService] = {}
    for obj in sorted(workloads, key=lambda o: names[id(o)]):
        service = _service(obj, names[id(obj)], selected[id(obj)], config_maps, reader)
        imported[service.name] = service

    fleet = ImportedFleet(
        kind=KUBERNETES,
        root=str(root),
        inputs=[reader.label(f) for f in reader.files],
        services=imported,
        resolver=KubernetesHosts(service_targets, service_objects,
                                 {(o.namespace, o.name) for o in workloads}, namespaces),
    )
    fleet.notes.extend(notes)
    for kind in sorted(reader.skipped):
        entries = reader.skipped[kind]
        fleet.skipped.append(f"{kind} ({len(entries)}): {', '.join(sorted(entries))}")
    fleet.kustomizations.extend(_kustomization_reports(reader))
    used = sorted({o.namespace for o in workloads})
    if len(used) == 1:
        fleet.namespace = used[0]
    if used != ["default"] and len(used) == 1:
        fleet.suggested_name = used[0]
    return fleet


class KubernetesHosts:
    """Cluster DNS: `svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`, `pod.svc.ns.svc...`."""

    def __init__(self, targets: dict[tuple[str, str], list[str]], objects: dict[tuple[str, str], K8sObject],
                 workloads: set[tuple[str, str]], namespaces: set[str]):
        self.targets = targets
        self.objects = objects
        self.workloads = workloads
        self.namespaces = namespaces

    def resolve(self, consumer: ImportedService, host: HostRef) -> Resolution:
        if host.host in HOST_GATEWAYS:
            return Resolution(external=True, note="the Docker host gateway, not a service of the cluster")
        namespace = consumer.namespace or "default"
        labels = host.host.split(".")
        cluster = False
        for suffix in (["svc", "cluster", "local"], ["svc"]):
            if len(labels) > len(suffix) and labels[-len(suffix):] == suffix:
                labels, cluster = labels[: -len(suffix)], True
                break
        if cluster:
            name, namespace = (labels[-2], labels[-1]) if len(labels) >= 2 else (labels[0], namespace)
        elif len(labels) == 1:
            name = labels[0]
        elif len(labels) == 2 and labels[1] in self.namespaces:
            name, namespace = labels
        else:
            return Resolution(external=True, note="not a cluster service name")
        key = (namespace, name)
        if key in self.targets:
            targets = tuple(self.targets[key])
            if not targets:
                return Resolution(unresolved=True, note=f"Service {name} selects no workload in the input")
            return Resolution(services=targets, note=self._port_note(key, host))
        if key in self.workloads:
            return Resolution(unresolved=True, note=f"a workload {name} exists but no Service named {name} "
                              "exposes it, so the name does not resolve in the cluster")
        return Resolution(unresolved=True, note=f"no Service {name} in namespace {namespace} in the input")

    def _port_note(self, key: tuple[str, str], host: HostRef) -> str:
        if host.port is None:
            return ""
        ports = _list(_get(self.objects[key].doc, "spec", "ports"))
        for entry in ports:
            if isinstance(entry, dict) and entry.get("port") == host.port:
                target = entry.get("targetPort", entry.get("port"))
                if target != host.port:
                    return f"Service {key[1]} port {host.port} -> targetPort {target}"
                return ""
        listed = ", ".join(str(e.get("port")) for e in ports if isinstance(e, dict))
        return f"port {host.port} is not a port of Service {key[1]} (ports: {listed or 'none'})"


def _expand(value: str, known: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion from variables defined earlier; `$$(VAR)` stays literal."""
    return _K8S_VARIABLE.sub(lambda m: known.get(m.group(1), m.group(0)), value)


@dataclass
class _EnvEntry:
    name: str
    value: str | None  # None: not plain text (a Secret, a field reference, a missing ConfigMap)
    evidence: str
    secret: bool = False
    note: str = ""
    whole_secret: bool = False  # `envFrom: secretRef`: a Secret's variables, whose names are unknown here


def _config_data(config_map: K8sObject) -> dict:
    data = _get(config_map.doc, "data", default={})
    return data if isinstance(data, dict) else {}


def _container_env(container: dict, obj: K8sObject, service_name: str, prefix: str,
                   config_maps: dict[tuple[str, str], K8sObject]) -> list[_EnvEntry]:
    """The environment of one container in Kubernetes order: envFrom first, then env (which wins)."""
    entries: dict[str, _EnvEntry] = {}
    for source in _list(container.get("envFrom")):
        if not isinstance(source, dict):
            continue
        env_prefix = str(source.get("prefix") or "")
        if "configMapRef" in source:
            ref_name = str(_get(source, "configMapRef", "name", default=""))
            cm = config_maps.get((obj.namespace, ref_name))
            if cm is None:
                entries[f"envFrom:{ref_name}"] = _EnvEntry(
                    f"envFrom ConfigMap {ref_name}", None, "",
                    note=f"envFrom ConfigMap {ref_name} is not in the input: its variables are unknown")
                continue
            for key, value in sorted(_config_data(cm).items()):
                name = f"{env_prefix}{key}"
                entries[name] = _EnvEntry(name, str(value),
                                          f"{cm.label}: {service_name}: {prefix}envFrom[{ref_name}].{key}")
        elif "secretRef" in source:
            ref_name = str(_get(source, "secretRef", "name", default=""))
            entries[f"envFrom:{ref_name}"] = _EnvEntry(
                f"envFrom Secret {ref_name}", None, "", secret=True, whole_secret=True,
                note=f"envFrom Secret {ref_name}: secret values are never read or written")
    known: dict[str, str] = {e.name: e.value for e in entries.values() if e.value is not None}
    for item in _list(container.get("env")):
        if not isinstance(item, dict) or not item.get("name"):
            continue
        name = str(item["name"])
        evidence = f"{obj.label}: {service_name}: {prefix}env.{name}"
        if "value" in item:
            value = _expand("" if item["value"] is None else str(item["value"]), known)
            entries[name] = _EnvEntry(name, value, evidence)
            known[name] = value
            continue
        source = item.get("valueFrom") or {}
        if "configMapKeyRef" in source:
            ref_name = str(_get(source, "configMapKeyRef", "name", default=""))
            key = str(_get(source, "configMapKeyRef", "key", default=""))
            cm = config_maps.get((obj.namespace, ref_name))
            data = _config_data(cm) if cm else {}
            if key in data:
                entries[name] = _EnvEntry(name, str(data[key]), evidence, note=f"from ConfigMap {ref_name} key {key}")
                known[name] = str(data[key])
            else:
                entries[name] = _EnvEntry(name, None, evidence,
                                          note=f"{name} comes from ConfigMap {ref_name} key {key}, not in the input")
        elif "secretKeyRef" in source:
            ref_name = str(_get(source, "secretKeyRef", "name", default=""))
            key = str(_get(source, "secretKeyRef", "key", default=""))
            entries[name] = _EnvEntry(name, None, evidence, secret=True,
                                      note=f"from Secret {ref_name} key {key}")
        else:
            what = ", ".join(sorted(source)) or "nothing"
            entries[name] = _EnvEntry(name, None, evidence, note=f"{name} is set by Kubernetes ({what})")
    return list(entries.values())


def _command_text(container: dict, env: dict[str, str]) -> str:
    parts = [str(p) for p in _list(container.get("command")) + _list(container.get("args"))]
    return expand_shell(" ".join(_expand(p, env) for p in parts), env)


def _named_ports(container: dict) -> dict[str, int]:
    return {str(p["name"]): int(p["containerPort"]) for p in _list(container.get("ports"))
            if isinstance(p, dict) and p.get("name") and str(p.get("containerPort", "")).isdigit()}


def _service(obj: K8sObject, name: str, selecting: list[K8sObject],
             config_maps: dict[tuple[str, str], K8sObject], reader: _Reader) -> ImportedService:
    service = ImportedService(name=name, source_name=obj.name, origin=f"{obj.label}:{obj.line} ({obj.kind}, "
                              f"namespace {obj.namespace})", namespace=obj.namespace)
    pod = _get(obj.doc, "spec", "template", "spec", default={})
    pod = pod if isinstance(pod, dict) else {}
    containers = [c for c in _list(pod.get("containers")) if isinstance(c, dict)]
    if not containers:
        raise InputError(f"{obj.label}:{obj.line}: {obj.kind} {obj.name}: spec.template.spec.containers is empty")
    main = containers[0]
    main_name = str(main.get("name", "container-1"))
    if len(containers) > 1:
        service.notes.append(f"container {main_name} is the service (image, port, health); sidecars "
                             f"{', '.join(str(c.get('name')) for c in containers[1:])} are read for edges only")
    if obj.kind == "StatefulSet":
        service.notes.append(f"a StatefulSet (governing Service {_get(obj.doc, 'spec', 'serviceName')}): "
                             "stable names and storage per replica")
    elif obj.kind == "DaemonSet":
        service.notes.append("a DaemonSet: one copy per node in Kubernetes, one container on a docker target")

    image = str(main.get("image") or "")
    image_line = main.line_of("image") if isinstance(main, LineDict) else obj.line
    if not is_image_reference(image):
        raise InputError(f"{obj.label}:{image_line}: {obj.kind} {obj.name}: container {main_name}: "
                         f"{image!r} is not a valid image reference")
    service.image = image
    known = infra.by_image(image) or infra.by_service_name(obj.name)
    if known:
        service.infrastructure = True
        reason = f"image {image}" if infra.by_image(image) else f"name '{obj.name}'"
        service.notes.append(f"infrastructure ({known.category}): {reason} is well-known {known.name}; "
                             "deployed, never released")
    else:
        service.notes.append(f"prebuilt: the manifest names image {image} and carries no sources; "
                             "it is promoted, not built")
    unpinned = infra.unpinned_image_review(image)
    if unpinned:
        service.review.append(unpinned)

    probe_port = _k8s_health(service, main, known)
    _k8s_ports(service, containers, selecting, known, probe_port)

    main_env = _container_env(main, obj, obj.name, "", config_maps)
    unknown = []
    for entry in main_env:
        if entry.whole_secret:
            service.review.append(f"{entry.note}: its variable names are unknown here, so add them to "
                                  "environments.<env>.secrets by hand")
        elif entry.secret:
            withhold(service, entry.name, why=entry.note)
        elif entry.value is None:
            if entry.note:
                unknown.append(entry.note)
        elif is_secret(entry.name, entry.value):
            withhold(service, entry.name, entry.value)
        else:
            service.env[entry.name] = entry.value
    for note in unknown:
        service.notes.append(f"not written to env: {note}")

    for index, container in enumerate(containers):
        prefix = "" if index == 0 else f"containers[{container.get('name')}]."
        env = main_env if index == 0 else _container_env(container, obj, obj.name, prefix, config_maps)
        _env_references(service, env, startup=False)
        values = {e.name: e.value for e in env if e.value is not None}
        _command_references(service, container, values, f"{obj.label}: {obj.name}: {prefix}command", init=False)
    for container in [c for c in _list(pod.get("initContainers")) if isinstance(c, dict)]:
        prefix = f"initContainers[{container.get('name')}]."
        env = _container_env(container, obj, obj.name, prefix, config_maps)
        _env_references(service, env, startup=True)
        values = {e.name: e.value for e in env if e.value is not None}
        _command_references(service, container, values, f"{obj.label}: {obj.name}: {prefix}command", init=True)
    _main_command(service, main, obj.label)
    _volume_review(service, pod, main, obj)
    service.give_capabilities(_list(_get(main, "securityContext", "capabilities", "add")), service.origin, "its pod",
                              "the deploy file")
    review_environment(service)
    return service


def _env_references(service: ImportedService, env: list[_EnvEntry], *, startup: bool) -> None:
    for entry in env:
        if entry.value is None or not entry.evidence:
            continue
        hosts = hosts_in_value(entry.value, entry.name)
        if not hosts:
            continue
        secret = is_secret(entry.name, entry.value)
        shown = "<secret>" if secret and not has_credentials(entry.value) else mask_credentials(entry.value)
        service.references.append(Reference(
            consumer=service.name, evidence=entry.evidence, kind="env", key=entry.name,
            display=f"{entry.name}={shown}", startup=startup, hosts=hosts, namespace=service.namespace,
            note="an init container's setting: used before the service starts" if startup else "",
        ))


def _command_references(service: ImportedService, container: dict, env: dict[str, str], evidence: str,
                        *, init: bool) -> None:
    """What a container's command waits for (start-up edges) and, outside init containers, the hosts it
    calls (URLs, `--host` options)."""
    text = _command_text(container, env)
    waits = wait_targets(text, urls=init) if text else ()
    if waits:
        service.references.append(Reference(
            consumer=service.name, evidence=evidence, kind="wait", key="command",
            display="waits for " + ", ".join(f"{h.host}:{h.port}" if h.port else h.host for h in waits)
            + " before the service starts", startup=True, hosts=waits, namespace=service.namespace,
        ))
    arguments = [_expand(str(p), env) for p in _list(container.get("command")) + _list(container.get("args"))]
    calls = () if init else tuple(h for h in command_hosts(arguments) if h not in waits)
    if calls:
        service.references.append(Reference(
            consumer=service.name, evidence=evidence, kind="command", key="command", startup=False, hosts=calls,
            display="calls " + ", ".join(f"{h.host}:{h.port}" if h.port else h.host for h in calls),
            namespace=service.namespace,
        ))


def _main_command(service: ImportedService, main: dict, label: str) -> None:
    """The main container's `command` and `args` are the manifest's `entrypoint` and `command`. `$(VAR)` is
    expanded from the plain values written to env; a reference to anything else (a Secret) stays, and since
    only Kubernetes expands it, that is a REVIEW note. A command holding a credential is not written."""
    for k8s_key, key in (("command", "entrypoint"), ("args", "command")):
        if k8s_key not in main:
            continue
        arguments = [_expand(str(part), service.env) for part in _list(main.get(k8s_key))]
        line = main.line_of(k8s_key) if isinstance(main, LineDict) else 0
        if command_holds_credentials(arguments):
            service.review.append(f"`{k8s_key}` ({label}:{line}) holds a credential, so it is not written: pass "
                                  "the credential in a secret variable and write the command by hand")
            continue
        setattr(service, key, arguments)
        service.notes.append(f"{key}: the container's `{k8s_key}` ({label}:{line})")
        left = sorted({m.group(1) for a in arguments for m in _K8S_VARIABLE.finditer(a)})
        if left:
            service.review.append(f"`{k8s_key}` uses {', '.join(f'$({v})' for v in left)}: Kubernetes expands it "
                                  "from the container's environment, a docker target does not; write the value "
                                  "or let a shell expand it")


def _volume_review(service: ImportedService, pod: dict, main: dict, obj: K8sObject) -> None:
    """Mounts of configuration, secrets and storage are not carried: a REVIEW note names them. Scratch space
    (`emptyDir`) becomes `hardening.tmpfs`: the immutable container's writable in-memory folders."""
    sources = {str(v.get("name")): v for v in _list(pod.get("volumes")) if isinstance(v, dict)}
    claims = {str(_get(t, "metadata", "name")) for t in _list(_get(obj.doc, "spec", "volumeClaimTemplates"))}
    mounts = []
    for mount in _list(main.get("volumeMounts")):
        if not isinstance(mount, dict):
            continue
        name, path = str(mount.get("name")), mount.get("mountPath")
        source = sources.get(name, {})
        kind = "persistentVolumeClaim template" if name in claims else next(
            (k for k in source if k != "name"), "volume")
        if kind != "emptyDir":
            mounts.append(f"{name} ({kind}) at {path}")
        elif isinstance(path, str) and path.startswith("/") and path != "/tmp":
            # scratch space: a writable in-memory folder of the immutable container
            service.hardening.setdefault("tmpfs", [])
            if path not in service.hardening["tmpfs"]:
                service.hardening["tmpfs"].append(path)
    if service.hardening.get("tmpfs"):
        service.notes.append(f"hardening.tmpfs: the emptyDir mounts of {service.origin}")
    if mounts:
        service.review.append("mounts not carried by the manifest, so the service may run differently: "
                              + "; ".join(mounts) + ". Bake files into the image, or add what it needs by hand")


# Container ports named like these serve operators, not callers: never the service port when another exists.
_ADMIN_PORT_NAMES = re.compile(r"management|admin|metrics|monitoring|exporter|prometheus|debug|profil|health")


def _k8s_ports(service: ImportedService, containers: list[dict], selecting: list[K8sObject],
               known: infra.WellKnown | None, probe_port: int | None) -> None:
    """The service port: the port the HTTP probe calls, else the port its Services send traffic to, else the
    well-known port of infrastructure, else the first port not named for operators (`management`, `metrics`),
    each only when the main container declares it; then a Service's targetPort, the probe's, the default."""
    main = containers[0]
    declared = [(int(p["containerPort"]), str(p.get("name") or "")) for p in _list(main.get("ports"))
                if isinstance(p, dict) and str(p.get("containerPort", "")).isdigit()]
    container_ports = [port for port, _ in declared]
    sidecar_named = {name: (port, str(c.get("name"))) for c in containers[1:] for name, port in _named_ports(c).items()}
    named = _named_ports(main)
    mappings = []
    for svc in sorted(selecting, key=lambda s: s.name):
        kind = _get(svc.doc, "spec", "type", default="ClusterIP")
        for entry in _list(_get(svc.doc, "spec", "ports")):
            if not isinstance(entry, dict):
                continue
            port = entry.get("port")
            target = entry.get("targetPort", port)
            sidecar = None
            if isinstance(target, str) and target not in named and target in sidecar_named:
                target_number, sidecar = sidecar_named[target]
            else:
                target_number = named.get(target, target) if isinstance(target, str) else target
            mappings.append((svc.name, kind, port, target, target_number, sidecar))
    served = [number for *_, number, sidecar in mappings if sidecar is None and number in container_ports]
    for_callers = [port for port, name in declared if not _ADMIN_PORT_NAMES.search(name.lower())]
    if container_ports:
        if probe_port in container_ports:
            service.port, why = probe_port, "the port its HTTP probe calls"
        elif served:
            service.port, why = served[0], "the port its Service sends traffic to"
        elif known and known.port in container_ports:
            service.port, why = known.port, f"the port clients of {known.name} use"
        elif for_callers:
            service.port, why = for_callers[0], "its first port not named for operators"
        else:
            service.port, why = container_ports[0], "its first port"
        others = sorted(set(container_ports) - {service.port})
        service.notes.append(f"port {service.port}: a containerPort of container {main.get('name')}, {why}"
                             + (f"; also: {', '.join(map(str, others))}" if others else ""))
    elif mappings and isinstance(mappings[0][4], int) and mappings[0][5] is None:
        service.port = mappings[0][4]
        service.notes.append(f"port {service.port}: the targetPort of Service {mappings[0][0]}")
    elif probe_port:
        service.port = probe_port
        service.notes.append(f"port {probe_port}: the port its HTTP probe calls")
    elif known:
        service.port = known.port
        service.notes.append(f"port {known.port}: the default port of {known.name} (no port declared)")
    for svc_name, kind, port, target, target_number, sidecar in mappings:
        shown = f"{target} ({target_number})" if isinstance(target, str) else f"{target}"
        exposure = f" ({kind}: reachable from outside the cluster)" if kind in ("LoadBalancer", "NodePort") else ""
        on_sidecar = f" on sidecar container {sidecar}" if sidecar else ""
        service.notes.append(f"Service {svc_name}{exposure}: port {port} -> targetPort {shown}{on_sidecar}")
        if sidecar:
            service.review.append(f"Service {svc_name} port {port} goes to sidecar container {sidecar}, which the "
                                  "manifest does not run (one container per service): whatever it serves is "
                                  "missing on a docker target")
        elif port != target_number and kind not in ("LoadBalancer", "NodePort"):
            service.review.append(
                f"Service {svc_name} maps port {port} to {target_number}: callers use {svc_name}:{port}; on a "
                f"docker target no Service sits in between, so they must reach port {target_number}"
            )
    if probe_port and service.port != probe_port:
        service.review.append(f"the HTTP probe calls port {probe_port}, the service port is {service.port}; "
                              "release-graph probes `health` on `port`")


def _k8s_health(service: ImportedService, main: dict, known: infra.WellKnown | None) -> int | None:
    """Set the health path from the first probe; return the port an HTTP probe calls (None: none)."""
    named = _named_ports(main)
    for probe_key in ("readinessProbe", "livenessProbe", "startupProbe"):
        probe = main.get(probe_key)
        if not isinstance(probe, dict):
            continue
        if isinstance(probe.get("httpGet"), dict):
            http = probe["httpGet"]
            path = str(http.get("path") or "/")
            port = http.get("port")
            port = named.get(port, port) if isinstance(port, str) else port
            service.health = path if path.startswith("/") else f"/{path}"
            service.notes.append(f"health {service.health}: the {probe_key} (HTTP GET on port {port})")
            return port if isinstance(port, int) else None
        if isinstance(probe.get("grpc"), dict):
            detail = f"a gRPC health check on port {probe['grpc'].get('port')}"
        elif isinstance(probe.get("tcpSocket"), dict):
            detail = f"a TCP connect to port {probe['tcpSocket'].get('port')}"
        elif isinstance(probe.get("exec"), dict):
            command = " ".join(str(c) for c in _list(probe["exec"].get("command")))
            detail = f"a command: {mask_credentials(command)}"
        else:
            continue
        service.health = None
        service.notes.append(f"health: null: the {probe_key} is {detail}, not an HTTP path")
        return None
    if known and known.health:
        service.health = known.health
        service.notes.append(f"health {known.health}: the HTTP health endpoint of {known.name}")
    else:
        service.health = None
        service.notes.append("health: null: no probe declared")
    return None


def _kustomization_reports(reader: _Reader) -> list[str]:
    reports = []
    read = {p.resolve() for p in reader.files}
    for path, label, doc in reader.kustomizations:
        listed = []
        for key in ("resources", "bases"):
            for entry in _list(doc.get(key)):
                listed.append(str(entry))
        text = f"{label}: a kustomization, reported and not followed: the importer reads the files it is given"
        changes = sorted(k for k in ("patches", "patchesStrategicMerge", "patchesJson6902", "images", "namePrefix",
                                     "nameSuffix", "namespace", "components", "configMapGenerator",
                                     "secretGenerator", "replicas", "labels", "commonLabels") if doc.get(k))
        if changes:
            text += f"; its {', '.join(changes)} are not applied"
        folder = path.parent
        local = {(folder / e).resolve() for e in listed if "://" not in e}
        not_listed = sorted(reader.label(p) for p in read if p.parent == folder and p not in local
                            and p.name not in KUSTOMIZATION_FILES)
        missing = sorted(e for e in listed if "://" not in e and (folder / e).resolve() not in read)
        if listed:
            text += f"; it lists {len(listed)} resources"
        if not_listed:
            text += f"; read but not listed there: {', '.join(not_listed)}"
        if missing:
            text += f"; listed there but not read: {', '.join(missing)}"
        reports.append(text)
    return reports
