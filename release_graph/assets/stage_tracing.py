"""Every stage's span and log fields, added around the step in one place: `traced_stage`.

A stage function decorated with `@traced_stage(fleet, service, Stage(...))` (under `@dg.asset` or
`@dg.asset_check`) gets, without a line of its body changing:

- log fields: every line the step writes through `context.log` starts with
  `[service=… environment=… sha=… trace_id=…]` and carries the same values as record attributes
  (`release_service`, `release_environment`, `release_sha`, `release_trace_id`) for structured loggers;
- the trace id in the metadata of what it records (materialization and check results, `trace_id`);
- when tracing is on (the `release_tracer` resource), at the end of the step: its span (step start, read
  from the event log, to now), the wait before it (from the previous stage's materialization of the same
  commit, read from the event log, to the step start), and for the image the release's root span, which
  starts at the commit's time. All of them are children of the release's root (release_graph/release/tracing.py).

The step learns which commit it works on when it has chosen it: `tag_release` (called by the image,
integration, deployment and approval steps where they tag their run) tells the running step; a check
reads the commit of the image it checks. Off, tracing costs a contextvar, a log filter and a sha256 per step.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

import dagster as dg

from release_graph.fleet import Fleet, Service
from release_graph.release import history
from release_graph.release import metadata as M
from release_graph.release import tracing as T
from release_graph.release.errors import ReleaseStepError
from release_graph.release.keys import image_key
from release_graph.release.tags import SHA_TAG, SHORT_SHA_TAG, TRACE_ID_TAG, release_tags
from resources.tracing import ReleaseTracer, SpanRecord

TRACER_RESOURCE = "release_tracer"  # the resource key (release_graph/wiring.py), injected as a step parameter
DAGSTER_EVENT_ATTRIBUTE = "dagster_event"  # Dagster's own events pass through context.log too: left as they are

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """What a step is in its release's trace."""

    task: str  # cicd.pipeline.task.name: image, unit_tests, integration, dev, prod_approval, ...
    span_name: str  # "image", "check unit_tests", "deploy dev", ...
    task_type: str | None = None  # the conventions' build, test or deploy
    environment: str | None = None
    after: dg.AssetKey | None = None  # the stage whose materialization of the same commit this one waited for
    release_of: dg.AssetKey | None = None  # a check: its release is the one this asset holds now
    root: bool = False  # the image: records the release's root span, from the commit's time


@dataclass
class StepRelease:
    """The release the running step works on; its commit is known once the step has chosen it."""

    fleet: str
    service: str
    environment: str | None
    sha: str | None = None
    parts: list[SpanRecord] = field(default_factory=list)  # spans inside the step (a rollout's steps)

    @property
    def trace(self) -> T.ReleaseTrace | None:
        return T.ReleaseTrace(self.fleet, self.service, self.sha) if self.sha else None


_running_step: contextvars.ContextVar[StepRelease | None] = contextvars.ContextVar("release_step", default=None)


def record_part(name: str, started_ns: int, ended_ns: int, attributes: dict | None = None,
                error: str | None = None) -> None:
    """A span inside the running stage (a rollout's step), exported with the stage's own spans when it ends;
    nothing when no traced stage runs (tracing off costs a list append)."""
    step = _running_step.get()
    if step is not None:
        kept = {name: value for name, value in (attributes or {}).items() if value is not None}
        step.parts.append(SpanRecord(name, started_ns, ended_ns, kept, error=error))


def tag_release(context, fleet: Fleet, service: Service, sha: str | None, environment: str | None = None,
                **more_tags: str) -> None:
    """Tag the run with the release this step works on (service, environment, commit and its trace id: automation
    cannot tag its runs at launch) and tell the running step, whose log fields and span then carry it.

    A run launched for a commit keeps that commit's tags: in a burst, an older commit's build run that goes on to
    its dev deployment deploys the newer commit that passed (promotion.in_commit_order), and its tags must still
    say which commit it built (what `history.commit_outcome` and the Runs page's filter read)."""
    tags = release_tags(service.name, sha, environment, fleet=fleet.name)
    launched_for = context.run.tags.get(SHA_TAG)
    if launched_for and sha and launched_for != sha:
        tags = {k: v for k, v in tags.items() if k not in (SHA_TAG, SHORT_SHA_TAG, TRACE_ID_TAG)}
    context.instance.add_run_tags(context.run.run_id, {**tags, **more_tags})
    step = _running_step.get()
    if step is not None and sha:
        step.sha = sha


class ReleaseLogFields(logging.Filter):
    """Puts the step's release on every line the step logs (a prefix, and record attributes)."""

    def __init__(self, step: StepRelease):
        super().__init__()
        self.step = step

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, DAGSTER_EVENT_ATTRIBUTE):
            return True
        trace = self.step.trace
        trace_id = trace.trace_id_hex if trace else None
        record.msg = f"{T.log_prefix(self.step.service, self.step.environment, self.step.sha, trace_id)} {record.msg}"
        record.release_service = self.step.service
        record.release_environment = self.step.environment
        record.release_sha = self.step.sha
        record.release_trace_id = trace_id
        return True


def traced_stage(fleet: Fleet, service: Service, stage: Stage):
    """Decorates a stage's asset or check function (plain or generator). The `release_tracer` resource is added
    to its parameters, so Dagster provides it like any other adapter; the body never sees it."""

    def decorate(step_function):
        if inspect.isgeneratorfunction(step_function):

            @functools.wraps(step_function)
            def generator_step(context, *args, **kwargs):
                with _TracedStep(context, fleet, service, stage, kwargs.pop(TRACER_RESOURCE)) as traced:
                    for item in step_function(context, *args, **kwargs):
                        yield traced.annotate(item)

            wrapper = generator_step
        else:

            @functools.wraps(step_function)
            def plain_step(context, *args, **kwargs):
                with _TracedStep(context, fleet, service, stage, kwargs.pop(TRACER_RESOURCE)) as traced:
                    return traced.annotate(step_function(context, *args, **kwargs))

            wrapper = plain_step
        signature = inspect.signature(step_function)
        wrapper.__signature__ = signature.replace(parameters=[
            *signature.parameters.values(),
            inspect.Parameter(TRACER_RESOURCE, inspect.Parameter.KEYWORD_ONLY, annotation=ReleaseTracer),
        ])
        return wrapper

    return decorate


def check_stage(service: Service, check_name: str) -> Stage:
    """A check on the image: evidence about the release the image holds now."""
    return Stage(check_name, f"check {check_name}", "test", release_of=image_key(service))


class _TracedStep:
    def __init__(self, context, fleet: Fleet, service: Service, stage: Stage, tracer: ReleaseTracer | None):
        self.context, self.fleet, self.service, self.stage = context, fleet, service, stage
        self.tracer = tracer if tracer is not None and tracer.enabled else None
        self.step = StepRelease(fleet.name, service.name, stage.environment)
        self.metadata: dict = {}  # what the step recorded (its materialization), read for the spans
        self.failed_check = False
        self.started_ns = time.time_ns()

    def __enter__(self) -> _TracedStep:
        if self.stage.release_of is not None:
            checked = history.latest(self.context.instance, self.stage.release_of)
            self.step.sha = checked.git_sha if checked is not None else None
        self.token = _running_step.set(self.step)
        self.log_fields = ReleaseLogFields(self.step)
        self.context.log.addFilter(self.log_fields)
        return self

    def __exit__(self, kind, error, _traceback) -> None:
        self.context.log.removeFilter(self.log_fields)
        _running_step.reset(self.token)
        if self.tracer is not None and self.step.trace is not None:
            try:
                self._record_spans(error)
            except Exception as exc:  # a trace is an aid: losing one must never fail a release
                logger.warning("release trace of %s not recorded: %s", self.service.name, exc)

    def annotate(self, item):
        """The trace id in the metadata of what the step yields or returns (and, from there, its commit)."""
        if isinstance(item, dg.MaterializeResult):
            self._learn(item.metadata)
            self.metadata = dict(item.metadata or {})
            checks = [self.annotate(check) for check in item.check_results or []]
            return item._replace(metadata=self._with_trace_id(item.metadata), check_results=checks)
        if isinstance(item, dg.AssetCheckResult):
            self._learn(item.metadata)
            self.metadata = self.metadata or dict(item.metadata or {})
            if not item.passed and item.severity == dg.AssetCheckSeverity.ERROR:
                self.failed_check = True
            return item._replace(metadata=self._with_trace_id(item.metadata))
        return item

    def _learn(self, metadata) -> None:
        if self.step.sha is None and metadata:
            sha = getattr(metadata.get(M.GIT_SHA), "value", metadata.get(M.GIT_SHA))
            self.step.sha = sha or None

    def _with_trace_id(self, metadata) -> dict:
        trace = self.step.trace
        return {**(metadata or {}), M.TRACE_ID: trace.trace_id_hex} if trace else dict(metadata or {})

    # --- spans -------------------------------------------------------------------------------------------
    def _record_spans(self, error: BaseException | None) -> None:
        trace = self.step.trace
        instance, run_id = self.context.instance, self.context.run.run_id
        step_key = self.context.get_step_execution_context().step.key
        started_at = history.step_started_at(instance, run_id, step_key)
        started_ns = int(started_at * 1e9) if started_at is not None else self.started_ns
        ended_ns = time.time_ns()
        result, why = self._result(error)
        attributes = {
            **trace.release_attributes(), T.HEAD_NAME: self.service.branch, T.TASK_NAME: self.stage.task,
            T.TASK_RUN_ID: f"{run_id}/{step_key}", T.TASK_RESULT: result, T.DAGSTER_RUN_ID: run_id,
            T.STEP_KEY: step_key,
        }
        if self.stage.task_type:
            attributes[T.TASK_TYPE] = self.stage.task_type
        if self.stage.environment:
            attributes[T.ENVIRONMENT_NAME] = self.stage.environment
        digest = self._value(M.DIGEST)
        if digest:
            attributes[T.DIGEST] = digest
        spans = []
        waited_since, waited_for = self._waited_since(trace)
        if waited_since is not None and waited_since < started_ns:
            spans.append(SpanRecord(f"wait before {self.stage.span_name}", waited_since, started_ns, {
                **trace.release_attributes(), T.TASK_NAME: self.stage.task, T.WAITED_FOR: waited_for,
                **({T.ENVIRONMENT_NAME: self.stage.environment} if self.stage.environment else {}),
            }))
        spans.append(SpanRecord(self.stage.span_name, started_ns, ended_ns, attributes, error=why))
        shared = {**trace.release_attributes(), T.TASK_RUN_ID: f"{run_id}/{step_key}",
                  **({T.ENVIRONMENT_NAME: self.stage.environment} if self.stage.environment else {})}
        spans += [SpanRecord(part.name, part.start_ns, part.end_ns, {**shared, **part.attributes}, error=part.error)
                  for part in self.step.parts]
        root = None
        if self.stage.root and not isinstance(error, dg.RetryRequested) and self._value("built") is not False:
            # Once per release: by the step that built its image (the retry of a transient failure records it).
            root = SpanRecord(trace.root_name, waited_since or started_ns, ended_ns,
                              {**trace.release_attributes(), T.HEAD_NAME: self.service.branch})
        self.tracer.record(trace_id=trace.trace_id, root_span_id=trace.root_span_id,
                           service_attributes=trace.service_attributes(), spans=spans, root=root)

    def _waited_since(self, trace: T.ReleaseTrace) -> tuple[int | None, str]:
        """When the stage's wait began: the previous stage's materialization of this commit (the event log), or
        for the image the commit's own time."""
        if self.stage.root:
            committed_at = self._value(M.COMMITTED_AT)
            if not committed_at:
                return None, "commit"
            return int(datetime.fromisoformat(str(committed_at)).timestamp() * 1e9), "commit"
        if self.stage.after is None:
            return None, ""
        previous = history.record_with_sha(self.context.instance, self.stage.after, trace.sha)
        return (int(previous.timestamp * 1e9) if previous else None), self.stage.after.to_user_string()

    def _value(self, name: str):
        value = self.metadata.get(name)
        return getattr(value, "value", value)

    def _result(self, error: BaseException | None) -> tuple[str, str | None]:
        """The conventions' task result: failure is the release's own (its tests, a refusal), error the system's."""
        if error is None:
            return (T.FAILURE, "a blocking check failed") if self.failed_check else (T.SUCCESS, None)
        if isinstance(error, ReleaseStepError | dg.Failure):
            return T.FAILURE, str(error)[:500]
        return T.ERROR, f"{type(error).__name__}: {error}"[:500]
