"""The kubernetes target against an emulated Kubernetes API: kmock on its own event loop and thread (kmock is
asyncio only, the target's client blocks), with a fake controller that settles every Deployment written
(benchmarks/kubernetes_emulator.py says what it emulates and what it leaves as kmock has it)."""

from __future__ import annotations

import pytest

from benchmarks.kubernetes_emulator import FakeController, KubernetesApiEmulator
from release_graph.fleet.model import KubernetesCluster
from resources.targets.kubernetes.target import KubernetesTarget, KubernetesTargetConfig

NAMESPACE = "shop-prod"


@pytest.fixture
def kubernetes_api():
    """A fresh emulated API server for one test, on 127.0.0.1 and a free port."""
    with KubernetesApiEmulator() as emulator:
        yield emulator


@pytest.fixture
def controller(kubernetes_api) -> FakeController:
    return kubernetes_api.controller


@pytest.fixture
def cluster() -> KubernetesCluster:
    return KubernetesCluster(namespace=NAMESPACE, version="1.33")


@pytest.fixture
def target(kubernetes_api, cluster) -> KubernetesTarget:
    """The target bound to the emulated cluster; rollouts are polled every 20 ms and given 5 s."""
    return KubernetesTarget(cluster, KubernetesTargetConfig(api_host=kubernetes_api.url, poll_seconds=0.02,
                                                            rollout_timeout_seconds=5))
