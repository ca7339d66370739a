"""The approval step as a release manager meets it, on a bare instance (no engine): the identity it records,
typed at the terminal or given by the UI's authenticating proxy, and the refusals it says in words."""

from __future__ import annotations

import dagster as dg
import pytest

from release_graph.assets.approval import approval_asset
from release_graph.fleet import load_fleet
from release_graph.release import history
from release_graph.release import metadata as M
from release_graph.release.keys import approval_key, environment_key, image_key
from release_graph.release.tags import APPROVED_BY_TAG, AUTHENTICATED_USER_TAG
from release_graph.wiring import tracer_resource

DIGEST = "sha256:" + "b" * 64
MANIFEST = """\
fleet: shop
registry: 127.0.0.1:5000/shop
teams:
  release-managers: [ann@shop.example, bob@shop.example]
services:
  orders:
    repo: https://git.shop.example/orders.git
    build: {dockerfile: Dockerfile}
    port: 8080
environments:
  staging: {target: docker}
  prod:
    target: docker
    approval: required
    approvers: [team:release-managers, joanna@shop.example]
    approvals_required: 2
    approval_expires_after_hours: 24
    author_cannot_approve: true
"""


@pytest.fixture
def shop(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text(MANIFEST)
    fleet = load_fleet(path, check_files=False)
    with dg.instance_for_test() as instance:
        orders, staging = fleet.services["orders"], fleet.environments["staging"]
        # staging runs a digest built from Joanna's commit
        instance.report_runless_asset_event(dg.AssetMaterialization(image_key(orders), metadata={
            M.DIGEST: DIGEST, M.GIT_SHA: "1a2b3c4d" * 5, M.AUTHOR: "Joanna Smith <joanna@shop.example>",
            M.AUTHOR_EMAIL: "joanna@shop.example"}))
        instance.report_runless_asset_event(dg.AssetMaterialization(environment_key(orders, staging), metadata={
            M.DIGEST: DIGEST, M.GIT_SHA: "1a2b3c4d" * 5}))
        yield fleet, instance


def approve(shop, *, config: dict, tags: dict | None = None):
    fleet, instance = shop
    orders, prod = fleet.services["orders"], fleet.environments["prod"]
    asset = approval_asset(fleet, orders, prod)
    key = approval_key(orders, prod)
    return dg.materialize([asset], instance=instance, resources={"release_tracer": tracer_resource()},
                          run_config={"ops": {key.to_python_identifier(): {"config": config}}},
                          tags=tags or {}, raise_on_error=False)


def failure(result) -> str:
    (event,) = [e for e in result.all_events if e.is_step_failure]
    return event.step_failure_data.error.message


def latest_approval(shop):
    fleet, instance = shop
    return history.latest(instance, approval_key(fleet.services["orders"], fleet.environments["prod"]))


def test_an_approval_typed_at_the_terminal_names_the_identity_typed(shop):
    result = approve(shop, config={"approver": "ann@shop.example", "ticket": "CHG-1"})
    assert result.success
    approval = latest_approval(shop)
    assert (approval.digest, approval.value(M.APPROVER), approval.value(M.APPROVER_SOURCE)) == (
        DIGEST, "ann@shop.example", M.TYPED_IDENTITY)
    assert approval.value("approvals") == "1 of 2: ann@shop.example"
    assert approval.value("expires_at") == pytest.approx(approval.timestamp + 24 * 3600, abs=60)
    assert result.dagster_run.tags[APPROVED_BY_TAG] == "ann@shop.example"


def test_behind_the_proxy_the_authenticated_identity_approves_whatever_the_launchpad_says(shop):
    # Bob's browser came through the proxy, which put his identity on the run; the launchpad said Ann
    result = approve(shop, config={"approver": "ann@shop.example"}, tags={AUTHENTICATED_USER_TAG: "bob@shop.example"})
    assert result.success
    approval = latest_approval(shop)
    assert (approval.value(M.APPROVER), approval.value(M.APPROVER_SOURCE)) == ("bob@shop.example", M.PROXY_IDENTITY)
    # and the launchpad may leave the approver out altogether
    assert approve(shop, config={"ticket": "CHG-2"}, tags={AUTHENTICATED_USER_TAG: "ann@shop.example"}).success
    assert latest_approval(shop).value("approvals") == "2 of 2: bob@shop.example, ann@shop.example"


def test_the_step_refuses_an_outsider_the_author_a_second_approval_and_no_identity_with_the_reason(shop):
    assert "'mallory@shop.example' may not approve here" in failure(
        approve(shop, config={"approver": "mallory@shop.example"}))
    assert "'joanna@shop.example' wrote this commit" in failure(
        approve(shop, config={"approver": "joanna@shop.example"}))
    # behind the proxy, the authenticated outsider is refused even when the launchpad names a release manager
    assert "'mallory@shop.example' may not approve here" in failure(
        approve(shop, config={"approver": "ann@shop.example"}, tags={AUTHENTICATED_USER_TAG: "mallory@shop.example"}))
    assert approve(shop, config={"approver": "ann@shop.example"}).success
    assert "'ann@shop.example' already approved sha256:bbbbbbbbbbbb" in failure(
        approve(shop, config={"approver": "ann@shop.example"}))
    assert "an approval names who gives it" in failure(approve(shop, config={"ticket": "CHG-3"}))
    assert latest_approval(shop).value(M.APPROVER) == "ann@shop.example"  # nothing refused was recorded
