"""Bad deploy files: a clear error naming file and line, exit code 2, and nothing written.

An existing fleet.yaml is never half-replaced: the output is written to a temporary file and renamed
over the old one only after everything succeeded.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from release_graph.importer.cli import run

PREVIOUS = "# a fleet.yaml someone edited by hand\n"


def write(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def fails(tmp_path: Path, capsys, *inputs: object, extra: tuple[str, ...] = ("--force",)) -> str:
    """Run an import that must fail over an existing output; return stderr."""
    out = tmp_path / "out" / "fleet.yaml"
    out.parent.mkdir(exist_ok=True)
    out.write_text(PREVIOUS)
    code = run([*(str(i) for i in inputs), "-o", str(out), *extra])
    captured = capsys.readouterr()
    assert code == 2, captured.out
    assert captured.out == ""
    assert out.read_text() == PREVIOUS  # untouched
    assert sorted(p.name for p in out.parent.iterdir()) == ["fleet.yaml"]  # no temporary file left behind
    assert "nothing written" in captured.err
    return captured.err


def test_unparsable_compose_yaml_names_file_and_line(tmp_path, capsys):
    write(tmp_path, {"compose.yaml": "services:\n  api:\n    image: nginx\n    ports: [8080\n  db: {}\n"})
    err = fails(tmp_path, capsys, tmp_path / "compose.yaml")
    assert "compose.yaml:5:" in err and "not valid YAML" in err


def test_unparsable_manifest_in_a_folder_names_file_and_line(tmp_path, capsys):
    write(tmp_path / "k8s", {
        "good.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n",
        "broken.yaml": "apiVersion: apps/v1\nkind: Deployment\n---\napiVersion: v1\nkind: Service\n"
                       "metadata:\n  name: x\n    labels: {}\n",
    })
    err = fails(tmp_path, capsys, tmp_path / "k8s")
    assert "broken.yaml:8:" in err and "not valid YAML" in err


def test_compose_depends_on_an_undefined_service(tmp_path, capsys):
    write(tmp_path, {"compose.yaml": """\
        services:
          api:
            image: example/api:1
            depends_on:
              - cache
              - db
          cache:
            image: redis:7
    """})
    err = fails(tmp_path, capsys, tmp_path / "compose.yaml")
    assert "compose.yaml:6: services.api.depends_on: service 'db' is not defined (defined: api, cache)" in err


def test_compose_link_to_an_undefined_service(tmp_path, capsys):
    write(tmp_path, {"compose.yaml": "services:\n  api:\n    image: example/api:1\n    links: ['db:database']\n"})
    err = fails(tmp_path, capsys, tmp_path / "compose.yaml")
    assert "compose.yaml:4: services.api.links: 'db:database' names service 'db', which is not defined" in err


def test_compose_depends_on_a_service_disabled_by_profiles(tmp_path, capsys):
    write(tmp_path, {"compose.yaml": """\
        services:
          api: {image: "example/api:1", depends_on: [mock]}
          mock: {image: "example/mock:1", profiles: [test]}
    """})
    err = fails(tmp_path, capsys, tmp_path / "compose.yaml")
    assert "service 'mock' is disabled by its profiles (test): pass --profile test" in err


@pytest.mark.parametrize(
    ("kind_lines", "message"),
    [
        ("apiVersion: apps/v1\nkind: Deploymnet", "deploy.yaml:9: unknown kind 'Deploymnet' for apiVersion apps/v1"),
        ("apiVersion: v1\nkind: Deployment",
         "deploy.yaml:9: unknown kind 'Deployment' for apiVersion v1 (Deployment belongs to apps, extensions)"),
        ("apiVersion: v1", "deploy.yaml:8: document 2 is not a Kubernetes object: no `kind`"),
    ],
)
def test_kubernetes_file_with_an_unknown_kind(tmp_path, capsys, kind_lines, message):
    write(tmp_path, {"deploy.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: ok}\nspec:\n"
                                    "  template: {spec: {containers: [{name: c, image: 'x/y:1'}]}}\n---\n"
                                    "# the second document\n" + kind_lines + "\nmetadata: {name: bad}\n"})
    err = fails(tmp_path, capsys, tmp_path / "deploy.yaml")
    assert message in err


def test_duplicate_keys_are_an_error_not_a_silent_choice(tmp_path, capsys):
    write(tmp_path, {"compose.yaml": "services:\n  api:\n    image: a/b:1\n    image: a/b:2\n"})
    err = fails(tmp_path, capsys, tmp_path / "compose.yaml")
    assert "compose.yaml:4: key 'image' is defined twice in one mapping (first at line 3)" in err


def test_a_required_variable_without_a_value(tmp_path, capsys):
    write(tmp_path, {"compose.yaml": "services:\n  api:\n    image: example/api:${TAG:?set TAG to the release}\n"})
    err = fails(tmp_path, capsys, tmp_path / "compose.yaml")
    assert "compose.yaml:3: required variable TAG is missing a value: set TAG to the release" in err


def test_a_service_with_neither_image_nor_build(tmp_path, capsys):
    write(tmp_path, {"compose.yaml": "services:\n  api:\n    environment: [A=1]\n"})
    err = fails(tmp_path, capsys, tmp_path / "compose.yaml")
    assert "compose.yaml:2: services.api: neither `image` nor `build`" in err


def test_mixed_compose_files_and_manifests(tmp_path, capsys):
    write(tmp_path, {"compose.yaml": "services:\n  api: {image: 'a/b:1'}\n",
                     "k8s/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"})
    err = fails(tmp_path, capsys, tmp_path / "compose.yaml", tmp_path / "k8s")
    assert "the inputs mix docker-compose files (compose.yaml) and Kubernetes manifests (cm.yaml)" in err


def test_an_existing_output_is_kept_without_force(tmp_path, capsys):
    write(tmp_path, {"compose.yaml": "services:\n  api: {image: 'a/b:1'}\n"})
    err = fails(tmp_path, capsys, tmp_path / "compose.yaml", extra=())
    assert "exists; pass --force to replace it" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--fleet-name", "My Fleet"), "--fleet-name 'My Fleet': expected a DNS label"),
        (("--registry", "http://registry/shop"), "--registry 'http://registry/shop': expected an image repository"),
        (("--env", "NOVALUE"), "--env 'NOVALUE': expected NAME=VALUE"),
    ],
)
def test_bad_options(tmp_path, capsys, extra, message):
    write(tmp_path, {"compose.yaml": "services:\n  api: {image: 'a/b:1'}\n"})
    err = fails(tmp_path, capsys, tmp_path / "compose.yaml", extra=("--force", *extra))
    assert message in err


def test_a_missing_input_and_a_file_that_is_neither_kind(tmp_path, capsys):
    err = fails(tmp_path, capsys, tmp_path / "nope.yaml")
    assert "nope.yaml: no such file or folder" in err
    write(tmp_path, {"values.yaml": "replicaCount: 1\n"})
    err = fails(tmp_path, capsys, tmp_path / "values.yaml")
    assert "neither a compose file (no top-level `services:`) nor a Kubernetes manifest (no `kind:`)" in err
