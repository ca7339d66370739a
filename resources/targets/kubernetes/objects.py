"""The Kubernetes objects one deployment sends, generated from a `DeploymentSpec` (the same spec the docker target
deploys), and their strict validation against the schemas of the cluster version the environment declares.

Plain Python with no I/O: the kubernetes target (`target.py`) generates, validates and applies these objects;
`release-graph validate` generates and validates them for every service of every kubernetes environment, so a
manifest value that would make an invalid object is refused before any API call.

Per service: a ConfigMap (plain configuration, and where the secret files are), a Secret (only with secrets;
values only here, never in labels, annotations or the other objects), its NetworkPolicy (ingress from its declared
callers only: release_graph.fleet.network), a Deployment (the image by digest, probes from the health path,
requests and limits, the immutable-container settings of `hardening`) and, with a port, a Service. Every object
carries the pod labels the NetworkPolicies select on.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable

from release_graph.fleet.model import SECRETS_DIR_IN_CONTAINER, Environment, Fleet, KubernetesCluster, Resources
from release_graph.fleet.network import MANAGED_BY_LABEL, SERVICE_LABEL, network_policy, pod_labels
from resources.targets.interface import DeploymentSpec, InvalidDeploymentSpec, container_environment, deployment_spec

ENVIRONMENT_LABEL = "release-graph.io/environment"
MANAGED_BY = "release-graph"  # the value of app.kubernetes.io/managed-by on everything the target creates
DIGEST_LABEL = "release-graph.io/digest"  # a label value: `sha256-` and the first 12 hex digits (63 characters)
DIGEST_ANNOTATION = "release-graph.io/digest"  # the whole digest
CONFIG_HASH_ANNOTATION = "release-graph.io/config-hash"  # a new configuration rolls the pods
# Progressive rollouts: two slots per service, each a Deployment whose pods carry its color; the candidate's
# Deployment is marked by the track label (the one serving carries none) and says which strategy moves its traffic.
COLOR_LABEL = "release-graph.io/color"
BLUE, GREEN = "blue", "green"
TRACK_LABEL = "release-graph.io/track"
CANDIDATE = "candidate"
ROLLOUT_ANNOTATION = "release-graph.io/rollout"  # blue-green or canary
WEIGHT_ANNOTATION = "release-graph.io/weight"  # the candidate's share asked for, in percent
SECRET_VOLUME = "secrets"
PROBE_PERIOD_SECONDS = 5


class KubernetesObjectError(InvalidDeploymentSpec):
    """A generated object is not valid for the cluster's version: the message names the service, the
    environment, the object and the field. A refusal before anything changed, like any invalid spec."""


def deployment_objects(spec: DeploymentSpec, cluster: KubernetesCluster, replicas: int = 1, *, color: str = BLUE,
                       route_to: str | None = None, candidate: str | None = None) -> list[dict]:
    """The objects that make `spec` run in `cluster.namespace`, in the order they are applied; requests and
    limits are the spec's `resources` (the manifest's, through `deployment_spec`).

    `color` is the slot the Deployment fills (`deployment_name`): its pods carry it, and its ConfigMap and Secret
    are its own, so a second version running beside the first (a rollout's candidate) never changes the first's
    configuration. `route_to` narrows the Service to the pods of one color (blue-green); None selects every pod of
    the service (a plain replacement, and a canary by replica ratio). `candidate` marks the Deployment as a
    rollout's candidate and says which strategy moves its traffic (ROLLOUT_ANNOTATION).

    The service's NetworkPolicy comes before the Deployment, so its pods are never started unprotected."""
    digest = spec.image.rsplit("@", 1)[1]
    selector = pod_labels(spec.fleet, spec.service)
    labels = {**selector, ENVIRONMENT_LABEL: spec.environment, MANAGED_BY_LABEL: MANAGED_BY}
    metadata = {"namespace": cluster.namespace, "labels": labels}
    name = deployment_name(spec.service, color)
    config_name, secret_name = f"{name}-config", f"{name}-secrets"
    config = container_environment(spec) if spec.secrets_as == "file" else dict(spec.env)
    objects: list[dict] = [{
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {**metadata, "name": config_name},
        "data": dict(sorted(config.items())),
    }]
    if spec.secrets:
        objects.append({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {**metadata, "name": secret_name},
            "stringData": dict(spec.secrets),
        })
    policy = network_policy(spec.fleet, spec.service, spec.port, spec.callers, spec.published_anywhere,
                            cluster.namespace, tested=spec.tested_end_to_end)
    policy["metadata"]["labels"][ENVIRONMENT_LABEL] = spec.environment  # whose it is, as every object here
    objects.append(policy)
    deployment = _deployment(spec, metadata, config_name, secret_name, digest, spec.resources, replicas, color)
    if candidate is not None:
        deployment["metadata"]["labels"] = {**labels, TRACK_LABEL: CANDIDATE}
        deployment["metadata"]["annotations"][ROLLOUT_ANNOTATION] = candidate
    objects.append(deployment)
    if spec.port is not None:
        objects.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {**metadata, "name": spec.service},
            "spec": {"selector": {**selector, **({COLOR_LABEL: route_to} if route_to else {})},
                     "ports": [{"name": "http", "protocol": "TCP", "port": spec.port, "targetPort": spec.port}]},
        })
    return objects


def deployment_name(service: str, color: str) -> str:
    """The Deployment of a slot: blue keeps the service's own name (what a plain replacement always deployed),
    green is `<service>-green`."""
    return service if color == BLUE else f"{service}-{color}"


def other_color(color: str) -> str:
    return GREEN if color == BLUE else BLUE


def _deployment(spec: DeploymentSpec, metadata: dict, config_name: str, secret_name: str, digest: str,
                resources: Resources, replicas: int, color: str) -> dict:
    hardening = spec.hardening
    container: dict = {
        "name": spec.service,
        "image": spec.image,
        "envFrom": [{"configMapRef": {"name": config_name}}],
        "securityContext": {
            "readOnlyRootFilesystem": hardening.writable_root is None,
            "allowPrivilegeEscalation": hardening.privilege_escalation is not None,
            "capabilities": {"drop": ["ALL"], **({"add": list(hardening.capabilities)}
                                                 if hardening.capabilities else {})},
            **({} if hardening.run_as_root else {"runAsNonRoot": True}),
        },
        "volumeMounts": [{"name": _volume_name(folder), "mountPath": folder}
                         for folder in hardening.writable_folders],
    }
    volumes: list[dict] = [{"name": _volume_name(folder), "emptyDir": {"medium": "Memory"}}
                           for folder in hardening.writable_folders]
    if spec.secrets and spec.secrets_as == "file":
        container["volumeMounts"].append({"name": SECRET_VOLUME, "mountPath": SECRETS_DIR_IN_CONTAINER,
                                          "readOnly": True})
        volumes.append({"name": SECRET_VOLUME, "secret": {"secretName": secret_name, "defaultMode": 0o400}})
    elif spec.secrets:
        container["envFrom"].append({"secretRef": {"name": secret_name}})
    if spec.entrypoint is not None:
        container["command"] = list(spec.entrypoint)
    if spec.command is not None:
        container["args"] = list(spec.command)
    if spec.port is not None:
        container["ports"] = [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}]
        if spec.health:
            probe = {"httpGet": {"path": spec.health, "port": spec.port}, "periodSeconds": PROBE_PERIOD_SECONDS}
            container["readinessProbe"] = probe
            container["livenessProbe"] = {**probe, "failureThreshold": 6}
    requests_and_limits = resources.as_kubernetes()
    if requests_and_limits:
        container["resources"] = requests_and_limits
    template_labels = {**pod_labels(spec.fleet, spec.service), ENVIRONMENT_LABEL: spec.environment,
                       DIGEST_LABEL: digest.replace(":", "-")[:19], COLOR_LABEL: color}
    # A selector cannot change once made: blue's stays the one every Deployment before the slots had (it also
    # matches green's pods, which the controllers leave alone: a pod belongs to the ReplicaSet that made it);
    # green's is its own.
    selector = pod_labels(spec.fleet, spec.service)
    if color != BLUE:
        selector[COLOR_LABEL] = color
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {**metadata, "name": deployment_name(spec.service, color),
                     "annotations": {DIGEST_ANNOTATION: digest}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": template_labels,
                             "annotations": {DIGEST_ANNOTATION: digest,
                                             CONFIG_HASH_ANNOTATION: _config_hash(spec)}},
                "spec": {"containers": [container], "volumes": volumes, "automountServiceAccountToken": False},
            },
        },
    }


def _volume_name(folder: str) -> str:
    """An emptyDir's name for a writable folder: a DNS label made from its path."""
    readable = "".join(c if c.isalnum() else "-" for c in folder.strip("/").lower())[:40].strip("-") or "root"
    return f"w-{readable}-{hashlib.sha256(folder.encode()).hexdigest()[:6]}"


def _config_hash(spec: DeploymentSpec) -> str:
    """Changes with the plain configuration and the secrets' names, never with a secret's value (a digest of a
    secret is still derived from it): rotating a secret's value rolls no pods by itself."""
    shown = {"env": dict(spec.env), "secret_names": sorted(spec.secrets), "secrets_as": spec.secrets_as}
    return hashlib.sha256(json.dumps(shown, sort_keys=True).encode()).hexdigest()[:16]


def validate_objects(objects: Iterable[dict], cluster: KubernetesCluster, *, service: str, environment: str) -> None:
    """Strict validation (unknown fields refused) against the schemas of `cluster.version`; raises
    KubernetesObjectError naming the first invalid object and field. Values are never quoted: a Secret's are
    secret."""
    import jsonschema
    from kubernetes_validate.utils import SchemaNotFoundError

    for obj in objects:
        what = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        try:
            strict_validator(obj.get("kind"), obj.get("apiVersion"), cluster.version).validate(obj)
        except jsonschema.ValidationError as exc:
            field = ".".join(str(part) for part in exc.path) or "(the object)"
            reason = exc.message if obj.get("kind") != "Secret" else exc.validator
            raise KubernetesObjectError(
                f"service '{service}', environment '{environment}': {what} is not a valid object for Kubernetes "
                f"{cluster.version}: field {field}: {reason}") from None
        except SchemaNotFoundError as exc:
            raise KubernetesObjectError(
                f"service '{service}', environment '{environment}': no schema for {what} "
                f"({obj.get('apiVersion')}) in Kubernetes {cluster.version}: {exc}") from None
        _check_quantities(obj, what, cluster, service=service, environment=environment)


@functools.lru_cache(maxsize=64)
def strict_validator(kind: str, api_version: str, cluster_version: str):
    """The strict validator of one kind and apiVersion for a cluster version, built once per process.

    kubernetes-validate's own `validate` reads and parses the object's schema and the large shared definitions
    file on every call (about 30 ms of a 55 ms deployment); the validator built from them is the same every time,
    and the `referencing` registry inside it keeps the definitions it has already resolved. Raises
    SchemaNotFoundError (kubernetes-validate's) when the version has no schema for the kind."""
    import jsonschema
    from kubernetes_validate.utils import SchemaNotFoundError, all_versions, major_minor, schema_contents
    from referencing import Registry, Resource

    wanted = major_minor(cluster_version.removeprefix("v"))
    # the newest schemas that are not newer than the cluster, as kubernetes-validate picks them
    known = [version for version in all_versions() if _minor_key(major_minor(version)) <= _minor_key(wanted)]
    if not known:
        raise SchemaNotFoundError(kind=kind, version=wanted, api_version=api_version)
    folder = f"kubernetes-json-schema/v{known[-1]}-local-strict"
    group, _, version = (api_version or "").rpartition("/")
    file_suffix = f"{group.split('.')[0]}-{version}" if group else version
    try:
        schema = schema_contents(f"{folder}/{(kind or '').lower()}-{file_suffix}.json", cluster_version)
    except FileNotFoundError:
        raise SchemaNotFoundError(kind=kind, version=wanted, api_version=api_version) from None
    registry = _definitions(folder, cluster_version) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


@functools.lru_cache(maxsize=8)
def _definitions(folder: str, cluster_version: str):
    """The definitions every kind's schema refers to (one large file per schema version), parsed once for all kinds."""
    from kubernetes_validate.utils import schema_contents
    from referencing import Resource

    return Resource.from_contents(schema_contents(f"{folder}/_definitions.json", cluster_version))


def _minor_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _check_quantities(obj: dict, what: str, cluster: KubernetesCluster, *, service: str, environment: str) -> None:
    """The schemas type a quantity as any string; the API server refuses one it cannot parse ("lots", "1 Gi"), so
    it is checked here, before any request, with the client's own parser."""
    from kubernetes.utils import parse_quantity

    if obj.get("kind") != "Deployment":
        return
    containers = obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []
    for index, container in enumerate(containers):
        for bound in ("requests", "limits"):
            for resource, amount in ((container.get("resources") or {}).get(bound) or {}).items():
                try:
                    parse_quantity(amount)
                except (ValueError, TypeError, ArithmeticError):
                    raise KubernetesObjectError(
                        f"service '{service}', environment '{environment}': {what} is not a valid object for "
                        f"Kubernetes {cluster.version}: field spec.template.spec.containers.{index}.resources."
                        f"{bound}.{resource}: {amount!r} is not a quantity (e.g. 250m or 0.5 cores, 256Mi)"
                    ) from None


PLACEHOLDER_DIGEST = "sha256:" + "0" * 64  # `release-graph validate` has no built image: the shape is the same
PLACEHOLDER_SECRET = "(resolved at deploy time)"  # ...and no secret value: it is never read to validate
PLACEHOLDER_GIT_SHA = "0" * 40  # ...nor a commit


def environment_objects(fleet: Fleet, environment: Environment) -> list[tuple[str, list[dict]]]:
    """(service, its objects, its NetworkPolicy among them) for every deployable service of a kubernetes
    `environment`, with a placeholder digest and placeholder secret values; then ("network", the NetworkPolicies of
    the services a release does not deploy: infrastructure), when there are any."""
    from release_graph.fleet.network import network_policies

    cluster = environment.kubernetes
    generated = []
    undeployed = {name for name, service in fleet.services.items() if service.infrastructure}
    for service in fleet.services.values():
        if service.name in undeployed:
            continue
        spec = deployment_spec(
            fleet, service, environment, image=f"{service.image_repository(fleet)}@{PLACEHOLDER_DIGEST}",
            git_sha=PLACEHOLDER_GIT_SHA,
            secrets={name: PLACEHOLDER_SECRET for name in environment.secrets.get(service.name, {})})
        generated.append((service.name, deployment_objects(spec, cluster)))
    policies = [policy for policy in network_policies(fleet, cluster.namespace)
                if policy["metadata"]["labels"][SERVICE_LABEL] in undeployed]
    if policies:
        generated.append(("network", policies))
    return generated


def validate_environment(fleet: Fleet, environment: Environment) -> int:
    """Every object a deployment to the kubernetes `environment` would send, validated; how many there are."""
    count = 0
    for service, objects in environment_objects(fleet, environment):
        validate_objects(objects, environment.kubernetes, service=service, environment=environment.name)
        count += len(objects)
    return count
