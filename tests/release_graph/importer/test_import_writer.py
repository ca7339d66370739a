"""The written fleet.yaml is stable (same input, same bytes), commented, and reads back exactly."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from release_graph.fleet import load_fleet
from release_graph.importer.cli import run
from release_graph.importer.writer import scalar

MANIFESTS = {
    "b/orders.yaml": """\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: orders}
        spec:
          template:
            metadata: {labels: {app: orders}}
            spec:
              containers:
                - name: orders
                  image: "example/orders:1"
                  env:
                    - {name: STOCK_URL, value: "http://stock:80/v1"}
                    - {name: GREETING, value: "yes: it's \\"quoted\\" # not a comment"}
                    - {name: EMPTY, value: ""}
                    - {name: NUMBERISH, value: "0755"}
                    - {name: NULLISH, value: "null"}
        """,
    "a/stock.yaml": """\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: stock}
        spec:
          template:
            metadata: {labels: {app: stock}}
            spec:
              containers: [{name: stock, image: "example/stock:1", ports: [{containerPort: 8080}]}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: stock}
        spec: {selector: {app: stock}, ports: [{port: 80, targetPort: 8080}]}
        """,
}


def write(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_given_the_same_manifests_when_imported_twice_in_any_order_then_the_bytes_are_identical(tmp_path, capsys):
    write(tmp_path / "fleet", MANIFESTS)
    first, second, third = (tmp_path / "out" / name for name in ("one.yaml", "two.yaml", "three.yaml"))
    files = [tmp_path / "fleet" / "b" / "orders.yaml", tmp_path / "fleet" / "a" / "stock.yaml"]
    assert run([str(tmp_path / "fleet"), "-o", str(first)]) == 0
    assert run([str(tmp_path / "fleet"), "-o", str(second)]) == 0
    assert run([*map(str, reversed(files)), "-o", str(third)]) == 0
    capsys.readouterr()
    assert first.read_bytes() == second.read_bytes() == third.read_bytes()
    assert run([str(tmp_path / "fleet"), "-o", str(first), "--force"]) == 0  # re-import over it: same bytes
    assert first.read_bytes() == second.read_bytes()


def test_values_that_look_like_other_yaml_types_stay_text(tmp_path, capsys):
    write(tmp_path / "fleet", MANIFESTS)
    out = tmp_path / "fleet.yaml"
    assert run([str(tmp_path / "fleet"), "-o", str(out)]) == 0
    env = load_fleet(out).services["orders"].env
    assert dict(env) == {"STOCK_URL": "http://stock:80/v1", "GREETING": "yes: it's \"quoted\" # not a comment",
                         "EMPTY": "", "NUMBERISH": "0755", "NULLISH": "null"}


def test_every_edge_and_every_service_carries_its_explanation(tmp_path, capsys):
    write(tmp_path / "fleet", MANIFESTS)
    out = tmp_path / "fleet.yaml"
    assert run([str(tmp_path / "fleet"), "-o", str(out)]) == 0
    lines = out.read_text().splitlines()
    # the line above each service key, and above each edge, is a comment
    document = yaml.safe_load(out.read_text())
    for name in document["services"]:
        index = lines.index(f"  {name}:")
        assert lines[index - 1].lstrip().startswith("#"), name
    edge_line = lines.index("      - name: stock")
    assert lines[edge_line - 2:edge_line] == [
        "      # b/orders.yaml: orders: env.STOCK_URL (STOCK_URL=http://stock:80/v1; Service stock port 80 ->",
        "      #   targetPort 8080)",
    ]
    assert lines[0].startswith("# Fleet fleet, written by `release-graph import` from Kubernetes manifests.")
    assert all(len(line) <= 120 for line in lines if line.lstrip().startswith("#"))


@pytest.mark.parametrize(
    "value",
    ["plain", "redis:7", "yes", "no", "on", "null", "~", "", "1.10", "0755", "22:22", "true", "- item", "a: b",
     "# hash", "x #y", "@at", "*star", "&amp", "!bang", "%pct", "{brace", "[bracket", "quote\"d", "back\\slash",
     "tab\there", "new\nline", "ünïcödé", "http://svc:8080/path?a=b&c=d", "trailing:", " padded "],
)
def test_scalars_read_back_as_the_same_text(value):
    assert yaml.safe_load(f"key: {scalar(value)}\n") == {"key": value}
