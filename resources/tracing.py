"""Exporting release traces with OpenTelemetry: the `release_tracer` resource.

Off unless configured (`release_graph/wiring.py` reads `RELEASE_GRAPH_OTLP_ENDPOINT` and
`RELEASE_GRAPH_TRACE_FILE`): then nothing is imported from OpenTelemetry, no tracer provider or exporter
exists and `record` returns at once. On, the first `record` builds one tracer provider per released service
(OpenTelemetry's resource is per provider, and `service.name` names the service being released, not this
process). A step's spans are exported together before `record` returns, inside the step, in one request per
exporter and without any thread: a run that is killed loses at most the step it was in.

The spans of one release are written by several runs in several processes and must join one trace without
shared state: the caller gives the trace id and the root span id (derived from the release, see
release_graph/release/tracing.py) and every span here is a child of that root. The root itself is
recorded once, with those ids pinned (`ReleaseIds`). Nothing here does I/O at import or construction.
"""

from __future__ import annotations

import contextvars
import json
import os
import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
from pydantic import PrivateAttr

OTLP_TRACES_PATH = "/v1/traces"
EXPORT_TIMEOUT_SECONDS = 5.0  # a collector that does not answer must not hold a release step for long


class TracingConfigError(ValueError):
    """A tracing setting that cannot work; the message names where it is configured."""


@dataclass(frozen=True)
class SpanRecord:
    """One span, known in full when it is recorded: a stage or a wait, with explicit times."""

    name: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    error: str | None = None  # the span's status is ERROR with this description when set


def otlp_traces_url(endpoint: str, *, source: str) -> str:
    """The OTLP/HTTP traces URL for a collector's base address (http://host:4318 -> http://host:4318/v1/traces);
    `source` names where the setting comes from, for the error."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise TracingConfigError(f"{source}={endpoint!r}: expected the collector's OTLP/HTTP address, such as "
                                 "http://127.0.0.1:4318")
    path = parts.path.rstrip("/")
    return endpoint.rstrip("/") if path.endswith(OTLP_TRACES_PATH) else endpoint.rstrip("/") + OTLP_TRACES_PATH


def checked_trace_file(path: str, *, source: str) -> str:
    """Every run and the daemon must write the same file, whatever their working folder: absolute only."""
    if not os.path.isabs(path):
        raise TracingConfigError(f"{source}={path!r}: expected an absolute path to a JSON-lines file")
    return path


_pinned_ids: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("release_pinned_ids",
                                                                                     default=None)


def _ids_generator():
    from opentelemetry.sdk.trace.id_generator import IdGenerator

    class ReleaseIds(IdGenerator):
        """Random ids, except for the root span of a release, whose trace and span ids are pinned: every stage
        span, in whichever process, names that root as its parent."""

        def generate_span_id(self) -> int:
            pinned = _pinned_ids.get()
            return pinned[1] if pinned else random.getrandbits(64) or 1

        def generate_trace_id(self) -> int:
            pinned = _pinned_ids.get()
            return pinned[0] if pinned else random.getrandbits(128) or 1

    return ReleaseIds()


def _one_export_per_step(exporter):
    from opentelemetry.sdk.trace import SpanProcessor

    class OneExportPerStep(SpanProcessor):
        """Keeps the spans a step ends and exports them together on `force_flush` (the end of `record`): one
        request per step, no thread, and a collector that is down costs a step one timeout, not one per span."""

        def __init__(self):
            self._ended: list = []
            self._lock = threading.Lock()

        def on_end(self, span) -> None:
            with self._lock:
                self._ended.append(span)

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            with self._lock:
                spans, self._ended = self._ended, []
            if spans:
                exporter.export(spans)
            return True

        def shutdown(self) -> None:
            self.force_flush()
            exporter.shutdown()

    return OneExportPerStep()


def _json_lines_exporter(path: str):
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class JsonLinesSpanExporter(SpanExporter):
        """One JSON object per span and line, appended in one write (runs in several processes share the file)."""

        def export(self, spans) -> SpanExportResult:
            lines = "".join(json.dumps(_span_as_dict(span), sort_keys=True) + "\n" for span in spans)
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as out:
                out.write(lines)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            return None

    return JsonLinesSpanExporter()


def _span_as_dict(span) -> dict[str, Any]:
    return {
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "name": span.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "status_description": span.status.description,
        "resource": dict(span.resource.attributes),
    }


class ReleaseTracer(dg.ConfigurableResource):
    """Where release traces go: an OTLP/HTTP collector, a JSON-lines file, both, or nowhere (the default)."""

    otlp_endpoint: str | None = None  # the collector's base address, e.g. http://127.0.0.1:4318
    trace_file: str | None = None  # an absolute path; one span per line
    # Where each setting is configured, named in its errors (wiring passes the environment variables' names).
    otlp_endpoint_source: str = "resource release_tracer, otlp_endpoint"
    trace_file_source: str = "resource release_tracer, trace_file"

    _providers: dict = PrivateAttr(default_factory=dict)
    _exporters: list | None = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    @property
    def enabled(self) -> bool:
        return bool(self.otlp_endpoint or self.trace_file)

    def check(self) -> None:
        """Raise TracingConfigError for settings that cannot work (no I/O)."""
        if self.otlp_endpoint:
            otlp_traces_url(self.otlp_endpoint, source=self.otlp_endpoint_source)
        if self.trace_file:
            checked_trace_file(self.trace_file, source=self.trace_file_source)

    def record(self, *, trace_id: int, root_span_id: int, service_attributes: Mapping[str, str],
               spans: Sequence[SpanRecord], root: SpanRecord | None = None) -> None:
        """Export `spans` as children of the release's root span (and the root itself when given)."""
        if not self.enabled:
            return
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

        provider = self._provider(service_attributes)
        tracer = provider.get_tracer("release_graph")

        def emit(record: SpanRecord, parent_context) -> None:
            span = tracer.start_span(record.name, context=parent_context, start_time=record.start_ns,
                                     attributes=dict(record.attributes))
            if record.error is not None:
                span.set_status(Status(StatusCode.ERROR, record.error))
            span.end(end_time=max(record.end_ns, record.start_ns))

        if root is not None:
            token = _pinned_ids.set((trace_id, root_span_id))
            try:
                emit(root, trace.set_span_in_context(trace.INVALID_SPAN))  # a root: no parent at all
            finally:
                _pinned_ids.reset(token)
        parent = trace.set_span_in_context(NonRecordingSpan(SpanContext(
            trace_id=trace_id, span_id=root_span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))))
        for record in spans:
            emit(record, parent)
        provider.force_flush()

    def _provider(self, service_attributes: Mapping[str, str]):
        key = tuple(sorted(service_attributes.items()))
        with self._lock:
            provider = self._providers.get(key)
            if provider is None:
                from opentelemetry.sdk.resources import Resource
                from opentelemetry.sdk.trace import TracerProvider
                provider = TracerProvider(resource=Resource.create(dict(service_attributes)),
                                          id_generator=_ids_generator())
                for exporter in self._shared_exporters():
                    provider.add_span_processor(_one_export_per_step(exporter))
                self._providers[key] = provider
            return provider

    def _shared_exporters(self) -> list:
        if self._exporters is None:
            self.check()
            exporters = []
            if self.otlp_endpoint:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                url = otlp_traces_url(self.otlp_endpoint, source=self.otlp_endpoint_source)
                exporters.append(OTLPSpanExporter(endpoint=url, timeout=EXPORT_TIMEOUT_SECONDS))
            if self.trace_file:
                exporters.append(_json_lines_exporter(self.trace_file))
            self._exporters = exporters
        return self._exporters

    @property
    def providers_created(self) -> int:
        """How many tracer providers exist (0 while tracing is off): what the tests of 'off' look at."""
        return len(self._providers)
