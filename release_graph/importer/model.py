"""What the readers of compose files and Kubernetes manifests hand to edge inference and the writer.

Readers record facts with their evidence ("file: service: key"); they decide nothing about edges.
Names here are the manifest names (DNS labels); `source_name` keeps what the deploy file called it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from release_graph.fleet.model import capability_name

COMPOSE = "compose"
KUBERNETES = "kubernetes"
ASPIRE = "aspire"


@dataclass(frozen=True)
class HostRef:
    """One host named in a value: `host`, optionally with the port the caller uses."""

    host: str
    port: int | None = None


@dataclass
class Reference:
    """A place where one service names another: an env value, a depends_on entry, a link, a wait loop.

    `startup` is True when the place only says "start after" (depends_on, links, init containers),
    False when it is how the service reaches the other at run time (its environment).
    """

    consumer: str
    evidence: str  # "file: service: key"
    kind: str  # env | depends_on | links | wait
    key: str  # env var name, or the compose/k8s key
    display: str  # the value with credentials masked, for comments
    startup: bool
    target: str | None = None  # depends_on / links: the compose service named (already checked to exist)
    hosts: tuple[HostRef, ...] = ()
    note: str = ""  # e.g. "condition: service_healthy"
    namespace: str | None = None


@dataclass
class BuildInfo:
    repo: str  # absolute folder (local) or git URL
    path: str  # the context relative to repo ("." for the repo itself)
    dockerfile: str = "Dockerfile"
    target: str | None = None
    test_target: str | None = None
    args: dict[str, str] = field(default_factory=dict)
    branch: str | None = None  # only when the repo's current branch is not `main`
    is_url: bool = False
    notes: list[str] = field(default_factory=list)  # things about the repo a person must know
    secret_args: list[str] = field(default_factory=list)  # build args not written (their names say secret)


@dataclass
class ImportedService:
    name: str
    source_name: str
    origin: str  # "docker-compose.yaml:12" or "frontend.yaml:16 (Deployment)"
    image: str | None = None
    build: BuildInfo | None = None
    infrastructure: bool = False
    port: int | None = None
    health: str | None = None
    language: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)  # variable -> why it is a secret (never its value)
    entrypoint: list[str] | None = None  # replaces the image's ENTRYPOINT (None: the image's own)
    command: list[str] | None = None  # replaces the image's CMD
    # The manifest's `hardening:` as the deploy files ask for it: `tmpfs` folders, `capabilities` {add, reason}
    hardening: dict[str, Any] = field(default_factory=dict)
    references: list[Reference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # comments explaining decisions, in reading order
    review: list[str] = field(default_factory=list)  # things a person must look at before releasing

    def give_capabilities(self, names: list, where: str, giver: str, source: str) -> None:
        """Capabilities the deploy files give it (`giver`, in `source` at `where`), as `hardening.capabilities`
        with that as the reason, and a REVIEW note: containers drop every capability by default."""
        wanted = sorted({capability_name(name) for name in names if name})
        if not wanted:
            return
        self.hardening["capabilities"] = {"add": wanted, "reason": f"{where} adds them"}
        self.review.append(f"{giver} gives it {', '.join(wanted)} ({where}): written to hardening.capabilities with "
                           f"{source} as the reason; remove any it does not need, and say why it needs the rest")
    namespace: str | None = None


class HostResolver(Protocol):
    def resolve(self, consumer: ImportedService, host: HostRef) -> Resolution: ...


@dataclass(frozen=True)
class Resolution:
    """Where a host leads: services of this fleet, an unresolved name, or an outside host."""

    services: tuple[str, ...] = ()
    unresolved: bool = False
    external: bool = False
    note: str = ""


@dataclass
class ImportedFleet:
    kind: str  # COMPOSE, KUBERNETES or ASPIRE
    root: str  # absolute folder the file labels are relative to
    inputs: list[str]  # file labels, relative to root
    services: dict[str, ImportedService]
    resolver: HostResolver
    notes: list[str] = field(default_factory=list)  # header comments: warnings, renames
    skipped: list[str] = field(default_factory=list)  # objects or services that are not fleet services
    kustomizations: list[str] = field(default_factory=list)
    suggested_name: str | None = None  # compose `name:` or the one namespace all objects share
    namespace: str | None = None  # Kubernetes input: the one namespace all workloads share, if there is one
