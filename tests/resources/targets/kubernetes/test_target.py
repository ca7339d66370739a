"""Releases to a kubernetes environment, against an emulated API server with a fake controller (conftest.py): the
first deployment creates the service's objects, the same digest again sends nothing, a new digest is applied and
waited for, a revision that does not become available is rolled back with the pods' reasons in the error, an
invalid object is refused before any request, a secret's value travels only in the Secret's request body, an image
changed by hand shows as drift, and a teardown removes what release-graph made and nothing else."""

from __future__ import annotations

import base64
import logging
import time
from pathlib import Path

import kmock
import kubernetes
import pytest

from benchmarks.kubernetes_emulator import KubernetesApiEmulator
from release_graph.assets.deployment import target_for
from release_graph.assets.deployment_checks import check_healthy, check_in_sync
from release_graph.fleet.model import Environment, Fleet, KubernetesCluster, Resources, Service
from release_graph.release.errors import ReleaseStepError
from release_graph.release.matrix import drift_reason
from resources.containers import ContainerEngine
from resources.targets import (
    DeploymentFailed,
    DeploymentSpec,
    DeployTargets,
    ImageNotPinned,
    InvalidDeploymentSpec,
    KubernetesTarget,
    KubernetesTargetConfig,
    TargetError,
    TargetNotConfigured,
)
from resources.targets.kubernetes.objects import KubernetesObjectError
from resources.targets.kubernetes.target import carries, rollout_progress

NAMESPACE = "shop-prod"  # the conftest's cluster

FIRST, SECOND, BY_HAND = ("sha256:" + c * 64 for c in "abe")
REPOSITORY = "127.0.0.1:5000/shop/payments"
SECRET = "pk-live-" + "7" * 24
ROTATED = "pk-live-" + "9" * 24
DEPLOYMENTS = "apps/v1/deployments"
POLICIES = "networking.k8s.io/v1/networkpolicies"


def spec(digest: str = FIRST, **changes) -> DeploymentSpec:
    values = dict(fleet="shop", environment="prod", service="payments", image=f"{REPOSITORY}@{digest}", port=8080,
                  health="/healthz", env={"LOG_LEVEL": "info", "GIT_SHA": digest[7:19]},
                  secrets={"PAYMENTS_API_KEY": SECRET}, resources=Resources(cpu_request="250m", memory_limit="256Mi"))
    return DeploymentSpec(**{**values, **changes})


def requests_since(kubernetes_api, start: int) -> list:
    return kubernetes_api.requests()[start:]


def writes(requests) -> list[tuple[str, str]]:
    return [(request.method, request.resource) for request in requests if request.writes]


def hand_client(kubernetes_api):
    """What an operator's kubectl would be: a client of its own on the same API."""
    return kubernetes.client.AppsV1Api(kubernetes.client.ApiClient(
        kubernetes.client.Configuration(host=kubernetes_api.url)))


# --- deploying ---------------------------------------------------------------------------------------------


def test_a_first_deployment_creates_the_configmap_secret_deployment_and_service_with_the_digest_and_labels(
        target, kubernetes_api):
    result = target.deploy(spec())

    sent = kubernetes_api.requests()
    # the service's Deployments are listed (which slot serves, a rollout left half-way), every object is read (none
    # exists), then created in order, then the rollout is read once: done. A create is a server-side apply; this
    # API server's apply does not create (404), so the target POSTs instead
    assert [(r.method, r.resource, r.name) for r in sent] == [
        ("GET", DEPLOYMENTS, None), ("GET", "v1/configmaps", "payments-config"),
        ("GET", "v1/secrets", "payments-secrets"), ("GET", POLICIES, "payments-callers"),
        ("GET", DEPLOYMENTS, "payments"), ("GET", "v1/services", "payments"),
        ("PATCH", "v1/configmaps", "payments-config"), ("POST", "v1/configmaps", None), ("POST", "v1/secrets", None),
        ("POST", POLICIES, None), ("POST", DEPLOYMENTS, None), ("POST", "v1/services", None),
        ("GET", DEPLOYMENTS, "payments")]
    assert result.changed and result.digest == FIRST and result.image == f"{REPOSITORY}@{FIRST}"
    assert result.container_name == "payments" and result.container_id == f"deployment/{NAMESPACE}/payments"
    assert result.network == NAMESPACE and result.url_inside == f"http://payments.{NAMESPACE}.svc:8080"
    assert result.published_url is None and result.started_at

    deployment = kubernetes_api.object(DEPLOYMENTS, NAMESPACE, "payments")
    labels = {"app.kubernetes.io/name": "payments", "app.kubernetes.io/part-of": "shop",
              "release-graph.io/environment": "prod", "app.kubernetes.io/managed-by": "release-graph"}
    assert deployment["metadata"]["labels"] == labels
    assert deployment["metadata"]["annotations"]["release-graph.io/digest"] == FIRST
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{REPOSITORY}@{FIRST}"
    assert container["resources"] == {"requests": {"cpu": "250m"}, "limits": {"memory": "256Mi"}}
    assert deployment["spec"]["template"]["metadata"]["labels"]["release-graph.io/digest"] == "sha256-" + "a" * 12
    assert kubernetes_api.object("v1/configmaps", NAMESPACE, "payments-config")["data"]["LOG_LEVEL"] == "info"
    service = kubernetes_api.object("v1/services", NAMESPACE, "payments")
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "payments", "app.kubernetes.io/part-of": "shop"}
    assert all(kubernetes_api.object(kind, NAMESPACE, name)["metadata"]["labels"] == labels for kind, name in (
        ("v1/configmaps", "payments-config"), ("v1/secrets", "payments-secrets"), ("v1/services", "payments")))

    serving = target.running("shop", "prod", "payments", probe=True)
    assert serving.digest == FIRST and serving.digest_matches and serving.running and serving.serving
    assert serving.healthy is True


def test_on_an_api_server_whose_apply_creates_a_first_deployment_is_five_applies_and_no_post(cluster):
    # a real API server's behaviour: every field then belongs to release-graph's apply, so one it stops sending
    # later is removed (a POST's fields would stay owned by that request)
    with KubernetesApiEmulator(apply_creates=True) as real_like:
        target = KubernetesTarget(cluster, KubernetesTargetConfig(api_host=real_like.url, poll_seconds=0.02))

        assert target.deploy(spec()).changed

        sent = real_like.requests()
        assert [(r.method, r.resource) for r in sent if r.writes] == [
            ("PATCH", "v1/configmaps"), ("PATCH", "v1/secrets"), ("PATCH", POLICIES), ("PATCH", DEPLOYMENTS),
            ("PATCH", "v1/services")]
        assert all(r.content_type == "application/apply-patch+yaml" for r in sent if r.writes)
        assert len(sent) == 12 and target.running("shop", "prod", "payments").digest == FIRST
        assert not target.deploy(spec()).changed and not [r for r in real_like.requests()[12:] if r.writes]


def test_the_same_digest_deployed_again_sends_no_write_and_reports_nothing_changed(target, kubernetes_api):
    target.deploy(spec())
    start = len(kubernetes_api.requests())

    again = target.deploy(spec())

    sent = requests_since(kubernetes_api, start)
    assert writes(sent) == []  # no POST, PATCH, PUT or DELETE: the live objects carry everything
    # the service's Deployments listed, five objects read, the rollout read once
    assert [r.method for r in sent] == ["GET"] * 7
    assert not again.changed and again.digest == FIRST


def test_a_new_digest_is_applied_server_side_and_the_deployment_waits_for_its_rollout(
        target, kubernetes_api, controller):
    target.deploy(spec())
    controller.slow[SECOND] = 0.3  # the new pod takes 0.3 s to become available
    start = len(kubernetes_api.requests())

    result = target.deploy(spec(SECOND))

    sent = requests_since(kubernetes_api, start)
    # only what changed is sent (the image, and GIT_SHA in the ConfigMap), by server-side apply
    assert writes(sent) == [("PATCH", "v1/configmaps"), ("PATCH", DEPLOYMENTS)]
    applies = [r for r in sent if r.method == "PATCH"]
    assert all(r.content_type == "application/apply-patch+yaml" for r in applies)
    assert all(r.params == {"fieldManager": "release-graph", "force": "True"} for r in applies)
    polls = [r for r in sent[sent.index(applies[-1]) + 1:] if r.resource == DEPLOYMENTS]
    assert len(polls) >= 2, "the rollout is read until the new revision is available"
    assert result.changed and result.health_seconds >= 0.3
    assert target.running("shop", "prod", "payments").digest == SECOND
    status = kubernetes_api.object(DEPLOYMENTS, NAMESPACE, "payments")
    assert status["metadata"]["generation"] == status["status"]["observedGeneration"] == 2


def test_a_deployment_that_never_becomes_available_is_rolled_back_and_the_error_names_the_pods_reasons(
        target, kubernetes_api, controller):
    target.deploy(spec())
    serving_pod = [pod["metadata"]["name"] for pod in kubernetes_api.objects("v1/pods", NAMESPACE)]
    controller.fail(SECOND, "never-ready")
    impatient = KubernetesTarget(target.cluster, target.config.model_copy(update={"rollout_timeout_seconds": 0.3}))
    start = len(kubernetes_api.requests())

    with pytest.raises(DeploymentFailed) as failed:
        impatient.deploy(spec(SECOND))

    message = str(failed.value)
    assert message.startswith(f"service 'payments', environment 'prod': {REPOSITORY}@{SECOND} did not become "
                              f"available in namespace {NAMESPACE}: not available after 0.3 s")
    assert "container payments not ready (running)" in message
    assert "Warning Unhealthy on Pod/payments-2-" in message and "Readiness probe failed" in message
    assert (f"rolled back: Deployment/payments re-applied as before, ConfigMap/payments-config re-applied as before; "
            f"{FIRST} serves again" in message)
    assert failed.value.service == "payments" and failed.value.environment == "prod"
    # the rollback re-applied the previous template (server-side apply, no rollback API)...
    rollback = [r for r in requests_since(kubernetes_api, start) if r.writes][-2:]
    assert [(r.method, r.resource) for r in rollback] == [("PATCH", DEPLOYMENTS), ("PATCH", "v1/configmaps")]
    assert FIRST in rollback[0].body and SECOND not in rollback[0].body
    # ...and the previous version kept serving: its pod was never replaced
    assert target.running("shop", "prod", "payments").digest == FIRST
    assert [pod["metadata"]["name"] for pod in kubernetes_api.objects("v1/pods", NAMESPACE)
            if pod["status"]["containerStatuses"][0]["ready"]] == serving_pod
    assert kubernetes_api.object("v1/configmaps", NAMESPACE, "payments-config")["data"]["GIT_SHA"] == FIRST[7:19]


@pytest.mark.parametrize(("how", "reason", "event"), [
    ("crash-loop", "CrashLoopBackOff", "Warning BackOff"),
    ("image-pull", "ImagePullBackOff", "Warning Failed"),
])
def test_a_crash_looping_or_unpullable_revision_is_rolled_back_at_once_without_waiting_for_the_timeout(
        target, kubernetes_api, controller, how, reason, event):
    patient = KubernetesTarget(target.cluster, target.config.model_copy(update={"rollout_timeout_seconds": 60}))
    patient.deploy(spec())
    controller.fail(SECOND, how)
    started = time.monotonic()

    with pytest.raises(DeploymentFailed) as failed:
        patient.deploy(spec(SECOND))

    assert time.monotonic() - started < 20, "the failing pod ends the wait, long before the 60 s timeout"
    message = str(failed.value)
    assert "a pod of the new revision is failing" in message
    assert f"container payments waiting: {reason}" in message and event in message
    assert f"{FIRST} serves again" in message
    serving = target.running("shop", "prod", "payments")
    assert serving.digest == FIRST and serving.digest_matches and serving.serving


def test_a_revision_is_rolled_back_even_when_its_pods_and_events_may_not_be_read(target, kubernetes_api, controller):
    target.deploy(spec())
    controller.fail(SECOND, "crash-loop")

    def forbid():  # an identity allowed to deploy but not to list pods or events
        for kind in ("v1/pods", "v1/events"):
            kubernetes_api.handler[kmock.action.LIST, kmock.resource(kind)] << 403 << {
                "kind": "Status", "code": 403, "reason": "Forbidden", "message": f"{kind} is forbidden"}

    kubernetes_api.call(forbid)
    impatient = KubernetesTarget(target.cluster, target.config.model_copy(update={"rollout_timeout_seconds": 0.3}))

    with pytest.raises(DeploymentFailed) as failed:
        impatient.deploy(spec(SECOND))

    message = str(failed.value)
    assert "not available after 0.3 s: old replicas pending termination: 1" in message  # the status alone
    assert f"{FIRST} serves again" in message
    assert "the pods could not be read: service 'payments', environment 'prod': listing the pods of Deployment " \
           f"{NAMESPACE}/payments: the Kubernetes API at {kubernetes_api.url} answered 403 Forbidden: v1/pods is " \
           "forbidden" in message
    assert "the events could not be read:" in message
    assert target.running("shop", "prod", "payments").digest == FIRST


def test_a_first_deployment_that_fails_removes_what_it_created(target, kubernetes_api, controller):
    controller.fail(FIRST, "crash-loop")

    with pytest.raises(DeploymentFailed, match="nothing served before, and what this deployment created is removed"):
        target.deploy(spec())

    for kind, name in (("v1/configmaps", "payments-config"), ("v1/secrets", "payments-secrets"),
                       (DEPLOYMENTS, "payments"), ("v1/services", "payments")):
        assert kubernetes_api.object(kind, NAMESPACE, name) is None
    assert target.running("shop", "prod", "payments") is None


@pytest.mark.parametrize(("changes", "refusal", "words"), [
    # the schema types a quantity as any string; the API server would answer 422
    (dict(resources=Resources(cpu_request="lots")), KubernetesObjectError,
     "service 'payments', environment 'prod': Deployment/payments is not a valid object for Kubernetes 1.33: field "
     "spec.template.spec.containers.0.resources.requests.cpu: 'lots' is not a quantity"),
    (dict(port=70000), InvalidDeploymentSpec, "payments in prod: port 70000 is not a port number"),
    (dict(image=f"{REPOSITORY}:latest"), ImageNotPinned, "is not pinned by digest"),
    (dict(publish=18080), InvalidDeploymentSpec,
     "service 'payments', environment 'prod': publish 18080 is a host port of the docker target"),
])
def test_a_value_that_would_make_an_invalid_object_is_refused_before_any_request(target, kubernetes_api, changes,
                                                                                   refusal, words):
    with pytest.raises(refusal) as refused:
        target.deploy(spec(**changes))

    assert words in str(refused.value)
    assert isinstance(refused.value, InvalidDeploymentSpec)  # a refusal: nothing changed
    assert kubernetes_api.requests() == []  # not even a read


def test_an_object_of_the_same_name_that_release_graph_did_not_make_is_never_taken_over(target, kubernetes_api):
    core = kubernetes.client.CoreV1Api(hand_client(kubernetes_api).api_client)
    core.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": "payments-config"}, "data": {"MINE": "1"}})
    start = len(kubernetes_api.requests())

    with pytest.raises(TargetError) as refused:
        target.deploy(spec())

    assert str(refused.value).startswith(
        f"service 'payments', environment 'prod': ConfigMap {NAMESPACE}/payments-config exists but is not "
        "release-graph's for fleet 'shop', environment 'prod'")
    assert writes(requests_since(kubernetes_api, start)) == []
    assert kubernetes_api.object("v1/configmaps", NAMESPACE, "payments-config")["data"] == {"MINE": "1"}


# --- secrets -----------------------------------------------------------------------------------------------


def test_a_secret_value_travels_only_in_the_secret_request_body_never_in_logs_results_or_errors(
        target, kubernetes_api, controller, caplog):
    caplog.set_level(logging.DEBUG)  # the client's and urllib3's own debug lines too
    first = target.deploy(spec())
    start = len(kubernetes_api.requests())
    rotated = target.deploy(spec(secrets={"PAYMENTS_API_KEY": ROTATED}))
    # rotating the value changes the Secret only: the pods' template depends on the secrets' names
    assert writes(requests_since(kubernetes_api, start)) == [("PATCH", "v1/secrets")]
    # a crashed process that printed the secret: its words reach the error scrubbed
    controller.fail(SECOND, "crash-loop", message=f"panic: bad key {ROTATED}")
    with pytest.raises(DeploymentFailed) as failed:
        target.deploy(spec(SECOND, secrets={"PAYMENTS_API_KEY": ROTATED}))
    assert "panic: bad key <secret>" in str(failed.value)

    carrying = [(r.method, r.resource) for r in kubernetes_api.requests() if SECRET in r.body or ROTATED in r.body]
    assert carrying and {resource for _, resource in carrying} == {"v1/secrets"}
    said = [repr(first), repr(rotated), str(failed.value), repr(failed.value.__dict__), caplog.text,
            repr(target.running("shop", "prod", "payments", probe=True)),
            repr(target.describe_environment("shop", "prod")),
            repr(kubernetes_api.object(DEPLOYMENTS, NAMESPACE, "payments")),
            repr(kubernetes_api.object("v1/configmaps", NAMESPACE, "payments-config"))]
    for value in (SECRET, ROTATED):
        encoded = base64.b64encode(value.encode()).decode()
        assert not any(value in text or encoded in text for text in said)
    assert caplog.text  # the target did log its steps


# --- what runs ---------------------------------------------------------------------------------------------


def test_an_image_changed_by_hand_shows_as_drift_and_deploying_the_recorded_digest_repairs_it(
        target, kubernetes_api, cluster):
    # the deploy step's evidence, as it records it for this deployment
    fleet = Fleet(name="shop", registry="127.0.0.1:5000/shop", services={}, environments={},
                  source_file=Path("fleet.yaml"))
    service, prod = Service(name="payments", port=8080), Environment(name="prod", target="kubernetes",
                                                                    kubernetes=cluster)
    target.deploy(spec())
    assert check_healthy(None, fleet, service, prod, target, FIRST).passed
    assert check_in_sync(None, fleet, service, prod, target, FIRST).passed
    apps = hand_client(kubernetes_api)
    deployment = apps.read_namespaced_deployment("payments", NAMESPACE)
    container = deployment.spec.template.spec.containers[0]
    container.image = f"{REPOSITORY}@{BY_HAND}"
    apps.patch_namespaced_deployment("payments", NAMESPACE, {"spec": {"template": {"spec": {
        "containers": [apps.api_client.sanitize_for_serialization(container)]}}}})

    actual = target.running("shop", "prod", "payments")

    assert actual.digest == FIRST  # what release-graph recorded on the Deployment...
    assert actual.image_digests == (BY_HAND,) and not actual.digest_matches  # ...is not what its pods run
    drift = f"recorded {FIRST} but container payments runs another image ({BY_HAND})"
    assert drift_reason(FIRST, actual) == drift
    in_sync = check_in_sync(None, fleet, service, prod, target, FIRST)
    assert not in_sync.passed and in_sync.description == drift
    assert target.running_services("shop", "prod")["payments"].image_digests == (BY_HAND,)

    repaired = target.deploy(spec())
    assert repaired.changed and target.running("shop", "prod", "payments").digest_matches
    assert check_in_sync(None, fleet, service, prod, target, FIRST).passed


def test_running_probe_and_describe_report_what_the_api_says_for_this_fleet_and_environment_only(
        target, kubernetes_api, cluster):
    assert target.running("shop", "prod", "payments") is None
    target.deploy(spec())
    target.deploy(spec(service="orders", secrets={}, port=None, health=None))
    staging = KubernetesTarget(cluster, target.config)
    staging.deploy(spec(service="inventory", environment="staging", secrets={}))

    assert sorted(target.running_services("shop", "prod")) == ["orders", "payments"]
    assert target.running("shop", "prod", "inventory") is None  # staging's, though in the same namespace
    probe = target.probe("shop", "prod", "payments")
    assert probe.healthy and probe.detail == (
        f"service 'payments', environment 'prod': Deployment {NAMESPACE}/payments: 1 of 1 replicas ready, 1 available, "
        "as the Kubernetes API reports them (the kubelet's readiness probe on /healthz; not asked over HTTP from here)")
    assert not target.probe("shop", "prod", "nothing").healthy
    report = target.describe_environment("shop", "prod")
    assert report.network == NAMESPACE
    assert [(c.name, c.service, c.status, c.digest) for c in report.containers] == [
        ("deployment/orders", "orders", "running", FIRST), ("deployment/payments", "payments", "running", FIRST)]
    assert target.describe_environment("shop", "dev").empty


def test_teardown_removes_everything_release_graph_made_in_the_environment_and_nothing_else(
        target, kubernetes_api, cluster):
    target.deploy(spec())
    target.deploy(spec(service="orders", secrets={}))
    KubernetesTarget(cluster, target.config).deploy(spec(service="inventory", environment="staging", secrets={}))
    core = kubernetes.client.CoreV1Api(hand_client(kubernetes_api).api_client)
    core.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": "someone-elses"}, "data": {}})

    report = target.teardown_environment("shop", "prod")

    assert sorted(report.containers) == sorted([
        "Service/payments", "Service/orders", "Deployment/payments", "Deployment/orders",
        "NetworkPolicy/payments-callers", "NetworkPolicy/orders-callers",
        "Secret/payments-secrets", "ConfigMap/payments-config", "ConfigMap/orders-config"])
    remaining = {(kind, obj["metadata"]["name"]) for kind in ("v1/configmaps", "v1/secrets", DEPLOYMENTS,
                                                              "v1/services", POLICIES)
                 for obj in kubernetes_api.objects(kind, NAMESPACE)}
    assert remaining == {("v1/configmaps", "someone-elses"), ("v1/configmaps", "inventory-config"),
                         (DEPLOYMENTS, "inventory"), ("v1/services", "inventory"), (POLICIES, "inventory-callers")}
    assert target.running_services("shop", "prod") == {}
    # reaping the environments the manifest no longer has removes staging's too
    assert sorted(target.reap("shop", keep_environments=["prod"]).containers) == [
        "ConfigMap/inventory-config", "Deployment/inventory", "NetworkPolicy/inventory-callers", "Service/inventory"]
    assert target.reap().containers == ()  # nothing else is ever left behind on a cluster


def test_test_pods_need_a_pinned_image_a_command_and_the_step_and_ephemeral_environments_are_refused(target):
    # (the pod itself: tests/resources/targets/kubernetes/test_tests_in_pods.py)
    with pytest.raises(TargetError, match="the end-to-end test image: .*not pinned by digest|digest"):
        target.run_tests("shop", "prod", f"{REPOSITORY}:latest", command=["pytest"], step=object())
    with pytest.raises(TargetError, match="needs the step's context"):
        target.run_tests("shop", "prod", f"{REPOSITORY}@{FIRST}", command=["pytest"])
    with pytest.raises(TargetError, match="declares no command"):
        target.run_tests("shop", "prod", f"{REPOSITORY}@{FIRST}", command=(), step=object())
    with pytest.raises(TargetError, match="integration runs use the docker target"):
        target.ephemeral_environment("shop", "it-payments")


# --- reaching the cluster ----------------------------------------------------------------------------------


def test_a_kubernetes_environment_gets_a_target_bound_to_its_cluster_when_the_instance_configures_kubernetes(
        kubernetes_api, cluster):
    targets = DeployTargets(engine=ContainerEngine(), kubernetes=KubernetesTargetConfig(
        api_host=kubernetes_api.url, poll_seconds=0.02))
    prod = Environment(name="prod", target="kubernetes", kubernetes=cluster)

    target = targets.target_of(prod)

    assert isinstance(target, KubernetesTarget) and target.cluster == cluster
    assert targets.for_environment("kubernetes", cluster) is target  # one per cluster
    staging = KubernetesCluster(namespace="shop-staging", version="1.33")
    assert targets.for_environment("kubernetes", staging).namespace == "shop-staging"
    assert target_for(targets, Service(name="payments"), prod) is target
    assert target.deploy(spec()).changed


def test_a_kubernetes_environment_on_an_instance_without_kubernetes_is_refused_naming_it_and_the_docs(cluster):
    targets = DeployTargets(engine=ContainerEngine())
    prod = Environment(name="prod", target="kubernetes", kubernetes=cluster)

    with pytest.raises(TargetNotConfigured) as refused:
        targets.target_of(prod)

    assert str(refused.value) == (
        "environment 'prod': target 'kubernetes' is not configured on this instance (see docs/operations.md, "
        "\"Kubernetes target\": set $RELEASE_GRAPH_KUBECONFIG or $RELEASE_GRAPH_KUBERNETES_API)")
    with pytest.raises(ReleaseStepError, match="^service 'payments', environment 'prod': target 'kubernetes' is not "
                                               "configured on this instance"):
        target_for(targets, Service(name="payments"), prod)


def test_the_target_does_no_io_until_used_and_names_the_service_and_cluster_when_it_cannot_reach_it(
        tmp_path, cluster):
    missing = KubernetesTarget(cluster, KubernetesTargetConfig(kubeconfig=str(tmp_path / "kubeconfig")))
    assert missing._api_client is None  # built, nothing read
    with pytest.raises(TargetError, match=r"^service 'payments', environment 'prod': listing the Deployments of the "
                                          rf"service in {NAMESPACE}: cannot load the Kubernetes API of the "
                                          rf"current context in {tmp_path}/kubeconfig"):
        missing.deploy(spec())
    silent = KubernetesTarget(cluster, KubernetesTargetConfig(api_host="http://127.0.0.1:9",
                                                              request_timeout_seconds=2))
    with pytest.raises(TargetError, match="the Kubernetes API at http://127.0.0.1:9 did not answer"):
        silent.running("shop", "prod", "payments")


# --- the rules, without a server ----------------------------------------------------------------------------


@pytest.mark.parametrize(("deployment", "done", "summary"), [
    ({"metadata": {"generation": 2}, "status": {"observedGeneration": 1, "updatedReplicas": 1, "replicas": 1,
                                                "availableReplicas": 1}},
     False, "the controller has not observed generation 2 yet (observed: 1)"),
    ({"metadata": {"generation": 2}, "spec": {"replicas": 3},
      "status": {"observedGeneration": 2, "updatedReplicas": 1, "replicas": 3, "availableReplicas": 2}},
     False, "1 of 3 replicas updated"),
    ({"metadata": {"generation": 2}, "status": {"observedGeneration": 2, "updatedReplicas": 1, "replicas": 2,
                                                "availableReplicas": 1}},
     False, "old replicas pending termination: 1"),
    ({"metadata": {"generation": 2}, "status": {"observedGeneration": 2, "updatedReplicas": 1, "replicas": 1}},
     False, "0 of 1 updated replicas available"),
    ({"metadata": {"generation": 2}, "status": {"observedGeneration": 2, "updatedReplicas": 1, "replicas": 1,
                                                "availableReplicas": 1}},
     True, "1 of 1 replicas updated and available"),
])
def test_a_rollout_is_judged_complete_as_kubectl_rollout_status_judges_it(deployment, done, summary):
    progress = rollout_progress(deployment)
    assert (progress.done, progress.summary) == (done, summary)


def test_a_rollout_the_controller_gave_up_on_is_stuck():
    stuck = rollout_progress({"metadata": {"generation": 1}, "status": {
        "observedGeneration": 1, "updatedReplicas": 1, "replicas": 2, "availableReplicas": 1,
        "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                        "message": 'ReplicaSet "payments-5d8" has timed out progressing.'}]}})
    assert not stuck.done
    assert stuck.stuck == 'ProgressDeadlineExceeded: ReplicaSet "payments-5d8" has timed out progressing.'


def test_server_defaults_and_canonical_quantities_still_carry_what_was_sent_but_a_removed_field_does_not():
    from resources.targets.kubernetes.objects import deployment_objects
    from resources.targets.kubernetes.target import APPLIED_ANNOTATION, applied_fingerprint

    def sent(**changes) -> dict:
        (deployment,) = [o for o in deployment_objects(spec(**changes), KubernetesCluster("shop", "1.33"))
                         if o["kind"] == "Deployment"]
        deployment["metadata"]["annotations"][APPLIED_ANNOTATION] = applied_fingerprint(deployment)
        return deployment

    desired = sent(resources=Resources(cpu_request="0.5"))
    live = sent(resources=Resources(cpu_request="0.5"))
    live["spec"]["strategy"] = {"type": "RollingUpdate"}  # a server default
    live["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "500m"  # canonical form
    live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "3"
    assert carries(live, desired)
    # the health path was dropped: the live readiness probe is extra, which only the fingerprint shows
    assert not carries(live, sent(resources=Resources(cpu_request="0.5"), health=None))
