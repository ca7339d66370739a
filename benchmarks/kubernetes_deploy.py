"""How long a deployment through the kubernetes target takes, and how many API calls it makes, against the emulated
API (benchmarks/kubernetes_emulator.py: kmock in a thread of this process, its fake controller making each
Deployment available at once, so the rollout itself costs nothing here; its apply creates a missing object, as a
real API server's does, so the calls counted are those a real cluster gets).

    python -m benchmarks.kubernetes_deploy              # 20 rounds
    python -m benchmarks.kubernetes_deploy --runs 5

Each round deploys one service three ways on a fresh emulator: a first deployment (nothing exists), the same digest
again (a no-op), and a new digest. For each it measures the whole `deploy()`, the time spent inside
the client's API calls (HTTP to the emulator and the emulator's own work, which shares this process's interpreter),
the strict schema validation of the objects, and counts the requests the emulator answered, by verb. The first
deployment of the process also reads the schema files (to build the validators it keeps) and makes the first
connection: it is reported on its own (cold). Prints a markdown table; `make bench` runs it as section (h) and
writes its figures into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from importlib.metadata import version

from benchmarks.kubernetes_emulator import KubernetesApiEmulator
from release_graph.fleet.model import KubernetesCluster, Resources
from resources.targets import DeploymentSpec, KubernetesTarget, KubernetesTargetConfig
from resources.targets.kubernetes import target as target_module

FIRST, SECOND = "sha256:" + "a" * 64, "sha256:" + "b" * 64
CASES = ("first deployment", "same digest again (no-op)", "new digest")
COLD = "first deployment of the process (cold)"
VERBS = ("GET", "POST", "PATCH", "PUT", "DELETE")


def spec(digest: str) -> DeploymentSpec:
    return DeploymentSpec(fleet="shop", environment="prod", service="payments",
                          image=f"127.0.0.1:5000/shop/payments@{digest}", port=8080, health="/healthz",
                          env={"LOG_LEVEL": "info", "GIT_SHA": digest[7:19]}, secrets={"PAYMENTS_API_KEY": "x" * 32},
                          resources=Resources(cpu_request="250m", memory_limit="256Mi"))


class Stopwatch:
    """Seconds spent inside one function, summed over its calls while `measuring`."""

    def __init__(self):
        self.seconds = 0.0

    def wrap(self, function):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed

    @contextmanager
    def measuring(self):
        self.seconds = 0.0
        yield self


def measure(runs: int) -> tuple[dict, dict]:
    """(case -> list of (total, api, validation) seconds, case -> Counter of verbs per deployment)."""
    timings: dict[str, list] = collections.defaultdict(list)
    calls: dict[str, collections.Counter] = {}
    api, validation = Stopwatch(), Stopwatch()
    target_module.validate_objects = validation.wrap(target_module.validate_objects)
    for round_number in range(runs):
        # A fresh emulator each round: kmock's cost per request grows with the requests it recorded (its filters
        # scan them all), which a real API server's does not.
        # apply_creates: a real API server's server-side apply creates a missing object, and the target then sends
        # what it sends a real cluster (kmock's own apply cannot: the target would add a POST after a 404)
        with KubernetesApiEmulator(apply_creates=True) as emulator:
            target = KubernetesTarget(KubernetesCluster(namespace="shop-prod", version="1.33"),
                                      KubernetesTargetConfig(api_host=emulator.url, poll_seconds=0.01))
            client = target.api_client
            client.call_api = api.wrap(client.call_api)

            def deploy(case: str, digest: str, emulator=emulator, target=target) -> None:
                before = len(emulator.requests())
                with api.measuring(), validation.measuring():
                    started = time.perf_counter()
                    target.deploy(spec(digest))
                    total = time.perf_counter() - started
                timings[case].append((total, api.seconds, validation.seconds))
                verbs = collections.Counter(request.method for request in emulator.requests()[before:])
                if calls.setdefault(case, verbs) != verbs:
                    raise AssertionError(f"{case}: {dict(verbs)} API calls, another round made {dict(calls[case])}")

            deploy(CASES[0] if round_number else COLD, FIRST)
            deploy(CASES[1], FIRST)
            deploy(CASES[2], SECOND)
    calls[CASES[0]] = calls[COLD]
    return timings, calls


def ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0] * 1000:.1f}"
    return f"{statistics.median(values) * 1000:.1f} ({min(values) * 1000:.1f}-{max(values) * 1000:.1f})"


def table(timings: dict, calls: dict, runs: int) -> str:
    lines = [
        f"Kubernetes target, one service (ConfigMap, Secret, NetworkPolicy, Deployment, Service) deployed through the "
        "emulated API, "
        "its apply creating like a real API server's "
        f"(kmock {version('kmock')}, kubernetes client {version('kubernetes')}, Python {platform.python_version()}, "
        f"{os.cpu_count()} cores); median (min-max) of {runs} rounds (the first deployment: {runs - 1}, after the "
        "process's first), each round on a fresh emulator, milliseconds.",
        "",
        "| deployment | whole deploy() | inside API calls | schema validation | API calls (GET/POST/PATCH/DELETE) |",
        "|---|---|---|---|---|",
    ]
    for case in (COLD, *CASES):
        rows = timings[case]
        verbs = calls[case]
        counted = "/".join(str(verbs.get(verb, 0)) for verb in ("GET", "POST", "PATCH", "DELETE"))
        lines.append(f"| {case} | {ms([r[0] for r in rows])} | {ms([r[1] for r in rows])} | "
                     f"{ms([r[2] for r in rows])} | {sum(verbs.values())}: {counted} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="rounds of the three deployments (default 20)")
    args = parser.parse_args(argv)
    timings, calls = measure(args.runs)
    print(table(timings, calls, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
