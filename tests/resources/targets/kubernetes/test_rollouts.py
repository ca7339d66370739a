"""Progressive rollouts and network policies on a kubernetes environment, against the emulated API server with its
fake controller (conftest.py): a blue-green release switches the Service's selector to the new color and removes
the old Deployment, an abort leaves the selector where it was; a canary's steps are ratios of ready pods behind one
Service; a rollout killed half-way is read back and settled by the next rollout, deployment or abort; a candidate
that crash-loops is reported with its pods' reasons and rolled back; each service's NetworkPolicy admits exactly
its declared callers and is written only when it changes. The rollouts are driven by release_graph/assets/rollout.py
as a release drives them, unchanged."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest

from release_graph.assets.rollout import RolledBack, RolloutController, deliver
from release_graph.fleet import load_fleet
from release_graph.fleet.model import Environment, Rollout, RolloutStep
from release_graph.fleet.network import network_policy
from release_graph.release import metadata as M
from resources.targets import DeploymentFailed, DeploymentSpec, KubernetesTarget, KubernetesTargetConfig, TargetError
from resources.targets.interface import deployment_spec
from resources.targets.kubernetes.objects import (
    BLUE,
    GREEN,
    KubernetesObjectError,
    deployment_objects,
    validate_objects,
)
from resources.targets.kubernetes.target import canary_replicas

NAMESPACE = "shop-prod"
FIRST, SECOND, THIRD = ("sha256:" + c * 64 for c in "abc")
REPOSITORY = "127.0.0.1:5000/shop/payments"
DEPLOYMENTS, SERVICES, PODS = "apps/v1/deployments", "v1/services", "v1/pods"
POLICIES = "networking.k8s.io/v1/networkpolicies"
SHOP = Path(__file__).resolve().parents[4] / "examples" / "shop" / "fleet.yaml"
POD_LABELS = {"app.kubernetes.io/name": "payments", "app.kubernetes.io/part-of": "shop"}
# A fleet as `release-graph import` writes one (tests/release_graph/fleet/test_network.py has its explanation): a
# cycle of calls kept deployable by a deploy unit, soft (telemetry) edges, a worker nobody calls, infrastructure.
IMPORTED = """\
fleet: ledger
registry: 127.0.0.1:5000/ledger
services:
  web: {image: 127.0.0.1:5000/ledger/web:1, port: 3000, depends_on: [api, {name: collector, soft: true}]}
  api:
    image: 127.0.0.1:5000/ledger/api:1
    port: 8000
    deploy_unit: core
    depends_on: [accounts, db, {name: collector, soft: true}]
  accounts: {image: 127.0.0.1:5000/ledger/accounts:1, port: 8001, deploy_unit: core, depends_on: [api, db]}
  worker: {image: 127.0.0.1:5000/ledger/worker:1, health: null, depends_on: [{name: db, startup_only: true}]}
  db: {image: 127.0.0.1:5000/ledger/postgres:16, infrastructure: true, port: 5432, health: null}
  collector: {image: 127.0.0.1:5000/ledger/collector:1, port: 4318, health: null}
environments:
  prod:
    publish: {web: 443}
"""


def spec(digest: str = FIRST, strategy: str = "canary", **changes) -> DeploymentSpec:
    values = dict(fleet="shop", environment="prod", service="payments", image=f"{REPOSITORY}@{digest}", port=8080,
                  health="/healthz", env={"GIT_SHA": digest[7:19]}, secrets={"PAYMENTS_API_KEY": "k" * 24},
                  callers=("orders",), rollout_strategy=strategy)
    return DeploymentSpec(**{**values, **changes})


def environment(cluster, strategy: str, *steps: int) -> Environment:
    return Environment(name="prod", target="kubernetes", kubernetes=cluster, rollout=Rollout(
        strategy=strategy, steps=tuple(RolloutStep(weight) for weight in steps)))


def controller_for(target, new: DeploymentSpec, env: Environment, request=lambda: None) -> RolloutController:
    """The rollout of release_graph/assets/rollout.py, as a release runs it; no metric provider and no pause, so
    each step is taken at once (the analysis is the rollout's own concern, tested with the docker target)."""
    return RolloutController(target=target, spec=new, environment=env, providers={},
                             log=logging.getLogger("rollout"), request=request, sleep=lambda seconds: None)


def selector(kubernetes_api) -> dict:
    return kubernetes_api.object(SERVICES, NAMESPACE, "payments")["spec"]["selector"]


def deployments(kubernetes_api) -> dict[str, tuple[int, str]]:
    """Deployment name -> (replicas, the digest it runs)."""
    return {d["metadata"]["name"]: (d["spec"]["replicas"], d["metadata"]["annotations"]["release-graph.io/digest"])
            for d in kubernetes_api.objects(DEPLOYMENTS, NAMESPACE)}


def ready_pods(kubernetes_api) -> dict[str, int]:
    """Ready pods per color: what the one Service of a canary spreads the requests over."""
    counted: dict[str, int] = {}
    for pod in kubernetes_api.objects(PODS, NAMESPACE):
        if all(status["ready"] for status in pod["status"]["containerStatuses"]):
            color = pod["metadata"]["labels"]["release-graph.io/color"]
            counted[color] = counted.get(color, 0) + 1
    return counted


def writes(kubernetes_api, start: int) -> list[tuple[str, str, str | None]]:
    return [(r.method, r.resource, r.name) for r in kubernetes_api.requests()[start:] if r.writes]


# --- blue-green ---------------------------------------------------------------------------------------------


def test_blue_green_promote_switches_the_service_selector_to_the_new_color_then_removes_the_old_deployment(
        target, kubernetes_api):
    target.deploy(spec(FIRST, "blue-green"))
    assert selector(kubernetes_api) == {**POD_LABELS, "release-graph.io/color": BLUE}

    started = target.start_candidate(spec(SECOND, "blue-green"))

    assert started.container_name == "payments-green" and started.digest == SECOND
    assert deployments(kubernetes_api) == {"payments": (1, FIRST), "payments-green": (1, SECOND)}
    assert selector(kubernetes_api)["release-graph.io/color"] == BLUE  # the candidate has none of the traffic
    route = target.traffic("shop", "prod", "payments")
    assert (route.serving, route.candidate, route.strategy, route.candidate_share) == (
        "payments", "payments-green", "blue-green", 0.0)
    assert target.running("shop", "prod", "payments").digest == FIRST  # the candidate is not what serves
    start = len(kubernetes_api.requests())

    removed = target.promote_candidate("shop", "prod", "payments")

    assert removed == ("deployment/payments",)
    assert selector(kubernetes_api) == {**POD_LABELS, "release-graph.io/color": GREEN}
    # the switch is one write of the Service, before the old color's Deployment and configuration are deleted
    assert writes(kubernetes_api, start) == [
        ("PATCH", SERVICES, "payments"), ("DELETE", DEPLOYMENTS, "payments"),
        ("DELETE", "v1/secrets", "payments-secrets"), ("DELETE", "v1/configmaps", "payments-config"),
        ("PATCH", DEPLOYMENTS, "payments-green")]
    assert deployments(kubernetes_api) == {"payments-green": (1, SECOND)}
    assert {c["metadata"]["name"] for c in kubernetes_api.objects("v1/configmaps", NAMESPACE)} == {
        "payments-green-config"}
    serving = target.running("shop", "prod", "payments")
    assert (serving.container_name, serving.digest, serving.running) == ("payments-green", SECOND, True)
    assert serving.url_inside == f"http://payments.{NAMESPACE}.svc:8080"
    assert target.traffic("shop", "prod", "payments").candidate is None

    # the next release goes back to blue, and the same digest deployed again writes nothing
    target.start_candidate(spec(THIRD, "blue-green"))
    assert target.promote_candidate("shop", "prod", "payments") == ("deployment/payments-green",)
    assert deployments(kubernetes_api) == {"payments": (1, THIRD)}
    assert selector(kubernetes_api)["release-graph.io/color"] == BLUE
    target.deploy(spec(THIRD, "blue-green"))  # settles the fingerprints of what promote changed in place
    start = len(kubernetes_api.requests())
    assert not target.deploy(spec(THIRD, "blue-green")).changed and writes(kubernetes_api, start) == []


def test_blue_green_abort_leaves_the_selector_on_the_serving_color_and_deletes_the_candidate(
        target, kubernetes_api):
    target.deploy(spec(FIRST, "blue-green"))
    target.start_candidate(spec(SECOND, "blue-green"))
    target.set_candidate_weight("shop", "prod", "payments", 100)
    assert selector(kubernetes_api)["release-graph.io/color"] == GREEN
    assert target.traffic("shop", "prod", "payments").candidate_share == 100.0
    with pytest.raises(TargetError, match="moves all the traffic at once"):
        target.set_candidate_weight("shop", "prod", "payments", 50)

    assert target.abort_candidate("shop", "prod", "payments") == "payments-green"

    assert selector(kubernetes_api) == {**POD_LABELS, "release-graph.io/color": BLUE}
    assert deployments(kubernetes_api) == {"payments": (1, FIRST)}
    assert kubernetes_api.object("v1/configmaps", NAMESPACE, "payments-green-config") is None
    assert target.running("shop", "prod", "payments").digest == FIRST
    assert target.abort_candidate("shop", "prod", "payments") is None  # nothing left to abort


def test_a_blue_green_release_driven_by_the_rollout_steps_ends_on_the_new_color(target, kubernetes_api, cluster):
    target.deploy(spec(FIRST, "blue-green"))
    seen = []
    switch = target.set_candidate_weight

    def recorded(*arguments):
        before = selector(kubernetes_api)["release-graph.io/color"]
        route = switch(*arguments)
        seen.append((arguments[-1], before, route.candidate_share))
        return route

    target.set_candidate_weight = recorded

    report = controller_for(target, spec(SECOND, "blue-green"), environment(cluster, "blue-green")).run()

    assert seen == [(100, BLUE, 100.0)]  # one step: everything at once (the selector was blue before it)
    assert report.result.digest == SECOND and report.result.replaced == ("deployment/payments",)
    assert selector(kubernetes_api)["release-graph.io/color"] == GREEN
    assert deployments(kubernetes_api) == {"payments-green": (1, SECOND)}


# --- canary by replica ratio ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("weight", "total", "split"), [
    (0, 10, (0, 10)), (1, 10, (1, 9)), (10, 10, (1, 9)), (25, 10, (3, 7)), (50, 10, (5, 5)), (99, 10, (9, 1)),
    (100, 10, (10, 0)), (10, 4, (1, 3)), (50, 4, (2, 2)), (90, 4, (3, 1))])
def test_a_canary_weight_is_a_ratio_of_pods_rounded_half_up_keeping_one_pod_of_each_until_zero_or_a_hundred(
        weight, total, split):
    assert canary_replicas(weight, total) == split


def test_canary_steps_are_ratios_of_ready_pods_behind_one_service_and_promotion_keeps_the_measured_pods(
        target, kubernetes_api, cluster):
    target.deploy(spec(FIRST))
    at_each_step = []
    move = target.set_candidate_weight

    def recorded(fleet, environment_name, service, weight):
        route = move(fleet, environment_name, service, weight)
        at_each_step.append((weight, deployments(kubernetes_api), ready_pods(kubernetes_api), route.candidate_share))
        return route

    target.set_candidate_weight = recorded

    report = controller_for(target, spec(SECOND), environment(cluster, "canary", 10, 50)).run()

    # canary_replicas = 10 pods during the canary (the target's configuration): 1/9, 5/5, then all 10 new
    assert at_each_step == [
        (10, {"payments": (9, FIRST), "payments-green": (1, SECOND)}, {BLUE: 9, GREEN: 1}, 10.0),
        (50, {"payments": (5, FIRST), "payments-green": (5, SECOND)}, {BLUE: 5, GREEN: 5}, 50.0),
        (100, {"payments": (0, FIRST), "payments-green": (10, SECOND)}, {GREEN: 10}, 100.0)]
    assert selector(kubernetes_api) == POD_LABELS  # both colors behind the one Service throughout
    assert report.result.replaced == ("deployment/payments",) and report.result.container_name == "payments-green"
    assert deployments(kubernetes_api) == {"payments-green": (1, SECOND)}  # back to the fleet's one replica
    assert ready_pods(kubernetes_api) == {GREEN: 1}
    assert target.running("shop", "prod", "payments").digest == SECOND
    assert target.traffic("shop", "prod", "payments").candidate is None


def test_a_canary_started_beside_its_serving_version_has_no_pod_and_none_of_the_traffic(target, kubernetes_api):
    target.deploy(spec(FIRST))

    target.start_candidate(spec(SECOND))

    assert deployments(kubernetes_api) == {"payments": (1, FIRST), "payments-green": (0, SECOND)}
    assert ready_pods(kubernetes_api) == {BLUE: 1}
    route = target.traffic("shop", "prod", "payments")
    assert (route.candidate, route.strategy, route.candidate_weight, route.candidate_share) == (
        "payments-green", "canary", 0, 0.0)
    # a smaller weight later scales the serving version up before the candidate down: its share never overshoots
    target.set_candidate_weight("shop", "prod", "payments", 50)
    start = len(kubernetes_api.requests())
    target.set_candidate_weight("shop", "prod", "payments", 10)
    scaled = [name for method, resource, name in writes(kubernetes_api, start) if resource == DEPLOYMENTS]
    assert scaled[:2] == ["payments", "payments-green"] and ready_pods(kubernetes_api) == {BLUE: 9, GREEN: 1}


class DeployStepContext:
    """What `deliver` uses of a Dagster step's context: its log, its run (whose tags carry a release manager's
    promote or abort; none here) and the events it records."""

    def __init__(self):
        self.log = logging.getLogger("deploy-step")
        self.run = SimpleNamespace(run_id="run-1")
        self.instance = SimpleNamespace(get_run_by_id=lambda run_id: None)
        self.events = []

    def log_event(self, event) -> None:
        self.events.append(event)


def test_the_deploy_step_rolls_a_new_digest_out_progressively_and_replaces_a_first_deployment_at_once(
        target, kubernetes_api, cluster):
    env = environment(cluster, "canary", 10, 50)
    key = dg.AssetKey(["payments", "prod"])

    first, metadata = deliver(DeployStepContext(), target, spec(FIRST), env, key)
    assert first.container_name == "payments" and metadata[M.ANALYSIS_VERDICT].startswith(
        "not analysed: the first deployment here")
    again, metadata = deliver(DeployStepContext(), target, spec(FIRST), env, key)
    assert not again.changed and metadata[M.ANALYSIS_VERDICT] == "not analysed: this digest already served"

    released, metadata = deliver(DeployStepContext(), target, spec(SECOND), env, key)

    assert metadata[M.ROLLOUT_STRATEGY] == "canary" and released.container_name == "payments-green"
    steps = metadata[M.ROLLOUT_STEPS].records
    assert [(row.data["step"], row.data["weight"]) for row in steps] == [
        ("1. canary 10%", "10"), ("2. canary 50%", "50"), ("3. full traffic (bake)", "100")]  # table cells
    assert deployments(kubernetes_api) == {"payments-green": (1, SECOND)}


# --- a rollout killed half-way --------------------------------------------------------------------------------


@pytest.mark.parametrize("settled_by", ["abort", "the next rollout", "the next deployment"])
def test_a_rollout_killed_half_way_is_read_back_from_the_cluster_and_settled(target, kubernetes_api, cluster,
                                                                            settled_by):
    target.deploy(spec(FIRST))
    target.start_candidate(spec(SECOND))
    target.set_candidate_weight("shop", "prod", "payments", 50)
    config = target.config
    del target  # the run's process is killed here: nothing of it survives but what the cluster holds

    later = KubernetesTarget(cluster, KubernetesTargetConfig(**config.model_dump()))
    route = later.traffic("shop", "prod", "payments")
    assert (route.serving, route.candidate, route.candidate_weight, route.strategy) == (
        "payments", "payments-green", 50, "canary")
    assert (route.serving_replicas, route.candidate_replicas, route.candidate_share) == (5, 5, 50.0)
    assert later.running("shop", "prod", "payments").digest == FIRST

    if settled_by == "abort":  # `release-graph rollout abort payments --env prod`
        assert later.abort_candidate("shop", "prod", "payments") == "payments-green"
        assert deployments(kubernetes_api) == {"payments": (1, FIRST)}
    elif settled_by == "the next rollout":
        later.start_candidate(spec(THIRD))
        assert deployments(kubernetes_api) == {"payments": (1, FIRST), "payments-green": (0, THIRD)}
        later.promote_candidate("shop", "prod", "payments")
        assert deployments(kubernetes_api) == {"payments-green": (1, THIRD)}
    else:
        assert later.deploy(spec(THIRD)).digest == THIRD
        assert deployments(kubernetes_api) == {"payments": (1, THIRD)}
    assert later.traffic("shop", "prod", "payments").candidate is None
    assert len(kubernetes_api.objects(PODS, NAMESPACE)) == 1


@pytest.mark.parametrize("settled_by", ["abort", "the next deployment"])
def test_a_promotion_killed_after_it_removed_the_previous_version_is_finished(target, kubernetes_api, settled_by):
    target.deploy(spec(FIRST, "blue-green"))
    target.start_candidate(spec(SECOND, "blue-green"))
    target.set_candidate_weight("shop", "prod", "payments", 100)
    target._remove_slot("where", kubernetes_api.object(DEPLOYMENTS, NAMESPACE, "payments"))  # killed right after

    if settled_by == "abort":
        assert target.abort_candidate("shop", "prod", "payments") is None  # nothing to give the traffic back to
        assert deployments(kubernetes_api) == {"payments-green": (1, SECOND)}
    else:  # the deployment finds nothing serving but the candidate: it is promoted, then replaced in its slot
        assert target.running("shop", "prod", "payments") is None
        target.deploy(spec(THIRD, "blue-green"))
        assert deployments(kubernetes_api) == {"payments-green": (1, THIRD)}
        assert selector(kubernetes_api)["release-graph.io/color"] == GREEN
    assert target.running("shop", "prod", "payments").container_name == "payments-green"
    assert target.traffic("shop", "prod", "payments").candidate is None


# --- an unhealthy candidate -----------------------------------------------------------------------------------


def test_a_candidate_that_crash_loops_is_reported_with_its_pods_reason_and_the_rollout_rolls_back(
        target, kubernetes_api, controller, cluster):
    target.deploy(spec(FIRST))
    target.start_candidate(spec(SECOND))
    target.set_candidate_weight("shop", "prod", "payments", 10)
    assert target.candidate_problem("shop", "prod", "payments") is None
    (pod,) = [p["metadata"]["name"] for p in kubernetes_api.objects(PODS, NAMESPACE)
              if p["metadata"]["labels"]["release-graph.io/color"] == GREEN]

    kubernetes_api.crash(NAMESPACE, pod)  # its process starts failing while it serves

    problem = target.candidate_problem("shop", "prod", "payments")
    assert problem.startswith("candidate payments-green: ")
    assert f"pod {pod}: container payments waiting: CrashLoopBackOff" in problem
    assert "restarted 3 times; last exit 1: Error" in problem

    # the rollout's watch asks the same question between measurements: a failing candidate is rolled back
    controller.fail(THIRD, "crash-loop")
    target.abort_candidate("shop", "prod", "payments")
    with pytest.raises(DeploymentFailed) as failed:
        controller_for(target, spec(THIRD), environment(cluster, "canary", 10)).run()
    assert "payments-green scaled to 1 replicas is not available" in str(failed.value)
    assert "CrashLoopBackOff" in str(failed.value)
    assert deployments(kubernetes_api) == {"payments": (1, FIRST)} and ready_pods(kubernetes_api) == {BLUE: 1}


def test_a_blue_green_candidate_that_never_becomes_available_is_removed_and_the_selector_never_moved(
        target, kubernetes_api, controller):
    target.deploy(spec(FIRST, "blue-green"))
    controller.fail(SECOND, "image-pull")

    with pytest.raises(DeploymentFailed) as failed:
        target.start_candidate(spec(SECOND, "blue-green"))

    message = str(failed.value)
    assert "the candidate" in message and "ImagePullBackOff" in message
    assert "the serving version was never moved and keeps all the traffic" in message
    assert deployments(kubernetes_api) == {"payments": (1, FIRST)}
    assert selector(kubernetes_api)["release-graph.io/color"] == BLUE


def test_a_rollout_aborted_by_a_release_manager_gives_the_traffic_back(target, kubernetes_api, cluster):
    target.deploy(spec(FIRST))
    env = replace(environment(cluster, "canary", 50), rollout=Rollout(
        strategy="canary", steps=(RolloutStep(50, pause_seconds=5),)))

    with pytest.raises(RolledBack, match="aborted by a release manager"):
        controller_for(target, spec(SECOND), env, request=lambda: "abort").run()

    assert deployments(kubernetes_api) == {"payments": (1, FIRST)} and ready_pods(kubernetes_api) == {BLUE: 1}


# --- network policies -----------------------------------------------------------------------------------------


def policy_callers(kubernetes_api, service: str) -> list[str]:
    policy = kubernetes_api.object(POLICIES, NAMESPACE, f"{service}-callers")
    labels = [source["podSelector"]["matchLabels"]
              for rule in policy["spec"]["ingress"] for source in rule.get("from", [])]
    return [selected.get("app.kubernetes.io/name") or f"({selected['release-graph.io/role']})" for selected in labels]


def test_each_demo_service_is_deployed_with_a_network_policy_admitting_exactly_its_declared_callers(
        target, kubernetes_api, cluster):
    fleet = load_fleet(SHOP, check_files=False)
    prod = replace(fleet.environments["prod"], target="kubernetes", kubernetes=cluster, publish={})
    for service in fleet.services.values():
        target.deploy(deployment_spec(fleet, service, prod, image=f"{REPOSITORY}@{FIRST}"))

    # (the shop has end-to-end tests: its test pods call every service, as its consumers do)
    tests = "(end-to-end-tests)"
    assert {name: policy_callers(kubernetes_api, name) for name in fleet.services} == {
        "gateway": [tests], "orders": ["gateway", tests], "inventory": ["orders", tests], "payments": ["orders", tests]}
    inventory = kubernetes_api.object(POLICIES, NAMESPACE, "inventory-callers")
    assert inventory["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "inventory",
                                                                "app.kubernetes.io/part-of": "shop"}}
    assert inventory["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8080}]
    # the gateway is published (in dev, staging and prod): every source on its port; no service calls it
    assert kubernetes_api.object(POLICIES, NAMESPACE, "gateway-callers")["spec"]["ingress"][1:] == [
        {"ports": [{"protocol": "TCP", "port": 8080}]}]


def test_an_imported_fleet_s_deploy_unit_calls_both_ways_and_each_policy_admits_its_callers_only(
        tmp_path, target, kubernetes_api, cluster):
    (tmp_path / "fleet.yaml").write_text(IMPORTED)
    fleet = load_fleet(tmp_path / "fleet.yaml", check_files=False)
    prod = replace(fleet.environments["prod"], target="kubernetes", kubernetes=cluster, publish={})
    for name in ("api", "accounts", "worker", "collector"):
        target.deploy(deployment_spec(fleet, fleet.services[name], prod, image=f"{REPOSITORY}@{FIRST}"))

    # api and accounts (deploy unit core) call each other; the collector takes soft edges; nobody calls the worker
    assert policy_callers(kubernetes_api, "api") == ["accounts", "web"]
    assert policy_callers(kubernetes_api, "accounts") == ["api"]
    assert policy_callers(kubernetes_api, "collector") == ["api", "web"]
    worker = kubernetes_api.object(POLICIES, NAMESPACE, "worker-callers")
    assert worker["spec"]["ingress"] == [] and worker["spec"]["policyTypes"] == ["Ingress"]  # admits nothing
    assert kubernetes_api.object(POLICIES, NAMESPACE, "db-callers") is None  # infrastructure: not deployed here


def test_a_policy_is_written_only_when_the_callers_change_and_the_pods_are_not_rolled_for_it(
        target, kubernetes_api):
    target.deploy(spec(FIRST))
    start = len(kubernetes_api.requests())
    target.deploy(spec(FIRST))
    assert writes(kubernetes_api, start) == []  # the same callers: no write

    start = len(kubernetes_api.requests())
    assert target.deploy(spec(FIRST, callers=("orders", "refunds"))).changed
    assert writes(kubernetes_api, start) == [("PATCH", POLICIES, "payments-callers")]  # that object alone
    assert policy_callers(kubernetes_api, "payments") == ["orders", "refunds"]
    assert target.teardown_environment("shop", "prod").containers.count("NetworkPolicy/payments-callers") == 1
    assert kubernetes_api.objects(POLICIES, NAMESPACE) == []


@pytest.mark.parametrize("version", ["1.27", "1.33", "1.37"])
def test_a_rollout_s_objects_and_the_network_policy_are_valid_for_the_cluster_and_an_invalid_one_is_refused(
        version, cluster):
    cluster = replace(cluster, version=version)
    for objects in (deployment_objects(spec(SECOND), cluster, 0, color=GREEN, candidate="canary"),
                    deployment_objects(spec(SECOND), cluster, 1, color=GREEN, route_to=BLUE, candidate="blue-green")):
        validate_objects(objects, cluster, service="payments", environment="prod")
        (candidate,) = [obj for obj in objects if obj["kind"] == "Deployment"]
        assert candidate["metadata"]["name"] == "payments-green"
        assert candidate["metadata"]["labels"]["release-graph.io/track"] == "candidate"
        assert candidate["spec"]["selector"]["matchLabels"]["release-graph.io/color"] == GREEN
    policy = network_policy("shop", "payments", 8080, ("orders",), False, NAMESPACE)
    validate_objects([policy], cluster, service="payments", environment="prod")
    policy["spec"]["ingress"][0]["ports"][0]["protocol"] = ["TCP"]
    with pytest.raises(KubernetesObjectError, match=rf"NetworkPolicy/payments-callers is not a valid object for "
                                                    rf"Kubernetes {version}: field spec.ingress.0.ports.0.protocol"):
        validate_objects([policy], cluster, service="payments", environment="prod")
