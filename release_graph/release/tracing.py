"""The trace of a release: its ids, derived from the release itself, and the attributes its spans carry.

A release (one fleet, one service, one commit) is one trace from the commit to production. Its stages run
in different runs and processes, days apart, with nothing shared but the event log: so the trace id and the
root span's id are derived from (fleet, service, sha), the first 16 and the next 8 bytes of a sha256, and
any step can parent its span on the root without asking anyone. Attribute names are OpenTelemetry's
semantic conventions for CI/CD, VCS and deployments where they exist; ours are under `release_graph.`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

# OpenTelemetry semantic conventions (CI/CD, VCS, deployment, service)
PIPELINE_NAME = "cicd.pipeline.name"
PIPELINE_RUN_ID = "cicd.pipeline.run.id"
TASK_NAME = "cicd.pipeline.task.name"
TASK_RUN_ID = "cicd.pipeline.task.run.id"
TASK_TYPE = "cicd.pipeline.task.type"  # build, test, deploy
TASK_RESULT = "cicd.pipeline.task.run.result"  # success, failure, error
HEAD_REVISION = "vcs.ref.head.revision"
HEAD_NAME = "vcs.ref.head.name"
ENVIRONMENT_NAME = "deployment.environment.name"
SERVICE_NAME = "service.name"
SERVICE_NAMESPACE = "service.namespace"
# ours: what the conventions do not name
FLEET = "release_graph.fleet"
DAGSTER_RUN_ID = "release_graph.dagster.run_id"
STEP_KEY = "release_graph.dagster.step_key"
DIGEST = "release_graph.image.digest"
WAITED_FOR = "release_graph.waited_for"  # on a wait span: the stage whose materialization it started at

SUCCESS, FAILURE, ERROR = "success", "failure", "error"


@dataclass(frozen=True)
class ReleaseTrace:
    """The trace of one release; equal releases give equal ids in every process."""

    fleet: str
    service: str
    sha: str

    @cached_property
    def _digest(self) -> bytes:
        return hashlib.sha256(f"{self.fleet}\0{self.service}\0{self.sha}".encode()).digest()

    @property
    def trace_id(self) -> int:
        return int.from_bytes(self._digest[:16], "big") or 1  # an all-zero id is invalid in OpenTelemetry

    @property
    def root_span_id(self) -> int:
        return int.from_bytes(self._digest[16:24], "big") or 1

    @property
    def trace_id_hex(self) -> str:
        """As trace viewers show and search it (32 hex digits)."""
        return f"{self.trace_id:032x}"

    @property
    def root_name(self) -> str:
        return f"release {self.service} {self.sha[:7]}"

    @property
    def pipeline_name(self) -> str:
        """The pipeline is a service's path to production in its fleet; a run of it is one release."""
        return f"{self.fleet}/{self.service}"

    def service_attributes(self) -> dict[str, str]:
        """The OpenTelemetry resource of the release's spans: the service released, in its fleet."""
        return {SERVICE_NAME: self.service, SERVICE_NAMESPACE: self.fleet}

    def release_attributes(self) -> dict[str, str]:
        """What every span of the release carries."""
        return {PIPELINE_NAME: self.pipeline_name, PIPELINE_RUN_ID: self.trace_id_hex, HEAD_REVISION: self.sha,
                FLEET: self.fleet, SERVICE_NAME: self.service}


def log_prefix(service: str, environment: str | None, sha: str | None, trace_id_hex: str | None) -> str:
    """The fields every log line of a stage starts with, as `key=value` pairs a log search can match."""
    fields = [f"service={service}", f"environment={environment or '-'}", f"sha={sha[:12] if sha else '-'}",
              f"trace_id={trace_id_hex or '-'}"]
    return "[" + " ".join(fields) + "]"
