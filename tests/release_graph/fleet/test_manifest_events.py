"""A platform team sends the fleet's deployments to machines: CDEvents to an HTTP sink and release metrics to
CloudWatch (`events:` in fleet.yaml). Every mistake is reported with file, line and field, one test per case,
and a sink URL pasted into the manifest is never repeated."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from release_graph.fleet import ManifestError, load_fleet
from release_graph.fleet.model import AWS_ENDPOINT_URL_VARIABLE

HEAD = """\
fleet: shop
registry: 127.0.0.1:5000/shop
services:
  orders: {image: "127.0.0.1:5000/vendor/orders:1.0"}
environments:
  prod: {}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(tmp_path: Path, events: str) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_fleet(write(tmp_path, HEAD + events))
    return caught.value.problems


def test_both_sinks_and_their_settings_become_the_fleets_events(tmp_path):
    fleet = load_fleet(write(tmp_path, HEAD + """\
events:
  cdevents: {sink_url_env: SHOP_CDEVENTS_URL, source: /release-graph/shop-eu}
  cloudwatch: {namespace: Shop/Releases, region: eu-west-1, endpoint_url: "http://127.0.0.1:5001"}
"""))
    assert fleet.events.cdevents.sink_url_env == "SHOP_CDEVENTS_URL"
    assert fleet.events.cdevents.source == "/release-graph/shop-eu"
    metrics = fleet.events.cloudwatch
    assert (metrics.namespace, metrics.region, metrics.resolved_endpoint_url()) == (
        "Shop/Releases", "eu-west-1", "http://127.0.0.1:5001")


def test_cloudwatch_alone_takes_the_defaults_and_the_projects_aws_endpoint(tmp_path, monkeypatch):
    monkeypatch.setenv(AWS_ENDPOINT_URL_VARIABLE, "http://127.0.0.1:5999")
    fleet = load_fleet(write(tmp_path, HEAD + "events:\n  cloudwatch: {}\n"))
    assert fleet.events.cdevents is None
    metrics = fleet.events.cloudwatch
    assert (metrics.namespace, metrics.region, metrics.resolved_endpoint_url()) == (
        "ReleaseGraph", "us-east-1", "http://127.0.0.1:5999")


def test_a_fleet_without_events_sends_none(tmp_path):
    assert load_fleet(write(tmp_path, HEAD)).events is None


def test_events_that_are_not_a_mapping_are_reported(tmp_path):
    assert problems_of(tmp_path, "events: [cdevents]\n") == [
        "fleet.yaml:7: field 'events': expected a mapping with cdevents, cloudwatch or both, e.g. "
        "{cdevents: {sink_url_env: CDEVENTS_SINK_URL}, cloudwatch: {namespace: ReleaseGraph}}"]


def test_an_unknown_sink_is_reported(tmp_path):
    assert problems_of(tmp_path, "events:\n  kafka: {topic: releases}\n") == [
        "fleet.yaml:8: field 'events.kafka': unknown key (expected one of: cdevents, cloudwatch)"]


def test_a_cdevents_sink_without_the_name_of_its_url_variable_is_reported(tmp_path):
    assert problems_of(tmp_path, "events:\n  cdevents: {source: /release-graph/shop}\n") == [
        "fleet.yaml:8: field 'events.cdevents.sink_url_env': missing: the name of the environment variable that "
        "holds the sink's URL (it may carry a token, so it is never written in the manifest)"]


def test_a_sink_url_written_in_the_manifest_is_refused_without_repeating_it(tmp_path):
    secret = "https://events.example.com/broker?token=XXXXSECRET"
    problems = problems_of(tmp_path, f"events:\n  cdevents:\n    sink_url_env: SINK\n    sink_url: '{secret}'\n")
    assert problems == ["fleet.yaml:10: field 'events.cdevents.sink_url': the sink's URL may carry a token: put it "
                        "in an environment variable of the orchestrator and name that variable in sink_url_env"]


def test_a_url_pasted_where_the_variables_name_belongs_is_refused_without_repeating_it(tmp_path):
    secret = "https://events.example.com/broker?token=XXXXSECRET"
    problems = problems_of(tmp_path, f"events:\n  cdevents:\n    sink_url_env: '{secret}'\n")
    assert problems == ["fleet.yaml:9: field 'events.cdevents.sink_url_env': expected the name of an environment "
                        "variable (letters, digits, '_'), which holds the sink's URL"]


def test_a_source_that_is_no_uri_reference_is_reported(tmp_path):
    assert problems_of(tmp_path, "events:\n  cdevents: {sink_url_env: SINK, source: 'release graph'}\n") == [
        "fleet.yaml:8: field 'events.cdevents.source': expected a URI-reference such as /release-graph/shop "
        "(no spaces), got 'release graph'"]


def test_an_unknown_cdevents_key_is_reported(tmp_path):
    assert problems_of(tmp_path, "events:\n  cdevents:\n    sink_url_env: SINK\n    mode: binary\n") == [
        "fleet.yaml:10: field 'events.cdevents.mode': unknown key (expected one of: sink_url_env, source)"]


def test_a_namespace_reserved_for_aws_is_reported(tmp_path):
    assert problems_of(tmp_path, "events:\n  cloudwatch:\n    namespace: AWS/ECS\n") == [
        "fleet.yaml:9: field 'events.cloudwatch.namespace': expected a CloudWatch namespace (letters, digits and "
        ". - _ / # :, at most 255, not starting with AWS/) such as ReleaseGraph, got 'AWS/ECS'"]


def test_a_region_that_is_no_aws_region_is_reported(tmp_path):
    assert problems_of(tmp_path, "events:\n  cloudwatch: {region: europe}\n") == [
        "fleet.yaml:8: field 'events.cloudwatch.region': expected an AWS region such as eu-west-1, got 'europe'"]


def test_an_endpoint_that_is_no_http_url_is_reported(tmp_path):
    assert problems_of(tmp_path, "events:\n  cloudwatch:\n    endpoint_url: 127.0.0.1:5001\n") == [
        "fleet.yaml:9: field 'events.cloudwatch.endpoint_url': expected an http(s) URL such as "
        "http://127.0.0.1:5001, got '127.0.0.1:5001' (leave it out to use $RELEASE_GRAPH_AWS_ENDPOINT_URL, else "
        "AWS itself)"]


def test_an_unknown_cloudwatch_key_is_reported(tmp_path):
    assert problems_of(tmp_path, "events:\n  cloudwatch:\n    dimensions: [Team]\n") == [
        "fleet.yaml:9: field 'events.cloudwatch.dimensions': unknown key (expected one of: endpoint_url, "
        "namespace, region)"]


def test_a_cloudwatch_block_that_is_not_a_mapping_is_reported(tmp_path):
    assert problems_of(tmp_path, "events:\n  cloudwatch: ReleaseGraph\n") == [
        "fleet.yaml:8: field 'events.cloudwatch': expected a mapping such as {namespace: ReleaseGraph, "
        "region: eu-west-1} (or {} for the defaults)"]
