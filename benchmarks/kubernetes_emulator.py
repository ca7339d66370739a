"""An emulated Kubernetes API for the kubernetes target's tests (tests/resources/targets/kubernetes) and
`python -m benchmarks.kubernetes_deploy`: kmock's `KubernetesEmulator` served over HTTP on 127.0.0.1, with a fake
controller. No real API server runs on the hosts release-graph is developed on (docs/operations.md, "Kubernetes
target", says what this emulation does not show).

kmock is asyncio only and the target's client blocks, so the emulator runs on a private event loop in a daemon
thread (a synchronous test using kmock's own fixture hangs). Everything that reads or changes its store goes
through `call`, onto that loop.

Added to kmock (0.8), as a real API server does and as far as the target relies on it:
- `metadata.generation` (1 on create, +1 when a write changes `spec`), `namespace`, `uid`, `resourceVersion` and
  `creationTimestamp` are stamped; a write to `/status` changes only `status`.
Left as kmock has them, so the target is shown to cope: label and field selectors are ignored; PUT is not
implemented; a PATCH of a missing object is 404 whatever its content type (server-side apply does not create,
unless `apply_creates=True` asks for a real API server's behaviour); a dict body is merged recursively whatever the
Content-Type (null deletes, lists are replaced).

`FakeController` stands for the Deployment and ReplicaSet controllers, the garbage collector and the kubelet. After
every request it settles each Deployment whose generation it has not observed: a digest it was not told otherwise
of becomes available at once (as many pods of the new revision as `spec.replicas` asks, running and ready, replace
the Deployment's other pods; ready pods of the same revision, as after a rollback or a scale, are kept); a `slow`
digest only after some seconds (the rollout shows one updated replica, not yet available, meanwhile); one told to
`fail` gets a pod of the new revision that crash-loops, cannot pull its image or never becomes ready, with the
Warning event a kubelet writes, while the previous pods keep running. A Deployment's pods are those it made (their
`ownerReferences` name its ReplicaSet, `<deployment>-<revision hash>`), never another Deployment's whose labels
its selector also matches, as a real controller keeps them apart; the pods of a deleted Deployment are deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import hashlib
import itertools
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kmock

DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
PODS = "v1/pods"
EVENTS = "v1/events"
# How a digest told to fail fails: the pod's container state and the event the kubelet writes about it.
FAILURES = {
    "crash-loop": ({"waiting": {"reason": "CrashLoopBackOff",
                                "message": "back-off 40s restarting failed container={container} pod={pod}"}},
                   {"terminated": {"exitCode": 1, "reason": "Error"}}, 4,
                   ("BackOff", "Back-off restarting failed container {container} in pod {pod}")),
    "image-pull": ({"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "{image}"'}},
                   {}, 0,
                   ("Failed", 'Failed to pull image "{image}": manifest unknown')),
    "never-ready": ({"running": {"startedAt": "{now}"}}, {}, 0,
                    ("Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 503")),
}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class RecordedRequest:
    """One request the emulator answered, as the test and the benchmark count them."""

    method: str  # GET, POST, PATCH, PUT, DELETE
    path: str
    params: dict[str, str]  # the query
    resource: str | None  # e.g. apps/v1/deployments
    name: str | None
    subresource: str | None
    content_type: str
    body: str

    @property
    def writes(self) -> bool:
        return self.method in ("POST", "PATCH", "PUT", "DELETE")


@dataclass
class FakeController:
    """What the cluster does with a Deployment once it is written (see the module docstring)."""

    failing: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # digest -> (FAILURES key, message)
    slow: dict[str, float] = field(default_factory=dict)  # image digest -> seconds until available
    _pending: dict = field(default_factory=dict)  # (namespace, name, generation) -> when it becomes available
    _pods: Any = field(default_factory=itertools.count)

    def fail(self, digest: str, how: str = "crash-loop", message: str | None = None) -> None:
        """Make every revision running `digest` fail as `how` says; `message` replaces the kubelet's wording of
        the container's state (a crashed process's last words, say)."""
        if how not in FAILURES:
            raise ValueError(f"a fake failure is one of {', '.join(FAILURES)}, not {how!r}")
        self.failing[digest] = (how, message)

    def reconcile(self, store) -> None:
        """Settle every Deployment whose current generation was not observed yet, or whose slow rollout is due,
        and delete the pods of Deployments that are gone (runs on the emulator's loop)."""
        deployments = {(namespace, name) for (resource, namespace, name), obj in store.items()
                       if resource == DEPLOYMENTS and not obj.deleted}
        for key, pod in list(store.items()):
            owner = _owner(pod.raw) if key[0] == kmock.resource(PODS) and not pod.deleted else None
            if owner is not None and (key[1], owner) not in deployments:
                pod.delete()
        for (resource, namespace, name), obj in list(store.items()):
            if resource != DEPLOYMENTS or obj.deleted:
                continue
            deployment = obj.raw
            generation = (deployment.get("metadata") or {}).get("generation") or 0
            pending = self._pending.get((namespace, name, generation))
            if (deployment.get("status") or {}).get("observedGeneration") == generation and (
                    pending is None or time.monotonic() < pending):
                continue
            self._settle(store, namespace, name, deployment, generation)

    def _settle(self, store, namespace: str, name: str, deployment: dict, generation: int) -> None:
        spec = deployment.get("spec") or {}
        replicas = spec.get("replicas", 1)
        template = spec.get("template") or {}
        (container, *_) = template.get("spec", {}).get("containers") or [{}]
        image = container.get("image", "")
        digest = image.rsplit("@", 1)[-1]
        previous = [key for key, pod in store.items() if key[0] == kmock.resource(PODS) and key[1] == namespace
                    and not pod.deleted and _owner(pod.raw) == name]
        pod_name = f"{name}-{generation}-{next(self._pods):05x}"
        how, message_override = self.failing.get(digest, (None, None))
        now = _now()
        key = (namespace, name, generation)
        if how is None and digest in self.slow and key not in self._pending:
            self._pending[key] = time.monotonic() + self.slow[digest]
            store[DEPLOYMENTS, namespace, name].patch({"status": {
                "observedGeneration": generation, "replicas": len(previous) + 1, "updatedReplicas": 1,
                "readyReplicas": len(previous), "availableReplicas": len(previous), "unavailableReplicas": 1}})
            return
        if how is None or replicas == 0:
            self._pending.pop(key, None)
            revision = _revision(template)
            kept = [pod for pod in previous if _revision(store[pod].raw) == revision and _ready(store[pod].raw)]
            kept = kept[:replicas]
            for pod in previous:  # the new ReplicaSet took over (or scaled down): the other pods are gone
                if pod not in kept:
                    store[pod].delete()
            for number in range(replicas - len(kept)):
                self._add_pod(store, namespace, name, f"{pod_name}{number or ''}", template, image, ready=True,
                              now=now)
            status = {"observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
                      "readyReplicas": replicas, "availableReplicas": replicas, "unavailableReplicas": None,
                      "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                                      "lastTransitionTime": now, "lastUpdateTime": now},
                                     {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                                      "lastTransitionTime": now, "lastUpdateTime": now}]}
        else:
            state, last_state, restarts, (reason, message) = FAILURES[how]
            values = {"container": container.get("name", name), "pod": pod_name, "image": image, "now": now}
            state = _format(state, values)
            if message_override is not None and "waiting" in state:
                state["waiting"]["message"] = message_override
            self._add_pod(store, namespace, name, pod_name, template, image, ready=False, now=now,
                          state=state, last_state=last_state, restarts=restarts)
            event_name = f"{pod_name}.{uuid.uuid4().hex[:8]}"
            store[EVENTS, namespace, event_name] = {
                "apiVersion": "v1", "kind": "Event", "type": "Warning", "reason": reason,
                "message": message.format(**values), "count": max(restarts, 1),
                "metadata": {"name": event_name, "namespace": namespace},
                "involvedObject": {"kind": "Pod", "name": pod_name, "namespace": namespace},
                "firstTimestamp": now, "lastTimestamp": now}
            serving = len(previous)  # the previous pods keep running: a rolling update waits for the new ones
            status = {"observedGeneration": generation, "replicas": serving + 1, "updatedReplicas": 1,
                      "readyReplicas": serving, "availableReplicas": serving, "unavailableReplicas": 1}
        store[DEPLOYMENTS, namespace, name].patch({"status": status})

    @staticmethod
    def _add_pod(store, namespace: str, deployment: str, pod_name: str, template: dict, image: str, *, ready: bool,
                 now: str, state: dict | None = None, last_state: dict | None = None, restarts: int = 0) -> None:
        metadata = copy.deepcopy(template.get("metadata") or {})
        replica_set = f"{deployment}-{hashlib.sha256(repr(_revision(template)).encode()).hexdigest()[:10]}"
        metadata["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": replica_set,
                                        "uid": str(uuid.uuid5(uuid.NAMESPACE_OID, replica_set)), "controller": True}]
        pod_spec = copy.deepcopy(template.get("spec") or {})
        containers = pod_spec.get("containers") or [{}]
        store[PODS, namespace, pod_name] = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {**metadata, "name": pod_name, "namespace": namespace, "creationTimestamp": now},
            "spec": pod_spec,
            "status": {"phase": "Running", "startTime": now,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                       "containerStatuses": [{
                           "name": containers[0].get("name"), "image": image, "ready": ready,
                           "restartCount": restarts, "state": state or {"running": {"startedAt": now}},
                           "lastState": last_state or {}}]},
        }


def _revision(obj: dict) -> tuple:
    """What tells a revision's pods apart (its template's digest label and configuration hash), as the target does."""
    metadata = obj.get("metadata") or {}
    return ((metadata.get("labels") or {}).get("release-graph.io/digest"),
            (metadata.get("annotations") or {}).get("release-graph.io/config-hash"))


def _owner(pod: dict) -> str | None:
    """The Deployment that made a pod (its ReplicaSet's name without the revision hash); None: made by hand."""
    for reference in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if reference.get("kind") == "ReplicaSet" and reference.get("controller"):
            return reference["name"].rsplit("-", 1)[0]
    return None


def _ready(pod: dict) -> bool:
    return all(status.get("ready") for status in (pod.get("status") or {}).get("containerStatuses") or [{}])


def _format(value: Any, values: dict) -> Any:
    if isinstance(value, dict):
        return {k: _format(v, values) for k, v in value.items()}
    return value.format(**values) if isinstance(value, str) else value


class _StampingEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the server-owned metadata stamped and the fake controller run after each write."""

    _versions = itertools.count(1)
    controller: FakeController | None = None
    apply_creates = False

    async def _handle(self, request):
        if request.resource is not None and isinstance(request.data, dict):
            if self.apply_creates:
                self._create_on_apply(request)
            self._stamp(request)
        try:
            return await super()._handle(request)
        finally:
            if self.controller is not None:
                self.controller.reconcile(self.objects)

    def _create_on_apply(self, request) -> None:
        """A real API server's server-side apply of a missing object creates it: an empty one is made for the
        apply to merge into (its generation then becomes 1)."""
        key = (request.resource, request.namespace, request.name)
        content_type = request.headers.get("Content-Type", "")
        if (request.action == kmock.action.UPDATE and request.subresource is None
                and content_type.startswith("application/apply-patch")
                and (key not in self.objects or self.objects[key].deleted)):
            self.objects[key] = {"metadata": {"name": request.name, "namespace": request.namespace, "generation": 0,
                                              "uid": str(uuid.uuid4()), "creationTimestamp": _now()}}

    def _stamp(self, request) -> None:
        data = request.data
        if request.action == kmock.action.CREATE:
            metadata = data.setdefault("metadata", {})
            if request.namespace:
                metadata.setdefault("namespace", request.namespace)
            metadata.update(uid=str(uuid.uuid4()), resourceVersion=str(next(self._versions)), generation=1,
                            creationTimestamp=_now())
            if request.resource == kmock.resource(PODS):  # the scheduler has not placed it yet
                data.setdefault("status", {"phase": "Pending"})
        elif request.action == kmock.action.UPDATE:
            key = (request.resource, request.namespace, request.name)
            if key not in self.objects or self.objects[key].deleted:
                return  # kmock answers 404
            before = self.objects[key].raw
            if request.subresource == "status":
                for name in [name for name in data if name != "status"]:
                    del data[name]
            after = kmock.Object(copy.deepcopy(before))
            after.patch({k: v for k, v in data.items() if k != "metadata"})
            metadata = data.setdefault("metadata", {})
            for owned in ("uid", "namespace", "creationTimestamp", "generation"):
                metadata.pop(owned, None)
            metadata["resourceVersion"] = str(next(self._versions))
            if request.subresource is None and after.raw.get("spec") != before.get("spec"):
                metadata["generation"] = ((before.get("metadata") or {}).get("generation") or 0) + 1


class KubernetesApiEmulator:
    """The emulator on its own event loop and thread; `url` is what a client's `Configuration(host=...)` takes."""

    def __init__(self, controller: FakeController | None = None, *, apply_creates: bool = False):
        self.controller = controller if controller is not None else FakeController()
        self.apply_creates = apply_creates
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kmock", daemon=True)
        self.handler: _StampingEmulator | None = None
        self.server: kmock.Server | None = None

    def _run(self, coroutine, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> KubernetesApiEmulator:
        self.thread.start()

        async def enter() -> None:
            self.handler = _StampingEmulator()
            self.handler.controller = self.controller
            self.handler.apply_creates = self.apply_creates
            # LIST answers 404 for a kind the emulator was never told of: it knows the built-in ones, as a cluster
            self.handler.resources.load_bundled()
            self.server = kmock.Server(self.handler)  # 127.0.0.1, a free port
            await self.handler.__aenter__()
            await self.server.__aenter__()

        self._run(enter())
        return self

    def stop(self) -> None:
        async def leave() -> None:
            await self.server.__aexit__(None, None, None)
            await self.handler.__aexit__(None, None, None)

        try:
            self._run(leave())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()

    def __enter__(self) -> KubernetesApiEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return str(self.server.url).rstrip("/")

    def call(self, function: Callable[[], Any]) -> Any:
        """`function()` run on the emulator's loop: the only safe way to read or change its store."""
        async def run():
            return function()

        return self._run(run())

    def requests(self) -> list[RecordedRequest]:
        """Every request answered so far, oldest first."""
        def snapshot():
            return [RecordedRequest(
                method=request.method.value, path=request.url.path, params=dict(request.params),
                resource=(f"{request.resource.group}/{request.resource.version}/{request.resource.plural}"
                          .lstrip("/") if request.resource is not None else None),
                name=request.name, subresource=request.subresource,
                content_type=request.headers.get("Content-Type", ""), body=request.text)
                for request in self.handler]

        return self.call(snapshot)

    def object(self, resource: str, namespace: str, name: str) -> dict | None:
        """A copy of a stored object (None: missing or deleted), e.g. ("apps/v1/deployments", ns, name)."""
        def read():
            key = (kmock.resource(resource), namespace, name)
            if key not in self.handler.objects or self.handler.objects[key].deleted:
                return None
            return copy.deepcopy(self.handler.objects[key].raw)

        return self.call(read)

    def crash(self, namespace: str, pod: str, restarts: int = 3) -> None:
        """Make a running pod's container crash-loop, as the kubelet reports a process that keeps exiting."""
        def patch():
            stored = self.handler.objects[kmock.resource(PODS), namespace, pod]
            (container, *_) = stored.raw["status"]["containerStatuses"]
            stored.patch({"status": {"conditions": [{"type": "Ready", "status": "False"}], "containerStatuses": [{
                **container, "ready": False, "restartCount": restarts,
                "state": {"waiting": {"reason": "CrashLoopBackOff",
                                      "message": f"back-off 40s restarting failed container={container['name']}"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}})

        self.call(patch)

    def objects(self, resource: str, namespace: str) -> list[dict]:
        """Copies of the stored objects of one kind in a namespace."""
        wanted = kmock.resource(resource)
        return self.call(lambda: [copy.deepcopy(obj.raw) for (kind, ns, _), obj in self.handler.objects.items()
                                  if kind == wanted and ns == namespace and not obj.deleted])


class FakeKubelet:
    """Runs the emulated cluster's own pods (those no controller owns: test pods) as real containers of the engine.

    `FakeController`'s pods are objects only. A pod created through the API (e.g. by `PipesK8sClient`) is run here as
    a kubelet would run it: its first container's image (pulled when missing), command, environment and user; a
    read-only root when its securityContext says so; an `emptyDir` as an in-memory folder; a `configMap` volume as
    read-only files (its `items`, or every key). The pod's status follows the container (Pending, Running and
    ready, then Succeeded or Failed with the exit code); `activeDeadlineSeconds` is enforced (the pod fails with
    `DeadlineExceeded`); a deleted pod's container is removed. The log subresource streams the container's output
    with the API server's per-line timestamps (`timestamps`, `follow`, `tailLines`, `sinceSeconds`), and a LIST
    of pods honours `fieldSelector=metadata.name=<pod>` (kmock ignores selectors; the Pipes client relies on it).

    Every container is named `<prefix>-<pod>` and carries `labels`, so parallel test runs never collide.
    """

    def __init__(self, emulator: KubernetesApiEmulator, engine, *, prefix: str, labels: dict[str, str] | None = None,
                 poll_seconds: float = 0.1):
        self.emulator = emulator
        self.engine = engine  # a docker.DockerClient
        self.prefix = prefix
        self.labels = dict(labels or {})
        self.poll_seconds = poll_seconds
        self._containers: dict[tuple[str, str], Any] = {}  # (namespace, pod) -> container
        self._folders: dict[tuple[str, str], str] = {}  # (namespace, pod) -> its configMap files
        self._deadlines: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-kubelet", daemon=True)

    def __enter__(self) -> FakeKubelet:
        self.emulator.call(self._add_routes)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        for key in list(self._containers):
            self._forget(key)

    # --- the API's side ---------------------------------------------------------------------------------

    def _add_routes(self) -> None:
        handler = self.emulator.handler
        pods = kmock.resource("v1", "pods")
        handler[pods, kmock.subresource("log")] << self._log
        handler[pods, kmock.action.LIST, lambda request: "fieldSelector" in request.params] << self._list_by_name

    def _list_by_name(self, request) -> dict:
        wanted = dict(part.split("=", 1) for part in request.params["fieldSelector"].split(",") if "=" in part)
        items = [copy.deepcopy(obj.raw) for (resource, namespace, name), obj in self.emulator.handler.objects.items()
                 if resource == kmock.resource(PODS) and not obj.deleted and namespace == request.namespace
                 and wanted.get("metadata.name", name) == name]
        return {"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items}

    async def _log(self, request):
        container = self._containers.get((request.namespace, request.name))
        if container is None:
            yield b""
            return
        params = request.params
        follow = str(params.get("follow")).lower() == "true"
        timestamps = str(params.get("timestamps")).lower() == "true"
        options = {"stream": True, "follow": follow, "stdout": True, "stderr": True}
        if params.get("tailLines"):
            options["tail"] = int(params["tailLines"])
        if params.get("sinceSeconds"):
            options["since"] = int(time.time()) - int(params["sinceSeconds"])
        # The engine's own stamps are whole seconds (Podman): lines are stamped here, to the microsecond, as a real
        # API server does (the Pipes client orders and deduplicates by them).
        chunks = await asyncio.to_thread(container.logs, **options)
        pending = b""
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield _stamped(line, timestamps)
        if pending:
            yield _stamped(pending, timestamps)

    # --- the node's side --------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as exc:  # noqa: BLE001 - a kubelet keeps going; the pod's status says what broke
                print(f"fake kubelet: {type(exc).__name__}: {exc}")
            self._stop.wait(self.poll_seconds)

    def _sync(self) -> None:
        def ownerless():
            return {(namespace, name): copy.deepcopy(obj.raw)
                    for (resource, namespace, name), obj in self.emulator.handler.objects.items()
                    if resource == kmock.resource(PODS) and not obj.deleted and _owner(obj.raw) is None
                    and not (obj.raw.get("metadata") or {}).get("ownerReferences")}

        pods = self.emulator.call(ownerless)
        for key in [key for key in self._containers if key not in pods]:
            self._forget(key)
        for key, pod in pods.items():
            if key not in self._containers:
                self._start(key, pod)
            else:
                self._observe(key, pod)

    def _start(self, key: tuple[str, str], pod: dict) -> None:
        import docker

        namespace, name = key
        spec = pod.get("spec") or {}
        (container, *_) = spec.get("containers") or [{}]
        image = container.get("image", "")
        try:
            self.engine.images.get(image)
        except docker.errors.ImageNotFound:
            try:
                self.engine.images.pull(image)
            except docker.errors.APIError as exc:
                self._containers[key] = None
                self._set_status(key, container, "Pending", {"waiting": {"reason": "ErrImagePull",
                                                                         "message": str(exc)}})
                return
        security = {**(spec.get("securityContext") or {}), **(container.get("securityContext") or {})}
        folder = tempfile.mkdtemp(prefix=f"{self.prefix}-pod-")
        self._folders[key] = folder
        volumes, tmpfs = {}, {}
        for mount in container.get("volumeMounts") or []:
            volume = next(v for v in spec.get("volumes") or [] if v["name"] == mount["name"])
            if "emptyDir" in volume:
                tmpfs[mount["mountPath"]] = "mode=1777"
            elif "configMap" in volume:
                source = self._config_map_files(namespace, volume["configMap"], os.path.join(folder, mount["name"]))
                volumes[source] = {"bind": mount["mountPath"], "mode": "ro"}
        user = security.get("runAsUser")
        group = security.get("runAsGroup")
        created = self.engine.containers.create(
            image, command=container.get("command"), name=f"{self.prefix}-{namespace}-{name}"[:200],
            environment={item["name"]: item.get("value", "") for item in container.get("env") or []},
            user=f"{user}:{group}" if user is not None and group is not None else (str(user) if user else None),
            read_only=bool(security.get("readOnlyRootFilesystem")), tmpfs=tmpfs, volumes=volumes,
            cap_drop=(security.get("capabilities") or {}).get("drop"), labels=self.labels, detach=True,
        )
        self._containers[key] = created
        if spec.get("activeDeadlineSeconds"):
            self._deadlines[key] = time.monotonic() + spec["activeDeadlineSeconds"]
        try:
            created.start()
        except docker.errors.APIError as exc:  # e.g. its command is not in the image: the runtime's StartError
            self._containers[key] = None
            self._set_status(key, container, "Failed", {"terminated": {
                "exitCode": 128, "reason": "StartError", "message": str(exc.explanation or exc)}})
            with contextlib.suppress(docker.errors.APIError):
                created.remove(force=True)
            return
        self._observe(key, pod)

    def _config_map_files(self, namespace: str, volume: dict, folder: str) -> str:
        stored = self.emulator.object("v1/configmaps", namespace, volume["name"]) or {}
        data = stored.get("data") or {}
        items = volume.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            path = os.path.join(folder, item["path"])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as file:
                file.write(data.get(item["key"], ""))
        for root, folders, files in os.walk(folder):  # readable by the pod's user, whoever it is
            for entry in folders + files:
                os.chmod(os.path.join(root, entry), 0o755)
        os.chmod(folder, 0o755)
        return folder

    def _observe(self, key: tuple[str, str], pod: dict) -> None:
        created = self._containers[key]
        (container, *_) = (pod.get("spec") or {}).get("containers") or [{}]
        if created is None:  # its image could not be pulled
            return
        created.reload()
        state = created.attrs["State"]
        deadline = self._deadlines.get(key)
        if state["Status"] == "running" and deadline is not None and time.monotonic() > deadline:
            created.kill()
            self._set_status(key, container, "Failed", {"terminated": {"exitCode": 137, "reason": "Error"}},
                             reason="DeadlineExceeded", message="Pod was active on the node longer than the specified "
                             "deadline")
            self._deadlines.pop(key, None)
            return
        if (pod.get("status") or {}).get("reason") == "DeadlineExceeded":
            return
        if state["Status"] in ("exited", "dead"):
            code = state.get("ExitCode", -1)
            self._set_status(key, container, "Succeeded" if code == 0 else "Failed",
                             {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}})
        elif state["Status"] == "running":
            self._set_status(key, container, "Running", {"running": {"startedAt": state.get("StartedAt")}},
                             ready=True)
        else:
            self._set_status(key, container, "Pending", {"waiting": {"reason": "ContainerCreating"}})

    def _set_status(self, key: tuple[str, str], container: dict, phase: str, state: dict, *, ready: bool = False,
                    reason: str | None = None, message: str | None = None) -> None:
        namespace, name = key
        status = {"phase": phase, "containerStatuses": [{
            "name": container.get("name"), "image": container.get("image", ""), "imageID": "", "restartCount": 0,
            "ready": ready, "state": state}]}
        if reason is not None:
            status.update(reason=reason, message=message)

        def patch():
            objects, key = self.emulator.handler.objects, (kmock.resource(PODS), namespace, name)
            if key in objects and not objects[key].deleted and (objects[key].raw.get("status") or {}) != status:
                objects[key].patch({"status": status})

        self.emulator.call(patch)

    def _forget(self, key: tuple[str, str]) -> None:
        import docker

        created = self._containers.pop(key, None)
        if created is not None:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                created.remove(force=True)
        self._deadlines.pop(key, None)
        folder = self._folders.pop(key, None)
        if folder:
            shutil.rmtree(folder, ignore_errors=True)


def _stamped(line: bytes, timestamps: bool) -> bytes:
    if not timestamps:
        return line + b"\n"
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
    return stamp + b" " + line + b"\n"
