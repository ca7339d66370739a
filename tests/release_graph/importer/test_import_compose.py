"""A team with docker-compose files runs `release-graph import` and gets a fleet.yaml that loads.

Each story writes real compose files (and Dockerfiles, so the manifest loads with its file checks),
imports them through the command line and reads the result with the project's manifest loader.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from release_graph.fleet import load_fleet
from release_graph.importer.cli import run


def write(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def dockerfiles(root: Path, *folders: str, test_stage: bool = True, base: str = "python:3.11-slim") -> None:
    for folder in folders:
        stages = f"FROM {base} AS app\nCMD [\"python3\"]\n"
        if test_stage:
            stages += "FROM app AS test\nRUN true\n"
        write(root, {f"{folder}/Dockerfile": stages})


def import_ok(capsys, *argv: object) -> str:
    code = run([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def comments(text: str) -> str:
    """The comments of a written fleet.yaml as one line of prose (wrapping undone)."""
    return " ".join(line.split("#", 1)[1].strip() for line in text.splitlines() if line.lstrip().startswith("#"))


def edges_of(fleet, name: str) -> dict[str, object]:
    return {edge.name: edge for edge in fleet.services[name].depends_on}


def test_given_three_compose_files_and_a_dotenv_when_imported_then_they_merge_with_compose_override_rules(
    tmp_path, capsys
):
    app = tmp_path / "app"
    write(app, {
        ".env": """\
            # read by compose for interpolation
            TAG=1.4.2
            API_PORT=8000
            export LOG_LEVEL=info
            QUOTED="two words"
            LITERAL='${NOT_EXPANDED}'
            DB_NAME=${APP_NAME:-shop}_db
        """,
        "compose.yaml": """\
            name: shop
            services:
              api:
                build: ./api
                environment:
                  - LOG_LEVEL=${LOG_LEVEL}
                  - DB_URL=postgres://db:5432/${DB_NAME}
                ports: ["${API_PORT}:${API_PORT}"]
                command: ["serve", "--old"]
                depends_on: [db]
              worker:
                build:
                  context: ./worker
                  args: {PYTHON: "3.11"}
                environment: {QUEUE_HOST: queue}
              db:
                image: postgres:${PG_VERSION:-16}
              adminer:
                image: adminer:4
        """,
        "compose.dev.yaml": """\
            services:
              api:
                environment:
                  GREETING: ${QUOTED}
                  LITERAL: ${LITERAL}
                ports: ["9000:9000"]
                command: ["serve", "--reload"]
                depends_on:
                  queue: {condition: service_healthy}
              queue:
                image: rabbitmq:3.13-management
        """,
        "compose.ci.yaml": """\
            services:
              api:
                environment:
                  LOG_LEVEL: debug
                  PRICE: "$$5"
              worker:
                build:
                  args: !reset {}
                environment: !override
                  QUEUE_HOST: queue
                  MODE: batch
              db:
                image: postgres:${TAG}
              adminer: !reset
        """,
    })
    dockerfiles(app, "api", "worker")
    out = tmp_path / "fleet.yaml"
    import_ok(capsys, app / "compose.yaml", app / "compose.dev.yaml", app / "compose.ci.yaml", "-o", out)

    fleet = load_fleet(out)
    assert fleet.name == "shop"  # compose `name:`
    api = fleet.services["api"]
    # environment merges by name across list and map forms; the last file wins per name
    assert dict(api.env) == {"LOG_LEVEL": "debug", "DB_URL": "postgres://db:5432/shop_db", "GREETING": "two words",
                             "LITERAL": "${NOT_EXPANDED}", "PRICE": "$5"}
    assert api.port == 8000  # ports append: the first declared container port is the service port
    # depends_on merges short and long forms; `db` is also named by DB_URL, so it is a call, not startup-only
    assert {e.name: (e.startup_only, e.evidence) for e in api.depends_on} == {
        "db": (False, ("compose.yaml: api: depends_on", "compose.yaml: api: environment.DB_URL")),
        "queue": (True, ("compose.dev.yaml: api: depends_on",)),
    }
    worker = fleet.services["worker"]
    assert dict(worker.env) == {"QUEUE_HOST": "queue", "MODE": "batch"}  # !override replaced the mapping
    assert dict(worker.build.args) == {}  # !reset dropped the args
    assert [(e.name, e.startup_only) for e in worker.depends_on] == [("queue", False)]
    assert fleet.services["db"].image == "postgres:1.4.2"  # the later file's image, with .env interpolation
    assert fleet.services["db"].infrastructure and fleet.services["queue"].infrastructure
    assert "adminer" not in fleet.services  # `!reset` on a whole service removes it

    text = comments(out.read_text())
    assert "compose.dev.yaml: api: depends_on (condition: service_healthy)" in text
    # a later file replaces the command, as in Compose
    assert yaml.safe_load(out.read_text())["services"]["api"]["command"] == ["serve", "--reload"]
    assert "variables read from .env: API_PORT, DB_NAME, LITERAL, LOG_LEVEL, QUOTED, TAG" in text


def test_given_a_folder_with_compose_and_override_files_when_imported_then_both_are_read_like_docker_compose(
    tmp_path, capsys
):
    write(tmp_path / "proj", {
        "docker-compose.yml": "services:\n  web:\n    build: web\n",
        "docker-compose.override.yml": "services:\n  web:\n    environment: [CACHE_HOST=cache]\n  cache:\n"
                                       "    image: valkey/valkey:8\n",
    })
    dockerfiles(tmp_path / "proj", "web")
    out = tmp_path / "fleet.yaml"
    import_ok(capsys, tmp_path / "proj", "-o", out)
    fleet = load_fleet(out)
    assert fleet.name == "proj"
    assert [e.name for e in fleet.services["web"].depends_on] == ["cache"]
    assert fleet.services["cache"].infrastructure and fleet.services["cache"].port == 6379


def test_the_folders_a_compose_service_writes_and_the_capabilities_it_is_given_become_its_hardening(
    tmp_path, capsys
):
    write(tmp_path / "proj", {"docker-compose.yml": """\
        services:
          web:
            build: web
            read_only: true
            tmpfs: [/tmp, "/var/cache/nginx:size=64m", /run]
            cap_add: [NET_BIND_SERVICE, cap_chown]
          worker:
            build: web
            tmpfs: /var/spool/jobs
    """})
    dockerfiles(tmp_path / "proj", "web")
    out = tmp_path / "fleet.yaml"
    import_ok(capsys, tmp_path / "proj", "-o", out)
    fleet = load_fleet(out)
    web = fleet.services["web"].hardening
    assert web.tmpfs == ("/run", "/var/cache/nginx")  # /tmp is every container's already
    assert web.capabilities == ("CHOWN", "NET_BIND_SERVICE")
    assert web.capabilities_reason == "docker-compose.yml:6 adds them"
    assert fleet.services["worker"].hardening.tmpfs == ("/var/spool/jobs",)
    assert fleet.services["worker"].hardening.capabilities == ()
    text = comments(out.read_text())
    assert "REVIEW: compose gives it CHOWN, NET_BIND_SERVICE (docker-compose.yml:6): written to " \
           "hardening.capabilities with the compose file as the reason" in text
    assert "hardening.tmpfs: from docker-compose.yml:5" in text


@pytest.mark.parametrize(
    ("variables", "template", "expected"),
    [
        ({"A": "x"}, "${A}", "x"),
        ({"A": "x"}, "$A-suffix", "x-suffix"),
        ({}, "${A:-fallback}", "fallback"),
        ({"A": ""}, "${A:-fallback}", "fallback"),
        ({"A": ""}, "${A-fallback}", ""),
        ({}, "${A-fallback}", "fallback"),
        ({"A": "set"}, "${A:+alt}", "alt"),
        ({"A": ""}, "${A:+alt}", ""),
        ({"A": ""}, "${A+alt}", "alt"),
        ({"B": "inner"}, "${A:-${B}}", "inner"),
        ({}, "$$HOME and $${X}", "$HOME and ${X}"),
        ({}, "${A}", ""),
    ],
)
def test_interpolation_follows_the_compose_rules(variables, template, expected):
    from release_graph.importer.interpolation import interpolate

    assert interpolate(template, variables) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("${DB_PASSWORD:?set the database password}", "required variable DB_PASSWORD is missing a value: "
                                                       "set the database password"),
        ("${DB_PASSWORD?}", "required variable DB_PASSWORD is missing a value"),
        ("${A/x/y}", "after the name Compose accepts only"),
        ("${A", "without a closing"),
        ("cost $5", "'$' must start"),
    ],
)
def test_interpolation_errors_name_the_file_and_line(tmp_path, capsys, template, message):
    write(tmp_path, {"compose.yaml": f"services:\n  api:\n    image: nginx:1\n    environment:\n"
                                     f"      X: \"{template}\"\n"})
    code = run([str(tmp_path / "compose.yaml"), "-o", str(tmp_path / "fleet.yaml")])
    err = capsys.readouterr().err
    assert code == 2
    assert "compose.yaml:5:" in err and message in err
    assert not (tmp_path / "fleet.yaml").exists()


def test_given_links_aliases_and_env_values_when_imported_then_each_names_its_service_with_evidence(tmp_path, capsys):
    write(tmp_path, {
        "compose.yaml": """\
            services:
              shop:
                image: example/shop:1
                links: ["catalog:products"]
                environment:
                  PRODUCTS_URL: http://products:8080/api
                  ORDERS_ADDR: orders:7000
                  CACHE_HOST: memo
                  MODE: orders
                  REPORTS: ledger.internal.example.com:443
                  PARTNER: https://api.partner.example.com/v1
                  SEARCH_HOST: elastic
              catalog:
                image: example/catalog:1
                expose: ["8080"]
              orders:
                image: example/orders:1
                container_name: orders
              cache:
                image: memcached:1.6
                networks:
                  backend: {aliases: [memo]}
        """,
    })
    out = tmp_path / "fleet.yaml"
    import_ok(capsys, tmp_path / "compose.yaml", "-o", out)
    fleet = load_fleet(out)
    shop = edges_of(fleet, "shop")
    assert set(shop) == {"catalog", "orders", "cache"}
    assert shop["catalog"].evidence == ("compose.yaml: shop: environment.PRODUCTS_URL", "compose.yaml: shop: links")
    assert not shop["catalog"].startup_only  # the link is start-up only, but PRODUCTS_URL is a call
    assert shop["cache"].evidence == ("compose.yaml: shop: environment.CACHE_HOST",)  # network alias
    assert fleet.services["catalog"].port == 8080  # from expose
    text = comments(out.read_text())
    # MODE=orders is a bare word under a key that is no address: never an edge by itself
    assert "environment.MODE" not in text
    assert "shop -> elastic: compose.yaml: shop: environment.SEARCH_HOST" in text  # unresolved, listed, no edge
    assert "shop -> ledger.internal.example.com:443" in text and "shop -> api.partner.example.com" in text


def test_given_healthchecks_when_imported_then_http_checks_give_health_and_commands_are_recorded(tmp_path, capsys):
    write(tmp_path, {
        "compose.yaml": """\
            services:
              api:
                image: example/api:2
                healthcheck:
                  test: ["CMD-SHELL", "wget -qO- http://127.0.0.1:9090/ready || exit 1"]
              worker:
                image: example/worker:2
                healthcheck:
                  test: celery inspect ping
              legacy:
                image: example/legacy:2
                ports: ["8000:80"]
                healthcheck:
                  test: ["CMD", "curl", "-f", "http://localhost/status/health?full=1"]
              quiet:
                image: example/quiet:2
                healthcheck:
                  disable: true
              db:
                image: mariadb:11
                healthcheck:
                  test: ["CMD", "healthcheck.sh", "--connect"]
        """,
    })
    out = tmp_path / "fleet.yaml"
    import_ok(capsys, tmp_path / "compose.yaml", "-o", out)
    fleet = load_fleet(out)
    assert (fleet.services["api"].health, fleet.services["api"].port) == ("/ready", 9090)
    assert (fleet.services["legacy"].health, fleet.services["legacy"].port) == ("/status/health?full=1", 80)
    assert fleet.services["worker"].health is None
    assert fleet.services["quiet"].health is None
    assert (fleet.services["db"].health, fleet.services["db"].port) == (None, 3306)
    text = comments(out.read_text())
    assert "the compose healthcheck is a command, not an HTTP check: celery inspect ping" in text
    assert "not an HTTP check: healthcheck.sh --connect" in text


def test_given_build_settings_when_imported_then_dockerfile_target_args_and_test_stage_are_kept(tmp_path, capsys):
    write(tmp_path, {
        "compose.yaml": """\
            services:
              api:
                build:
                  context: services/api
                  dockerfile: docker/Prod.Dockerfile
                  target: runtime
                  args:
                    - PYTHON_VERSION=3.11
                    - GITHUB_TOKEN=abc123
                    - FROM_SHELL
              web:
                build: services/web
        """,
        "services/api/docker/Prod.Dockerfile": "FROM golang:1.22 AS build\nFROM build AS runtime\n",
    })
    dockerfiles(tmp_path, "services/web", base="node:20")
    out = tmp_path / "fleet.yaml"
    import_ok(capsys, tmp_path / "compose.yaml", "-o", out)
    fleet = load_fleet(out)  # with file checks: the Dockerfiles are where the manifest says
    api = fleet.services["api"]
    assert (api.repo, api.path) == (".", "services/api")
    assert (api.build.dockerfile, api.build.target, api.build.test_target) == ("docker/Prod.Dockerfile", "runtime",
                                                                                 None)
    assert dict(api.build.args) == {"PYTHON_VERSION": "3.11"}
    assert api.language == "go"
    web = fleet.services["web"]
    assert (web.build.test_target, web.language, web.path) == ("test", "node", "services/web")
    text = comments(out.read_text())
    assert "build arg GITHUB_TOKEN is not written: its name says secret" in text
    assert "abc123" not in out.read_text()
    assert "the Dockerfile has no `test` stage" in text


def test_given_a_compose_project_inside_a_git_repository_when_imported_then_repo_is_the_git_root(tmp_path, capsys):
    repo = tmp_path / "monorepo"
    write(repo, {"deploy/compose.yaml": "services:\n  orders:\n    build: ../services/orders\n"})
    dockerfiles(repo, "services/orders")
    subprocess.run(["git", "init", "-q", "-b", "trunk", str(repo)], check=True)
    out = tmp_path / "fleets" / "fleet.yaml"
    import_ok(capsys, repo / "deploy" / "compose.yaml", "-o", out)
    orders = load_fleet(out).services["orders"]
    assert (orders.repo, orders.path, orders.branch) == ("../monorepo", "services/orders", "trunk")


def test_given_secrets_in_the_environment_when_imported_then_values_are_withheld_but_edges_still_inferred(
    tmp_path, capsys
):
    write(tmp_path, {
        "compose.yaml": """\
            services:
              api:
                image: example/api:1
                environment:
                  DATABASE_URL: postgres://app:s3cret@db:5432/app
                  DB_PASSWORD: hunter2
                  STRIPE_API_KEY: sk_live_123
                  LOG_LEVEL: info
                env_file: [api.env]
              db:
                image: postgres:16
        """,
        "api.env": "SESSION_SECRET=abcdef\nFEATURE_FLAGS=fast-checkout\n",
    })
    out = tmp_path / "fleet.yaml"
    import_ok(capsys, tmp_path / "compose.yaml", "-o", out)
    fleet = load_fleet(out)
    assert dict(fleet.services["api"].env) == {"LOG_LEVEL": "info", "FEATURE_FLAGS": "fast-checkout"}
    assert edges_of(fleet, "api")["db"].evidence == ("compose.yaml: api: environment.DATABASE_URL",)
    text = comments(out.read_text())
    for secret in ("s3cret", "hunter2", "sk_live_123", "abcdef"):
        assert secret not in out.read_text()
    assert "postgres://app:***@db:5432/app" in text
    # each one is a secret reference that the deploy step resolves, and a REVIEW note says who must set it
    assert {name: ref.describe() for name, ref in fleet.environments["dev"].secrets["api"].items()} == {
        "DATABASE_URL": "env:API_DATABASE_URL", "DB_PASSWORD": "env:API_DB_PASSWORD",
        "SESSION_SECRET": "env:API_SESSION_SECRET", "STRIPE_API_KEY": "env:API_STRIPE_API_KEY"}
    assert "REVIEW: secrets, written as references in environments.dev.secrets, never as values: DATABASE_URL " \
           "(credentials in its value) from $API_DATABASE_URL; DB_PASSWORD (its name says secret)" in text
    # its code reads them as variables, as compose gave them: it keeps env delivery until someone moves it to files
    assert fleet.services["api"].secrets_as == "env" and fleet.services["db"].secrets_as == "file"
    assert "secrets_as env: the deploy files gave this service its secrets as environment variables" in text


def test_given_profiles_when_imported_then_inactive_services_are_skipped_unless_their_profile_is_given(
    tmp_path, capsys
):
    write(tmp_path, {
        "compose.yaml": """\
            services:
              api:
                image: example/api:1
                environment: {TRACE_URL: "http://jaeger:14268/api/traces"}
              jaeger:
                image: jaegertracing/all-in-one:1.57
                profiles: [debug]
        """,
    })
    out = tmp_path / "fleet.yaml"
    import_ok(capsys, tmp_path / "compose.yaml", "-o", out)
    fleet = load_fleet(out)
    assert set(fleet.services) == {"api"}
    text = comments(out.read_text())
    assert "service jaeger (compose.yaml:5): its profiles (debug) are not active; pass --profile debug" in text
    assert "service 'jaeger' is disabled by its profiles (debug)" in text  # the reference is unresolved

    import_ok(capsys, tmp_path / "compose.yaml", "-o", out, "--profile", "debug", "--force")
    fleet = load_fleet(out)
    assert fleet.services["jaeger"].infrastructure
    assert edges_of(fleet, "api")["jaeger"].soft  # telemetry never orders deployments


def test_given_extends_and_yaml_1_2_values_when_imported_then_compose_semantics_hold(tmp_path, capsys):
    write(tmp_path, {
        "common.yaml": "services:\n  base:\n    build: ./svc\n    environment: {DEBUG: yes, SHARED: 1.10}\n",
        "compose.yaml": """\
            services:
              My_Worker:
                extends: {file: common.yaml, service: base}
                environment: {ROLE: worker}
                ports: [22:22]
              api:
                image: example/api:1
                environment: {WORKER_HOST: My_Worker}
                command: ["./wait-for-it.sh", "my_worker:22", "--", "serve"]
        """,
    })
    dockerfiles(tmp_path, "svc")
    out = tmp_path / "fleet.yaml"
    import_ok(capsys, tmp_path / "compose.yaml", "-o", out)
    fleet = load_fleet(out)
    worker = fleet.services["my-worker"]  # renamed to a DNS label, and the comment says so
    assert dict(worker.env) == {"DEBUG": "yes", "SHARED": "1.10", "ROLE": "worker"}  # YAML 1.2: text stays text
    assert worker.port == 22 and worker.path == "svc"
    edge = edges_of(fleet, "api")["my-worker"]
    assert edge.evidence == ("compose.yaml: api: command", "compose.yaml: api: environment.WORKER_HOST")
    assert "'My_Worker' is written as service 'my-worker'" in comments(out.read_text())


def test_given_a_database_built_from_a_context_when_imported_then_it_is_prebuilt_infrastructure(tmp_path, capsys):
    write(tmp_path, {
        "compose.yaml": """\
            services:
              mysql:
                build: ./mysql
                image: ${REPO:-acme}/shop-db:${TAG:-2.0}
              mongodb:
                build: ./mongo
                image: ${REPO}/rs-mongodb:${TAG}
        """,
    })
    out = tmp_path / "fleet.yaml"
    import_ok(capsys, tmp_path / "compose.yaml", "-o", out)
    fleet = load_fleet(out, check_files=True)
    assert (fleet.services["mysql"].image, fleet.services["mysql"].infrastructure) == ("acme/shop-db:2.0", True)
    assert (fleet.services["mongodb"].image, fleet.services["mongodb"].infrastructure) == (
        "docker.io/library/mongo", True)
    text = comments(out.read_text())
    assert "REVIEW: compose builds this from mongo/ (a custom mongo image) and gives '/rs-mongodb:'" in text
    assert "REPO (first at compose.yaml:7), TAG (first at compose.yaml:7)" in text


def test_given_a_required_false_dependency_on_a_missing_service_when_imported_then_it_is_ignored_with_a_note(
    tmp_path, capsys
):
    write(tmp_path, {
        "compose.yaml": """\
            services:
              api:
                image: example/api:1
                depends_on:
                  metrics: {condition: service_started, required: false}
        """,
    })
    out = tmp_path / "fleet.yaml"
    import_ok(capsys, tmp_path / "compose.yaml", "-o", out)
    assert load_fleet(out).services["api"].depends_on == ()
    assert "depends_on metrics (required: false) names no service: ignored" in comments(out.read_text())


def test_given_env_options_when_imported_then_env_file_replaces_dotenv_and_env_wins(tmp_path, capsys):
    write(tmp_path, {
        ".env": "TAG=from-dotenv\nREGION=eu\n",
        "ci.env": "TAG=from-ci-file\nREGION=us\n",
        "compose.yaml": "services:\n  api:\n    image: example/api:${TAG}\n    environment: [\"REGION=${REGION}\"]\n",
    })
    out = tmp_path / "fleet.yaml"
    import_ok(capsys, tmp_path / "compose.yaml", "-o", out)
    assert load_fleet(out).services["api"].image == "example/api:from-dotenv"
    import_ok(capsys, tmp_path / "compose.yaml", "-o", out, "--force", "--env-file", tmp_path / "ci.env",
              "--env", "TAG=from-option")
    api = load_fleet(out).services["api"]
    assert (api.image, dict(api.env)) == ("example/api:from-option", {"REGION": "us"})
