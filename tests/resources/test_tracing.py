"""The `release_tracer` adapter: spans of one release, recorded by separate tracers (as separate runs do),
join one trace under its root; off, it creates nothing."""

from __future__ import annotations

import json
import threading
import time

import pytest

from resources.tracing import ReleaseTracer, SpanRecord, TracingConfigError, otlp_traces_url

TRACE_ID = 0x5EED_0000_0000_0000_0000_0000_0000_0001
ROOT_SPAN_ID = 0x0000_0000_0000_00AB
SERVICE = {"service.name": "orders", "service.namespace": "shop"}


def a_span(name: str, **attributes) -> SpanRecord:
    now = time.time_ns()
    return SpanRecord(name, now - 2_000_000, now, attributes)


def test_the_spans_of_two_runs_join_one_trace_under_the_release_root_in_the_file(tmp_path):
    trace_file = tmp_path / "traces" / "spans.jsonl"
    # Given the build run, which records the root, and a later deploy run with a tracer of its own
    build_run = ReleaseTracer(trace_file=str(trace_file))
    deploy_run = ReleaseTracer(trace_file=str(trace_file))
    committed = time.time_ns() - 60_000_000_000
    build_run.record(trace_id=TRACE_ID, root_span_id=ROOT_SPAN_ID, service_attributes=SERVICE,
                     root=SpanRecord("release orders 1a2b3c4", committed, time.time_ns()),
                     spans=[a_span("image", **{"cicd.pipeline.task.name": "image"})])
    deploy_run.record(trace_id=TRACE_ID, root_span_id=ROOT_SPAN_ID, service_attributes=SERVICE,
                      spans=[a_span("deploy dev"), SpanRecord("check healthy", 1, 2, error="unhealthy")])

    # Then every line is one span of the same trace; the root has the pinned id and every other span is its child
    spans = [json.loads(line) for line in trace_file.read_text().splitlines()]
    assert [s["name"] for s in spans] == ["release orders 1a2b3c4", "image", "deploy dev", "check healthy"]
    assert {s["trace_id"] for s in spans} == {f"{TRACE_ID:032x}"}
    root, *children = spans
    assert (root["span_id"], root["parent_span_id"], root["start_ns"]) == (f"{ROOT_SPAN_ID:016x}", None, committed)
    assert {c["parent_span_id"] for c in children} == {f"{ROOT_SPAN_ID:016x}"}
    assert len({c["span_id"] for c in children}) == 3
    assert spans[1]["attributes"] == {"cicd.pipeline.task.name": "image"}
    assert spans[1]["resource"]["service.name"] == "orders"
    assert (spans[3]["status"], spans[3]["status_description"]) == ("ERROR", "unhealthy")


def test_spans_reach_an_otlp_http_collector(otlp_receiver):
    tracer = ReleaseTracer(otlp_endpoint=otlp_receiver.endpoint)
    tracer.record(trace_id=TRACE_ID, root_span_id=ROOT_SPAN_ID, service_attributes=SERVICE,
                  root=a_span("release orders 1a2b3c4"), spans=[a_span("image", **{"vcs.ref.head.revision": "1a"})])

    # exported inside `record` (one span at a time): nothing waits in a queue for a flush
    spans = otlp_receiver.spans()
    assert [(s["name"], s["parent_span_id"]) for s in spans] == [
        ("release orders 1a2b3c4", None), ("image", f"{ROOT_SPAN_ID:016x}")]
    assert {s["trace_id"] for s in spans} == {f"{TRACE_ID:032x}"}
    assert spans[1]["attributes"] == {"vcs.ref.head.revision": "1a"}
    assert spans[1]["resource"]["service.namespace"] == "shop"


def test_off_it_creates_no_provider_no_thread_and_no_file(tmp_path):
    threads = set(threading.enumerate())
    tracer = ReleaseTracer()
    tracer.record(trace_id=TRACE_ID, root_span_id=ROOT_SPAN_ID, service_attributes=SERVICE,
                  root=a_span("release orders 1a2b3c4"), spans=[a_span("image")])
    assert not tracer.enabled
    assert tracer.providers_created == 0
    assert set(threading.enumerate()) == threads
    assert list(tmp_path.iterdir()) == []


def test_a_collector_that_does_not_answer_costs_the_step_one_bounded_wait_and_no_error(free_port):
    tracer = ReleaseTracer(otlp_endpoint=f"http://127.0.0.1:{free_port}")
    started = time.monotonic()
    # the step's spans go in one request: one timeout (5 s) for the step, not one per span
    tracer.record(trace_id=TRACE_ID, root_span_id=ROOT_SPAN_ID, service_attributes=SERVICE,
                  root=a_span("release orders 1a2b3c4"), spans=[a_span(f"span {n}") for n in range(4)])
    assert time.monotonic() - started < 8


@pytest.mark.parametrize(("endpoint", "url"), [
    ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
    ("http://collector:4318/", "http://collector:4318/v1/traces"),
    ("https://collector.example/v1/traces", "https://collector.example/v1/traces"),
])
def test_the_collector_address_is_its_base_or_its_traces_url(endpoint, url):
    assert otlp_traces_url(endpoint, source="X") == url


def test_settings_that_cannot_work_are_refused_naming_where_they_are_set():
    with pytest.raises(TracingConfigError, match=r"resource release_tracer, otlp_endpoint='127.0.0.1:4318': "
                                                 r"expected the collector's OTLP/HTTP address"):
        ReleaseTracer(otlp_endpoint="127.0.0.1:4318").check()
    with pytest.raises(TracingConfigError, match=r"resource release_tracer, trace_file='spans.jsonl': expected an "
                                                 r"absolute path"):
        ReleaseTracer(trace_file="spans.jsonl").check()
