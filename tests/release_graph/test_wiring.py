"""The adapters are configured in one place, release_graph/wiring.py: the scanner from the manifest's `security:`, the
notification sensor only when the manifest has `notifications:`, the deployment events sensor only with `events:`."""

from __future__ import annotations

import textwrap

import pytest

from release_graph.fleet import load_fleet
from release_graph.wiring import build_definitions, default_resources

MANIFEST = """\
fleet: shop
registry: 127.0.0.1:5000/shop
{security}services:
  orders:
    repo: https://git.shop.example/orders.git
    build: {{dockerfile: Dockerfile}}
environments:
  dev: {{target: docker}}
"""


def fleet_with(tmp_path, security: str = ""):
    path = tmp_path / "fleet.yaml"
    path.write_text(textwrap.dedent(MANIFEST.format(security=security)))
    return load_fleet(path, check_files=False)


def test_the_scanner_is_the_backend_the_manifest_names(tmp_path):
    fleet = fleet_with(tmp_path, "security:\n  scanner: ecr\n  ecr: {region: eu-west-1, registry_id: "
                                 "'123456789012', endpoint_url: 'http://127.0.0.1:5999'}\n")
    resources = default_resources(fleet)
    scanner = resources["scanner"]
    assert (scanner.backend, scanner.ecr_region, scanner.ecr_registry_id, scanner.ecr_endpoint_url) == (
        "ecr", "eu-west-1", "123456789012", "http://127.0.0.1:5999")
    # the vulnerability_scan check gets it by type; nothing else constructs a scanner
    defs = build_definitions(fleet)
    (check,) = [c for c in defs.asset_checks if "vulnerability_scan" in {k.name for k in c.check_keys}]
    # (the engine, through which the osv backend reads the image; and, like every stage, the release_tracer:
    # release_graph/assets/stage_tracing.py)
    assert check.required_resource_keys - {"io_manager"} == {"scanner", "registry", "engine", "release_tracer"}
    defs.resolve_implicit_global_asset_job_def()  # every required resource is there


def test_the_osv_scanner_gets_the_manifests_database(tmp_path):
    (tmp_path / "osv").mkdir()
    scanner = default_resources(fleet_with(tmp_path, "security:\n  scanner: osv\n  osv: {database: osv}\n"))["scanner"]
    assert (scanner.backend, scanner.osv_database) == ("osv", str(tmp_path / "osv"))


def test_without_a_scanner_in_the_manifest_the_resource_scans_nothing(tmp_path):
    assert default_resources(fleet_with(tmp_path))["scanner"].backend == "none"
    assert default_resources()["scanner"].backend == "none"
    assert default_resources(fleet_with(tmp_path, "security:\n  scanner: grype\n"))["scanner"].backend == "grype"


def test_the_notification_sensor_is_there_only_when_the_manifest_configures_notifications(tmp_path):
    def sensors(fleet) -> set[str]:
        return {s.name for s in build_definitions(fleet).sensors}

    assert "release_notifications" not in sensors(fleet_with(tmp_path))
    configured = fleet_with(tmp_path, "notifications:\n  channels:\n    team-chat: {type: slack, url_env: SLACK_URL}\n")
    defs = build_definitions(configured)
    assert "release_notifications" in {s.name for s in defs.sensors}
    # it gets the `notifier` resource by type; the resource holds no channel and no secret
    assert defs.resolve_sensor_def("release_notifications").required_resource_keys == {"notifier"}
    assert default_resources(configured)["notifier"].timeout_seconds == 5.0


def test_the_deployment_events_sensor_is_there_only_when_the_manifest_configures_events(tmp_path):
    assert "deployment_events" not in {s.name for s in build_definitions(fleet_with(tmp_path)).sensors}
    configured = fleet_with(tmp_path, "events:\n  cdevents: {sink_url_env: CDEVENTS_URL}\n  cloudwatch: {}\n")
    defs = build_definitions(configured)
    # it gets the `event_sinks` resource by type; the resource holds no sink and no secret
    assert defs.resolve_sensor_def("deployment_events").required_resource_keys == {"event_sinks"}
    sinks = default_resources(configured)["event_sinks"]
    assert sinks.timeout_seconds == 5.0 and sinks.configured(configured.events) == ("cdevents", "cloudwatch")


def test_tracing_is_off_unless_the_environment_names_a_collector_or_a_file(monkeypatch, tmp_path):
    monkeypatch.delenv("RELEASE_GRAPH_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("RELEASE_GRAPH_TRACE_FILE", raising=False)
    assert not default_resources()["release_tracer"].enabled
    monkeypatch.setenv("RELEASE_GRAPH_TRACE_FILE", str(tmp_path / "spans.jsonl"))
    monkeypatch.setenv("RELEASE_GRAPH_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    tracer = default_resources()["release_tracer"]
    assert (tracer.trace_file, tracer.otlp_endpoint) == (str(tmp_path / "spans.jsonl"), "http://127.0.0.1:4318")


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("RELEASE_GRAPH_OTLP_ENDPOINT", "127.0.0.1:4318", "expected the collector's OTLP/HTTP address"),
    ("RELEASE_GRAPH_TRACE_FILE", "traces/spans.jsonl", "expected an absolute path"),
])
def test_a_tracing_setting_that_cannot_work_stops_the_load_naming_its_variable(monkeypatch, variable, value,
                                                                                 expected):
    from resources.tracing import TracingConfigError

    monkeypatch.setenv(variable, value)
    with pytest.raises(TracingConfigError, match=f"^{variable}='{value}': {expected}"):
        default_resources()


def test_the_git_poll_interval_is_ten_seconds_unless_the_variable_says_otherwise(monkeypatch):
    from release_graph.wiring import git_poll_seconds

    monkeypatch.delenv("RELEASE_GRAPH_GIT_POLL_SECONDS", raising=False)
    assert git_poll_seconds() == 10
    monkeypatch.setenv("RELEASE_GRAPH_GIT_POLL_SECONDS", "4")
    assert git_poll_seconds() == 4


@pytest.mark.parametrize("variable", ["RELEASE_GRAPH_GIT_POLL_SECONDS", "RELEASE_GRAPH_AUTOMATION_SECONDS"])
@pytest.mark.parametrize("value", ["soon", "0", "-5", "86400"])
def test_an_interval_that_cannot_work_stops_the_load_naming_its_variable(monkeypatch, tmp_path, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=f"^{variable}='{value}': expected a (whole )?number of seconds"):
        build_definitions(fleet_with(tmp_path))


def test_the_automation_interval_is_whole_seconds_as_dagster_counts_them(monkeypatch, tmp_path):
    monkeypatch.setenv("RELEASE_GRAPH_AUTOMATION_SECONDS", "2.5")
    with pytest.raises(ValueError, match="^RELEASE_GRAPH_AUTOMATION_SECONDS='2.5': expected a whole number of "):
        build_definitions(fleet_with(tmp_path))


def test_every_automation_sensor_ticks_every_four_seconds_unless_the_variable_says_otherwise(monkeypatch, tmp_path):
    def intervals() -> set[float]:
        sensors = build_definitions(fleet_with(tmp_path)).sensors
        return {s.minimum_interval_seconds for s in sensors if s.name.startswith("release_automation_")}

    monkeypatch.delenv("RELEASE_GRAPH_AUTOMATION_SECONDS", raising=False)
    assert intervals() == {4}
    # a large fleet on few cores: every service's stages looked at twice a minute
    monkeypatch.setenv("RELEASE_GRAPH_AUTOMATION_SECONDS", "30")
    assert intervals() == {30}
