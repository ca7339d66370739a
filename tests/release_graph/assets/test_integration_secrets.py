"""A release of payments, for real: its integration containers receive the integration's own declared secret,
never dev's; dev's container reads dev's secret from a file; no `inspect` of any container the release started
shows either value, and the integration's secret files are gone with its containers."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from pathlib import Path

import pytest

from resources.targets.docker.ephemeral import DockerEphemeralEnvironment

DEV_KEY_VARIABLE = "RG_TEST_PAYMENTS_API_KEY"
TEST_KEY_VARIABLE = "RG_TEST_PAYMENTS_TEST_KEY"
ENVIRONMENTS = f"""\
  dev:
    target: docker
    secrets: {{payments: {{PAYMENTS_API_KEY: {{env: {DEV_KEY_VARIABLE}}}}}}}
"""
INTEGRATION = f"""\
integration:
  secrets: {{payments: {{PAYMENTS_API_KEY: {{env: {TEST_KEY_VARIABLE}}}}}}}
"""


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def secret_hash(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}:8080/secret-hash", timeout=5) as response:
        return json.load(response)["sha256"]


@pytest.mark.engine
def test_integration_gets_its_own_secret_never_devs_and_no_inspect_shows_either(
    release_world_factory, docker_client, monkeypatch
):
    dev_key, test_key = "dev-" + os.urandom(12).hex(), "test-" + os.urandom(12).hex()
    monkeypatch.setenv(DEV_KEY_VARIABLE, dev_key)
    monkeypatch.setenv(TEST_KEY_VARIABLE, test_key)
    seen: list[dict] = []  # each integration container while it runs: its inspect, its env, the key it serves
    original_start = DockerEphemeralEnvironment.start

    def start_and_look(self, service, *args, **kwargs):
        started = original_start(self, service, *args, **kwargs)
        container = docker_client.containers.get(started.container_id)
        seen.append({
            "service": service,
            "inspect": json.dumps(docker_client.api.inspect_container(started.container_id)),
            "env": container.exec_run(["env"]).output.decode(),
            "serves": secret_hash(started.address),
            "mounts": [m["Source"] for m in container.attrs.get("Mounts") or []],
        })
        return started

    monkeypatch.setattr(DockerEphemeralEnvironment, "start", start_and_look)
    world = release_world_factory(["payments"], environments=ENVIRONMENTS, extra_top=INTEGRATION)

    # When payments is released from its head commit through its integration into dev
    world.release_from_head()

    # Then the integration's payments served the integration's key, read from its file, and never saw dev's
    (payments,) = [row for row in seen if row["service"] == "payments"]
    assert payments["serves"] == sha256(test_key)
    assert "PAYMENTS_API_KEY_FILE=/run/secrets/PAYMENTS_API_KEY" in payments["env"]
    for value in (dev_key, test_key):
        assert value not in payments["inspect"] and value not in payments["env"]
    # and its secret files went with it
    assert payments["mounts"] and not any(Path(source).exists() for source in payments["mounts"])

    # dev's payments reads dev's key, and no inspect of it shows a key
    running = world.target().running(world.fleet.name, "dev", "payments")
    assert secret_hash(running.address) == sha256(dev_key)
    shown = json.dumps(docker_client.api.inspect_container(running.container_id))
    assert dev_key not in shown and test_key not in shown
