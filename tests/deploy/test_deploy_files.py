"""deploy/ as shipped: every instance configuration is accepted by the installed Dagster's own config schema,
every class it names loads and takes its config, and the Dockerfile, the compose file, the workspace and the
Helm values parse and agree with each other and with files that exist. No engine, no database: the same
configurations open on a real PostgreSQL in tests/release_graph/test_postgres_storage.py."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._serdes.config_class import class_from_code_pointer

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
INSTANCE_CONFIGS = sorted(DEPLOY.glob("*/dagster.yaml"))
ENV = {
    "DAGSTER_PG_HOST": "db.example", "DAGSTER_PG_PORT": "5432", "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "pw", "DAGSTER_PG_DB": "dagster", "DAGSTER_DOCKER_NETWORK": "release-graph",
    "RELEASE_GRAPH_USER_CODE_IMAGE": "release-graph/user-code:dev",
}
ROOT_DAGSTER_YAML = yaml.safe_load((ROOT / "dagster.yaml").read_text())


def load(path: Path):
    return yaml.safe_load(path.read_text())


def test_there_is_an_instance_configuration_per_setup():
    assert {p.parent.name for p in INSTANCE_CONFIGS} == {"postgres", "docker"}


@pytest.mark.parametrize("path", INSTANCE_CONFIGS, ids=lambda p: p.parent.name)
def test_each_instance_configuration_is_accepted_by_dagsters_schema(path, monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    config, custom_class = dagster_instance_config(str(path.parent), path.name)  # raises on any schema error
    assert custom_class is None
    assert config["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    # every configurable class named loads and accepts its config (env values resolved, as at start-up)
    for key in ("run_coordinator", "run_launcher"):
        if key in config:
            klass = class_from_code_pointer(config[key]["module"], config[key]["class"])
            result = process_config(klass.config_type(), config[key].get("config") or {})
            assert result.success, (key, result.errors)
            klass.from_config_value(None, result.value)  # constructs without I/O
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["run_coordinator"]["config"]["dequeue_interval_seconds"] == ROOT_DAGSTER_YAML["run_queue"][
        "dequeue_interval_seconds"]
    # the project's limits, retries and sensor threads, exactly as the embedded default has them
    for block in ("concurrency", "run_retries", "sensors", "telemetry"):
        assert load(path)[block] == ROOT_DAGSTER_YAML[block], block
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_monitoring"]["max_resume_run_attempts"] == 0


def test_the_docker_launcher_passes_the_storage_variables_and_the_engine_to_run_containers():
    launcher = load(DEPLOY / "docker" / "dagster.yaml")["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_docker", "DockerRunLauncher")
    env_vars = launcher["config"]["env_vars"]
    storage = load(DEPLOY / "docker" / "dagster.yaml")["storage"]["postgres"]["postgres_db"]
    needed = {v["env"] for v in storage.values() if isinstance(v, dict) and "env" in v}
    assert needed | {"DOCKER_HOST", "RELEASE_GRAPH_FLEET", "RELEASE_GRAPH_STATE"} <= set(env_vars)
    assert all("=" not in name for name in env_vars if name.startswith("DAGSTER_PG")), "values come from the daemon"
    volumes = launcher["config"]["container_kwargs"]["volumes"]
    assert any(v.endswith(":/var/run/docker.sock") for v in volumes)
    # no label the deploy target owns (it reaps what carries them)
    assert not any(k.startswith("io.release-graph") for k in launcher["config"]["container_kwargs"].get("labels", {}))


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_the_dockerfile_installs_the_lock_with_hashes_and_copies_files_that_exist():
    text = (DEPLOY / "Dockerfile").read_text()
    instructions = dockerfile_instructions(text)
    known = {"ARG", "FROM", "RUN", "ENV", "WORKDIR", "COPY", "EXPOSE", "CMD", "USER", "LABEL", "ENTRYPOINT"}
    assert {op for op, _ in instructions} <= known
    assert instructions[0][0] in ("ARG", "FROM")
    for op, args in instructions:
        if op == "COPY":
            *sources, _ = shlex.split(args)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository (the build context)"
    runs = " ".join(args for op, args in instructions if op == "RUN")
    assert "--require-hashes -r requirements.lock" in runs and "--no-deps ." in runs
    # never a package index written into the repository: pip takes its index from the build's environment
    for path in [DEPLOY / "Dockerfile", DEPLOY / "compose.yaml", *DEPLOY.rglob("*.yaml")]:
        assert not re.search(r"pypi\.org|pythonhosted\.org|--(extra-)?index-url|https?://[^<\s]+/simple",
                             path.read_text()), path
    cmd = shlex.split(dict(instructions)["CMD"].strip("[]").replace(",", " "))
    assert cmd[:3] == ["dagster", "code-server", "start"] and "release_graph.definitions" in cmd


def compose_default(value: str) -> str:
    """What compose makes of `${NAME:-default}` when NAME is not set; any other value as it is."""
    match = re.fullmatch(r"\$\{[A-Z0-9_]+:-([^}]*)\}", value)
    return match.group(1) if match else value


def test_the_compose_stack_has_the_four_services_wired_to_each_other():
    compose = load(DEPLOY / "compose.yaml")
    services = compose["services"]
    assert set(services) == {"postgres", "user-code", "webserver", "daemon"}
    docker_instance = load(DEPLOY / "docker" / "dagster.yaml")
    workspace = load(DEPLOY / "docker" / "workspace.yaml")
    (location,) = workspace["load_from"]
    grpc = location["grpc_server"]
    assert grpc["host"] in services
    assert str(grpc["port"]) in services[grpc["host"]]["command"]
    for name in ("webserver", "daemon"):
        service = services[name]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert mounts["/opt/dagster/home/dagster.yaml"] == "./docker/dagster.yaml"
        assert mounts["/opt/dagster/workspace.yaml"] == "./docker/workspace.yaml"
        assert "/opt/dagster/workspace.yaml" in service["command"]
        # what the instance configuration reads from the environment is set for the webserver and the daemon
        assert set(docker_instance["run_launcher"]["config"]["env_vars"]) <= set(service["environment"])
        assert compose_default(service["environment"]["DAGSTER_DOCKER_NETWORK"]) in {
            compose_default(n["name"]) for n in compose["networks"].values()}
    # every relative bind mount names a file that exists (paths are relative to deploy/)
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), volume
    # the run containers mount the state and the compute-log volumes by the names compose gives them by default
    run_mounts = {v.split(":")[1]: v.split(":")[0]
                  for v in docker_instance["run_launcher"]["config"]["container_kwargs"]["volumes"]}
    assert compose_default(compose["volumes"]["release-graph-state"]["name"]) == run_mounts[
        "/var/lib/release-graph/state"]
    assert compose_default(compose["volumes"]["dagster-storage"]["name"]) == run_mounts["/opt/dagster/home/storage"]
    for name in ("webserver", "daemon"):
        assert "dagster-storage:/opt/dagster/home/storage" in services[name]["volumes"]
    # DAGSTER_CURRENT_IMAGE makes the code location name the image its runs use
    assert "DAGSTER_CURRENT_IMAGE" in services["user-code"]["environment"]


def test_the_helm_values_use_the_charts_sections_and_a_valid_instance_block(tmp_path):
    values = load(DEPLOY / "k8s" / "values.yaml")
    chart_sections = {  # DagsterHelmValues in the chart's schema (helm/dagster/schema/.../values.py)
        "dagsterWebserver", "dagster-user-deployments", "postgresql", "generatePostgresqlPasswordSecret",
        "generateCeleryConfigSecret", "rabbitmq", "redis", "flower", "ingress", "imagePullSecrets",
        "computeLogManager", "scheduler", "runLauncher", "pythonLogs", "dagsterDaemon", "busybox", "migrate",
        "telemetry", "serviceAccount", "global", "retention", "additionalInstanceConfig",
    }
    assert set(values) <= chart_sections
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert "release_graph.definitions" in deployment["codeServerArgs"]
    # what the chart merges into dagster.yaml is accepted by Dagster next to a queued coordinator without limits
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump({
        **values["additionalInstanceConfig"],
        "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"},
    }))
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["concurrency"] == ROOT_DAGSTER_YAML["concurrency"]
