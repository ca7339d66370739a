"""Real fleets have call cycles; the written manifest stays loadable and says how it broke each one."""

from __future__ import annotations

import textwrap
from pathlib import Path

from release_graph.fleet import find_hard_cycles, load_fleet
from release_graph.importer.cli import run


def compose(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "compose.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def import_compose(tmp_path: Path, capsys, text: str) -> tuple[Path, str]:
    out = tmp_path / "fleet.yaml"
    code = run([str(compose(tmp_path, text)), "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return out, captured.out


def comments(text: str) -> str:
    return " ".join(line.split("#", 1)[1].strip() for line in text.splitlines() if line.lstrip().startswith("#"))


def test_given_a_login_callback_cycle_when_imported_then_the_callback_edge_is_soft(tmp_path, capsys):
    out, printed = import_compose(tmp_path, capsys, """\
        services:
          shop:
            image: example/shop:1
            environment: {AUTH_URL: "http://auth:9000/login"}
          auth:
            image: example/auth:1
            environment: {LOGIN_CALLBACK_URL: "http://shop:8080/after-login"}
    """)
    fleet = load_fleet(out)  # loads: the loader would name a cycle of hard edges
    assert find_hard_cycles(fleet.services) == []
    (back,) = fleet.services["auth"].depends_on
    assert (back.name, back.soft) == ("shop", True)
    assert back.evidence == ("compose.yaml: auth: environment.LOGIN_CALLBACK_URL",)
    (forward,) = fleet.services["shop"].depends_on
    assert (forward.name, forward.soft) == ("auth", False)
    assert all(s.deploy_unit is None for s in fleet.services.values())
    text = comments(out.read_text())
    assert "cycle auth -> shop -> auth; auth -> shop is soft (only callback URLs name it (LOGIN_CALLBACK_URL): a " \
           "callback is handed out, not called at start-up); broken by the soft edges" in text
    assert "cycle: auth -> shop -> auth" in printed


def test_given_two_services_that_call_each_other_when_imported_then_they_share_a_deploy_unit(tmp_path, capsys):
    out, printed = import_compose(tmp_path, capsys, """\
        services:
          orders:
            image: example/orders:1
            environment: {STOCK_ADDR: "stock:7000"}
          stock:
            image: example/stock:1
            environment: {ORDERS_URL: "http://orders:8080"}
            depends_on: [orders]
    """)
    fleet = load_fleet(out)
    assert (fleet.services["orders"].deploy_unit, fleet.services["stock"].deploy_unit) == ("orders-stock",) * 2
    assert all(not e.soft for s in fleet.services.values() for e in s.depends_on)  # still hard: lineage shows them
    assert find_hard_cycles(fleet.services) == []
    text = comments(out.read_text())
    assert "deploy_unit orders-stock: orders, stock call each other in a cycle with no edge judged soft" in text
    assert "orders, stock still call each other in a cycle: they share deploy_unit orders-stock" in text
    assert "deploy unit orders-stock: orders, stock" in printed


def test_given_telemetry_in_a_three_service_cycle_when_imported_then_only_what_still_cycles_is_grouped(
    tmp_path, capsys
):
    out, _ = import_compose(tmp_path, capsys, """\
        services:
          api:
            image: example/api:1
            environment:
              OTEL_EXPORTER_OTLP_ENDPOINT: http://otel-collector:4317
              BILLING_ADDR: billing:9000
          billing:
            image: example/billing:1
            environment: {LEDGER_ADDR: "ledger:9100"}
          ledger:
            image: example/ledger:1
            environment: {BILLING_HOST: billing, REPORT_WEBHOOK: "http://api:8080/hooks/ledger"}
          otel-collector:
            image: otel/opentelemetry-collector:0.100.0
            environment: {SCRAPE_TARGETS: "api:9464"}
    """)
    fleet = load_fleet(out)
    units = {n: s.deploy_unit for n, s in fleet.services.items()}
    assert units == {"api": None, "billing": "billing-ledger", "ledger": "billing-ledger", "otel-collector": None}
    soft = {(n, e.name) for n, s in fleet.services.items() for e in s.depends_on if e.soft}
    assert soft == {("api", "otel-collector"), ("ledger", "api")}  # telemetry, and a webhook (a callback)
    assert ("otel-collector", "api") in {(n, e.name) for n, s in fleet.services.items() for e in s.depends_on}
    text = comments(out.read_text())
    assert "soft: otel-collector receives telemetry: sending to it never needs it deployed first" in text
