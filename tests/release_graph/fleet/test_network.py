"""The calls a fleet's network allows come from its manifest: a service is called only by the services that declare
an edge to it, and by the outside world where an environment publishes it. The same rule as Kubernetes
NetworkPolicies, one per service."""

from __future__ import annotations

from pathlib import Path

from release_graph.fleet import load_fleet
from release_graph.fleet.network import END_TO_END, OUTSIDE, allowed_calls, network_policies, refused

SHOP_FLEET = Path(__file__).resolve().parents[3] / "examples" / "shop" / "fleet.yaml"

# A fleet as `release-graph import` writes one: a cycle of calls kept deployable by a shared deploy unit, a soft
# (telemetry) edge, a start-up-only edge from compose, an infrastructure service and a worker without a port.
IMPORTED = """\
fleet: ledger
registry: 127.0.0.1:5000/ledger
services:
  web:
    image: 127.0.0.1:5000/ledger/web:1
    port: 3000
    depends_on: [api, {name: collector, soft: true}]
  api:
    image: 127.0.0.1:5000/ledger/api:1
    port: 8000
    deploy_unit: core
    depends_on: [accounts, db, {name: collector, soft: true}]
  accounts:
    image: 127.0.0.1:5000/ledger/accounts:1
    port: 8001
    deploy_unit: core
    depends_on: [api, db]
  worker:
    image: 127.0.0.1:5000/ledger/worker:1
    health: null
    depends_on: [{name: db, startup_only: true}]
  db:
    image: 127.0.0.1:5000/ledger/postgres:16
    infrastructure: true
    port: 5432
    health: null
  collector:
    image: 127.0.0.1:5000/ledger/collector:1
    port: 4318
    health: null
environments:
  prod:
    publish: {web: 443}
"""


def callers_in(policy: dict) -> list[str]:
    return [source["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
            for rule in policy["spec"]["ingress"] for source in rule.get("from", [])]


def test_the_demo_shop_allows_the_gateway_to_call_orders_but_never_inventory_directly():
    fleet = load_fleet(SHOP_FLEET, check_files=False)
    calls = allowed_calls(fleet)
    assert [(c.caller, c.callee, c.port) for c in calls if c.caller != END_TO_END] == [
        (OUTSIDE, "gateway", 8080), ("gateway", "orders", 8080),
        ("orders", "inventory", 8080), ("orders", "payments", 8080)]
    assert calls[0].why == "published in dev on 18081, staging on 18082, prod on 18080"
    # the fleet's end-to-end tests call every service by name
    assert sorted(c.callee for c in calls if c.caller == END_TO_END) == ["gateway", "inventory", "orders", "payments"]
    assert refused(fleet, "gateway", "inventory") and not refused(fleet, "orders", "inventory")
    assert refused(fleet, "inventory", "orders")  # an edge allows its direction only

    policies = {p["metadata"]["name"]: p for p in network_policies(fleet, namespace="shop-prod")}
    assert sorted(policies) == ["gateway-callers", "inventory-callers", "orders-callers", "payments-callers"]
    inventory = policies["inventory-callers"]
    assert inventory["metadata"]["namespace"] == "shop-prod"
    assert inventory["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "inventory",
                                                                "app.kubernetes.io/part-of": "shop"}}
    assert inventory["spec"]["policyTypes"] == ["Ingress"]
    tests = {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "shop",
                                             "release-graph.io/role": "end-to-end-tests"}}}
    assert inventory["spec"]["ingress"] == [{
        "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "orders",
                                                  "app.kubernetes.io/part-of": "shop"}}}, tests],
        "ports": [{"protocol": "TCP", "port": 8080}]}]
    # the gateway: no service calls it, the fleet's tests and the outside reach it on its port only
    assert policies["gateway-callers"]["spec"]["ingress"] == [
        {"from": [tests], "ports": [{"protocol": "TCP", "port": 8080}]}, {"ports": [{"protocol": "TCP", "port": 8080}]}]


def test_an_imported_fleet_admits_exactly_its_declared_callers_whatever_kind_of_edge(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text(IMPORTED)
    fleet = load_fleet(path)
    policies = {p["metadata"]["name"].removesuffix("-callers"): p for p in network_policies(fleet, "ledger")}
    assert {name: callers_in(policy) for name, policy in policies.items()} == {
        "web": [],  # published: the outside only
        "api": ["accounts", "web"],  # inside the deploy unit too: a cycle of calls is still two edges
        "accounts": ["api"],
        "worker": [],  # nobody calls it, and it has no port: it admits nothing
        "db": ["accounts", "api", "worker"],  # a start-up-only edge may hide a call: admitted
        "collector": ["api", "web"],  # soft edges order nothing, yet they are calls
    }
    assert policies["worker"]["spec"]["ingress"] == []
    assert policies["web"]["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 3000}]}]
    whys = {(c.caller, c.callee): c.why for c in allowed_calls(fleet)}
    assert whys[("accounts", "api")] == "accounts depends_on api: edge, deploy unit core"
    assert whys[("web", "collector")] == "web depends_on collector: soft edge"
    assert whys[("worker", "db")] == "worker depends_on db: start-up edge"
    assert refused(fleet, "web", "db") and refused(fleet, "worker", "api")


def test_validate_explains_the_network_call_by_call(capsys):
    from release_graph.cli.main import main as cli_main

    assert cli_main(["validate", str(SHOP_FLEET), "--explain-network"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1:] == [
        "calls the manifest allows (its edges, published ports and end-to-end tests): the only calls the network "
        "admits, on the docker target (its switch) and in the NetworkPolicies generated for kubernetes:",
        "  (outside) -> gateway:8080  (published in dev on 18081, staging on 18082, prod on 18080)",
        "  (end-to-end tests) -> gateway:8080  (the fleet's e2e tests call it by name)",
        "  gateway -> orders:8080  (gateway depends_on orders: edge)",
        "  (end-to-end tests) -> orders:8080  (the fleet's e2e tests call it by name)",
        "  orders -> inventory:8080  (orders depends_on inventory: edge)",
        "  (end-to-end tests) -> inventory:8080  (the fleet's e2e tests call it by name)",
        "  orders -> payments:8080  (orders depends_on payments: edge)",
        "  (end-to-end tests) -> payments:8080  (the fleet's e2e tests call it by name)",
    ]


def test_a_refused_call_fails_the_network_policy_check_of_both_ends_until_it_is_old_and_names_who_may_call():
    from release_graph.release.matrix import network_policy_evaluation
    from resources.targets import RefusedCalls

    shop = load_fleet(SHOP_FLEET)
    # Given the switch refused gateway's call to inventory just now, and a call from an unknown address long ago
    refused = {"gateway -> inventory": RefusedCalls(total=3, recent=2, window_seconds=600),
               "unknown -> payments": RefusedCalls(total=1, recent=0, window_seconds=600)}
    # Then inventory's check fails naming caller and callee, and who may call it
    passed, shown = network_policy_evaluation(shop, shop.services["inventory"], refused)
    assert not passed
    assert shown["drift"] == ("refused: gateway -> inventory (3 calls, 2 in the last 10 min): no edge in the "
                              "manifest")
    assert shown["allowed_callers"] == "orders"
    # and so does gateway's, the caller
    assert not network_policy_evaluation(shop, shop.services["gateway"], refused)[0]
    # while a refusal older than the window is listed but no longer fails payments' check
    passed, shown = network_policy_evaluation(shop, shop.services["payments"], refused)
    assert passed and shown["refused_calls"] == "unknown -> payments: 1 call, 0 in the last 10 min"
    assert shown["drift"] == "no call to or from payments refused lately; allowed callers: orders"
    # and orders, neither caller nor callee of a refused call, passes with nothing to show
    passed, shown = network_policy_evaluation(shop, shop.services["orders"], refused)
    assert passed and shown["refused_calls"] == "none" and shown["allowed_callers"] == "gateway"
