"""Release stories of the Git commit sensor, on real repositories, a real git daemon and the real registry.

Each story: given repos and a cursor, when the sensor ticks, then these runs are requested, these
observations recorded, and this cursor kept for the next tick.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml

from release_graph.fleet import Fleet, load_fleet
from release_graph.release.tracing import ReleaseTrace
from resources.git import GitResource
from resources.registry import Registry
from sensors.git_commits import DATA_VERSION_TAG, build_git_commit_sensor

DOCKERFILE = "FROM 127.0.0.1:5000/base/busybox:latest\nCMD [\"true\"]\n"


@pytest.fixture
def git(tmp_path: Path) -> GitResource:
    return GitResource(mirror_dir=str(tmp_path / "mirrors"))


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
def fleet_registry(registry_addr: str, run_id: str) -> str:
    return f"{registry_addr}/{run_id}"


def write_fleet(tmp_path: Path, registry: str, services: dict) -> Fleet:
    document = {
        "fleet": "shop",
        "registry": registry,
        "services": services,
        "environments": {"staging": {"target": "docker"}},
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return load_fleet(path)


def built(repo: str, **extra) -> dict:
    return {"repo": repo, "build": {"dockerfile": "Dockerfile"}, "port": 8080, **extra}


def tick(fleet: Fleet, git: GitResource, registry, instance, cursor: dict | str | None) -> dg.SensorResult:
    sensor = build_git_commit_sensor(fleet)
    context = dg.build_sensor_context(
        instance=instance,
        cursor=json.dumps(cursor) if isinstance(cursor, dict) else cursor,
        resources={"git": git, "registry": registry},
    )
    result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def requested(result: dg.SensorResult) -> dict[str, str]:
    """service -> SHA of every requested build."""
    return {r.tags["release/service"]: r.tags["release/git_sha"] for r in result.run_requests or []}


def observed(result: dg.SensorResult) -> dict[str, dg.AssetObservation]:
    return {e.asset_key.path[0]: e for e in result.asset_events or []}


def cursor_of(result: dg.SensorResult) -> dict[str, str]:
    return json.loads(result.cursor)


# --- first tick --------------------------------------------------------------------------------------------


def test_first_tick_builds_every_head_whose_image_is_missing_and_not_one_that_exists(
    tmp_path, new_repo, git_daemon, git, registry, fleet_registry, push_image, instance
):
    orders = new_repo("orders")
    orders_head = orders.commit("orders: first release\n\nTakes orders.", {"Dockerfile": DOCKERFILE})
    payments = new_repo("payments", base=git_daemon.base)
    payments_head = payments.commit("payments: first release", {"Dockerfile": DOCKERFILE})
    fleet = write_fleet(tmp_path, fleet_registry, {
        "orders": built("repos/orders"),
        "payments": built(git_daemon.url("payments")),
        "redis": {"image": "127.0.0.1:5000/base/busybox:latest", "infrastructure": True},
    })
    # payments' image for its head is already in the registry: a real push under that exact tag.
    push_image(f"{fleet_registry}/payments", payments_head)

    result = tick(fleet, git, registry, instance, cursor=None)

    assert len(result.run_requests) == 1
    run = result.run_requests[0]
    assert run.run_key == f"orders:{orders_head}"
    assert run.asset_selection == [dg.AssetKey(["orders", "image"])]
    assert run.tags == {
        "release/service": "orders", "release/git_sha": orders_head, "release/short_sha": orders_head[:12],
        # the release's trace, the same in every run of it (release_graph/release/tracing.py)
        "release/trace_id": ReleaseTrace(fleet.name, "orders", orders_head).trace_id_hex,
        # a build whose process dies is run again by the instance (dagster.yaml run_retries), never a failed one
        "dagster/max_retries": "2",
    }
    assert result.skip_reason is None
    # Both heads are observed (the prebuilt redis has no repo); the SHA is the data version.
    events = observed(result)
    assert set(events) == {"orders", "payments"}
    assert events["orders"].asset_key == dg.AssetKey(["orders", "source"])
    assert events["orders"].data_version == orders_head
    assert events["payments"].data_version == payments_head
    meta = events["orders"].metadata
    assert meta["sha"].value == orders_head
    assert meta["short_sha"].value == orders_head[:12]
    assert meta["author"].value == "Ada Lovelace <ada@example.com>"
    assert meta["message"].value == "orders: first release\n\nTakes orders."
    assert meta["committed_at"].value == "2024-05-01T12:00:00+00:00"
    assert meta["first_seen"].value is True
    assert meta["build_requested"].value is True
    assert events["payments"].metadata["build_requested"].value is False
    assert cursor_of(result) == {
        f"{orders.path}@main": orders_head, f"{git_daemon.url('payments')}@main": payments_head,
    }

    # What the sensor daemon does with the observation: Dagster then reads the SHA as the data version.
    instance.report_runless_asset_event(events["orders"])
    record = instance.get_latest_data_version_record(dg.AssetKey(["orders", "source"]), is_source=True)
    assert record.event_log_entry.tags[DATA_VERSION_TAG] == orders_head


def test_the_sensor_resolves_its_requests_to_the_image_asset_and_its_checks(
    tmp_path, new_repo, git, registry, instance, fleet_registry
):
    orders = new_repo("orders")
    head = orders.commit("first", {"Dockerfile": DOCKERFILE})
    fleet = write_fleet(tmp_path, fleet_registry, {"orders": built("repos/orders")})
    sensor = build_git_commit_sensor(fleet)
    assert sensor.name == "git_commits"
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 10
    assert sensor.required_resource_keys == {"git", "registry"}
    assert build_git_commit_sensor(fleet, minimum_interval_seconds=45).minimum_interval_seconds == 45

    # The shape of the fleet's graph (the real one is built in release_graph/): an image with a check.
    @dg.asset(key=["orders", "image"])
    def image() -> None:
        raise AssertionError("resolution only: never materialized here")

    @dg.asset_check(asset=image, name="unit_tests", blocking=True)
    def unit_tests() -> dg.AssetCheckResult:
        raise AssertionError("resolution only: never run here")

    defs = dg.Definitions(assets=[image], asset_checks=[unit_tests], sensors=[sensor])
    context = dg.build_sensor_context(
        instance=instance, definitions=defs, resources={"git": git, "registry": registry}
    )
    data = sensor.evaluate_tick(context)

    [run] = data.run_requests
    assert run.run_key == f"orders:{head}"
    assert run.asset_selection == [dg.AssetKey(["orders", "image"])]
    assert run.job_name == "__ASSET_JOB"
    assert run.asset_check_keys == [dg.AssetCheckKey(dg.AssetKey(["orders", "image"]), "unit_tests")]
    assert run.tags["release/git_sha"] == head
    assert [e.data_version for e in data.asset_events] == [head]


# --- later ticks -------------------------------------------------------------------------------------------


def test_given_no_new_commit_when_the_sensor_ticks_then_nothing_is_requested_or_fetched(
    tmp_path, new_repo, git_daemon, git, registry, fleet_registry, instance
):
    orders = new_repo("orders")
    orders.commit("first", {"Dockerfile": DOCKERFILE})
    payments = new_repo("payments", base=git_daemon.base)
    payments.commit("first", {"Dockerfile": DOCKERFILE})
    fleet = write_fleet(tmp_path, fleet_registry, {
        "orders": built("repos/orders"), "payments": built(git_daemon.url("payments")),
    })
    first = tick(fleet, git, registry, instance, cursor=None)
    assert set(requested(first)) == {"orders", "payments"}
    assert git_daemon.requests_for("payments") == 2  # ls-remote, then the mirror's first fetch

    second = tick(fleet, git, registry, instance, cursor=first.cursor)

    assert not second.run_requests
    assert not second.asset_events
    assert second.skip_reason.skip_message == "no new commits on 2 tracked branch(es)"
    assert cursor_of(second) == cursor_of(first)
    assert git_daemon.requests_for("payments") == 3  # one ls-remote, no fetch


def test_given_a_new_commit_on_one_service_then_only_that_service_is_released(
    tmp_path, new_repo, git_daemon, git, registry, fleet_registry, instance
):
    orders = new_repo("orders")
    orders_head = orders.commit("first", {"Dockerfile": DOCKERFILE})
    payments = new_repo("payments", base=git_daemon.base)
    old_payments = payments.commit("first", {"Dockerfile": DOCKERFILE})
    fleet = write_fleet(tmp_path, fleet_registry, {
        "orders": built("repos/orders"), "payments": built(git_daemon.url("payments")),
    })
    first = tick(fleet, git, registry, instance, cursor=None)

    new_payments = payments.commit("payments: retry the card network once", {"retry.py": "RETRIES = 1\n"})
    result = tick(fleet, git, registry, instance, cursor=first.cursor)

    assert requested(result) == {"payments": new_payments}
    assert result.run_requests[0].run_key == f"payments:{new_payments}"
    event = observed(result)["payments"]
    assert set(observed(result)) == {"payments"}
    assert event.data_version == new_payments
    assert event.metadata["previous_head"].value == old_payments
    assert event.metadata["first_seen"].value is False
    assert event.metadata["skipped_count"].value == 0
    assert "release/coalesced_count" not in result.run_requests[0].tags  # nothing folded in, nothing said
    assert event.description == f"{new_payments[:12]} payments: retry the card network once"
    assert cursor_of(result) == {
        f"{orders.path}@main": orders_head, f"{git_daemon.url('payments')}@main": new_payments,
    }
    assert git_daemon.requests_for("payments") == 4  # first tick: 2; this one: ls-remote and one fetch


def test_two_commits_between_ticks_make_one_release_of_the_newest_and_record_the_other(
    tmp_path, new_repo, git, registry, fleet_registry, instance
):
    orders = new_repo("orders")
    orders.commit("first", {"Dockerfile": DOCKERFILE})
    fleet = write_fleet(tmp_path, fleet_registry, {"orders": built("repos/orders")})
    first = tick(fleet, git, registry, instance, cursor=None)

    older = orders.commit("orders: add /version", {"version.py": "VERSION = 2\n"})
    newest = orders.commit("orders: log every request", {"log.py": "LOG = True\n"})
    result = tick(fleet, git, registry, instance, cursor=first.cursor)

    assert requested(result) == {"orders": newest}
    assert len(result.run_requests) == 1
    meta = observed(result)["orders"].metadata
    assert meta["sha"].value == newest
    assert meta["skipped_count"].value == 1
    assert meta["skipped_commits"].value == [{
        "sha": older, "author": "Ada Lovelace <ada@example.com>",
        "committed_at": "2024-05-01T12:01:00+00:00", "subject": "orders: add /version",
    }]
    # the build's run names the commit it folds in too: a record that survives a tick cut short after it
    # created the run (the observation above is then lost, the run is not)
    (request,) = result.run_requests
    assert request.tags["release/coalesced_count"] == "1"
    assert request.tags["release/coalesced_commits"] == older[:12]
    assert cursor_of(result) == {f"{orders.path}@main": newest}


def test_a_monorepo_commit_releases_only_the_services_whose_folder_it_touched(
    tmp_path, new_repo, git_daemon, git, registry, fleet_registry, instance
):
    mono = new_repo("shop", base=git_daemon.base)
    both = mono.commit("cart and search", {
        "services/cart/Dockerfile": DOCKERFILE, "services/search/Dockerfile": DOCKERFILE,
    })
    search_fix = mono.commit("search: fuzzy matching", {"services/search/fuzzy.py": "ON = True\n"})
    url = git_daemon.url("shop")
    fleet = write_fleet(tmp_path, fleet_registry, {
        "cart": built(url, path="services/cart"),
        "search": built(url, path="services/search"),
    })

    # First tick: each service at the newest commit of its own folder, so its SHA names its content.
    first = tick(fleet, git, registry, instance, cursor=None)
    assert requested(first) == {"cart": both, "search": search_fix}
    assert git_daemon.requests_for("shop") == 2  # one ls-remote for both services, one fetch
    assert cursor_of(first) == {f"{url}@main": search_fix}

    cart_change = mono.commit("cart: free shipping over 50", {"services/cart/shipping.py": "FREE = 50\n"})
    second = tick(fleet, git, registry, instance, cursor=first.cursor)
    assert requested(second) == {"cart": cart_change}
    assert set(observed(second)) == {"cart"}
    assert observed(second)["cart"].metadata["path"].value == "services/cart"

    docs = mono.commit("docs only", {"README.md": "the shop\n"})
    third = tick(fleet, git, registry, instance, cursor=second.cursor)
    assert not third.run_requests
    assert not third.asset_events
    assert third.skip_reason.skip_message == "new commits on 1 branch(es) touch no released service's path"
    assert cursor_of(third) == {f"{url}@main": docs}

    search_again = mono.commit("search: ranking", {"services/search/rank.py": "R = 1\n"})
    readme = mono.commit("docs again", {"README.md": "the shop, again\n"})
    fourth = tick(fleet, git, registry, instance, cursor=third.cursor)
    # Released at the commit that changed the folder; the branch head is recorded beside it.
    assert requested(fourth) == {"search": search_again}
    assert observed(fourth)["search"].metadata["branch_head"].value == readme
    assert cursor_of(fourth) == {f"{url}@main": readme}


# --- repos that cannot be read -----------------------------------------------------------------------------


def test_an_unreachable_repo_is_a_skip_reason_while_a_healthy_one_is_released(
    tmp_path, new_repo, git_daemon, git, registry, fleet_registry, instance, capfd
):
    orders = new_repo("orders")
    orders.commit("first", {"Dockerfile": DOCKERFILE})
    payments = new_repo("payments", base=git_daemon.base)
    payments_head = payments.commit("first", {"Dockerfile": DOCKERFILE})
    url = git_daemon.url("payments")
    fleet = write_fleet(tmp_path, fleet_registry, {"orders": built("repos/orders"), "payments": built(url)})
    first = tick(fleet, git, registry, instance, cursor=None)

    git_daemon.stop()
    orders_fix = orders.commit("orders: fix rounding", {"money.py": "ROUND = 2\n"})
    second = tick(fleet, git, registry, instance, cursor=first.cursor)

    assert requested(second) == {"orders": orders_fix}
    assert cursor_of(second)[f"{url}@main"] == payments_head  # kept, so the next tick compares again
    assert f"{url}@main (payments): repository {url} is unreachable" in capfd.readouterr().err

    third = tick(fleet, git, registry, instance, cursor=second.cursor)
    assert not third.run_requests
    reason = third.skip_reason.skip_message
    assert reason.startswith(f"skipped 1 branch(es): {url}@main (payments): repository {url} is unreachable: ")
    assert "Connection refused" in reason
    assert cursor_of(third) == cursor_of(second)

    git_daemon.start()
    payments_fix = payments.commit("payments: idempotency keys", {"keys.py": "ON = True\n"})
    fourth = tick(fleet, git, registry, instance, cursor=third.cursor)
    assert requested(fourth) == {"payments": payments_fix}


def test_a_deleted_repo_and_a_missing_branch_are_named_in_the_skip_reason(
    tmp_path, new_repo, git_daemon, git, registry, fleet_registry, instance
):
    payments = new_repo("payments", base=git_daemon.base)
    payments_head = payments.commit("first", {"Dockerfile": DOCKERFILE})
    inventory = new_repo("inventory", base=git_daemon.base)
    inventory.commit("first", {"Dockerfile": DOCKERFILE})
    payments_url, inventory_url = git_daemon.url("payments"), git_daemon.url("inventory")
    fleet = write_fleet(tmp_path, fleet_registry, {
        "payments": built(payments_url),
        "inventory": built(inventory_url, branch="release"),
    })
    cursor = {f"{payments_url}@main": payments_head}
    shutil.rmtree(payments.path)

    result = tick(fleet, git, registry, instance, cursor=cursor)

    assert not result.run_requests
    reason = result.skip_reason.skip_message
    assert reason.startswith("skipped 2 branch(es): ")
    assert f"{inventory_url}@release (inventory): branch 'release' does not exist in {inventory_url}" in reason
    assert f"{payments_url}@main (payments): repository {payments_url} was not found (deleted" in reason
    assert cursor_of(result) == cursor  # the deleted repo keeps its entry; the missing branch gets none


def test_a_force_push_releases_the_new_head_and_records_it(
    tmp_path, new_repo, git_daemon, git, registry, fleet_registry, instance
):
    orders = new_repo("orders", base=git_daemon.base)
    base = orders.commit("first", {"Dockerfile": DOCKERFILE})
    dropped = orders.commit("orders: debug logging with card numbers", {"debug.py": "CARDS = True\n"})
    url = git_daemon.url("orders")
    fleet = write_fleet(tmp_path, fleet_registry, {"orders": built(url)})
    first = tick(fleet, git, registry, instance, cursor=None)
    assert requested(first) == {"orders": dropped}

    orders.rewrite_to(base)
    rewritten = orders.commit("orders: debug logging without card numbers", {"debug.py": "CARDS = False\n"})
    result = tick(fleet, git, registry, instance, cursor=first.cursor)

    assert requested(result) == {"orders": rewritten}
    event = observed(result)["orders"]
    assert event.metadata["force_pushed"].value is True
    assert event.metadata["previous_head"].value == dropped
    assert event.metadata["skipped_count"].value == 0
    assert event.description == (
        f"{rewritten[:12]} orders: debug logging without card numbers (branch force-pushed over {dropped[:12]})"
    )
    assert cursor_of(result) == {f"{url}@main": rewritten}

    # A sensor whose mirror never saw the dropped commit (a fresh state folder) reaches the same verdict.
    fresh = GitResource(mirror_dir=str(tmp_path / "fresh-mirrors"))
    again = tick(fleet, fresh, registry, instance, cursor=first.cursor)
    assert requested(again) == {"orders": rewritten}
    assert observed(again)["orders"].metadata["force_pushed"].value is True


# --- the cursor after failures -----------------------------------------------------------------------------


def test_a_tick_that_fails_keeps_the_old_cursor_and_the_next_tick_delivers_the_release(
    tmp_path, new_repo, git, registry, fleet_registry, instance
):
    orders = new_repo("orders")
    orders.commit("first", {"Dockerfile": DOCKERFILE})
    fleet = write_fleet(tmp_path, fleet_registry, {"orders": built("repos/orders")})
    first = tick(fleet, git, registry, instance, cursor=None)
    fix = orders.commit("orders: fix totals", {"totals.py": "OK = True\n"})

    # The mirror folder cannot be created (a file is in the way): not one bad repo, so the tick fails
    # and Dagster keeps the cursor it had.
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("in the way\n")
    with pytest.raises(NotADirectoryError):
        tick(fleet, GitResource(mirror_dir=str(blocked / "mirrors")), registry, instance, cursor=first.cursor)

    result = tick(fleet, git, registry, instance, cursor=first.cursor)
    assert requested(result) == {"orders": fix}


def test_a_registry_that_is_down_on_a_first_tick_postpones_only_that_branch(
    tmp_path, new_repo, git, registry, instance, run_id, free_port
):
    orders = new_repo("orders")
    orders_head = orders.commit("first", {"Dockerfile": DOCKERFILE})
    payments = new_repo("payments")
    old_payments = payments.commit("first", {"Dockerfile": DOCKERFILE})
    # Nothing listens on free_port: the registry of this fleet is down.
    fleet = write_fleet(tmp_path, f"127.0.0.1:{free_port}/{run_id}", {
        "orders": built("repos/orders"), "payments": built("repos/payments"),
    })
    new_payments = payments.commit("payments: second", {"b.py": "B = 2\n"})
    # payments was seen before (no registry needed); orders is new to the sensor.
    cursor = {f"{payments.path}@main": old_payments}

    result = tick(fleet, git, registry, instance, cursor=cursor)
    assert requested(result) == {"payments": new_payments}
    assert cursor_of(result) == {f"{payments.path}@main": new_payments}  # still no entry for orders

    again = tick(fleet, git, registry, instance, cursor=result.cursor)
    assert not again.run_requests
    assert not again.asset_events
    reason = again.skip_reason.skip_message
    assert reason.startswith(f"skipped 1 branch(es): {orders.path}@main (orders): first look at this branch "
                             "postponed, the registry cannot say which images exist: ")
    assert f"registry 127.0.0.1:{free_port} did not answer" in reason
    assert cursor_of(again) == cursor_of(result)

    # The registry is back (the fleet points at the real one): the postponed first tick happens.
    up = write_fleet(tmp_path, f"127.0.0.1:5000/{run_id}", {
        "orders": built("repos/orders"), "payments": built("repos/payments"),
    })
    back = tick(up, git, registry, instance, cursor=again.cursor)
    assert requested(back) == {"orders": orders_head}


def test_an_unreadable_cursor_starts_over_as_a_first_tick(tmp_path, new_repo, git, registry, fleet_registry,
                                                          instance):
    orders = new_repo("orders")
    head = orders.commit("first", {"Dockerfile": DOCKERFILE})
    fleet = write_fleet(tmp_path, fleet_registry, {"orders": built("repos/orders")})

    result = tick(fleet, git, registry, instance, cursor="{not json")

    assert requested(result) == {"orders": head}
    assert cursor_of(result) == {f"{orders.path}@main": head}


def test_a_build_run_goes_on_to_the_services_integration_and_first_environment_when_the_rules_allow(
    tmp_path, new_repo, git, registry, fleet_registry, instance
):
    # Given a service with integration tests and nothing it needs beside it, in a fleet whose dev is ungated
    orders = new_repo("orders")
    head = orders.commit("first", {"Dockerfile": DOCKERFILE + "FROM scratch AS integration\n"})
    document = {"fleet": "shop", "registry": fleet_registry,
                "services": {"orders": {"repo": "repos/orders", "port": 8080,
                                        "build": {"dockerfile": "Dockerfile", "integration_target": "integration"}}},
                "environments": {"dev": {"target": "docker"}, "prod": {"target": "docker", "approval": "required"}}}
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    fleet = load_fleet(tmp_path / "fleet.yaml")
    # when a new commit is seen, its build run holds the image, the integration and the dev deployment: no
    # automation tick and no second run start-up between them (a failed blocking check stops the run there)
    [run] = tick(fleet, git, registry, instance, cursor=None).run_requests
    assert run.run_key == f"orders:{head}"
    assert run.asset_selection == [dg.AssetKey(["orders", "image"]), dg.AssetKey(["orders", "integration"]),
                                   dg.AssetKey(["orders", "dev"])]


def queue_build(instance, request: dg.RunRequest, *, status=dg.DagsterRunStatus.QUEUED,
                sensor: str = "git_commits") -> str:
    """The run the daemon creates for a build request (with the requesting sensor's name), left in `status`."""
    from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin

    # a queued run names the job it will launch (Dagster refuses one without); here the demo's code location
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("release_graph"), "__repository__"),
                             "__ASSET_JOB")
    run = dg.DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()), status=status, remote_job_origin=origin,
                        tags={**request.tags, "dagster/sensor_name": sensor} if sensor else dict(request.tags),
                        asset_selection=frozenset(request.asset_selection))
    instance.add_run(run)
    return run.run_id


def test_in_a_burst_a_build_still_queued_is_cancelled_and_its_commits_fold_into_the_newer_build(
    tmp_path, new_repo, git, registry, fleet_registry, instance
):
    # Given a service whose build of commit a waits in the run queue (the fleet builds four at a time)
    orders = new_repo("orders")
    orders.commit("first", {"Dockerfile": DOCKERFILE})
    payments = new_repo("payments")
    payments.commit("first", {"Dockerfile": DOCKERFILE})
    fleet = write_fleet(tmp_path, fleet_registry, {"orders": built("repos/orders"),
                                                   "payments": built("repos/payments")})
    first = tick(fleet, git, registry, instance, cursor=None)
    sha_a = orders.commit("orders: a", {"a.py": "A = 1\n"})
    older = orders.commit("orders: folded into b", {"b0.py": "B = 0\n"})
    sha_b = orders.commit("orders: b", {"b.py": "B = 1\n"})
    at_b = tick(fleet, git, registry, instance, cursor=first.cursor)
    (request_b,) = at_b.run_requests
    assert request_b.tags["release/coalesced_commits"] == older[:12] + " " + sha_a[:12]  # newest first
    run_b = queue_build(instance, request_b)
    # and payments' build, queued too, and an orders build somebody launched by hand, queued
    payments_sha = payments.commit("payments: c", {"c.py": "C = 1\n"})
    at_c = tick(fleet, git, registry, instance, cursor=at_b.cursor)
    run_payments = queue_build(instance, at_c.run_requests[0])
    by_hand = queue_build(instance, request_b, sensor="")

    # When commit d of orders arrives before b's build started
    sha_d = orders.commit("orders: d", {"d.py": "D = 1\n"})
    at_d = tick(fleet, git, registry, instance, cursor=at_c.cursor)

    # Then b's build is cancelled, saying why on the run, and d's build holds b and what b held
    cancelled = instance.get_run_by_id(run_b)
    assert cancelled.status == dg.DagsterRunStatus.CANCELED
    assert cancelled.tags["release/superseded_by"] == sha_d
    (event,) = instance.all_logs(run_b, of_type=dg.DagsterEventType.RUN_CANCELED)
    assert f"build of {sha_b[:12]} superseded while queued by {sha_d[:12]}" in event.message
    (request_d,) = at_d.run_requests
    assert requested(at_d) == {"orders": sha_d}
    assert request_d.tags["release/coalesced_count"] == "3"
    assert request_d.tags["release/coalesced_commits"].split() == [sha_b[:12], older[:12], sha_a[:12]]
    assert observed(at_d)["orders"].metadata["superseded_queued_builds"].value == [sha_b[:12], older[:12],
                                                                                 sha_a[:12]]
    # and another service's queued build, and one launched by hand, are left as they were
    assert instance.get_run_by_id(run_payments).status == dg.DagsterRunStatus.QUEUED
    assert instance.get_run_by_id(run_payments).tags["release/git_sha"] == payments_sha
    assert instance.get_run_by_id(by_hand).status == dg.DagsterRunStatus.QUEUED


def test_a_build_that_already_started_is_left_to_finish_when_a_newer_commit_arrives(
    tmp_path, new_repo, git, registry, fleet_registry, instance
):
    orders = new_repo("orders")
    orders.commit("first", {"Dockerfile": DOCKERFILE})
    fleet = write_fleet(tmp_path, fleet_registry, {"orders": built("repos/orders")})
    first = tick(fleet, git, registry, instance, cursor=None)
    orders.commit("orders: a", {"a.py": "A = 1\n"})
    at_a = tick(fleet, git, registry, instance, cursor=first.cursor)
    started = queue_build(instance, at_a.run_requests[0], status=dg.DagsterRunStatus.STARTED)

    sha_b = orders.commit("orders: b", {"b.py": "B = 1\n"})
    at_b = tick(fleet, git, registry, instance, cursor=at_a.cursor)

    assert instance.get_run_by_id(started).status == dg.DagsterRunStatus.STARTED
    assert "release/superseded_by" not in instance.get_run_by_id(started).tags
    (request_b,) = at_b.run_requests
    assert requested(at_b) == {"orders": sha_b}
    assert "release/coalesced_count" not in request_b.tags
