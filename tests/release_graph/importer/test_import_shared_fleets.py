"""Two real public fleets, imported in place from ../shared/fleets (or $RELEASE_GRAPH_FLEETS).

The deploy files are third-party (Apache-2.0) and never copied into this repository. Without the folder
these tests skip and say why, except under CI=true, where a missing folder fails them: CI must not pass
by not looking.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from release_graph.fleet import ManifestError, load_fleet, topological_order
from release_graph.importer.cli import run

REPO_ROOT = Path(__file__).resolve().parents[3]


def shared_fleets() -> Path:
    folder = Path(os.environ.get("RELEASE_GRAPH_FLEETS") or REPO_ROOT.parent / "shared" / "fleets")
    if not folder.is_dir():
        message = f"the shared fleets folder {folder} is absent (set RELEASE_GRAPH_FLEETS to its path)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return folder


def comments(text: str) -> str:
    return " ".join(line.split("#", 1)[1].strip() for line in text.splitlines() if line.lstrip().startswith("#"))


def import_fleet(capsys, *argv: object) -> tuple[str, float]:
    started = time.perf_counter()
    code = run([str(a) for a in argv])
    elapsed = time.perf_counter() - started
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out, elapsed


def readme_number(pattern: str) -> int:
    """A number the fleets README states, so the tests and the README cannot drift apart."""
    text = (shared_fleets() / "README.md").read_text()
    match = re.search(pattern, text, re.S)
    assert match, f"the README no longer says {pattern!r}"
    return int(match.group(1))


# --- online-boutique: Kubernetes manifests, prebuilt images -----------------------------------------------

BOUTIQUE_EDGES = {
    ("frontend", "adservice"): "AD_SERVICE_ADDR",
    ("frontend", "cartservice"): "CART_SERVICE_ADDR",
    ("frontend", "checkoutservice"): "CHECKOUT_SERVICE_ADDR",
    ("frontend", "currencyservice"): "CURRENCY_SERVICE_ADDR",
    ("frontend", "productcatalogservice"): "PRODUCT_CATALOG_SERVICE_ADDR",
    ("frontend", "recommendationservice"): "RECOMMENDATION_SERVICE_ADDR",
    ("frontend", "shippingservice"): "SHIPPING_SERVICE_ADDR",
    ("checkoutservice", "cartservice"): "CART_SERVICE_ADDR",
    ("checkoutservice", "currencyservice"): "CURRENCY_SERVICE_ADDR",
    ("checkoutservice", "emailservice"): "EMAIL_SERVICE_ADDR",
    ("checkoutservice", "paymentservice"): "PAYMENT_SERVICE_ADDR",
    ("checkoutservice", "productcatalogservice"): "PRODUCT_CATALOG_SERVICE_ADDR",
    ("checkoutservice", "shippingservice"): "SHIPPING_SERVICE_ADDR",
    ("recommendationservice", "productcatalogservice"): "PRODUCT_CATALOG_SERVICE_ADDR",
    ("cartservice", "redis-cart"): "REDIS_ADDR",
    ("loadgenerator", "frontend"): "FRONTEND_ADDR",
}


@pytest.fixture
def boutique(tmp_path, capsys):
    folder = shared_fleets() / "online-boutique" / "kubernetes-manifests"
    out = tmp_path / "boutique" / "fleet.yaml"
    printed, elapsed = import_fleet(capsys, folder, "-o", out)
    return out, printed, elapsed


def test_online_boutique_every_service_is_imported_and_redis_cart_is_infrastructure(boutique):
    out, printed, _ = boutique
    fleet = load_fleet(out)  # everything is prebuilt, so the file checks have nothing missing to find
    assert fleet.name == "online-boutique"
    assert len(fleet.services) == readme_number(r"\*\*online-boutique\*\*: (\d+) services") == 12
    infrastructure = {n for n, s in fleet.services.items() if s.infrastructure}
    assert infrastructure == {"redis-cart"}
    assert len(fleet.services) - len(infrastructure) == readme_number(r"online-boutique\*\*: \d+ services, (\d+) app")
    assert fleet.services["redis-cart"].image == "redis:alpine"
    assert all(s.is_prebuilt for s in fleet.services.values())  # the manifests name images, carry no sources
    assert fleet.services["frontend"].health == "/_healthz"
    assert [e.target for e in fleet.environments.values()] == ["kubernetes"]
    assert "services: 12 (11 application, 1 infrastructure)" in printed
    # the environment names the manifests' namespace and a cluster version, and every object a release would send
    # there (11 services' and the NetworkPolicies) is valid for that version
    from resources.targets.kubernetes.objects import validate_environment

    (dev,) = fleet.environments.values()
    assert dev.kubernetes.namespace == "default"
    assert validate_environment(fleet, dev) > 11 * 3


def test_online_boutique_all_sixteen_edges_with_their_env_evidence_and_nothing_invented(boutique):
    out, _, _ = boutique
    fleet = load_fleet(out)
    found = {(name, edge.name): edge for name, svc in fleet.services.items() for edge in svc.depends_on}
    assert set(found) == set(BOUTIQUE_EDGES)
    assert len(found) == readme_number(r"All (\d+) dependency edges")
    for (consumer, provider), key in BOUTIQUE_EDGES.items():
        edge = found[(consumer, provider)]
        assert f"{consumer}.yaml: {consumer}: env.{key}" in edge.evidence
        assert not edge.soft and not edge.startup_only
    assert [e for e in found.values() if e.name != "frontend" and len(e.evidence) != 1] == []
    # loadgenerator also waits for frontend in an init container before it starts
    assert found[("loadgenerator", "frontend")].evidence == (
        "loadgenerator.yaml: loadgenerator: env.FRONTEND_ADDR",
        "loadgenerator.yaml: loadgenerator: initContainers[frontend-check].command",
        "loadgenerator.yaml: loadgenerator: initContainers[frontend-check].env.FRONTEND_ADDR",
    )
    # cartservice -> redis-cart lives in cartservice.yaml, where redis-cart is defined too


def test_online_boutique_has_no_cycle_and_the_longest_chain_ends_at_redis_cart(boutique):
    out, printed, _ = boutique
    fleet = load_fleet(out)
    order = topological_order(fleet.services)
    longest: dict[str, list[str]] = {}
    for name in order:  # providers first
        deps = [longest[d] for d in fleet.services[name].hard_deps]
        longest[name] = [name, *max(deps, key=len, default=[])]
    assert max(longest.values(), key=len) == ["loadgenerator", "frontend", "checkoutservice", "cartservice",
                                              "redis-cart"]
    assert "cycle" not in printed
    assert "0 cycles; 0 deploy units" in comments(out.read_text())


def test_online_boutique_pitfalls_are_reported_not_papered_over(boutique):
    out, printed, _ = boutique
    fleet = load_fleet(out)
    text = comments(out.read_text())
    # frontend names shoppingassistantservice, which no manifest deploys: unresolved, never an invented edge
    assert "shoppingassistantservice" not in fleet.services
    assert "unresolved: frontend -> shoppingassistantservice:80 (frontend.yaml: frontend: " \
           "env.SHOPPING_ASSISTANT_SERVICE_ADDR)" in printed
    assert "frontend -> shoppingassistantservice:80: frontend.yaml: frontend: env.SHOPPING_ASSISTANT_SERVICE_ADDR " \
           "(SHOPPING_ASSISTANT_SERVICE_ADDR=shoppingassistantservice:80): no Service shoppingassistantservice" in text
    # emailservice listens on 8080 behind a Service on 5000; the caller's edge says so
    assert fleet.services["emailservice"].port == 8080
    assert "Service emailservice: port 5000 -> targetPort 8080" in text
    assert "EMAIL_SERVICE_ADDR=emailservice:5000; Service emailservice port 5000 -> targetPort 8080" in text
    # ServiceAccounts are skipped; the kustomization is reported (it leaves loadgenerator out), not followed
    assert "ServiceAccount (11):" in text
    assert "kustomization.yaml: a kustomization, reported and not followed" in text
    assert "read but not listed there: loadgenerator.yaml" in text


# --- robot-shop: one docker-compose file, built services, depends_on only --------------------------------

ROBOT_EDGES = {
    ("catalogue", "mongodb"), ("user", "mongodb"), ("user", "redis"), ("cart", "redis"), ("shipping", "mysql"),
    ("ratings", "mysql"), ("payment", "rabbitmq"), ("dispatch", "rabbitmq"), ("web", "catalogue"),
    ("web", "user"), ("web", "shipping"), ("web", "payment"),
}


@pytest.fixture
def robot_shop(tmp_path, capsys):
    compose = shared_fleets() / "robot-shop" / "docker-compose.yaml"
    out = tmp_path / "robot" / "fleet.yaml"
    printed, elapsed = import_fleet(capsys, compose, "-o", out)
    return out, printed, elapsed


def test_robot_shop_eight_built_services_and_four_infrastructure_services(robot_shop):
    out, printed, _ = robot_shop
    # The compose file was copied without the services' source folders, so the build contexts it names are
    # not here: load without file checks, and see that exactly those checks are what fails.
    fleet = load_fleet(out, check_files=False)
    with pytest.raises(ManifestError) as missing:
        load_fleet(out, check_files=True)
    assert all("build context" in p and "does not exist" in p for p in missing.value.problems)
    assert len(missing.value.problems) == 8

    assert len(fleet.services) == readme_number(r"\*\*robot-shop\*\*: (\d+) services") == 12
    infrastructure = {n for n, s in fleet.services.items() if s.infrastructure}
    assert infrastructure == {"mongodb", "mysql", "redis", "rabbitmq"}
    assert len(infrastructure) == readme_number(r"application services \(web.*?\) and (\d+) infrastructure")
    built = {n for n, s in fleet.services.items() if not s.is_prebuilt}
    assert built == {"web", "cart", "catalogue", "user", "payment", "shipping", "ratings", "dispatch"}
    assert len(built) == readme_number(r"robot-shop\*\*: \d+ services, (\d+) application")
    compose_folder = shared_fleets() / "robot-shop"
    for name in built:
        service = fleet.services[name]
        assert Path(service.repo_url) == compose_folder.resolve() and service.path == name
        assert service.build.test_target is None  # no Dockerfile here to show a test stage
    assert (fleet.services["redis"].image, fleet.services["rabbitmq"].image) == ("redis:6.2-alpine",
                                                                                 "rabbitmq:3.8-management-alpine")
    assert "services: 12 (8 application, 4 infrastructure)" in printed


def test_robot_shop_twelve_depends_on_edges_all_startup_only(robot_shop):
    out, printed, _ = robot_shop
    fleet = load_fleet(out, check_files=False)
    found = {(name, edge.name): edge for name, svc in fleet.services.items() for edge in svc.depends_on}
    assert set(found) == ROBOT_EDGES
    assert len(found) == readme_number(r"declares only `depends_on` \((\d+) edges\)")
    for (consumer, _), edge in found.items():
        # the compose file sets no environment that names a service (ratings has only APP_ENV=prod), so
        # depends_on is the only evidence, and no call was seen
        assert edge.evidence == (f"docker-compose.yaml: {consumer}: depends_on",)
        assert edge.startup_only and not edge.soft
    assert dict(fleet.services["ratings"].env) == {"APP_ENV": "prod"}
    assert "edges: 12 (12 hard, 12 of them startup-only; 0 soft)" in printed
    # the 7 calls hard-coded in the services' source (payment -> cart, web -> ratings, ...) are not invented
    assert ("payment", "cart") not in found and ("web", "ratings") not in found
    assert "Calls hard-coded in the services' source are invisible here" in comments(out.read_text())


def test_robot_shop_health_ports_and_unset_variables_come_from_the_compose_file(robot_shop):
    out, _, _ = robot_shop
    fleet = load_fleet(out, check_files=False)
    assert {n: (s.port, s.health) for n, s in fleet.services.items() if not s.infrastructure} == {
        "cart": (8080, "/health"), "catalogue": (8080, "/health"), "user": (8080, "/health"),
        "shipping": (8080, "/health"), "payment": (8080, "/health"), "ratings": (80, "/_health"),
        "web": (8080, "/"), "dispatch": (None, None),
    }
    assert {n: s.port for n, s in fleet.services.items() if s.infrastructure} == {
        "mongodb": 27017, "mysql": 3306, "redis": 6379, "rabbitmq": 5672}
    text = comments(out.read_text())
    assert "INSTANA_AGENT_KEY (first at docker-compose.yaml:147), REPO (first at docker-compose.yaml:6)" in text
    assert "build arg KEY is not written: its name says secret" in text
    assert "curl -H X-INSTANA-SYNTHETIC: 1 -f http://localhost:8080/health" in text
    # mongodb and mysql are built from custom folders with an image name that needs REPO and TAG
    assert (fleet.services["mongodb"].image, fleet.services["mysql"].image) == ("docker.io/library/mongo",
                                                                                "docker.io/library/mysql")
    assert "REVIEW: compose builds this from mongo/ (a custom mongo image) and gives '/rs-mongodb:'" in text


def test_robot_shop_with_its_variables_set_uses_the_images_compose_would_build(tmp_path, capsys):
    compose = shared_fleets() / "robot-shop" / "docker-compose.yaml"
    out = tmp_path / "fleet.yaml"
    import_fleet(capsys, compose, "-o", out, "--env", "REPO=robotshop", "--env", "TAG=2.1.0",
                 "--registry", "127.0.0.1:5000/robots")
    fleet = load_fleet(out, check_files=False)
    assert fleet.registry == "127.0.0.1:5000/robots"
    assert (fleet.services["mongodb"].image, fleet.services["mysql"].image) == ("robotshop/rs-mongodb:2.1.0",
                                                                                "robotshop/rs-mysql-db:2.1.0")


def test_both_fleets_import_quickly_and_stably(tmp_path, capsys, boutique, robot_shop):
    for out, _, elapsed in (boutique, robot_shop):
        assert elapsed < 5, f"importing {out.parent.name} took {elapsed:.2f}s"
    again = tmp_path / "boutique" / "again.yaml"
    import_fleet(capsys, shared_fleets() / "online-boutique" / "kubernetes-manifests", "-o", again)
    assert again.read_bytes() == boutique[0].read_bytes()
