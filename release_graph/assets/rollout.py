"""A deployment that takes traffic progressively: the environment's `rollout` (blue-green or canary steps,
then a watch window at 100 %), measured while it serves, promoted when good and rolled back on its own
when not.

The target moves traffic (`start_candidate`, `set_candidate_weight`, `promote_candidate`,
`abort_candidate`: haproxy weights on the docker target); the metric providers measure the candidate;
release_graph/release/analysis.py judges. Every step is one log line and one row of the step table in the
deployment's metadata. A release manager steers a paused or running rollout with `release-graph rollout
promote|abort`, which tags the run (`release/rollout_request`); the rollout reads that tag between
measurements. A rollback moves all traffic back to the version that served throughout, removes the new
one, records a `rollback` observation on the environment's asset and fails the step with the measurements.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import dagster as dg

from release_graph.assets.common import rows_table
from release_graph.assets.stage_tracing import record_part
from release_graph.fleet import Environment
from release_graph.fleet.model import Analysis, Rollout
from release_graph.release import analysis as A
from release_graph.release import metadata as M
from release_graph.release.errors import ReleaseStepError
from release_graph.release.promotion import digest_label
from release_graph.release.tags import ROLLOUT_REQUEST_TAG
from resources.metrics import MetricProvider, MetricsUnavailable, Subject
from resources.targets import DeploymentResult, DeploymentSpec

STEP_COLUMNS = ("step", "weight", "started", "seconds", "outcome", "requests", "error_rate", "latency_ms", "reason")


@dataclass(frozen=True)
class Step:
    name: str
    weight: int  # the candidate's share of traffic during the step, in percent
    seconds: float  # how long it serves (and is watched) before the next step
    manual: bool = False


def plan(rollout: Rollout) -> list[Step]:
    """The steps of a rollout; the last one is the watch window at 100 % (the bake time)."""
    if rollout.strategy == "canary":
        steps = [Step(f"canary {s.weight}%", s.weight, s.pause_seconds, s.manual) for s in rollout.steps
                 if s.weight < 100]
        return [*steps, Step("full traffic (bake)", 100, rollout.bake_seconds)]
    # blue-green: everything switches at once; the old color stays for max(bake, hold) so going back is instant
    return [Step("switch (blue-green)", 100, max(rollout.bake_seconds, rollout.hold_seconds))]


@dataclass
class RolloutReport:
    strategy: str
    steps: list[dict] = field(default_factory=list)
    verdict: A.Verdict | None = None
    rolled_back: str | None = None  # why, when it rolled back
    result: DeploymentResult | None = None


class RolledBack(ReleaseStepError):
    """The new version was taken away during its rollout; the previous version serves as before."""

    def __init__(self, message: str, report: RolloutReport):
        super().__init__(message)
        self.report = report


def metric_providers(analysis: Analysis, target) -> dict[str, MetricProvider]:
    """One provider per name in `analysis.providers`, configured from the manifest; no I/O here."""
    providers: dict[str, MetricProvider] = {}
    for name in analysis.providers:
        if name == "haproxy":
            from resources.metrics.haproxy import HaproxyMetrics

            providers[name] = HaproxyMetrics(target.counters)
        elif name == "prometheus":
            from resources.metrics.prometheus import PrometheusMetrics

            providers[name] = PrometheusMetrics(analysis.prometheus)
        elif name == "cloudwatch":
            from resources.metrics.cloudwatch import CloudWatchMetrics

            providers[name] = CloudWatchMetrics(analysis.cloudwatch)
    return providers


class RolloutController:
    """Drives one rollout. `request()` returns what a release manager asked (`promote`, `abort` or None);
    `sleep` is time.sleep (tests of the rules may pass their own clock)."""

    def __init__(self, *, target, spec: DeploymentSpec, environment: Environment, providers: dict,
                 log, request: Callable[[], str | None], sleep: Callable[[float], None] = time.sleep):
        self.target, self.spec, self.environment = target, spec, environment
        self.rollout = environment.rollout
        self.analysis = self.rollout.analysis
        self.providers, self.log, self.request, self.sleep = providers, log, request, sleep
        self.where = f"{spec.service}@{spec.environment}"

    def run(self) -> RolloutReport:
        report = RolloutReport(strategy=self.rollout.strategy)
        started = self.target.start_candidate(self.spec)  # DeploymentFailed: unhealthy, nothing moved
        digest = started.digest
        self.log.info(f"{self.where}: {self.rollout.strategy} of {digest_label(digest)}: "
                      f"{started.container_name} healthy, 0 % of the traffic")
        subject = Subject(self.spec.fleet, self.spec.environment, self.spec.service, digest, "candidate")
        try:
            for index, step in enumerate(plan(self.rollout), start=1):
                step_started_ns = time.time_ns()
                self.target.set_candidate_weight(self.spec.fleet, self.spec.environment, self.spec.service,
                                                 step.weight)
                verdict, why_back = self._watch(step, subject)
                row = self._row(index, step, verdict)
                report.steps.append(row)
                # the step as a span of the release's trace (stage_tracing: nothing when tracing is off)
                record_part(f"rollout {row['step']}", step_started_ns, time.time_ns(), {
                    "release_graph.rollout.weight": step.weight, "release_graph.rollout.outcome": verdict.outcome,
                    "release_graph.rollout.requests": row["requests"], "release_graph.rollout.reason": verdict.reason,
                }, error=why_back)
                report.verdict = verdict
                self.log.info(f"{self.where}: step {index} {step.name}: {step.weight} % for {row['seconds']} s: "
                              f"{verdict.outcome}: {verdict.reason}")
                if why_back is None and step.manual:
                    why_back = self._wait_for_promotion(step)
                if why_back is not None:
                    self._roll_back(report, why_back)
            replaced = self.target.promote_candidate(self.spec.fleet, self.spec.environment, self.spec.service)
        except RolledBack:
            raise  # `_roll_back` already gave the traffic back and removed the new version
        except BaseException:
            # Whatever broke mid-way (the switch, the engine, a cancel): the previous version takes it all.
            self.target.abort_candidate(self.spec.fleet, self.spec.environment, self.spec.service)
            raise
        self.log.info(f"{self.where}: {digest_label(digest)} promoted: 100 % of the traffic; removed "
                      f"{', '.join(replaced) or 'nothing'}")
        report.result = replace(started, replaced=replaced)
        return report

    def _watch(self, step: Step, subject: Subject) -> tuple[A.Verdict, str | None]:
        """Measure the candidate every `interval_seconds` while the step serves; then, when the window was
        inconclusive and the analysis says wait, keep measuring up to `inconclusive_limit` more times.
        Returns the last verdict and the reason to roll back (None: go on)."""
        if step.seconds <= 0:
            return A.Verdict(A.SUCCESSFUL, "no pause: not analysed"), None
        counts = A.WatchCounts(self.analysis)
        windows, verdict = self._open(subject), None
        ends = time.monotonic() + step.seconds
        while True:
            self.sleep(max(0.1, min(self.analysis.interval_seconds, ends - time.monotonic())))
            if self.request() == "abort":
                return verdict or A.Verdict(A.ERROR, "aborted"), "aborted by a release manager"
            verdict, windows = self._measure(windows, subject)
            why_back = counts.add(verdict)
            if why_back is not None:
                return verdict, why_back
            unhealthy = self.target.candidate_problem(self.spec.fleet, self.spec.environment, self.spec.service)
            if unhealthy is not None:
                return verdict, f"the new version is not healthy: {unhealthy}"
            if time.monotonic() < ends:
                continue
            if verdict.outcome == A.INCONCLUSIVE:
                if self.analysis.on_inconclusive == "rollback":
                    return verdict, f"too little traffic to judge: {verdict.reason}"
                if counts.inconclusive_exhausted():
                    return verdict, (f"too little traffic to judge after {counts.inconclusive} measurement(s): "
                                     f"{verdict.reason}; a version nobody used is not promoted")
                continue
            if verdict.outcome == A.ERROR:
                continue  # below the limit of errors in a row: measure again
            return verdict, None

    def _open(self, subject: Subject) -> dict:
        windows = {}
        for name, provider in self.providers.items():
            try:
                windows[name] = provider.open_window(subject)
            except MetricsUnavailable as exc:
                self.log.warning(f"{self.where}: {name} could not open its window: {exc}")
        return windows

    def _measure(self, windows: dict, subject: Subject) -> tuple[A.Verdict, dict]:
        measurements, errors = [], []
        for name, provider in self.providers.items():
            try:
                if name not in windows:
                    windows[name] = provider.open_window(subject)
                measurements.append(provider.measure(windows[name]))
            except MetricsUnavailable as exc:
                errors.append(f"{name}: {exc}")
        if errors:
            return A.Verdict(A.ERROR, "; ".join(errors), {m.provider: m.as_metadata() for m in measurements}), windows
        return A.judge(self.analysis, measurements), windows

    def _wait_for_promotion(self, step: Step) -> str | None:
        self.log.info(f"{self.where}: paused at {step.weight} %: waiting for `release-graph rollout promote "
                      f"{self.spec.service} --env {self.spec.environment}` (or abort)")
        while True:
            asked = self.request()
            if asked == "promote":
                self.log.info(f"{self.where}: promoted by a release manager at {step.weight} %")
                return None
            if asked == "abort":
                return "aborted by a release manager"
            self.sleep(1.0)

    def _row(self, index: int, step: Step, verdict: A.Verdict) -> dict:
        first = next(iter(verdict.values.values()), {}) if verdict.values else {}
        return {
            "step": f"{index}. {step.name}", "weight": step.weight,
            "started": time.strftime("%H:%M:%S"), "seconds": round(step.seconds, 1),
            "outcome": verdict.outcome, "requests": first.get("requests"),
            "error_rate": first.get("error_rate"), "latency_ms": first.get("p95_ms", first.get("mean_ms")),
            "reason": verdict.reason,
        }

    def _roll_back(self, report: RolloutReport, why: str) -> None:
        started = time.monotonic()
        removed = self.target.abort_candidate(self.spec.fleet, self.spec.environment, self.spec.service)
        seconds = time.monotonic() - started
        report.rolled_back = why
        self.log.warning(f"{self.where}: rolled back in {seconds:.2f} s: {why}; all traffic is on the version "
                         f"that served before; removed {removed or 'nothing'}")
        raise RolledBack(f"{self.where}: rolled back: {why}", report)


def rollout_request(instance, run_id: str) -> Callable[[], str | None]:
    """What `release-graph rollout promote|abort` asked of this run (a run tag), read afresh each time."""

    def read() -> str | None:
        run = instance.get_run_by_id(run_id)
        return run.tags.get(ROLLOUT_REQUEST_TAG) if run is not None else None

    return read


def rollout_metadata(report: RolloutReport) -> dict:
    """The step table, the verdict and its numbers (plotted by the UI over releases)."""
    metadata = {
        M.ROLLOUT_STRATEGY: report.strategy,
        M.ROLLOUT_STEPS: rows_table(report.steps, STEP_COLUMNS),
    }
    if report.verdict is not None:
        metadata[M.ANALYSIS_VERDICT] = f"{report.verdict.outcome}: {report.verdict.reason}"
        for provider, values in report.verdict.values.items():
            for name, value in values.items():
                if isinstance(value, int | float):
                    metadata[f"{provider}_{name}"] = dg.MetadataValue.float(float(value))
    if report.rolled_back:
        metadata[M.ROLLED_BACK_BECAUSE] = report.rolled_back
    return metadata


def deliver(context, target, spec: DeploymentSpec, environment: Environment, key: dg.AssetKey, *,
            immediate: bool = False):
    """Deploy `spec` the way the environment's rollout says. Returns the DeploymentResult and the rollout's
    metadata ({} for a plain replace). A rollback records a `rollback` observation and raises dg.Failure
    carrying the step table and the measurements. `immediate` (a release manager's rollback) switches at
    once: going back to what served before is not a release to measure."""
    rollout = environment.rollout
    if not rollout.progressive:
        return target.deploy(spec), {}
    if immediate:
        return target.deploy(spec), {M.ROLLOUT_STRATEGY: "immediate (rollback)",
                                     M.ANALYSIS_VERDICT: "not analysed: a rollback to what served before"}
    digest = spec.image.rpartition("@")[2]
    serving = target.running(spec.fleet, spec.environment, spec.service)
    route = target.traffic(spec.fleet, spec.environment, spec.service)
    reason = None
    if serving is None or not serving.running:
        reason = "not analysed: the first deployment here has no previous version to go back to"
    elif route is None:
        reason = (f"not analysed: {spec.service} is not behind the environment's switch (an HTTP service with a "
                  "port and a health path is): it was replaced at once")
    elif serving.digest == digest:
        reason = "not analysed: this digest already served"
    if reason is not None:
        return target.deploy(spec), {M.ROLLOUT_STRATEGY: rollout.strategy, M.ANALYSIS_VERDICT: reason}
    if rollout.strategy == "replace":
        # replace + bake: the new version takes everything at once, then is watched like a last canary step
        rollout = Rollout(strategy="canary", steps=(), bake_seconds=rollout.bake_seconds, analysis=rollout.analysis)
        environment = replace(environment, rollout=rollout)
    controller = RolloutController(
        target=target, spec=spec, environment=environment,
        providers=metric_providers(rollout.analysis, target), log=context.log,
        request=rollout_request(context.instance, context.run.run_id))
    try:
        report = controller.run()
    except RolledBack as exc:
        metadata = rollout_metadata(exc.report)
        context.log_event(dg.AssetObservation(asset_key=key, metadata={
            "event": M.ROLLBACK_EVENT, M.DIGEST: digest, "serving": serving.digest or "",
            M.ROLLED_BACK_BECAUSE: exc.report.rolled_back or "", M.ROLLOUT_STEPS: metadata[M.ROLLOUT_STEPS]}))
        raise dg.Failure(description=str(exc), metadata=metadata) from None
    return report.result, rollout_metadata(report)
