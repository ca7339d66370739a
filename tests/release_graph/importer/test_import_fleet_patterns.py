"""Patterns that real fleets use and the importer once missed (issue 15), one small fixture each.

Every fixture is written here for the test (no third-party file), imported through the command line, and
the written fleet.yaml is read back with the real manifest loader. Each test asserts what a user relies on:
the edge with its evidence, the secret reference, the REVIEW note or the error.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from release_graph.fleet import load_fleet
from release_graph.importer.cli import run


def write(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def imported(capsys, tmp_path: Path, *inputs: object, options: tuple[str, ...] = ()) -> tuple[object, str, str]:
    """(fleet as the loader reads it, comments of the file as one line, printed summary)."""
    out = tmp_path / "out" / "fleet.yaml"
    code = run([*(str(i) for i in inputs), "-o", str(out), "--force", *options])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    text = out.read_text()
    notes = " ".join(line.split("#", 1)[1].strip() for line in text.splitlines() if line.lstrip().startswith("#"))
    return load_fleet(out, check_files=False), notes, captured.out


def failed(capsys, tmp_path: Path, *inputs: object) -> str:
    """stderr of an import that must fail and write nothing."""
    out = tmp_path / "not-written" / "fleet.yaml"
    code = run([*(str(i) for i in inputs), "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 2, captured.out
    assert not out.exists()
    return captured.err


def edges(fleet) -> dict[tuple[str, str], object]:
    return {(name, edge.name): edge for name, service in fleet.services.items() for edge in service.depends_on}


# --- 1. bare `environment` names take their value from .env, --env-file and --env ----------------------------


def test_bare_environment_names_take_their_values_from_env_files_and_name_services(tmp_path, capsys):
    app = write(tmp_path / "app", {
        ".env": "ORDERS_ADDR=orders:7000\nLOG_LEVEL=debug\n",
        "extra.env": "ORDERS_ADDR=orders:7001\n",
        "compose.yaml": """\
            services:
              shop:
                image: example/shop:1.0
                environment:
                  - ORDERS_ADDR
                  - LOG_LEVEL
                  - FROM_THE_SHELL
              orders:
                image: example/orders:1.0
        """,
    })
    fleet, notes, _ = imported(capsys, tmp_path, app)
    shop = fleet.services["shop"]
    assert dict(shop.env) == {"ORDERS_ADDR": "orders:7000", "LOG_LEVEL": "debug"}
    assert edges(fleet)[("shop", "orders")].evidence == ("compose.yaml: shop: environment.ORDERS_ADDR",)
    assert "ORDERS_ADDR=orders:7000; value from .env:1" in notes
    assert "values of bare `environment` names, from the project's variables: LOG_LEVEL (.env:2), " \
           "ORDERS_ADDR (.env:1)" in notes
    assert "taken from the shell at run time, so not written: FROM_THE_SHELL" in notes

    fleet, notes, _ = imported(capsys, tmp_path, app / "compose.yaml", options=(
        "--env-file", str(app / "extra.env"), "--env", "LOG_LEVEL=warn"))
    assert dict(fleet.services["shop"].env) == {"ORDERS_ADDR": "orders:7001", "LOG_LEVEL": "warn"}
    assert "LOG_LEVEL (--env), ORDERS_ADDR (extra.env:1)" in notes


# --- 2. an override file that holds only comments ----------------------------------------------------------------


def test_an_override_file_of_only_comments_is_empty_as_in_compose(tmp_path, capsys):
    app = write(tmp_path / "app", {
        "docker-compose.yml": "services:\n  web:\n    image: example/web:1.0\n",
        "docker-compose.override.yml": "# services:\n#   web:\n#     ports: ['8080:80']\n",
    })
    fleet, notes, _ = imported(capsys, tmp_path, app)
    assert set(fleet.services) == {"web"}
    assert "docker-compose.override.yml holds no settings (only comments or nothing): nothing merged from it" in notes
    # only empty files: still an error that names them
    write(app, {"docker-compose.yml": "# nothing yet\n"})
    assert "docker-compose.yml, docker-compose.override.yml: no services defined" in failed(capsys, tmp_path, app)
