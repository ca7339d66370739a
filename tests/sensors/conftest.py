"""Fixtures for the sensor stories: the real git helpers, a Dagster test instance, a pushed image.

The git repo and daemon helpers live in tests/resources/conftest.py; with --import-mode=importlib one
conftest cannot import another by name, so that file is loaded by path and its fixtures re-exported.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import dagster as dg
import pytest

from resources.registry import Registry


def _load_git_helpers():
    name = "release_graph_tests_git_helpers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "resources" / "conftest.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


git_helpers = _load_git_helpers()
git_daemon = git_helpers.git_daemon
new_repo = git_helpers.new_repo


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def push_image(docker_client, busybox_as):
    """push_image(repository, tag): a real tiny image (busybox) pushed under that name; deleted afterwards."""
    registry = Registry()
    pushed: list[tuple[str, str]] = []

    def push(repository: str, tag: str) -> str:
        busybox_as(repository, tag)
        pushed.append((repository, tag))
        for line in docker_client.images.push(repository, tag=tag, stream=True, decode=True):
            if "errorDetail" in line or "error" in line:
                raise AssertionError(f"push of {repository}:{tag} failed: {line}")
        digest = registry.manifest_digest(repository, tag)
        assert digest, f"{repository}:{tag} is not in the registry after the push"
        return digest

    yield push
    for repository, tag in pushed:
        digest = registry.manifest_digest(repository, tag)
        if digest:
            registry.delete(repository, digest)
