"""The kubernetes target: an environment is a namespace of one cluster (`KubernetesCluster`: namespace, version,
kube context), and a deployment sends the objects of `objects.py` through the official `kubernetes` client.

A deployment:

1. refuses, before any request, an image not pinned by digest, a spec no target can deploy (`validate_spec`), a
   `publish` port (a docker-target host port) and any generated object that is not valid for the cluster's
   version (`validate_objects`, strict);
2. lists the service's Deployments (which slot serves; a rollout's candidate left by a killed run is taken away
   first), reads each object (ConfigMap, Secret, NetworkPolicy, Deployment, Service) and refuses to touch one that
   exists but is not release-graph's for this fleet and environment;
3. sends only what differs: a missing object is created, one that already carries every field we own (labels,
   annotations, spec/data, and the fingerprint of what we last applied) gets nothing, any other is server-side
   applied (PATCH `application/apply-patch+yaml`, field manager `release-graph`, forced). The same digest
   deployed twice sends no write the second time. A real API server creates by apply too (so release-graph's
   apply owns every field); a server whose apply cannot create (the emulator the tests use) gets a POST;
4. waits for the rollout like `kubectl rollout status`: the controller observed the new generation, every
   replica is updated, no old one is left, the updated ones are available. A pod of the new revision waiting in
   `CrashLoopBackOff`, `ImagePullBackOff`, `ErrImagePull` or `CreateContainerConfigError`, a
   `ProgressDeadlineExceeded` condition or the timeout ends the wait;
5. on failure re-applies what it read before (the previous Deployment template, ConfigMap and Secret; never the
   removed `rollback` API), deletes what it created, and raises `DeploymentFailed` naming the service, the
   environment, the pods' reasons and messages and the recent Warning events of those pods and the Deployment.
   The previous version's pods never stopped (a rolling update keeps them until the new ones are available), so
   it keeps serving.

Progressive rollouts (`start_candidate`, `set_candidate_weight`, `promote_candidate`, `abort_candidate`, read back
by `traffic`) run the new version in the service's other slot: blue-green switches the Service's selector, a canary
scales both Deployments behind the one Service to a ratio of pods (the section "progressive rollouts" below).

Secret values travel only in the Secret's request body: never in a log line, a result, an exception text (an API
error about a Secret is reported by status alone, and every message is scrubbed of the values), and the
fingerprint of what was applied is computed from the secrets' names only; values are compared in memory.

Selectors are sent for a real API server and applied again here to what comes back (an emulator may ignore them).
Nothing here does I/O at import or construction: the API client is made on first use, from `api_host` when
configured (an emulator, `kubectl proxy`), else from the kubeconfig and the cluster's context.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from pydantic import Field

from release_graph.fleet.model import KubernetesCluster
from release_graph.fleet.network import END_TO_END, FLEET_LABEL, MANAGED_BY_LABEL, SERVICE_LABEL
from resources.containers import RunResult
from resources.targets.interface import (
    DeploymentFailed,
    DeploymentResult,
    DeploymentSpec,
    DeployTarget,
    EnvironmentContainer,
    EnvironmentReport,
    EphemeralEnvironment,
    HealthProbe,
    InvalidDeploymentSpec,
    ReapReport,
    RunningService,
    TargetError,
    pinned_reference,
    validate_spec,
)
from resources.targets.kubernetes.objects import (
    BLUE,
    CANDIDATE,
    COLOR_LABEL,
    CONFIG_HASH_ANNOTATION,
    DIGEST_ANNOTATION,
    DIGEST_LABEL,
    ENVIRONMENT_LABEL,
    GREEN,
    MANAGED_BY,
    ROLLOUT_ANNOTATION,
    TRACK_LABEL,
    WEIGHT_ANNOTATION,
    deployment_name,
    deployment_objects,
    other_color,
    validate_objects,
)
from resources.targets.kubernetes.tests_in_pods import (
    NoTestReport,
    kubeconfig_for,
    pod_env_for_tests,
    pod_labels_for_tests,
    pod_manifest,
    pod_spec_for_tests,
    reporter_config_map,
    result_from_report,
)

log = logging.getLogger(__name__)

FIELD_MANAGER = "release-graph"
APPLY_PATCH = "application/apply-patch+yaml"
# A rollout's small changes (replicas, the Service's color, the candidate's marks) are merge patches of the live
# object: the spec that made it is not at hand in a later step or another process (the CLI's abort).
MERGE_PATCH = "application/merge-patch+json"
SERVING_REPLICAS = 1  # what a Deployment serves with outside a rollout (every apply sends it)
BLUE_GREEN = "blue-green"
CANARY = "canary"
# What we last applied to an object, as a fingerprint of the body we sent (a Secret's by its names only): a
# field we stopped sending (a probe, a config key) changes it, where comparing what we send with what is live
# could not see a removal.
APPLIED_ANNOTATION = "release-graph.io/applied"
# A container of the new revision waiting for one of these reasons will not become available by waiting longer.
FAILING_REASONS = frozenset({"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError"})
RECENT_WARNINGS = 10
# Annotations the API server or kubectl own: re-applying them on a rollback would take them over.
FOREIGN_ANNOTATION_PREFIXES = ("deployment.kubernetes.io/", "kubectl.kubernetes.io/")
# Torn down in this order: what routes to the pods first, their isolation once they are gone, configuration last.
# A test pod's wait ends this long after the pod's own deadline (activeDeadlineSeconds), which the cluster enforces.
TEST_POD_GRACE_SECONDS = 30
TEARDOWN_KINDS = ("Service", "Deployment", "NetworkPolicy", "Secret", "ConfigMap")


class KubernetesTargetConfig(dg.Config):
    """How the kubernetes target reaches clusters and how long a rollout may take (the cluster itself, namespace
    and version are the environment's `kubernetes:` in the manifest)."""

    api_host: str | None = Field(
        default=None,
        description="An API server URL reached without credentials (an emulator in tests, `kubectl proxy`). "
        "None: the kubeconfig.",
    )
    kubeconfig: str | None = Field(
        default=None,
        description="The kubeconfig file (None: $KUBECONFIG, else ~/.kube/config); the environment's "
        "`kubernetes.context` picks the context in it (None: its current context).",
    )
    rollout_timeout_seconds: float = Field(
        default=300, description="How long a new revision may take to become available before it is rolled back."
    )
    poll_seconds: float = Field(default=2.0, description="How often a rollout's progress is read.")
    request_timeout_seconds: float = Field(default=30, description="Timeout of one API request.")
    canary_replicas: int = Field(
        default=10, ge=2,
        description="How many pods the serving version and the candidate have together during a canary, so that a "
        "step's weight is a ratio of ready pods behind the one Service (10: steps of 10 %; see canary_replicas()).",
    )


@dataclass(frozen=True)
class _Kind:
    api: str  # "core" (CoreV1Api), "apps" (AppsV1Api) or "networking" (NetworkingV1Api)
    suffix: str  # the client's method names: read_namespaced_<suffix>, ...


KINDS = {
    "ConfigMap": _Kind("core", "config_map"),
    "Secret": _Kind("core", "secret"),
    "Service": _Kind("core", "service"),
    "Deployment": _Kind("apps", "deployment"),
    "NetworkPolicy": _Kind("networking", "network_policy"),
}


@dataclass(frozen=True)
class RolloutProgress:
    """Where a Deployment's rollout stands, as `kubectl rollout status` judges it."""

    done: bool
    summary: str  # in words, for the error and the log
    stuck: str | None = None  # the controller gave up (ProgressDeadlineExceeded), in its words


@dataclass(frozen=True)
class _Sent:
    """One object this deployment changed, and what was there before (None: it created it)."""

    desired: dict
    previous: dict | None


@dataclass(frozen=True)
class KubernetesTraffic:
    """How a service's traffic is split now, read back from the cluster (what the docker target keeps in its route
    file): the Deployment that serves, the candidate beside it, the weight last asked for and what the Service
    selects. `candidate` and `candidate_name` are the candidate's Deployment (None: no rollout in progress)."""

    serving: str | None
    candidate: str | None
    candidate_weight: int
    strategy: str | None  # the candidate's: blue-green or canary
    selector: Mapping[str, str]
    serving_replicas: int = 0
    serving_ready: int = 0
    candidate_replicas: int = 0
    candidate_ready: int = 0

    @property
    def candidate_name(self) -> str | None:
        return self.candidate

    candidate_color: str | None = None

    @property
    def candidate_share(self) -> float:
        """The candidate's share of the ready pods the Service selects, in percent (what a canary really gets)."""
        if self.candidate is None:
            return 0.0
        if COLOR_LABEL in self.selector:
            return 100.0 if self.selector[COLOR_LABEL] == self.candidate_color else 0.0
        ready = self.serving_ready + self.candidate_ready
        return round(100 * self.candidate_ready / ready, 1) if ready else 0.0


def canary_replicas(weight: int, total: int) -> tuple[int, int]:
    """(candidate, serving) pods for a canary step of `weight` percent among `total` pods: the candidate gets
    `total * weight / 100` rounded half up, at least 1 while the weight is above 0 and at most `total - 1` while it
    is below 100, so each version keeps a pod until the step says otherwise. With 10 pods a weight is met to the
    nearest 10 % (25 % gets 3 of 10; 1 % gets 1 of 10)."""
    if weight <= 0:
        return 0, total
    if weight >= 100:
        return total, 0
    candidate = min(max(int(total * weight / 100 + 0.5), 1), total - 1)
    return candidate, total - candidate


def rollout_progress(deployment: Mapping, generation: int | None = None) -> RolloutProgress:
    """Whether the Deployment's rollout of `generation` (default: its metadata's) is complete.

    A server that does not stamp `metadata.generation` (an emulator) cannot tell a status about the previous
    template from one about the new: the status is then taken as it is. A real API server always stamps it.
    """
    metadata, spec, status = (deployment.get(key) or {} for key in ("metadata", "spec", "status"))
    wanted = spec.get("replicas", 1)
    generation = generation if generation is not None else metadata.get("generation")
    observed = status.get("observedGeneration")
    stuck = next((f"{condition.get('reason')}: {condition.get('message', '')}".strip(": ")
                  for condition in status.get("conditions") or []
                  if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded"),
                 None)
    if generation is not None and (observed is None or observed < generation):
        return RolloutProgress(False, f"the controller has not observed generation {generation} yet "
                                      f"(observed: {observed if observed is not None else 'none'})", stuck)
    updated = status.get("updatedReplicas") or 0
    total = status.get("replicas") or 0
    available = status.get("availableReplicas") or 0
    if updated < wanted:
        return RolloutProgress(False, f"{updated} of {wanted} replicas updated", stuck)
    if total > updated:
        return RolloutProgress(False, f"old replicas pending termination: {total - updated}", stuck)
    if available < updated:
        return RolloutProgress(False, f"{available} of {updated} updated replicas available", stuck)
    return RolloutProgress(True, f"{available} of {wanted} replicas updated and available")


def applied_fingerprint(obj: Mapping) -> str:
    """The fingerprint of an object as we send it, without the annotation that carries it; a Secret's values are
    left out (a digest of a secret is still derived from it): its names are in, its values compared in memory."""
    shown = json.loads(json.dumps(obj))
    annotations = shown.get("metadata", {}).get("annotations") or {}
    annotations.pop(APPLIED_ANNOTATION, None)
    if "stringData" in shown:
        shown["stringData"] = sorted(shown["stringData"])
    return hashlib.sha256(json.dumps(shown, sort_keys=True).encode()).hexdigest()[:16]


def carries(live: Mapping, desired: Mapping) -> bool:
    """Whether the live object already holds everything `desired` would set: our fingerprint, our labels and
    annotations, and every field of its spec/data (fields the server added, defaults, are allowed)."""
    live_meta, desired_meta = live.get("metadata") or {}, desired.get("metadata") or {}
    wanted_annotations = desired_meta.get("annotations") or {}
    if (live_meta.get("annotations") or {}).get(APPLIED_ANNOTATION) != wanted_annotations.get(APPLIED_ANNOTATION):
        return False
    if not _contains(live_meta.get("labels") or {}, desired_meta.get("labels") or {}, ()):
        return False
    if not _contains(live_meta.get("annotations") or {}, wanted_annotations, ()):
        return False
    for key, value in desired.items():
        if key in ("apiVersion", "kind", "metadata"):
            continue
        if desired.get("kind") == "Secret" and key == "stringData":
            if secret_values(live) != value:
                return False
        elif not _contains(live.get(key), value, (key,)):
            return False
    return True


def secret_values(secret: Mapping) -> dict[str, str] | None:
    """A live Secret's values: `data` decoded (what a real API server returns), and `stringData` where a server
    kept the write-only field (an emulator). None when a value is not base64 text: then it differs."""
    values = {}
    for name, encoded in (secret.get("data") or {}).items():
        try:
            values[name] = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, TypeError):
            return None
    values.update(secret.get("stringData") or {})
    return values


def _contains(actual: Any, wanted: Any, path: tuple) -> bool:
    if isinstance(wanted, Mapping):
        return isinstance(actual, Mapping) and all(_contains(actual.get(k), v, (*path, k)) for k, v in wanted.items())
    if isinstance(wanted, list):
        return (isinstance(actual, list) and len(actual) == len(wanted)
                and all(_contains(a, w, (*path, i)) for i, (a, w) in enumerate(zip(actual, wanted, strict=True))))
    if len(path) >= 2 and path[-2] in ("requests", "limits") and actual is not None:
        # the API server writes quantities back in its canonical form ("0.5" comes back as "500m")
        from kubernetes.utils import parse_quantity

        try:
            return parse_quantity(actual) == parse_quantity(wanted)
        except (ValueError, TypeError, ArithmeticError):
            return False
    return actual == wanted


def _scrub(text: str, secrets: Mapping[str, str]) -> str:
    """`text` with every secret value replaced: a pod's message or an event may quote what a process printed."""
    for value in sorted(secrets.values(), key=len, reverse=True):
        if value:
            text = text.replace(value, "<secret>")
    return text


class KubernetesTarget(DeployTarget):
    """Environments as namespaces of one cluster, through the official `kubernetes` client (see the module
    docstring). Made by `DeployTargets.for_environment("kubernetes", cluster)`, or directly."""

    def __init__(self, cluster: KubernetesCluster, config: KubernetesTargetConfig | None = None):
        self.cluster = cluster
        self.config = config if config is not None else KubernetesTargetConfig()
        self._api_client = None
        self._lock = threading.Lock()
        self._apply_creates: bool | None = None  # whether this API server's apply creates (None: not seen yet)

    # --- plumbing ---------------------------------------------------------------------------------------

    @property
    def namespace(self) -> str:
        return self.cluster.namespace

    def describe_cluster(self) -> str:
        """Where this target sends its requests, in words (for errors and logs)."""
        if self.config.api_host:
            return f"the Kubernetes API at {self.config.api_host}"
        context = f"context '{self.cluster.context}'" if self.cluster.context else "the current context"
        return f"the Kubernetes API of {context} in {self.config.kubeconfig or 'the default kubeconfig'}"

    @property
    def api_client(self):
        """The client, made on first use (no I/O before: importing or building the target reads no file)."""
        with self._lock:
            if self._api_client is None:
                self._api_client = self._new_api_client()
            return self._api_client

    def _new_api_client(self):
        import kubernetes

        if self.config.api_host:
            return kubernetes.client.ApiClient(kubernetes.client.Configuration(host=self.config.api_host.rstrip("/")))
        try:
            return kubernetes.config.new_client_from_config(config_file=self.config.kubeconfig,
                                                            context=self.cluster.context)
        except (kubernetes.config.ConfigException, OSError, ValueError) as exc:
            raise TargetError(f"cannot load {self.describe_cluster()}: {exc} (docs/operations.md, "
                              "\"Kubernetes target\")") from None

    def _api(self, group: str):
        import kubernetes

        api = {"apps": kubernetes.client.AppsV1Api,
               "networking": kubernetes.client.NetworkingV1Api}.get(group, kubernetes.client.CoreV1Api)
        return api(self.api_client)

    def _request(self, what: str, group: str, method: str, *args, missing_ok: bool = False, secret: bool = False,
                 **kwargs) -> dict | None:
        """One API call; its answer as a dict (None: 404 with `missing_ok`). Failures are TargetError naming
        `what` (service, environment, object); a Secret's failure by status only: the server's message could
        quote the body it refused."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            call = getattr(self._api(group), method)
        except TargetError as exc:  # the kubeconfig could not be loaded
            raise TargetError(f"{what}: {exc}") from None
        try:
            response = call(*args, _preload_content=False, _request_timeout=self.config.request_timeout_seconds,
                            **kwargs)
        except ApiException as exc:
            if exc.status == 404 and missing_ok:
                return None
            raise TargetError(f"{what}: {self.describe_cluster()} answered {exc.status} {exc.reason}"
                              + ("" if secret else _status_message(exc.body))) from None
        except (HTTPError, OSError) as exc:
            raise TargetError(f"{what}: {self.describe_cluster()} did not answer: {type(exc).__name__}") from None
        body = response.data
        return json.loads(body) if body else {}

    def _object_call(self, what: str, verb: str, kind: str, *args, **kwargs) -> dict | None:
        spec = KINDS[kind]
        return self._request(what, spec.api, f"{verb}_namespaced_{spec.suffix}", *args,
                             secret=kind == "Secret", **kwargs)

    def _read(self, what: str, kind: str, name: str) -> dict | None:
        return self._object_call(what, "read", kind, name, self.namespace, missing_ok=True)

    def _list(self, what: str, kind: str, fleet: str, environment: str | None = None,
              service: str | None = None) -> list[dict]:
        """Objects of `kind` that release-graph manages for the fleet (and environment, service): the selector
        for a real API server, the same test again here for one that ignores selectors."""
        wanted = {FLEET_LABEL: fleet, MANAGED_BY_LABEL: MANAGED_BY}
        if environment is not None:
            wanted[ENVIRONMENT_LABEL] = environment
        if service is not None:
            wanted[SERVICE_LABEL] = service
        selector = ",".join(f"{key}={value}" for key, value in wanted.items())
        found = self._object_call(what, "list", kind, self.namespace, label_selector=selector) or {}
        return [item for item in found.get("items") or [] if _labelled(item, wanted)]

    @staticmethod
    def _where(service: str, environment: str) -> str:
        return f"service '{service}', environment '{environment}'"

    def _object_name(self, obj: Mapping) -> str:
        return f"{obj['kind']} {self.namespace}/{obj['metadata']['name']}"

    # --- deploy -----------------------------------------------------------------------------------------

    def deploy(self, spec: DeploymentSpec) -> DeploymentResult:
        """Make `spec.image` serve `spec.service` in its namespace, or leave what served before serving; see the
        module docstring.

        Raises, before any request: InvalidDeploymentSpec (ImageNotPinned; KubernetesObjectError for an object
        the cluster's version refuses). Before any write: TargetError (API not answering, an object that is not
        release-graph's). DeploymentFailed: the new revision did not become available and was rolled back.
        """
        reference, digest = pinned_reference(spec.image)
        validate_spec(spec)
        where = self._where(spec.service, spec.environment)
        self._refuse_publish(spec, where)
        objects = deployment_objects(spec, self.cluster)
        validate_objects(objects, self.cluster, service=spec.service, environment=spec.environment)
        started = time.monotonic()

        # The version that serves may be in either slot (a promoted candidate stays where it is); a candidate left
        # by a rollout killed half-way is taken away first, as `abort_candidate` does.
        deployments = self._service_deployments(where, spec.fleet, spec.environment, spec.service)
        if any(_is_candidate(d) for d in deployments):
            removed = self.abort_candidate(spec.fleet, spec.environment, spec.service)
            log.info("%s: the interrupted rollout of %s was settled first", where, removed or "a promoted candidate")
            # read again: settling a promotion killed half-way keeps the candidate, as what serves
            deployments = self._service_deployments(where, spec.fleet, spec.environment, spec.service)
        serving = _serving(deployments)
        color = _color_of(serving) if serving is not None else BLUE
        route_to = None
        if spec.rollout_strategy == BLUE_GREEN and (serving is None or _template_color(serving) == color):
            # blue-green narrows the Service to the serving color; a Deployment made before the colors gets the
            # label with this apply, and the Service is narrowed by the next one (its pods have the label by then)
            route_to = color
        if (color, route_to) != (BLUE, None):
            objects = deployment_objects(spec, self.cluster, color=color, route_to=route_to)
            validate_objects(objects, self.cluster, service=spec.service, environment=spec.environment)

        sent, current = self._send(spec, where, reference, objects)
        deployment = current["Deployment"]
        name = deployment["metadata"]["name"]
        generation = (deployment.get("metadata") or {}).get("generation")
        try:
            problem, diagnosis, final = self._wait_for_rollout(where, spec.fleet, spec.service, name, generation,
                                                               deployment)
        except TargetError as exc:  # the API stopped answering: what was sent is taken back all the same
            problem, diagnosis, final = f"the rollout could not be followed: {exc}", "", deployment
        if problem is not None:
            if not sent:
                raise DeploymentFailed(
                    _scrub(f"{where}: {reference} was already applied (nothing was sent), but Deployment "
                           f"{self.namespace}/{name} is not available: {problem}{diagnosis}", spec.secrets),
                    service=spec.service, environment=spec.environment, image=reference)
            restored = self._restore(spec, sent)
            raise DeploymentFailed(
                _scrub(f"{where}: {reference} did not become available in namespace {self.namespace}: {problem}; "
                       f"{restored}{diagnosis}", spec.secrets),
                service=spec.service, environment=spec.environment, image=reference)
        seconds = time.monotonic() - started
        now = datetime.now(UTC).isoformat(timespec="seconds")
        log.info("%s: %s %s in %.2f s", where, digest, "rolled out" if sent else "already served", seconds)
        return DeploymentResult(
            container_name=name,
            container_id=f"deployment/{self.namespace}/{name}",
            digest=digest,
            image=reference,
            # a rolling update keeps the Deployment's Available condition True throughout (its time is the first
            # rollout's): a new revision is dated by the end of its own rollout
            started_at=now if sent else (_available_since(final) or now),
            url_inside=f"http://{spec.service}.{self.namespace}.svc:{spec.port}" if spec.port else None,
            published_url=None,
            changed=bool(sent),
            health_seconds=round(seconds, 3),
            network=self.namespace,
        )

    def _refuse_publish(self, spec: DeploymentSpec, where: str) -> None:
        if spec.publish is not None:
            raise InvalidDeploymentSpec(
                f"{where}: publish {spec.publish} is a host port of the docker target; in a kubernetes environment "
                f"the service is reached through its Service (http://{spec.service}.{self.namespace}.svc:{spec.port})"
                ": remove it from the environment's `publish`")

    def _send(self, spec: DeploymentSpec, where: str, reference: str, objects: list[dict],
              *, candidate: bool = False) -> tuple[list[_Sent], dict[str, dict]]:
        """Fingerprint, read, check and apply `objects` in order; what was sent and each kind as the server answered.
        Every read comes before any write: an object that is not ours refuses the deployment with nothing changed.
        A write that fails takes back what was sent (DeploymentFailed)."""
        for obj in objects:
            obj["metadata"].setdefault("annotations", {})[APPLIED_ANNOTATION] = applied_fingerprint(obj)
        live = {}
        for obj in objects:
            what = f"{where}: reading {self._object_name(obj)}"
            live[obj["kind"]] = self._read(what, obj["kind"], obj["metadata"]["name"])
        for obj in objects:
            self._check_ownership(spec, obj, live[obj["kind"]])
        sent: list[_Sent] = []
        current: dict[str, dict] = {}
        try:
            for obj in objects:
                before = live[obj["kind"]]
                answer, action = self._apply(where, obj, before)
                current[obj["kind"]] = answer
                log.info("%s: %s %s", where, self._object_name(obj), action)
                if action != "unchanged":
                    sent.append(_Sent(obj, before))
        except TargetError as exc:
            restored = self._restore(spec, sent, candidate=candidate)
            raise DeploymentFailed(_scrub(f"{exc}; {restored}", spec.secrets), service=spec.service,
                                   environment=spec.environment, image=reference) from None
        return sent, current

    def _check_ownership(self, spec: DeploymentSpec, desired: Mapping, live: Mapping | None) -> None:
        if live is None:
            return
        labels = (live.get("metadata") or {}).get("labels") or {}
        ours = {MANAGED_BY_LABEL: MANAGED_BY, FLEET_LABEL: spec.fleet, ENVIRONMENT_LABEL: spec.environment}
        if not _labelled(live, ours):
            found = ", ".join(f"{key}={labels.get(key, '(none)')}" for key in ours)
            raise TargetError(
                f"{self._where(spec.service, spec.environment)}: {self._object_name(desired)} exists but is not "
                f"release-graph's for fleet '{spec.fleet}', environment '{spec.environment}' ({found}): nothing was "
                "changed; remove it, or give the environment a namespace of its own")

    def _apply(self, where: str, desired: dict, live: dict | None) -> tuple[dict, str]:
        """Create a missing object, leave one that carries everything, server-side apply any other. Returns the
        object as the server answered (as read, when unchanged) and what was done."""
        kind, name = desired["kind"], desired["metadata"]["name"]
        what = f"{where}: {self._object_name(desired)}"
        if live is None:
            return self._create(f"{what}: creating", desired), "created"
        if carries(live, desired):
            return live, "unchanged"
        answer = self._object_call(f"{what}: applying", "patch", kind, name, self.namespace, desired,
                                   field_manager=FIELD_MANAGER, force=True, _content_type=APPLY_PATCH)
        return answer, "applied"

    def _create(self, what: str, desired: dict) -> dict:
        """Create by server-side apply, so that every field is owned by release-graph's apply and a field it stops
        sending later is removed (fields created by a plain POST stay owned by that request, and survive). An API
        server whose apply does not create a missing object (404: the emulator) gets a POST instead, from then on."""
        kind, name = desired["kind"], desired["metadata"]["name"]
        if self._apply_creates is not False:
            answer = self._object_call(what, "patch", kind, name, self.namespace, desired, missing_ok=True,
                                       field_manager=FIELD_MANAGER, force=True, _content_type=APPLY_PATCH)
            if answer is not None:
                self._apply_creates = True
                return answer
        answer = self._object_call(what, "create", kind, self.namespace, desired, field_manager=FIELD_MANAGER)
        self._apply_creates = False
        return answer

    # --- the rollout ------------------------------------------------------------------------------------

    def _wait_for_rollout(self, where: str, fleet: str, service: str, name: str, generation: int | None,
                          deployment: dict) -> tuple[str | None, str, dict]:
        """(why it failed, the pods' reasons and the recent warnings as lines, the Deployment as last read); why is
        None when the rollout completed."""
        deadline = time.monotonic() + self.config.rollout_timeout_seconds
        template = deployment["spec"]["template"]
        while True:
            current = self._read(f"{where}: reading the rollout of Deployment {self.namespace}/{name}",
                                 "Deployment", name)
            if current is None:
                return f"Deployment {self.namespace}/{name} was deleted during its rollout", "", deployment
            progress = rollout_progress(current, generation)
            if progress.done:
                return None, "", current
            try:
                pods, unreadable = self._revision_pods(where, fleet, service, name, template), None
            except TargetError as exc:  # e.g. not allowed to list pods: the status alone decides
                pods, unreadable = [], str(exc)
            failing = [line for pod in pods for line in _pod_problems(pod, failing_only=True)]
            why = None
            if failing:
                why = f"a pod of the new revision is failing ({progress.summary})"
            elif progress.stuck:
                why = f"the controller gave up: {progress.stuck} ({progress.summary})"
            elif time.monotonic() >= deadline:
                why = f"not available after {self.config.rollout_timeout_seconds:g} s: {progress.summary}"
            if why is not None:
                return why, self._diagnosis(where, name, pods, unreadable), current
            time.sleep(self.config.poll_seconds)

    def _revision_pods(self, where: str, fleet: str, service: str, name: str, template: Mapping) -> list[dict]:
        """The pods made from `template`: a pod carries its template's labels and annotations, so the digest
        label, the color and the configuration's hash tell the new revision's pods from the previous one's (and a
        candidate's from the serving version's)."""
        metadata = template.get("metadata") or {}
        labels = metadata.get("labels") or {}
        config_hash = (metadata.get("annotations") or {}).get(CONFIG_HASH_ANNOTATION)
        selector = {SERVICE_LABEL: service, FLEET_LABEL: fleet}
        found = self._request(f"{where}: listing the pods of Deployment {self.namespace}/{name}", "core",
                              "list_namespaced_pod", self.namespace,
                              label_selector=",".join(f"{k}={v}" for k, v in selector.items())) or {}
        revision = {**selector, DIGEST_LABEL: labels.get(DIGEST_LABEL, "")}
        if COLOR_LABEL in labels:
            revision[COLOR_LABEL] = labels[COLOR_LABEL]
        return [pod for pod in found.get("items") or []
                if _labelled(pod, revision)
                and ((pod.get("metadata") or {}).get("annotations") or {}).get(CONFIG_HASH_ANNOTATION) == config_hash]

    def _diagnosis(self, where: str, name: str, pods: Sequence[Mapping], pods_unreadable: str | None) -> str:
        """The pods' reasons and messages and the recent Warning events about them and the Deployment (and its
        ReplicaSets, `<name>-<hash>`), for the error a release manager reads. Best effort: what cannot be read
        is said, and never stops the rollback."""
        lines = [line for pod in pods for line in _pod_problems(pod)]
        if pods_unreadable:
            lines.append(f"the pods could not be read: {pods_unreadable}")
        elif not pods:
            lines.append("no pod of the new revision exists")
        pod_names = {(pod.get("metadata") or {}).get("name") for pod in pods}
        try:
            found = self._request(f"{where}: listing the events of namespace {self.namespace}", "core",
                                  "list_namespaced_event", self.namespace) or {}
        except TargetError as exc:
            return "".join(f"\n  - {line}" for line in [*lines, f"the events could not be read: {exc}"])
        warnings = []
        for event in found.get("items") or []:
            involved = event.get("involvedObject") or {}
            about = involved.get("name") or ""
            related = (about == name and involved.get("kind") in (None, "Deployment")) or about in pod_names or (
                involved.get("kind") == "ReplicaSet" and about.startswith(f"{name}-"))
            if related and event.get("type") == "Warning":
                warnings.append(event)
        warnings.sort(key=_event_time)
        for event in warnings[-RECENT_WARNINGS:]:
            involved = event.get("involvedObject") or {}
            count = event.get("count") or 1
            lines.append(f"Warning {event.get('reason')} on {involved.get('kind')}/{involved.get('name')}: "
                         f"{(event.get('message') or '').strip()}" + (f" ({count} times)" if count > 1 else ""))
        if not warnings:
            lines.append("no Warning events about them")
        return "".join(f"\n  - {line}" for line in lines)

    def _restore(self, spec: DeploymentSpec, sent: Sequence[_Sent], *, candidate: bool = False) -> str:
        """Put back what this deployment changed, newest first: re-apply what was read before (the previous
        Deployment template, ConfigMap, Secret), delete what it created; then wait (bounded) for the previous
        Deployment to be available again. What happened, in words."""
        where = self._where(spec.service, spec.environment)
        done, problems = [], []
        restored_deployment = None
        for item in reversed(sent):
            kind, name = item.desired["kind"], item.desired["metadata"]["name"]
            what = f"{where}: rolling back {self._object_name(item.desired)}"
            try:
                if item.previous is None:
                    self._object_call(f"{what}: deleting", "delete", kind, name, self.namespace, missing_ok=True)
                    done.append(f"{kind}/{name} deleted")
                else:
                    answer = self._object_call(f"{what}: re-applying", "patch", kind, name, self.namespace,
                                               _as_before(item.previous, item.desired),
                                               field_manager=FIELD_MANAGER, force=True, _content_type=APPLY_PATCH)
                    done.append(f"{kind}/{name} re-applied as before")
                    if kind == "Deployment":
                        restored_deployment = answer
            except TargetError as exc:
                problems.append(str(exc))
        words = "rolled back: " + (", ".join(done) or "nothing had changed")
        if problems:
            words += "; the rollback could not finish: " + "; ".join(problems)
        deployment_sent = [item for item in sent if item.desired["kind"] == "Deployment"]
        if candidate:
            return words + "; the serving version was never moved and keeps all the traffic"
        if deployment_sent and deployment_sent[0].previous is None:
            return words + "; nothing served before, and what this deployment created is removed"
        if restored_deployment is not None:
            previous_digest = ((restored_deployment.get("metadata") or {}).get("annotations") or {}).get(
                DIGEST_ANNOTATION, "the previous version")
            name = restored_deployment["metadata"]["name"]
            generation = (restored_deployment.get("metadata") or {}).get("generation")
            deadline = time.monotonic() + self.config.rollout_timeout_seconds
            while True:
                try:
                    current = self._read(f"{where}: reading the rollback of Deployment {self.namespace}/{name}",
                                         "Deployment", name)
                except TargetError as exc:
                    return words + f"; could not follow the rollback: {exc}"
                progress = rollout_progress(current or {}, generation)
                if progress.done:
                    return words + f"; {previous_digest} serves again ({progress.summary})"
                if time.monotonic() >= deadline:
                    return words + f"; {previous_digest} is not available again yet: {progress.summary}"
                time.sleep(self.config.poll_seconds)
        return words + "; the previous version's pods were never replaced and keep serving"

    # --- progressive rollouts -----------------------------------------------------------------------------
    # Each service has two slots, blue (the Deployment named after the service, what a plain replacement always
    # made) and green (`<service>-green`); the pods of each carry its color. A rollout starts the new version in the
    # slot that does not serve, marked as the candidate (`release-graph.io/track: candidate`, its strategy and the
    # weight last asked for in annotations). Blue-green: the Service selects one color; the switch is one apply of
    # its selector. Canary: the Service selects both, and a weight is a ratio of ready pods among
    # `canary_replicas`. Promoting removes the other slot and unmarks the candidate, which stays where it is: the
    # pods that were measured are the ones that keep serving (a re-apply of the serving slot with the new image
    # would start other pods, unmeasured, and wait for them). All of it is read back from the cluster
    # (`traffic`), so a run killed half-way is settled by the next rollout, deployment or `abort_candidate`.

    def traffic(self, fleet: str, environment: str, service: str) -> KubernetesTraffic | None:
        """The split as the cluster holds it (None: nothing of the service runs, or it has no Service to switch)."""
        where = self._where(service, environment)
        deployments = self._service_deployments(where, fleet, environment, service)
        serving = _serving(deployments)
        candidate = next((d for d in deployments if _is_candidate(d)), None)
        if serving is None and candidate is None:
            return None
        routed = self._read(f"{where}: reading Service {self.namespace}/{service}", "Service", service)
        if routed is None:
            return None
        annotations = ((candidate or {}).get("metadata") or {}).get("annotations") or {}
        return KubernetesTraffic(
            serving=serving["metadata"]["name"] if serving else None,
            candidate=candidate["metadata"]["name"] if candidate else None,
            candidate_weight=int(annotations.get(WEIGHT_ANNOTATION) or 0),
            strategy=annotations.get(ROLLOUT_ANNOTATION) if candidate else None,
            selector=dict((routed.get("spec") or {}).get("selector") or {}),
            serving_replicas=_replicas(serving), serving_ready=_ready_replicas(serving),
            candidate_replicas=_replicas(candidate), candidate_ready=_ready_replicas(candidate),
            candidate_color=_color_of(candidate) if candidate else None)

    def start_candidate(self, spec: DeploymentSpec) -> DeploymentResult:
        """Start spec's version in the slot that does not serve, with none of the traffic, and wait until it is
        available: blue-green starts it with the serving replica count and narrows the Service to the serving
        color first; a canary starts it with no pod (any ready pod of it would take a share behind the Service),
        and its first weight starts its pods and waits for them. A candidate left by an earlier rollout is taken
        away first. DeploymentFailed: it did not become available (what was created is removed; the serving
        version never moved). TargetError: nothing serves the service yet, or it has no Service."""
        reference, digest = pinned_reference(spec.image)
        validate_spec(spec)
        where = self._where(spec.service, spec.environment)
        self._refuse_publish(spec, where)
        blue_green = spec.rollout_strategy == BLUE_GREEN
        started = time.monotonic()
        deployments = self._service_deployments(where, spec.fleet, spec.environment, spec.service)
        if any(_is_candidate(d) for d in deployments):
            self.abort_candidate(spec.fleet, spec.environment, spec.service)
            deployments = self._service_deployments(where, spec.fleet, spec.environment, spec.service)
        serving = _serving(deployments)
        if serving is None or spec.port is None:
            raise TargetError(f"{where}: a progressive rollout needs a version that serves already, behind the "
                              "service's Service (a service with a port, deployed once)")
        serving_color = _color_of(serving)
        if blue_green and _template_color(serving) != serving_color:
            raise TargetError(
                f"{where}: Deployment {self.namespace}/{serving['metadata']['name']} was made before the colors of a "
                f"blue-green rollout: its pods would not be told from the new version's. Deploy the serving digest "
                "once more (a plain replacement labels them), then release again")
        color = other_color(serving_color)
        objects = deployment_objects(spec, self.cluster, SERVING_REPLICAS if blue_green else 0, color=color,
                                     route_to=serving_color if blue_green else None,
                                     candidate=BLUE_GREEN if blue_green else CANARY)
        validate_objects(objects, self.cluster, service=spec.service, environment=spec.environment)
        # The Service before the candidate's Deployment: it selects the serving color before a candidate pod is ready.
        objects.sort(key=lambda obj: obj["kind"] == "Deployment")
        sent, current = self._send(spec, where, reference, objects, candidate=True)
        deployment = current["Deployment"]
        name = deployment["metadata"]["name"]
        try:
            problem, diagnosis, _ = self._wait_for_rollout(
                where, spec.fleet, spec.service, name, (deployment.get("metadata") or {}).get("generation"),
                deployment)
        except TargetError as exc:
            problem, diagnosis = f"the candidate could not be followed: {exc}", ""
        if problem is not None:
            restored = self._restore(spec, sent, candidate=True)
            raise DeploymentFailed(
                _scrub(f"{where}: the candidate {reference} did not become available in namespace "
                       f"{self.namespace}: {problem}; {restored}{diagnosis}", spec.secrets),
                service=spec.service, environment=spec.environment, image=reference)
        seconds = time.monotonic() - started
        log.info("%s: candidate Deployment %s/%s (%s) ready with none of the traffic after %.2f s", where,
                 self.namespace, name, BLUE_GREEN if blue_green else CANARY, seconds)
        return DeploymentResult(
            container_name=name, container_id=f"deployment/{self.namespace}/{name}", digest=digest,
            image=reference, started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            url_inside=f"http://{spec.service}.{self.namespace}.svc:{spec.port}", published_url=None,
            changed=True, health_seconds=round(seconds, 3), network=self.namespace)

    def set_candidate_weight(self, fleet: str, environment: str, service: str, weight: int) -> KubernetesTraffic:
        """Give the candidate `weight` percent of the traffic. Blue-green: 100 switches the Service to the
        candidate's color, 0 back (nothing in between: a selector picks one color). Canary: the two Deployments
        are scaled to `canary_replicas(weight, config.canary_replicas)`, whichever lowers the candidate's share
        first, each waited for; DeploymentFailed when the candidate's pods do not become available (the rollout
        then aborts)."""
        if not 0 <= weight <= 100:
            raise ValueError(f"weight must be 0..100, got {weight}")
        where = self._where(service, environment)
        serving, candidate = self._rollout_pair(where, fleet, environment, service)
        strategy = (candidate["metadata"].get("annotations") or {}).get(ROLLOUT_ANNOTATION)
        if strategy == BLUE_GREEN:
            if weight not in (0, 100):
                raise TargetError(f"{where}: a blue-green rollout moves all the traffic at once (weight 0 or 100), "
                                  f"not {weight} %")
            self._route(where, service, _color_of(candidate if weight == 100 else serving))
        else:
            wanted_candidate, wanted_serving = canary_replicas(weight, self.config.canary_replicas)
            steps = [(serving, wanted_serving)] if wanted_serving > _replicas(serving) else []
            steps.append((candidate, wanted_candidate))
            if wanted_serving < _replicas(serving):
                steps.append((serving, wanted_serving))
            for deployment, replicas in steps:
                self._scale(where, fleet, environment, service, deployment, replicas)
        self._merge_patch(f"{where}: recording the candidate's weight", "Deployment", candidate["metadata"]["name"],
                          {"metadata": {"annotations": {WEIGHT_ANNOTATION: str(weight)}}})
        log.info("%s: candidate %s takes %d %% of the traffic (%s)", where, candidate["metadata"]["name"], weight,
                 strategy)
        return self.traffic(fleet, environment, service)

    def promote_candidate(self, fleet: str, environment: str, service: str) -> tuple[str, ...]:
        """The candidate becomes what serves, where it is: blue-green switches the Service to its color (one apply,
        none when the last step did), a canary's candidate is given a pod when it had none; then the other slot's
        Deployment, ConfigMap and Secret are deleted and the candidate is unmarked and scaled to the serving
        replica count. Returns the Deployments removed."""
        where = self._where(service, environment)
        serving, candidate = self._rollout_pair(where, fleet, environment, service)
        strategy = (candidate["metadata"].get("annotations") or {}).get(ROLLOUT_ANNOTATION)
        if strategy == BLUE_GREEN:
            self._route(where, service, _color_of(candidate))
        elif _replicas(candidate) < SERVING_REPLICAS:
            self._scale(where, fleet, environment, service, candidate, SERVING_REPLICAS)
        removed = self._remove_slot(where, serving)
        self._settle_candidate(where, candidate)
        log.info("%s: candidate %s promoted; removed %s", where, candidate["metadata"]["name"],
                 ", ".join(removed) or "nothing")
        return removed

    def abort_candidate(self, fleet: str, environment: str, service: str) -> str | None:
        """All the traffic back to the serving version, and the candidate's Deployment, ConfigMap and Secret
        deleted: blue-green switches the Service back to the serving color; a canary scales the serving version
        back up and waits for it before the candidate goes, then down to the serving replica count. Returns the
        candidate's Deployment (None: no rollout in progress). A promotion killed after it removed the previous
        version is finished instead: the candidate is all that serves."""
        where = self._where(service, environment)
        deployments = self._service_deployments(where, fleet, environment, service)
        candidate = next((d for d in deployments if _is_candidate(d)), None)
        if candidate is None:
            return None
        serving = _serving(deployments)
        name = candidate["metadata"]["name"]
        if serving is None:
            self._settle_candidate(where, candidate)
            log.warning("%s: nothing but the candidate %s serves (a promotion was interrupted): it is promoted",
                        where, name)
            return None
        strategy = (candidate["metadata"].get("annotations") or {}).get(ROLLOUT_ANNOTATION)
        if strategy == BLUE_GREEN:
            if self._read(f"{where}: reading Service {self.namespace}/{service}", "Service", service) is not None:
                self._route(where, service, _color_of(serving))
        elif _replicas(serving) < SERVING_REPLICAS or _ready_replicas(serving) < SERVING_REPLICAS:
            self._scale(where, fleet, environment, service, serving, max(_replicas(serving), SERVING_REPLICAS))
        self._remove_slot(where, candidate)
        if _replicas(serving) > SERVING_REPLICAS:
            self._merge_patch(f"{where}: scaling Deployment {self.namespace}/{serving['metadata']['name']} back",
                              "Deployment", serving["metadata"]["name"], {"spec": {"replicas": SERVING_REPLICAS}})
        log.info("%s: candidate %s removed; the serving version takes all the traffic", where, name)
        return name

    def candidate_problem(self, fleet: str, environment: str, service: str) -> str | None:
        """Why the rollout's candidate is not healthy now: its pods' failing or unready containers with their
        reasons, or the controller giving up on it; None when it is healthy or no rollout is in progress."""
        where = self._where(service, environment)
        deployments = self._service_deployments(where, fleet, environment, service)
        candidate = next((d for d in deployments if _is_candidate(d)), None)
        if candidate is None:
            return None
        name = candidate["metadata"]["name"]
        pods = self._revision_pods(where, fleet, service, name, candidate["spec"]["template"])
        problems = [line for pod in pods for line in _pod_problems(pod)]
        stuck = rollout_progress(candidate).stuck
        if stuck:
            problems.append(f"the controller gave up on Deployment {self.namespace}/{name}: {stuck}")
        if _replicas(candidate) and not pods:
            problems.append(f"Deployment {self.namespace}/{name} has no pod")
        return f"candidate {name}: " + "; ".join(problems) if problems else None

    def _rollout_pair(self, where: str, fleet: str, environment: str, service: str) -> tuple[dict, dict]:
        deployments = self._service_deployments(where, fleet, environment, service)
        candidate = next((d for d in deployments if _is_candidate(d)), None)
        serving = _serving(deployments)
        if candidate is None or serving is None:
            raise TargetError(f"{where}: no rollout in progress (no candidate beside a serving Deployment)")
        return serving, candidate

    def _service_deployments(self, where: str, fleet: str, environment: str, service: str) -> list[dict]:
        return self._list(f"{where}: listing the Deployments of the service in {self.namespace}", "Deployment",
                          fleet, environment, service)

    def _merge_patch(self, what: str, kind: str, name: str, body: dict) -> dict:
        return self._object_call(what, "patch", kind, name, self.namespace, body, field_manager=FIELD_MANAGER,
                                 _content_type=MERGE_PATCH)

    def _route(self, where: str, service: str, color: str) -> None:
        """Point the Service at one color's pods: one write, none when it already does."""
        routed = self._read(f"{where}: reading Service {self.namespace}/{service}", "Service", service)
        if routed is None:
            raise TargetError(f"{where}: no Service {self.namespace}/{service} to switch")
        if ((routed.get("spec") or {}).get("selector") or {}).get(COLOR_LABEL) == color:
            return
        self._merge_patch(f"{where}: switching Service {self.namespace}/{service} to the {color} pods", "Service",
                          service, {"spec": {"selector": {COLOR_LABEL: color}}})
        log.info("%s: Service %s/%s now selects the %s pods", where, self.namespace, service, color)

    def _scale(self, where: str, fleet: str, environment: str, service: str, deployment: Mapping,
               replicas: int) -> None:
        """Set a Deployment's replicas and wait until they are all available (DeploymentFailed if not)."""
        name = deployment["metadata"]["name"]
        answer = deployment
        if _replicas(deployment) != replicas:
            answer = self._merge_patch(f"{where}: scaling Deployment {self.namespace}/{name} to {replicas}",
                                       "Deployment", name, {"spec": {"replicas": replicas}})
        problem, diagnosis, _ = self._wait_for_rollout(where, fleet, service, name,
                                                       (answer.get("metadata") or {}).get("generation"), answer)
        if problem is not None:
            raise DeploymentFailed(f"{where}: Deployment {self.namespace}/{name} scaled to {replicas} replicas is not "
                                   f"available: {problem}{diagnosis}", service=service, environment=environment,
                                   image=_service_container(deployment, service).get("image") or "")

    def _remove_slot(self, where: str, deployment: Mapping) -> tuple[str, ...]:
        """Delete a slot's Deployment, then its ConfigMap and Secret. Returns the Deployment as `deployment/<name>`."""
        name = deployment["metadata"]["name"]
        self._object_call(f"{where}: deleting Deployment {self.namespace}/{name}", "delete", "Deployment", name,
                          self.namespace, missing_ok=True)
        for kind, suffix in (("Secret", "secrets"), ("ConfigMap", "config")):
            self._object_call(f"{where}: deleting {kind} {self.namespace}/{name}-{suffix}", "delete", kind,
                              f"{name}-{suffix}", self.namespace, missing_ok=True)
        return (f"deployment/{name}",)

    def _settle_candidate(self, where: str, candidate: Mapping) -> None:
        """The candidate becomes an ordinary serving Deployment: unmarked, with the serving replica count."""
        self._merge_patch(f"{where}: promoting Deployment {self.namespace}/{candidate['metadata']['name']}",
                          "Deployment", candidate["metadata"]["name"],
                          {"metadata": {"labels": {TRACK_LABEL: None},
                                        "annotations": {ROLLOUT_ANNOTATION: None, WEIGHT_ANNOTATION: None}},
                           "spec": {"replicas": SERVING_REPLICAS}})

    # --- what runs --------------------------------------------------------------------------------------

    def running(self, fleet: str, environment: str, service: str, *, probe: bool = False) -> RunningService | None:
        """The Deployment named `service` in the namespace: release-graph's for this fleet and environment, or one
        made by hand (digest None); None when there is none, or it is another fleet's or environment's."""
        deployment = self._serving_deployment(fleet, environment, service)
        if deployment is None:
            return None
        labels = (deployment.get("metadata") or {}).get("labels") or {}
        if labels.get(MANAGED_BY_LABEL) == MANAGED_BY and not _labelled(
                deployment, {FLEET_LABEL: fleet, ENVIRONMENT_LABEL: environment}):
            return None
        return self._describe_running(deployment, fleet, environment, service, probe)

    def _serving_deployment(self, fleet: str, environment: str, service: str) -> dict | None:
        """The Deployment that serves `service`: the blue slot (named after the service, also one made by hand),
        else the green one; a rollout's candidate never is. One read when blue serves."""
        where = self._where(service, environment)
        for color in (BLUE, GREEN):
            name = deployment_name(service, color)
            deployment = self._read(f"{where}: reading Deployment {self.namespace}/{name}", "Deployment", name)
            if deployment is None or (_is_candidate(deployment) and _labelled(
                    deployment, {FLEET_LABEL: fleet, ENVIRONMENT_LABEL: environment})):
                continue
            if color == GREEN and not _labelled(deployment, {FLEET_LABEL: fleet, ENVIRONMENT_LABEL: environment,
                                                             MANAGED_BY_LABEL: MANAGED_BY}):
                continue  # only release-graph makes a green slot
            return deployment
        return None

    def running_services(self, fleet: str, environment: str, *, probe: bool = False) -> dict[str, RunningService]:
        """`running()` for every Deployment release-graph made for the fleet in the environment."""
        found = self._list(f"environment '{environment}': listing the Deployments of fleet '{fleet}' in namespace "
                           f"{self.namespace}", "Deployment", fleet, environment)
        result = {}
        for deployment in found:
            if _is_candidate(deployment):
                continue  # a rollout's candidate is not what serves
            service = deployment["metadata"]["labels"].get(SERVICE_LABEL) or deployment["metadata"]["name"]
            result[service] = self._describe_running(deployment, fleet, environment, service, probe)
        return dict(sorted(result.items()))

    def _describe_running(self, deployment: Mapping, fleet: str, environment: str, service: str,
                          probe: bool) -> RunningService:
        metadata, status = deployment.get("metadata") or {}, deployment.get("status") or {}
        container = _service_container(deployment, service)
        image = container.get("image")
        image_digest = image.rsplit("@", 1)[1] if image and "@" in image else None
        available = status.get("availableReplicas") or 0
        ours = ((metadata.get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY)
        port = next((p.get("containerPort") for p in container.get("ports") or []), None)
        name = metadata.get("name", service)
        healthy = self._health(deployment, service, environment, fleet).healthy if probe else None
        return RunningService(
            fleet=fleet,
            environment=environment,
            service=service,
            container_name=name,
            container_id=f"deployment/{self.namespace}/{name}",
            status="running" if available >= 1 else "unavailable",
            serving=available >= 1,
            # the digest release-graph recorded on it; one made by hand carries none
            digest=(metadata.get("annotations") or {}).get(DIGEST_ANNOTATION) if ours else None,
            image=image,
            image_id=image or "",
            # what the pod template really runs: an image changed by hand no longer matches the annotation
            image_digests=(image_digest,) if image_digest else (),
            started_at=_available_since(deployment),
            url_inside=f"http://{service}.{self.namespace}.svc:{port}" if port else None,
            published_url=None,
            address=f"{service}.{self.namespace}.svc" if port else None,
            healthy=healthy,
        )

    def probe(
        self, fleet: str, environment: str, service: str, *, port: int | None = None, path: str | None = None
    ) -> HealthProbe:
        """Health as the Kubernetes API reports it: the Deployment's ready and available replicas, which the
        kubelet's readiness probe (the manifest's `health` path) decides. Nothing is asked over HTTP from here:
        the pods are on the cluster's network, not this host's."""
        started = time.monotonic()
        where = self._where(service, environment)
        deployment = self._serving_deployment(fleet, environment, service)
        if deployment is None:
            return HealthProbe(False, f"{where}: no Deployment {self.namespace}/{service}",
                               seconds=round(time.monotonic() - started, 3))
        answer = self._health(deployment, service, environment, fleet, path)
        return HealthProbe(answer.healthy, answer.detail, seconds=round(time.monotonic() - started, 3))

    def _health(self, deployment: Mapping, service: str, environment: str, fleet: str,
                path: str | None = None) -> HealthProbe:
        status = deployment.get("status") or {}
        wanted = (deployment.get("spec") or {}).get("replicas", 1)
        ready, available = status.get("readyReplicas") or 0, status.get("availableReplicas") or 0
        readiness = _service_container(deployment, service).get("readinessProbe") or {}
        probed = path or (readiness.get("httpGet") or {}).get("path")
        how = (f"the kubelet's readiness probe on {probed}" if probed else "no readiness probe: a started container "
               "counts as ready")
        detail = (f"{self._where(service, environment)}: Deployment {self.namespace}/{deployment['metadata']['name']}"
                  f": {ready} of {wanted} replicas ready, {available} available, as the Kubernetes API reports "
                  f"them ({how}; not asked over HTTP from here)")
        return HealthProbe(ready >= 1 and available >= 1, detail)

    # --- environments -----------------------------------------------------------------------------------

    def describe_environment(self, fleet: str, environment: str) -> EnvironmentReport:
        """The fleet's Deployments in the environment's namespace, one entry each (name, service, availability,
        digest); the namespace is the report's network when something runs there."""
        found = self._list(f"environment '{environment}': listing the Deployments of fleet '{fleet}' in namespace "
                           f"{self.namespace}", "Deployment", fleet, environment)
        containers = []
        for deployment in sorted(found, key=lambda d: d["metadata"]["name"]):
            service = deployment["metadata"]["labels"].get(SERVICE_LABEL) or deployment["metadata"]["name"]
            described = self._describe_running(deployment, fleet, environment, service, probe=False)
            containers.append(EnvironmentContainer(name=f"deployment/{described.container_name}", service=service,
                                                   status=described.status, digest=described.digest, instance=None))
        return EnvironmentReport(fleet=fleet, environment=environment,
                                 network=self.namespace if containers else None, containers=tuple(containers))

    def teardown_environment(self, fleet: str, environment: str) -> ReapReport:
        """Delete every Service, Deployment, NetworkPolicy, Secret and ConfigMap release-graph made for the fleet in the
        environment's namespace (the namespace itself, and anything else in it, stay). The report's
        `containers` are the deleted objects as `Kind/name`."""
        removed = []
        for kind in TEARDOWN_KINDS:
            what = f"environment '{environment}': tearing down the {kind}s of fleet '{fleet}' in {self.namespace}"
            for obj in self._list(what, kind, fleet, environment):
                name = obj["metadata"]["name"]
                self._object_call(f"{what}: deleting {name}", "delete", kind, name, self.namespace, missing_ok=True)
                removed.append(f"{kind}/{name}")
        log.info("%s/%s: removed %s from namespace %s", fleet, environment, ", ".join(removed) or "nothing",
                 self.namespace)
        return ReapReport(containers=tuple(removed))

    def reap(
        self,
        fleet: str | None = None,
        *,
        keep_environments: Sequence[str] | None = None,
        min_age_seconds: float | None = None,
    ) -> ReapReport:
        """Remove the objects of the fleet's environments not in `keep_environments` from this namespace.

        A killed run leaves nothing else behind here: a rollout's state is the Deployment itself, which the
        cluster's controller finishes or keeps (and the next deployment settles), and the controller removes old
        pods and ReplicaSets; a progressive rollout's candidate is state too, which the next rollout, deployment or
        `abort_candidate` settles (it may be a rollout still running). So without `keep_environments` there is
        nothing to reap; `min_age_seconds` does not apply.
        """
        if keep_environments is not None and fleet is None:
            raise TargetError("reap: keep_environments needs a fleet (environments are per fleet)")
        if keep_environments is None:
            return ReapReport()
        environments = set()
        for kind in TEARDOWN_KINDS:
            for obj in self._list(f"reap: listing the {kind}s of fleet '{fleet}' in {self.namespace}", kind, fleet):
                environments.add(obj["metadata"]["labels"].get(ENVIRONMENT_LABEL))
        removed: list[str] = []
        for environment in sorted(e for e in environments if e and e not in keep_environments):
            removed.extend(self.teardown_environment(fleet, environment).containers)
        return ReapReport(containers=tuple(removed))

    # --- tests in pods ----------------------------------------------------------------------------------

    tests_pull_from_registry = True

    def run_tests(
        self,
        fleet: str,
        environment: str,
        image: str,
        *,
        env: Mapping[str, str] | None = None,
        copy_out: str | None = "/reports",
        timeout_seconds: float = 600,
        command: Sequence[str] | None = None,
        step: Any = None,
    ) -> RunResult:
        """Run the test image as a Pod of the environment's namespace, followed through Dagster Pipes
        (`PipesK8sClient`), where the services answer by name as they do for each other; tests_in_pods.py says how.

        `image` must be pinned by digest (the end-to-end step pushes it); `command` is the image's own command, which
        the pod runs under release-graph's reporter; `step` is the step's context: the pod's output streams into its
        run. A failing test is a result (its report says so); a pod that could not run or report raises TargetError
        naming it, with the cluster's reason and the pod's last lines.
        """
        from dagster_k8s.pipes import get_pod_name

        where = f"environment '{environment}' of fleet '{fleet}'"
        try:
            reference, _ = pinned_reference(image)
        except InvalidDeploymentSpec as exc:
            raise TargetError(f"{where}: the end-to-end test image: {exc}") from None
        if step is None:
            raise TargetError(f"{where}: tests run as a pod through Dagster Pipes, which needs the step's context")
        if not command:
            raise TargetError(f"{where}: the test image {reference} declares no command (ENTRYPOINT or CMD) to run")
        reports = copy_out or "/reports"
        labels = pod_labels_for_tests(fleet, environment)
        spec = pod_spec_for_tests(command, reports, timeout_seconds)
        variables = pod_env_for_tests(env or {})
        config_map = reporter_config_map(fleet, environment, self.namespace)
        pod = get_pod_name(step.run.run_id, step.op_execution_context.op.name)  # its shape (the client's has another
        # random suffix, and names it in its own errors)
        validate_objects([config_map, pod_manifest(pod, self.namespace, reference, spec, labels, variables)],
                         self.cluster, service=END_TO_END, environment=environment)
        self._ensure_reporter(where, config_map, fleet, environment)
        started = time.monotonic()
        with self._pipes_client() as client:
            try:
                invocation = client.run(
                    context=step, image=reference, namespace=self.namespace, env=variables,
                    base_pod_meta={"labels": labels}, base_pod_spec=spec,
                    # the cluster ends the pod at activeDeadlineSeconds; this is the wait's own bound
                    pod_wait_timeout=timeout_seconds + TEST_POD_GRACE_SECONDS,
                )
            except Exception as exc:  # noqa: BLE001 - the client raises DagsterK8sError, ApiException, urllib3's
                why = (f"it ran past its timeout of {timeout_seconds:g} s (activeDeadlineSeconds) and was ended"
                       if time.monotonic() - started >= timeout_seconds else "it did not run to the end")
                if "python3" in str(exc):
                    why += " (the pod runs the tests under release-graph's reporter: the test image needs python3)"
                raise TargetError(f"{where}: the test pod of {reference} in namespace {self.namespace}: {why}: "
                                  f"{_first_lines(str(exc))}") from None
        try:
            return result_from_report(invocation.get_custom_messages(), pod=f"of {reference} in {self.namespace}",
                                      seconds=time.monotonic() - started)
        except NoTestReport as exc:
            raise TargetError(f"{where}: {exc}") from None

    def _ensure_reporter(self, where: str, config_map: dict, fleet: str, environment: str) -> None:
        """Apply the reporter's ConfigMap (nothing is sent when it is there as it should be)."""
        config_map["metadata"]["annotations"][APPLIED_ANNOTATION] = applied_fingerprint(config_map)
        live = self._read(f"{where}: reading {self._object_name(config_map)}", "ConfigMap",
                          config_map["metadata"]["name"])
        if live is not None and not _labelled(live, config_map["metadata"]["labels"]):
            raise TargetError(f"{where}: {self._object_name(config_map)} exists but is not release-graph's test "
                              f"reporter for fleet '{fleet}', environment '{environment}': nothing was changed")
        _, action = self._apply(where, config_map, live)
        log.info("%s: %s %s", where, self._object_name(config_map), action)

    @contextmanager
    def _pipes_client(self) -> Iterator[Any]:
        """dagster-k8s's Pipes client, connected as this target is (it loads its connection from a kubeconfig)."""
        from dagster_k8s import PipesK8sClient

        if self.config.api_host:
            with kubeconfig_for(self.config.api_host, self.namespace) as path:
                yield PipesK8sClient(kubeconfig_file=path, poll_interval=self.config.poll_seconds)
        else:
            yield PipesK8sClient(kubeconfig_file=self.config.kubeconfig, kube_context=self.cluster.context,
                                 poll_interval=self.config.poll_seconds)

    def ephemeral_environment(
        self, fleet: str, name: str, *, ttl_seconds: float = 3600
    ) -> AbstractContextManager[EphemeralEnvironment]:
        raise TargetError(
            f"fleet '{fleet}': ephemeral environments ({name}) are not built on kubernetes: integration runs use the "
            "docker target on this host (DeployTargets.for_integration)")


def _is_candidate(deployment: Mapping) -> bool:
    return ((deployment.get("metadata") or {}).get("labels") or {}).get(TRACK_LABEL) == CANDIDATE


def _serving(deployments: Sequence[Mapping]) -> dict | None:
    """The serving Deployment among a service's: not the candidate; blue when both slots serve."""
    serving = sorted((d for d in deployments if not _is_candidate(d)), key=lambda d: _color_of(d) != BLUE)
    return dict(serving[0]) if serving else None


def _color_of(deployment: Mapping) -> str:
    """The slot a Deployment fills, from its name (one made before the colors is the blue one)."""
    metadata = deployment.get("metadata") or {}
    service = (metadata.get("labels") or {}).get(SERVICE_LABEL) or metadata.get("name")
    return GREEN if metadata.get("name") == deployment_name(service, GREEN) else BLUE


def _template_color(deployment: Mapping) -> str | None:
    template = (deployment.get("spec") or {}).get("template") or {}
    return ((template.get("metadata") or {}).get("labels") or {}).get(COLOR_LABEL)


def _replicas(deployment: Mapping | None) -> int:
    return ((deployment or {}).get("spec") or {}).get("replicas", 1) if deployment else 0


def _ready_replicas(deployment: Mapping | None) -> int:
    return ((deployment or {}).get("status") or {}).get("readyReplicas") or 0


def _labelled(obj: Mapping, wanted: Mapping[str, str]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(key) == value for key, value in wanted.items())


def _service_container(deployment: Mapping, service: str) -> dict:
    """The container that runs the service (named after it), else the first."""
    containers = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    return next((c for c in containers if c.get("name") == service), containers[0] if containers else {})


def _available_since(deployment: Mapping) -> str | None:
    """When the Deployment last became available (its `Available` condition), as the API wrote it."""
    for condition in (deployment.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Available" and condition.get("status") == "True":
            return condition.get("lastTransitionTime") or condition.get("lastUpdateTime")
    return None


def _pod_problems(pod: Mapping, *, failing_only: bool = False) -> Iterator[str]:
    """What is wrong with a pod, one line per container (and for the pod when it cannot be scheduled)."""
    name = (pod.get("metadata") or {}).get("name")
    status = pod.get("status") or {}
    statuses = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    for container in statuses:
        state, last = container.get("state") or {}, container.get("lastState") or {}
        waiting = state.get("waiting") or {}
        reason = waiting.get("reason")
        if failing_only and reason not in FAILING_REASONS:
            continue
        restarts = container.get("restartCount") or 0
        exited = last.get("terminated") or {}
        if reason:
            line = f"pod {name}: container {container.get('name')} waiting: {reason}"
            line += f": {waiting['message']}" if waiting.get("message") else ""
        elif not container.get("ready"):
            line = f"pod {name}: container {container.get('name')} not ready"
            line += " (running)" if "running" in state else ""
        else:
            continue
        if restarts:
            line += f" (restarted {restarts} times"
            line += (f"; last exit {exited.get('exitCode')}: {exited.get('reason')}" if exited else "") + ")"
        yield line
    if failing_only:
        return
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            yield f"pod {name}: not scheduled: {condition.get('reason')}: {condition.get('message', '')}"
    if not statuses and status.get("phase"):
        yield f"pod {name}: {status['phase']}"


def _event_time(event: Mapping) -> str:
    return (event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp")
            or (event.get("metadata") or {}).get("creationTimestamp") or "")


def _as_before(previous: Mapping, desired: Mapping) -> dict:
    """An object as it was read, as an apply body: its fields (spec, data, ...) and its own labels and annotations,
    without what the server owns (status, uid, resourceVersion, managedFields, its annotations)."""
    metadata = previous.get("metadata") or {}
    annotations = {key: value for key, value in (metadata.get("annotations") or {}).items()
                   if not key.startswith(FOREIGN_ANNOTATION_PREFIXES)}
    body = {"apiVersion": desired["apiVersion"], "kind": desired["kind"],
            **{key: value for key, value in previous.items() if key not in ("metadata", "status")}}
    body["metadata"] = {"name": metadata.get("name"), "labels": metadata.get("labels") or {},
                        "annotations": annotations}
    if metadata.get("namespace"):
        body["metadata"]["namespace"] = metadata["namespace"]
    return body


def _status_message(body: Any) -> str:
    """The message of a Kubernetes `Status` answer, shortened; "" when there is none."""
    try:
        message = json.loads(body).get("message") if body else None
    except (ValueError, AttributeError):
        message = None
    return f": {str(message)[:300]}" if message else ""


def _first_lines(text: str, lines: int = 40) -> str:
    """The start of a long message (the Pipes client's errors carry the whole pod object)."""
    kept = text.splitlines()[:lines]
    return "\n".join(kept) + ("\n..." if len(text.splitlines()) > lines else "")
