"""The promotion rules as release stories, on a bare instance: no container engine, no registry, no git.

Each story records what the stages would have recorded (materializations with a digest, check evaluations for
that digest) and asks the rule in release_graph/release/promotion.py whether a promotion or an approval may go
on. A refusal is a ReleaseStepError whose message says what to fix.
"""

from __future__ import annotations

import textwrap
import time

import dagster as dg
import pytest
from dagster._core.events import StepMaterializationData

from release_graph.fleet import load_fleet
from release_graph.release import metadata as M
from release_graph.release import promotion, why
from release_graph.release.errors import ReleaseStepError
from release_graph.release.keys import approval_key, environment_key, image_key, source_key

BUILT = "sha256:" + "b" * 64  # built by orders/image, tests and scans passed
NEWER = "sha256:" + "c" * 64  # built by orders/image later, never deployed anywhere
BY_HAND = "sha256:" + "d" * 64  # pushed to the registry by hand: no orders/image materialization has it
AUTHOR = "Joanna Smith <joanna@shop.example>"

MANIFEST = """\
fleet: shop
registry: 127.0.0.1:5000/shop
services:
  orders:
    repo: https://git.shop.example/orders.git
    build: {dockerfile: Dockerfile, test_target: test}
    port: 8080
environments:
  dev: {target: docker}
  staging: {target: docker}
  prod:
    target: docker
    approval: required
    approvers: [rm@shop.example, joanna@shop.example]
    author_cannot_approve: true
"""


@pytest.fixture
def fleet(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text(textwrap.dedent(MANIFEST))
    return load_fleet(path, check_files=False)


@pytest.fixture
def orders(fleet):
    return fleet.services["orders"]


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def record(instance, key: dg.AssetKey, **metadata) -> None:
    """`key` recorded this metadata, as its step would (outside a run: fast, and no run id)."""
    instance.report_runless_asset_event(dg.AssetMaterialization(key, metadata=metadata))


def record_in_run(instance, key: dg.AssetKey, **metadata) -> str:
    """Materialize `key` in a run of its own, with this metadata; returns the run id (approvals are told apart by
    their run)."""

    @dg.asset(key=key)
    def stage() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=metadata)

    return dg.materialize([stage], instance=instance).run_id


def evaluate(instance, key: dg.AssetKey, check: str, digest: str, *, passed: bool) -> None:
    instance.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=key, check_name=check, passed=passed, metadata={M.DIGEST: digest},
    ))


def build(instance, service, digest: str, *, sha: str = "1a2b3c4d", author: str = AUTHOR,
          unit_tests: bool = True, sast: bool = True) -> None:
    """orders/image recorded `digest` built from commit `sha`, and its blocking checks evaluated for it."""
    record(instance, image_key(service), **{M.DIGEST: digest, M.GIT_SHA: sha, M.AUTHOR: author})
    evaluate(instance, image_key(service), "unit_tests", digest, passed=unit_tests)
    evaluate(instance, image_key(service), "sast", digest, passed=sast)


def deploy(instance, service, environment: str, digest: str, *, healthy: bool = True, **metadata) -> None:
    key = environment_key(service, environment)
    record(instance, key, **{M.DIGEST: digest, M.GIT_SHA: "1a2b3c4d", **metadata})
    evaluate(instance, key, "healthy", digest, passed=healthy)


def approve(instance, service, environment, digest: str, approver: str = "rm@shop.example", **metadata) -> str:
    return record_in_run(instance, approval_key(service, environment),
                         **{M.DIGEST: digest, M.APPROVER: approver, **metadata})


# --- which digest a stage may take ------------------------------------------------------------------------


def test_given_a_digest_that_never_passed_dev_when_staging_is_asked_for_it_then_it_is_refused(
        instance, fleet, orders):
    build(instance, orders, BUILT)
    deploy(instance, orders, "dev", BUILT)
    build(instance, orders, NEWER)  # built and checked, but never deployed to dev
    staging = fleet.environments["staging"]

    with pytest.raises(ReleaseStepError, match=rf"digest {NEWER} never passed orders/dev: refused"):
        promotion.choose_digest(instance, fleet, orders, staging, requested=NEWER)
    # what dev passed is what staging takes, by default or by name
    assert promotion.choose_digest(instance, fleet, orders, staging).digest == BUILT
    assert promotion.choose_digest(instance, fleet, orders, staging, requested=BUILT).digest == BUILT


def test_given_nothing_passed_dev_yet_when_staging_deploys_then_it_is_refused(instance, fleet, orders):
    build(instance, orders, BUILT)
    with pytest.raises(ReleaseStepError, match="nothing has passed orders/dev yet"):
        promotion.choose_digest(instance, fleet, orders, fleet.environments["staging"])


def test_given_a_built_digest_whose_unit_tests_failed_when_dev_deploys_it_then_it_is_refused(
        instance, fleet, orders):
    build(instance, orders, BUILT, unit_tests=False)
    dev = fleet.environments["dev"]
    with pytest.raises(ReleaseStepError, match=rf"digest {BUILT} did not pass orders/image "
                       r"\(blocking checks not passed: unit_tests\)"):
        promotion.choose_digest(instance, fleet, orders, dev)
    with pytest.raises(ReleaseStepError, match="blocking checks not passed: unit_tests"):
        promotion.choose_digest(instance, fleet, orders, dev, requested=BUILT)


def test_given_a_digest_that_was_deployed_but_unhealthy_in_dev_when_staging_deploys_it_then_it_is_refused(
        instance, fleet, orders):
    build(instance, orders, BUILT)
    deploy(instance, orders, "dev", BUILT, healthy=False)
    with pytest.raises(ReleaseStepError, match=r"did not pass orders/dev \(blocking checks not passed: healthy\)"):
        promotion.choose_digest(instance, fleet, orders, fleet.environments["staging"])


def test_given_a_digest_whose_checks_never_ran_when_dev_deploys_it_then_it_is_refused(instance, fleet, orders):
    record(instance, image_key(orders), **{M.DIGEST: BUILT, M.GIT_SHA: "1a2b3c4d"})  # no check evaluations
    with pytest.raises(ReleaseStepError, match="blocking checks not passed: unit_tests, sast"):
        promotion.choose_digest(instance, fleet, orders, fleet.environments["dev"])


def test_given_a_failed_check_then_a_passing_rerun_for_the_same_digest_when_dev_deploys_then_it_goes_on(
        instance, fleet, orders):
    build(instance, orders, BUILT, sast=False)
    evaluate(instance, image_key(orders), "sast", BUILT, passed=True)  # the newest evaluation counts
    assert promotion.choose_digest(instance, fleet, orders, fleet.environments["dev"]).digest == BUILT


def record_in_a_running_run(instance, key: dg.AssetKey, **metadata) -> dg.DagsterRun:
    """`key` recorded this metadata in a run that is still going (its checks not evaluated yet)."""
    run = instance.create_run_for_job(dg.GraphDefinition(name="building").to_job(), status=dg.DagsterRunStatus.STARTED)
    instance.report_dagster_event(dg.DagsterEvent(
        event_type_value=dg.DagsterEventType.ASSET_MATERIALIZATION.value, job_name="building",
        event_specific_data=StepMaterializationData(dg.AssetMaterialization(key, metadata=metadata))), run.run_id)
    return run


def test_given_a_newer_build_whose_checks_its_run_is_still_evaluating_when_dev_deploys_then_it_takes_the_one_before(
        instance, fleet, orders):
    # In a burst of commits: an older build's run reaches its deploy step while a newer build's run has recorded
    # its digest and not yet its checks
    build(instance, orders, BUILT)
    newer_run = record_in_a_running_run(instance, image_key(orders), **{M.DIGEST: NEWER, M.GIT_SHA: "2b3c4d5e"})
    assert promotion.choose_digest(instance, fleet, orders, fleet.environments["dev"]).digest == BUILT
    # and its run's log says why
    assert promotion.passed_over_while_checked(instance, fleet, orders, fleet.environments["dev"], BUILT) == (
        f"orders@dev: passing over {NEWER}, whose run {newer_run.run_id[:8]} is still evaluating its blocking "
        f"checks (it follows in a run of its own); deploying {BUILT}")
    # once its checks passed, the newer one is taken
    evaluate(instance, image_key(orders), "unit_tests", NEWER, passed=True)
    evaluate(instance, image_key(orders), "sast", NEWER, passed=True)
    assert promotion.choose_digest(instance, fleet, orders, fleet.environments["dev"]).digest == NEWER
    assert promotion.passed_over_while_checked(instance, fleet, orders, fleet.environments["dev"], NEWER) is None
    # and a run that ended without them leaves the newer one refused, as any digest whose checks never ran
    third = "sha256:" + "d" * 64
    ended = record_in_a_running_run(instance, image_key(orders), **{M.DIGEST: third, M.GIT_SHA: "3c4d5e6f"})
    instance.report_run_failed(ended)
    with pytest.raises(ReleaseStepError, match="blocking checks not passed: unit_tests, sast"):
        promotion.choose_digest(instance, fleet, orders, fleet.environments["dev"])
    assert newer_run.run_id != ended.run_id


def observe_commit(instance, service, sha: str) -> None:
    """The Git sensor observed `sha` as the release of the service's branch."""
    instance.report_runless_asset_event(dg.AssetObservation(source_key(service), metadata={"sha": sha}))


def test_given_an_older_commits_build_that_finished_after_a_newer_ones_when_dev_deploys_then_the_newer_goes(
        instance, fleet, orders):
    # In a burst, the builds of commits 1a2b and 2b3c run side by side, and 1a2b's finishes last
    observe_commit(instance, orders, "1a2b3c4d")
    observe_commit(instance, orders, "2b3c4d5e")
    build(instance, orders, NEWER, sha="2b3c4d5e")
    build(instance, orders, BUILT, sha="1a2b3c4d")
    # when the older build's run reaches its deploy step, it deploys the newer commit, not its own
    assert promotion.choose_digest(instance, fleet, orders, fleet.environments["dev"]).digest == NEWER
    assert promotion.passed_over_while_checked(instance, fleet, orders, fleet.environments["dev"], NEWER) is None
    # and a branch moved back to the older commit (observed again) releases the older one
    observe_commit(instance, orders, "1a2b3c4d")
    assert promotion.choose_digest(instance, fleet, orders, fleet.environments["dev"]).digest == BUILT
    # while dev's own records stay in the order they were deployed: staging takes what dev runs now
    deploy(instance, orders, "dev", NEWER)
    deploy(instance, orders, "dev", BUILT)
    assert promotion.choose_digest(instance, fleet, orders, fleet.environments["staging"]).digest == BUILT


# --- provenance: only what orders/image built is promoted ------------------------------------------------


def test_given_a_digest_pushed_by_hand_and_recorded_in_dev_when_staging_takes_it_then_provenance_refuses_it(
        instance, fleet, orders):
    build(instance, orders, BUILT)
    # dev shows a healthy deployment of a digest no orders/image materialization produced
    deploy(instance, orders, "dev", BY_HAND)
    staging = fleet.environments["staging"]
    assert promotion.choose_digest(instance, fleet, orders, staging).digest == BY_HAND  # it did pass dev

    with pytest.raises(ReleaseStepError, match=rf"digest {BY_HAND} was not produced by orders/image: refused"):
        promotion.verify_provenance(instance, orders, staging, BY_HAND)
    promotion.verify_provenance(instance, orders, staging, BUILT)  # what the image step built goes on


def test_given_a_digest_pushed_by_hand_when_the_staging_step_runs_then_it_refuses_before_touching_the_target(
        instance, fleet, orders):
    """The deploy step itself applies the provenance rule, before secrets or the target are touched."""
    from release_graph.assets.deployment import deployment_asset
    from resources.tracing import ReleaseTracer

    build(instance, orders, BUILT)
    deploy(instance, orders, "dev", BY_HAND)
    touched = []

    class Untouchable:
        def __getattr__(self, name):
            if name.startswith("_"):  # Dagster probing the object while wrapping it as a resource
                raise AttributeError(name)
            touched.append(name)
            raise AssertionError(f"the step reached the adapters ({name}) with a digest of unknown provenance")

    step = deployment_asset(fleet, orders, fleet.environments["staging"])
    result = dg.materialize([step], instance=instance, raise_on_error=False,
                            resources={"deploy_targets": Untouchable(), "secrets": Untouchable(),
                                       "engine": Untouchable(), "release_tracer": ReleaseTracer()})
    assert not result.success and touched == []
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert f"digest {BY_HAND} was not produced by orders/image: refused" in failure.step_failure_data.error.message


# --- approvals -----------------------------------------------------------------------------------------


def released_to_staging(instance, fleet, orders, digest: str = BUILT) -> None:
    build(instance, orders, digest)
    deploy(instance, orders, "dev", digest)
    deploy(instance, orders, "staging", digest)


def test_given_an_approval_of_another_digest_when_prod_deploys_then_it_is_refused(instance, fleet, orders):
    released_to_staging(instance, fleet, orders)
    prod = fleet.environments["prod"]
    approve(instance, orders, prod, NEWER)
    with pytest.raises(ReleaseStepError, match=rf"the latest approval is for {NEWER}, not for {BUILT}"):
        promotion.verify_approval(instance, orders, prod, BUILT)


def test_given_no_approval_when_prod_deploys_then_it_is_refused(instance, fleet, orders):
    released_to_staging(instance, fleet, orders)
    with pytest.raises(ReleaseStepError, match="needs an approval: release-graph approve orders --env prod"):
        promotion.verify_approval(instance, orders, fleet.environments["prod"], BUILT)


def test_given_an_approval_already_used_when_prod_deploys_again_then_it_is_refused(instance, fleet, orders):
    released_to_staging(instance, fleet, orders)
    prod = fleet.environments["prod"]
    approval_run = approve(instance, orders, prod, BUILT)
    assert promotion.verify_approval(instance, orders, prod, BUILT).run_id == approval_run
    # prod deployed with that approval; the same approval does not release a second time
    deploy(instance, orders, "prod", BUILT, **{M.APPROVAL_RUN_ID: approval_run})
    with pytest.raises(ReleaseStepError, match="the latest approval has already been used"):
        promotion.verify_approval(instance, orders, prod, BUILT)
    # a new approval of the same digest releases it again
    approve(instance, orders, prod, BUILT)
    promotion.verify_approval(instance, orders, prod, BUILT)


def test_given_an_approval_of_a_digest_staging_does_not_run_then_it_is_refused(instance, fleet, orders):
    released_to_staging(instance, fleet, orders)
    prod = fleet.environments["prod"]
    with pytest.raises(ReleaseStepError, match=rf"refused approval of {NEWER}: orders/staging runs {BUILT}"):
        promotion.approvable_digest(instance, fleet, orders, prod, NEWER)
    assert promotion.approvable_digest(instance, fleet, orders, prod, None).digest == BUILT


def test_given_an_approver_not_in_the_list_when_they_approve_prod_then_they_are_refused(fleet, orders):
    prod = fleet.environments["prod"]
    with pytest.raises(ReleaseStepError, match=r"'mallory@shop.example' may not approve here "
                       r"\(approvers: rm@shop.example, joanna@shop.example\)"):
        promotion.verify_approver(orders, prod, "mallory@shop.example", AUTHOR)
    promotion.verify_approver(orders, prod, "rm@shop.example", AUTHOR)


def test_given_the_commit_author_when_she_approves_her_own_change_then_she_is_refused(instance, fleet, orders):
    released_to_staging(instance, fleet, orders)
    prod = fleet.environments["prod"]
    # the author comes from what orders/image recorded for exactly this digest
    author = promotion.commit_author(instance, orders, BUILT)
    assert author == AUTHOR
    with pytest.raises(ReleaseStepError, match=r"'joanna@shop.example' wrote this commit \(Joanna Smith "
                       r"<joanna@shop.example>\) and may not approve it"):
        promotion.verify_approver(orders, prod, "joanna@shop.example", author)
    # another approver from the list approves her change
    promotion.verify_approver(orders, prod, "rm@shop.example", author)


def test_given_a_digest_built_from_someone_elses_commit_when_joanna_approves_then_she_may(instance, fleet, orders):
    released_to_staging(instance, fleet, orders)
    build(instance, orders, NEWER, author="Ann Lee <ann@shop.example>")
    assert promotion.commit_author(instance, orders, NEWER) == "Ann Lee <ann@shop.example>"
    promotion.verify_approver(orders, fleet.environments["prod"], "joanna@shop.example",
                              promotion.commit_author(instance, orders, NEWER))


@pytest.mark.parametrize(("approver", "author", "same_person"), [
    ("joanna@x", "Joanna <joanna@x>", True),  # the email
    ("Joanna", "Joanna <joanna@x>", True),  # the full name
    ("JOANNA@X", "Joanna <joanna@x>", True),  # case-insensitive
    (" joanna@x ", "Joanna <joanna@x>", True),
    ("Joanna <joanna@x>", "Joanna <joanna@x>", True),  # the whole identity
    ("ann", "Joanna <joanna@x>", False),  # never a substring of the name ...
    ("anna@x", "Joanna <joanna@x>", False),  # ... nor of the email
    ("joanna", "Joanna Smith <joanna@x>", False),  # a first name is not the full name
    ("x", "Joanna <joanna@x>", False),
    ("joanna@x", "", False),  # unknown author: the rule cannot apply
    ("", "Joanna <joanna@x>", False),
])
def test_the_author_rule_matches_exact_identities_only(approver, author, same_person):
    assert promotion.is_author(approver, author) is same_person


def test_a_waiting_reason_names_a_release_by_its_short_digest_and_commit():
    # A release manager reads the first 12 hex digits (as `docker images` shows them) and the commit.
    assert promotion.digest_label(BUILT, "0123456789abcdef") == "sha256:bbbbbbbbbbbb (0123456)"
    assert promotion.digest_label(BUILT) == "sha256:bbbbbbbbbbbb"


# --- the integration stage waits for what it starts beside the service -----------------------------------

CONSUMER_AND_PROVIDER = """\
fleet: shop
registry: 127.0.0.1:5000/shop
services:
  orders:
    repo: https://git.shop.example/orders.git
    build: {dockerfile: Dockerfile, test_target: test, integration_target: integration}
    port: 8080
    depends_on: [payments]
  payments:
    repo: https://git.shop.example/payments.git
    build: {dockerfile: Dockerfile, test_target: test}
    port: 8080
environments:
  dev: {target: docker}
"""


def test_a_consumers_integration_waits_until_its_providers_image_passed_its_checks(tmp_path, instance):
    path = tmp_path / "fleet.yaml"
    path.write_text(CONSUMER_AND_PROVIDER)
    fleet = load_fleet(path, check_files=False)
    orders, payments = fleet.services["orders"], fleet.services["payments"]
    integration = dg.AssetKey(["orders", "integration"])
    # Given a fleet's first release: orders' image passed its checks, payments' image is built but still tested
    build(instance, orders, BUILT)
    record(instance, image_key(payments), **{M.DIGEST: NEWER, M.GIT_SHA: "9f8e7d6c", M.AUTHOR: AUTHOR})
    # Then orders' integration waits, saying for what (it would have nothing of payments to start)
    assert promotion.waiting_reason(instance, fleet, orders, integration) == (
        "waiting for payments/image to pass its checks (the integration tests start it beside orders)")
    assert promotion.integration_partner(instance, fleet, "payments") is None
    # When payments' checks pass, the integration may run, with that image beside orders
    evaluate(instance, image_key(payments), "unit_tests", NEWER, passed=True)
    evaluate(instance, image_key(payments), "sast", NEWER, passed=True)
    assert promotion.waiting_reason(instance, fleet, orders, integration) is None
    assert promotion.integration_partner(instance, fleet, "payments") == NEWER
    # and once dev runs payments, that is what the integration starts
    deploy(instance, payments, "dev", BUILT)
    assert promotion.integration_partner(instance, fleet, "payments") == BUILT


def test_an_approval_used_by_the_deployment_that_runs_is_spent_until_a_new_one_is_given(instance, fleet, orders):
    prod = fleet.environments["prod"]
    released_to_staging(instance, fleet, orders)
    first = approve(instance, orders, prod, BUILT)
    assert not promotion.approval_spent(instance, orders, prod)  # given, not used yet: prod may deploy
    deploy(instance, orders, "prod", BUILT, **{M.APPROVAL_RUN_ID: first})
    # then automation has nothing more to do there (its gate asks this), and the step would refuse a second use
    assert promotion.approval_spent(instance, orders, prod)
    with pytest.raises(ReleaseStepError, match="already been used"):
        promotion.verify_approval(instance, orders, prod, BUILT)
    # and a new approval, even of the same digest, deploys it again
    approve(instance, orders, prod, BUILT)
    assert not promotion.approval_spent(instance, orders, prod)
    promotion.verify_approval(instance, orders, prod, BUILT)


# --- approval policies: who, how many, not the author, for how long --------------------------------------

POLICY = """\
fleet: shop
registry: 127.0.0.1:5000/shop
teams:
  release-managers: [ann@shop.example, bob@shop.example]
services:
  orders:
    repo: https://git.shop.example/orders.git
    build: {dockerfile: Dockerfile, test_target: test}
    port: 8080
environments:
  dev: {target: docker}
  staging: {target: docker}
  prod:
    target: docker
    approval: required
    approvers: [team:release-managers, joanna@shop.example]
    approvals_required: 2
    approval_expires_after_hours: 24
    author_cannot_approve: true
"""
ANN = "ann@shop.example"
BOB = "bob@shop.example"
JOANNA = "joanna@shop.example"


@pytest.fixture
def strict(tmp_path):
    """A fleet whose prod needs two distinct release managers (a team, and Joanna) within a day, never the author."""
    path = tmp_path / "fleet.yaml"
    path.write_text(POLICY)
    return load_fleet(path, check_files=False)


def given_staging_runs_joannas_commit(instance, fleet) -> tuple:
    orders = fleet.services["orders"]
    build(instance, orders, BUILT)  # written by Joanna Smith <joanna@shop.example>
    deploy(instance, orders, "dev", BUILT)
    deploy(instance, orders, "staging", BUILT)
    return orders, fleet.environments["prod"]


def test_given_prod_needs_two_approvals_when_two_release_managers_approve_then_prod_deploys_with_both(
        instance, strict):
    orders, prod = given_staging_runs_joannas_commit(instance, strict)
    prod_key = environment_key(orders, prod)
    assert promotion.waiting_reason(instance, strict, orders, prod_key) == (
        "waiting for an approval of sha256:bbbbbbbbbbbb (1a2b3c4) for prod (2 distinct approvers needed)")
    # When Ann approves, prod waits for one more, and says who approved so far
    promotion.verify_new_approval(instance, orders, prod, BUILT, ANN)
    approve(instance, orders, prod, BUILT, ANN)
    assert promotion.waiting_reason(instance, strict, orders, prod_key) == (
        "waiting for 1 more approval of sha256:bbbbbbbbbbbb (1a2b3c4) (1 of 2: ann@shop.example) for prod")
    assert promotion.waits_for_approval(promotion.waiting_reason(instance, strict, orders, prod_key))
    # which is what `release-graph why orders --env prod` prints (and what approval_needed notifications say)
    status = why.stage_status(instance, strict, orders, "prod")
    assert (status.state, status.reason) == (why.WAITING, promotion.waiting_reason(instance, strict, orders, prod_key))
    with pytest.raises(ReleaseStepError, match=r"waiting for 1 more approval of sha256:bbbbbbbbbbbb "
                       r"\(1 of 2: ann@shop.example\) for prod; approve with release-graph approve orders"):
        promotion.verify_approval(instance, orders, prod, BUILT)
    # When Bob approves too, prod may deploy, and the deployment names both (and their tickets)
    promotion.verify_new_approval(instance, orders, prod, BUILT, BOB)
    bobs = approve(instance, orders, prod, BUILT, BOB, **{M.TICKET: "CHG-9"})
    assert promotion.waiting_reason(instance, strict, orders, prod_key) is None
    approvals = promotion.verify_approval(instance, orders, prod, BUILT)
    assert (approvals.given_by, approvals.tickets, approvals.run_id) == ((ANN, BOB), "CHG-9", bobs)
    # Once prod ran them, those approvals are spent: one set of approvals releases one digest once
    deploy(instance, orders, "prod", BUILT, **{M.APPROVAL_RUN_ID: bobs})
    assert promotion.waiting_reason(instance, strict, orders, prod_key) is None
    assert promotion.approval_spent(instance, orders, prod)
    with pytest.raises(ReleaseStepError, match="the latest approval has already been used"):
        promotion.verify_approval(instance, orders, prod, BUILT)
    # and a new approval by one of them is not enough to deploy it again: two are needed again
    approve(instance, orders, prod, BUILT, ANN)
    with pytest.raises(ReleaseStepError, match=r"\(1 of 2: ann@shop.example\)"):
        promotion.verify_approval(instance, orders, prod, BUILT)


def test_given_prod_needs_two_approvals_when_ann_approves_twice_then_her_second_approval_is_refused(
        instance, strict):
    orders, prod = given_staging_runs_joannas_commit(instance, strict)
    approve(instance, orders, prod, BUILT, ANN)
    # the same person again, in any case: refused when given, saying how far the count is
    with pytest.raises(ReleaseStepError, match=r"'Ann@Shop.example' already approved sha256:bbbbbbbbbbbb and that "
                       r"approval still counts; 2 distinct approvers are needed \(1 of 2: ann@shop.example\)"):
        promotion.verify_new_approval(instance, orders, prod, BUILT, "Ann@Shop.example")
    # and an approval by her recorded twice all the same (an older step) still counts once: prod does not deploy
    approve(instance, orders, prod, BUILT, " ANN@shop.example ")
    with pytest.raises(ReleaseStepError, match=r"waiting for 1 more approval .*\(1 of 2: ann@shop.example\)"):
        promotion.verify_approval(instance, orders, prod, BUILT)


def test_given_an_approver_outside_the_list_when_they_approve_then_they_are_refused_naming_who_may(
        instance, strict):
    orders, prod = given_staging_runs_joannas_commit(instance, strict)
    for outsider in ("mallory@shop.example", "ann", "team:release-managers", "ann@shop.example.evil"):
        with pytest.raises(ReleaseStepError, match=rf"'{outsider}' may not approve here \(approvers: "
                           r"team:release-managers, joanna@shop.example; teams resolved: ann@shop.example, "
                           r"bob@shop.example, joanna@shop.example\)"):
            promotion.verify_new_approval(instance, orders, prod, BUILT, outsider)
    with pytest.raises(ReleaseStepError, match="an approval names who gives it: the approver is empty"):
        promotion.verify_new_approval(instance, orders, prod, BUILT, " ")
    # a team member in another case is the same person
    promotion.verify_new_approval(instance, orders, prod, BUILT, "BOB@shop.example")


def test_given_the_commit_author_is_a_release_manager_when_she_approves_her_change_then_she_is_refused(
        instance, strict):
    orders, prod = given_staging_runs_joannas_commit(instance, strict)
    # Joanna wrote the commit staging runs (the image step recorded her email from the commit)
    record(instance, image_key(orders), **{M.DIGEST: BUILT, M.GIT_SHA: "1a2b3c4d", M.AUTHOR: AUTHOR,
                                           M.AUTHOR_EMAIL: "joanna@shop.example"})
    assert promotion.commit_author_email(instance, orders, BUILT) == JOANNA
    for herself in (JOANNA, "JOANNA@shop.example"):
        with pytest.raises(ReleaseStepError, match="wrote this commit .* and may not approve it"):
            promotion.verify_new_approval(instance, orders, prod, BUILT, herself)
    # Ann's name is inside Joanna's: no matter, Ann is not the author
    promotion.verify_new_approval(instance, orders, prod, BUILT, ANN)
    # An approval of hers recorded all the same (before author_cannot_approve was set) does not count
    approve(instance, orders, prod, BUILT, JOANNA)
    approve(instance, orders, prod, BUILT, ANN)
    with pytest.raises(ReleaseStepError, match=r"\(1 of 2: ann@shop.example\) for prod: the approval by "
                       r"joanna@shop.example does not count: 'joanna@shop.example' wrote this commit"):
        promotion.verify_approval(instance, orders, prod, BUILT)


def test_the_author_rule_uses_the_commits_own_email_when_the_image_step_recorded_it():
    # the name's brackets cannot fool it, and only the whole email matches
    assert promotion.is_author("joanna@x", "Jo <jo> <joanna@x>", "joanna@x")
    assert promotion.is_author("JOANNA@X", "", "joanna@x")
    assert not promotion.is_author("ann", "Joanna <joanna@x>", "joanna@x")
    assert not promotion.is_author("anna@x", "Joanna <joanna@x>", "joanna@x")


def test_given_approvals_older_than_a_day_when_prod_deploys_then_they_are_refused_as_expired(instance, strict):
    orders, prod = given_staging_runs_joannas_commit(instance, strict)
    approve(instance, orders, prod, BUILT, ANN)
    approve(instance, orders, prod, BUILT, BOB)
    # within the day both count
    assert promotion.verify_approval(instance, orders, prod, BUILT, now=time.time() + 23 * 3600).given_by == (
        ANN, BOB)
    # a day and an hour later, neither does: refused, saying when each expired
    with pytest.raises(ReleaseStepError, match=r"waiting for an approval of sha256:bbbbbbbbbbbb for prod \(2 distinct "
                       r"approvers needed\): the approval by ann@shop.example expired at 20\d\d-.*Z \(approvals "
                       r"expire after 24 h here\); the approval by bob@shop.example expired at"):
        promotion.verify_approval(instance, orders, prod, BUILT, now=time.time() + 25 * 3600)
    # and an expired approval does not stand in the way of the same person approving again
    promotion.verify_new_approval(instance, orders, prod, BUILT, ANN, now=time.time() + 25 * 3600)


def test_a_materialization_of_the_approval_reported_by_hand_in_the_ui_never_counts(instance, strict):
    orders, prod = given_staging_runs_joannas_commit(instance, strict)
    approve(instance, orders, prod, BUILT, ANN)
    # the UI's "Report materialization" records no metadata: no digest, no approver
    instance.report_runless_asset_event(dg.AssetMaterialization(approval_key(orders, prod)))
    with pytest.raises(ReleaseStepError, match=r"\(1 of 2: ann@shop.example\)"):
        promotion.verify_approval(instance, orders, prod, BUILT)
