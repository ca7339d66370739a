"""Evidence about `<service>/image`: unit tests and Dockerfile lint (the security checks, SAST included, are in
release_graph/security_checks.py).

Each check reads the commit of the image's latest materialization, so it judges exactly what was pushed.
"The check could not run" (no report, a crashed container, a missing tool) raises: Dagster shows an
execution error, never a pass. "The check ran and found problems" is `passed=False`.
"""

import dataclasses
import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from release_graph.assets.common import rows_table
from release_graph.assets.image import export_build_context, stream_to_run
from release_graph.assets.stage_tracing import check_stage, traced_stage
from release_graph.fleet import Fleet, Service
from release_graph.release import metadata as M
from release_graph.release.errors import ReleaseStepError
from release_graph.release.keys import image_key
from release_graph.security import evidence
from resources import labels as L
from resources.containers import ContainerEngine
from resources.git import GitResource

TEST_REPORTS_DIR = "/reports"
UNIT_TEST_TIMEOUT_SECONDS = 600
MAX_TABLE_ROWS = 50


def image_under_check(context, service: Service) -> tuple[str, str]:
    """(sha, digest) of the latest `<service>/image` materialization."""
    key = image_key(service)
    event = context.instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        raise ReleaseStepError(f"service '{service.name}': no image has been built yet, nothing to check")
    metadata = event.asset_materialization.metadata
    return metadata[M.GIT_SHA].value, metadata[M.DIGEST].value


def check_unit_tests(context, fleet: Fleet, service: Service, git, engine) -> dg.AssetCheckResult:
    sha, digest = image_under_check(context, service)
    test_reference = f"{service.image_repository(fleet)}:{sha}-{service.build.test_target}"
    # The test stage shares its layers with the released image; it stays local and is reused for a SHA.
    if not engine.local_image_exists(test_reference):
        with tempfile.TemporaryDirectory(prefix=f"rg-test-{service.name}-") as tmp:
            context_dir = export_build_context(git, service, sha, Path(tmp))
            engine.build(
                context_dir,
                dockerfile=service.build.dockerfile,
                tag=test_reference,
                target=service.build.test_target,
                labels={L.SERVICE: service.name, "org.opencontainers.image.revision": sha},
                buildargs=dict(service.build.args),
                on_log=stream_to_run(context),
            )
    run = engine.run_to_completion(
        test_reference,
        labels={L.SERVICE: service.name, L.STEP: "unit-tests"},
        name=f"rg-unit-{fleet.name}-{service.name}-{sha[:12]}-{context.run.run_id[:8]}",
        timeout_seconds=UNIT_TEST_TIMEOUT_SECONDS,
        copy_out=TEST_REPORTS_DIR,
    )
    summary = read_test_report(run, f"service '{service.name}': the unit-test container")
    return dg.AssetCheckResult(
        passed=tests_passed(summary),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={M.GIT_SHA: sha, M.DIGEST: digest, **junit_metadata(summary),
                  "container_exit_code": run.exit_code},
        description=(
            f"{summary.passed}/{summary.tests} unit tests passed"
            + (f"; failing: {', '.join(summary.failing[:5])}" if summary.failing else "")
        ),
    )


def read_test_report(run, what: str) -> evidence.JUnitSummary:
    """The JUnit verdict a test container left in /reports, for unit, integration and end-to-end tests.

    No report, or an exit code the report does not explain, means the tests could not run: that raises
    (an execution error in the UI), it is never read as a pass or as a test failure.
    """
    reports = {name: data for name, data in run.files.items() if name.endswith(".xml")}
    if not reports:
        raise ReleaseStepError(f"{what} exited {run.exit_code} without a JUnit report in {TEST_REPORTS_DIR}; "
                               f"last log lines:\n{run.logs_tail}")
    summary = evidence.parse_junit(reports)
    if run.exit_code != 0 and summary.failed == 0 and summary.errors == 0:
        raise ReleaseStepError(f"{what} exited {run.exit_code} but its report shows no failure; "
                               f"last log lines:\n{run.logs_tail}")
    return summary


def tests_passed(summary: evidence.JUnitSummary) -> bool:
    return summary.tests > 0 and summary.failed == 0 and summary.errors == 0


def junit_metadata(summary: evidence.JUnitSummary) -> dict:
    return {
        "tests": summary.tests,
        "passed": summary.passed,
        "failed": summary.failed,
        "errors": summary.errors,
        "skipped": summary.skipped,
        "failing_tests": dg.MetadataValue.md("\n".join(
            f"- `{name}`" + (f": {reason}" if reason else "")
            for name, reason in zip(summary.failing, summary.reasons or [""] * len(summary.failing), strict=True))
            or "none"),
        "duration_seconds": dg.MetadataValue.float(round(summary.duration, 3)),
    }


def hadolint_once(context, service: Service, sha: str, report: Callable[[], str]) -> list[evidence.HadolintFinding]:
    """hadolint's findings on the Dockerfile of `service` at `sha`, linted once for both checks that need them
    (dockerfile_lint and compliance): `report()` runs hadolint the first time; the report is kept under
    `<instance root>/reports/hadolint/` and read by the check that comes second."""
    dockerfile = f"{service.build.context}/{service.build.dockerfile}"
    key = hashlib.sha256(f"{service.path}\0{dockerfile}".encode()).hexdigest()[:12]
    path = Path(context.instance.root_directory) / "reports" / "hadolint" / service.name / f"{sha}-{key}.json"
    return evidence.parse_hadolint(evidence.cached_report(path, report))


def check_dockerfile_lint(context, service: Service, git) -> dg.AssetCheckResult:
    sha, digest = image_under_check(context, service)

    def report() -> str:
        with tempfile.TemporaryDirectory(prefix=f"rg-lint-{service.name}-") as tmp:
            context_dir = export_build_context(git, service, sha, Path(tmp))
            return evidence.hadolint_report(context_dir / service.build.dockerfile)

    findings = hadolint_once(context, service, sha, report)
    problems = [f for f in findings if f.level in ("error", "warning")]
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            M.GIT_SHA: sha,
            M.DIGEST: digest,
            "tool": "hadolint",
            "errors_and_warnings": len(problems),
            "findings": rows_table(
                [dataclasses.asdict(f) for f in findings],
                ["rule", "level", ("line", "int"), "message"],
                limit=MAX_TABLE_ROWS,
            ),
        },
        description=f"{len(problems)} hadolint error(s)/warning(s), {len(findings)} finding(s) in all",
    )


def image_check_definitions(fleet: Fleet, service: Service) -> list:
    """Unit tests (blocking) and Dockerfile lint (a warning) on `<service>/image`."""
    checks = []
    if service.build.test_target:

        @dg.asset_check(
            asset=image_key(service),
            name="unit_tests",
            blocking=True,
            description=f"Unit tests: the `{service.build.test_target}` stage of the Dockerfile run in a "
            "container, JUnit XML from /reports.",
        )
        @traced_stage(fleet, service, check_stage(service, "unit_tests"))
        def unit_tests(context: dg.AssetCheckExecutionContext, git: GitResource,
                       engine: ContainerEngine) -> dg.AssetCheckResult:
            return check_unit_tests(context, fleet, service, git, engine)

        checks.append(unit_tests)

    @dg.asset_check(
        asset=image_key(service),
        name="dockerfile_lint",
        blocking=False,
        description="Dockerfile lint with hadolint: a warning, never blocking.",
    )
    @traced_stage(fleet, service, check_stage(service, "dockerfile_lint"))
    def dockerfile_lint(context: dg.AssetCheckExecutionContext, git: GitResource) -> dg.AssetCheckResult:
        return check_dockerfile_lint(context, service, git)

    checks.append(dockerfile_lint)
    return checks
