"""Git-based promotion: staging tracks branch `staging`, prod tracks `main`. Moving a branch promotes the
digest built from that commit, never building anything, and only if it passed the previous environment."""

from __future__ import annotations

import subprocess

import dagster as dg
import pytest

ENVIRONMENTS = """\
  dev: {target: docker}
  staging: {target: docker, branch: staging}
  prod: {target: docker, branch: main}
"""


def git(world, *args: str) -> str:
    return subprocess.run(["git", "-C", str(world.repos / "inventory"), *args], check=True,
                          capture_output=True, text=True).stdout.strip()


def key(*path: str) -> dg.AssetKey:
    return dg.AssetKey(list(path))


@pytest.mark.engine
def test_moving_a_branch_promotes_a_built_digest_and_refuses_one_that_skipped_a_stage(
    release_world_factory, engine_builds
):
    world = release_world_factory(["inventory"], environments=ENVIRONMENTS, integration=False)
    world.automate()
    # Given commit A built from main and deployed to dev by automation
    (request,) = world.tick("git_commits").run_requests
    assert world.execute(request).success
    world.automate()
    commit_a = git(world, "rev-parse", "main")
    digest_a = world.latest(key("inventory", "dev")).digest
    assert world.latest(key("inventory", "image")).git_sha == commit_a

    # main (tracked by prod) is at A, which never ran in staging: refused, with the reason in the tick
    result = world.tick("branch_promotion")
    assert not result.run_requests
    assert f"inventory@prod: refused {commit_a[:12]}" in result.skip_reason.skip_message
    assert "did not pass inventory/staging" in result.skip_reason.skip_message

    # When staging is pointed at A, A's digest is promoted to staging without any build
    builds_before = len(engine_builds)
    git(world, "branch", "staging", commit_a)
    result = world.tick("branch_promotion")
    staging_requests = [r for r in result.run_requests if r.run_key == f"inventory:staging:{commit_a}"]
    assert len(staging_requests) == 1
    assert world.execute(staging_requests[0]).success
    assert world.latest(key("inventory", "staging")).digest == digest_a
    assert len(engine_builds) == builds_before

    # and now that A passed staging, the next tick promotes main's head A to prod
    result = world.tick("branch_promotion")
    (prod_request,) = result.run_requests
    assert prod_request.run_key == f"inventory:prod:{commit_a}"
    assert world.execute(prod_request).success
    assert world.latest(key("inventory", "prod")).digest == digest_a

    # A new commit B on main is built and reaches dev, but prod refuses it until staging runs it
    world.commit("inventory")
    (request,) = world.tick("git_commits").run_requests
    assert world.execute(request).success
    world.automate()
    commit_b = git(world, "rev-parse", "main")
    result = world.tick("branch_promotion")
    assert not result.run_requests
    assert f"inventory@prod: refused {commit_b[:12]}" in result.skip_reason.skip_message
    assert world.latest(key("inventory", "prod")).digest == digest_a


@pytest.mark.engine
def test_a_branch_head_that_was_never_built_is_refused_not_built(release_world_factory, engine_builds):
    world = release_world_factory(["inventory"], environments=ENVIRONMENTS, integration=False)
    world.automate()
    (request,) = world.tick("git_commits").run_requests
    assert world.execute(request).success
    # A commit made directly on the staging branch was never built from main
    git(world, "checkout", "-q", "-b", "staging")
    (world.repos / "inventory" / "HOTFIX").write_text("made on staging\n")
    git(world, "add", "HOTFIX")
    git(world, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "hotfix on staging")
    git(world, "checkout", "-q", "main")
    builds_before = len(engine_builds)
    result = world.tick("branch_promotion")
    assert not [r for r in result.run_requests if ":staging:" in r.run_key]
    assert "no image was built from" in result.skip_reason.skip_message
    assert len(engine_builds) == builds_before and world.latest(key("inventory", "staging")) is None
