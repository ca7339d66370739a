"""The importer as people run it: `python -m release_graph.importer` and `release-graph import`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from release_graph.cli.main import main as release_graph_main
from release_graph.fleet import load_fleet

COMPOSE = """\
    services:
      web:
        build: ./web
        ports: ["8080:8080"]
        environment: {API_URL: "http://api:9000"}
      api:
        image: example/api:1.0
"""


def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    (folder / "web").mkdir(parents=True)
    (folder / "web" / "Dockerfile").write_text("FROM python:3.11-slim AS app\nFROM app AS test\n")
    (folder / "compose.yaml").write_text(textwrap.dedent(COMPOSE))
    return folder


def test_python_dash_m_writes_a_fleet_that_the_loader_accepts(tmp_path):
    folder = project(tmp_path)
    out = tmp_path / "fleet.yaml"
    done = subprocess.run([sys.executable, "-m", "release_graph.importer", str(folder), "-o", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out} (fleet project, from 1 docker-compose file in" in done.stdout
    fleet = load_fleet(out)
    assert fleet.services["web"].language == "python" and fleet.services["web"].build.test_target == "test"
    assert [e.name for e in fleet.services["web"].depends_on] == ["api"]


def test_release_graph_import_dispatches_to_the_importer(tmp_path, capsys):
    folder = project(tmp_path)
    out = tmp_path / "nested" / "fleet.yaml"
    assert release_graph_main(["import", str(folder / "compose.yaml"), "-o", str(out), "--fleet-name", "demo"]) == 0
    assert "wrote" in capsys.readouterr().out
    fleet = load_fleet(out)
    assert fleet.name == "demo" and fleet.services["web"].repo == "../project"
    assert release_graph_main(["validate", str(out)]) == 0


def test_help_and_usage_errors(capsys):
    assert release_graph_main(["import", "--help"]) == 0
    assert "--fleet-name" in capsys.readouterr().out
    assert release_graph_main(["import"]) == 2
    assert "the following arguments are required: FILE_OR_FOLDER" in capsys.readouterr().err


def test_the_default_output_is_fleet_yaml_in_the_working_folder(tmp_path):
    folder = project(tmp_path)
    done = subprocess.run([sys.executable, "-m", "release_graph.importer", "project"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert load_fleet(tmp_path / "fleet.yaml").services["web"].repo == "project"
    assert (folder / "compose.yaml").exists()
