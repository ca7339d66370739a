"""The living system: the demo fleet on the real daemon (`dagster dev`, as `make demo` starts it).

A release manager's story, scripted: the first release of every service flows to staging on its own; four
broken commits at once (a unit test, an integration test, a health check, and a change to inventory's API that
only the fleet's e2e tests in dev reject) each stop at their own stage and say why, and their repairs flow on
with no manual step; approvals given consumer first reach prod in dependency order while a newer commit to a
provider (inventory, which orders calls) is redeployed under its consumers and supersedes the approved digest
in staging, its dev end-to-end run passing; that commit answers 400 ms slower, which every test accepts, and
once approved its prod canary, measured on the demo's shoppers, goes back while the approved version keeps
serving them. Along the way only the broken commits' own runs (and the rolled-back canary's) fail, no run
holds two services' stages, no image is built twice, and every stage says what it waits for. A copy of the
demo fleet under its own name and ports, so it never meets a running `make demo`.

In the Dagster UI, in a real browser: after the failed e2e run in dev, inventory's healthy staging shows no
failed check; the environment matrix shows what each stage waits for, as `release-graph why` says it (also
the rolled-back canary); and the last prod approval is given from the UI's launchpad.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter

import dagster as dg
import pytest

from release_graph import demo
from release_graph.fleet import topological_order
from release_graph.release import history
from release_graph.release import metadata as M
from release_graph.release.keys import approval_key, e2e_key, environment_key, image_key
from release_graph.release.tags import SERVICE_TAG, SHA_TAG
from release_graph.release.why import BLOCKED, FAILED, UP_TO_DATE, WAITING, stage_status
from resources import labels as L

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("live-demo")]

SERVICES = ("inventory", "payments", "orders", "gateway")
# Four builds with their checks, integration, dev, e2e, staging. On a 2-core host running the rest of `make test`
# beside it that took over 600 s once (the other two stories and the grouped engine tests at once): a longer wait
# costs nothing when things go well.
FIRST_RELEASE_SECONDS = 900
NEXT_STAGE_SECONDS = 300
BREAKS_SECONDS = 480  # four broken commits' builds and checks at once, then integration runs that must fail
# `make soak` runs the story with rounds of provider and consumer commits first (RELEASE_GRAPH_SOAK_ROUNDS); the
# story itself commits to the provider alone (its repair, and the newer commit at the end) and to all four.
SOAK_ROUNDS = int(os.environ.get("RELEASE_GRAPH_SOAK_ROUNDS", "0"))
# Broken commits, each caught by its own stage: the unit tests, the integration tests, the health check, and
# the fleet's e2e tests in dev (inventory's reservation ids no longer look as its consumers expect).
BREAKS = {"orders": "unit-test", "payments": "integration-test", "gateway": "health", "inventory": "e2e"}
DEPLOYMENT_CHECKS = ("healthy", "in_sync", "hardening", "network_policy")


@pytest.fixture
def shoppers(live):
    """The demo's shoppers on prod's gateway, as `make demo` runs them: their traffic, counted as it goes."""
    stop, traffic = threading.Event(), demo.Traffic()
    port = live.fleet.environments["prod"].publish["gateway"]
    thread = threading.Thread(target=demo.shop, args=(port, stop), kwargs={"traffic": traffic}, daemon=True)
    thread.start()
    yield traffic
    stop.set()
    thread.join(timeout=60)


def test_a_release_managers_day_on_the_real_daemon(live, ui, shoppers, monkeypatch, docker_client):
    monkeypatch.setenv("DAGSTER_HOME", str(live.home))
    live.start()
    fleet = live.fleet
    with dg.DagsterInstance.get() as instance:
        def digest(service: str, stage: str) -> str | None:
            key = image_key(service) if stage == "image" else environment_key(service, stage)
            record = history.latest(instance, key)
            return record.digest if record else None

        # Given `make demo` just started: every service's first release reaches staging on its own
        first = live.wait_for("the first release of every service in staging", lambda: all(
            digest(s, "staging") and digest(s, "staging") == digest(s, "image") for s in SERVICES),
            FIRST_RELEASE_SECONDS, instance)
        print(f"\nfirst release of 4 services to staging: {first:.0f} s after the UI answered")
        # and prod says what it waits for (staging's e2e run, an approval, a provider), never nothing
        for service in SERVICES:
            status = stage_status(instance, fleet, fleet.services[service], "prod")
            assert status.state == "waiting" and status.reason.startswith("waiting for"), status

        # The network admits only the manifest's edges: in dev, orders calls inventory, and gateway, which has no
        # edge to it, is refused by name and at the switch, which names both
        def trespass(caller: str, callee: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "release_graph.demo", "trespass", caller, callee, "--env",
                                   "dev", "--fleet", str(live.fleet_dir / "fleet.yaml")], env=live.env, text=True,
                                  capture_output=True, timeout=120)

        allowed = trespass("orders", "inventory")
        assert allowed.returncode == 0 and "by name: 200" in allowed.stdout, allowed.stdout + allowed.stderr
        refused = trespass("gateway", "inventory")
        assert refused.returncode == 0, refused.stdout + refused.stderr
        assert "by name: refused:" in refused.stdout and "through the switch: 403 network_policy: gateway (" in (
            refused.stdout), refused.stdout
        print(f"the network rule in dev:\n{allowed.stdout}{refused.stdout}", end="")
        # and the refusal shows: in `release-graph environments`, and as the network_policy check of inventory in dev
        # (a warning the drift sensor records), which the UI lists
        environments = live.cli("environments")
        assert "refused   gateway -> inventory: 1 call, 1 in the last 10 min" in environments.stdout, (
            environments.stdout + environments.stderr)
        policy_key = dg.AssetCheckKey(environment_key("inventory", "dev"), "network_policy")

        def policy_check():
            record = instance.event_log_storage.get_latest_asset_check_execution_by_key([policy_key]).get(policy_key)
            data = record.event.dagster_event.event_specific_data if record and record.event else None
            return data if isinstance(data, dg.AssetCheckEvaluation) else None

        live.wait_for("inventory/dev's network_policy check naming gateway", lambda: (
            (check := policy_check()) is not None and not check.passed
            and "gateway -> inventory" in str(check.description)), 180, instance)
        print(f"inventory/dev network_policy: {policy_check().description}")
        shown = ui.check_results(environment_key("inventory", "dev"), ("network_policy",))
        assert shown["network_policy"] not in ("Succeeded", "Not evaluated"), shown
        print(f"UI: inventory/dev's network_policy check: {shown['network_policy']}")

        def print_lead_time(service: str, sha: str, committed_at: float) -> None:
            lead_time = time.monotonic() - committed_at
            committed_wall = time.time() - lead_time
            own = [r for r in instance.get_run_records(filters=dg.RunsFilter(tags={SHA_TAG: sha}))
                   if r.start_time and r.end_time]
            work = sum(r.end_time - r.start_time for r in own)
            # the dev e2e runs between its dev deployment and its staging deployment (they test it)
            dev_e2e_key = e2e_key(fleet.environments["dev"])
            last_own = max((r.end_time for r in own), default=time.time())
            e2e = [r for r in instance.get_run_records(filters=dg.RunsFilter(
                       statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]))
                   if r.dagster_run.asset_selection and dev_e2e_key in r.dagster_run.asset_selection
                   and r.start_time and r.end_time and committed_wall < r.start_time and r.end_time < last_own]
            e2e_work = sum(r.end_time - r.start_time for r in e2e)
            print(f"{service} commit -> staging: {lead_time:.0f} s: {work:.0f} s in its {len(own)} own runs (build "
                  f"and checks, integration and dev, staging), {e2e_work:.0f} s in {len(e2e)} dev e2e run(s), "
                  f"{lead_time - work - e2e_work:.0f} s waiting between them (Git poll, automation ticks, run "
                  "start-up, other services' runs)")

        # (`make soak`: a provider, then a consumer and the provider, round after round, each reaching staging)
        for round_number in range(SOAK_ROUNDS):
            for changed in ("inventory",) if round_number == 0 else ("orders", "inventory"):
                before = digest(changed, "staging")
                commit = demo.commit_change(changed, live.fleet_dir / ".repos")
                committed_at = time.monotonic()
                live.wait_for(f"{changed}'s new commit in staging", lambda changed=changed, before=before: (
                    digest(changed, "staging") not in (None, before)
                    and digest(changed, "staging") == digest(changed, "image")), NEXT_STAGE_SECONDS, instance)
                assert history.latest(instance, image_key(changed)).git_sha == commit.sha
                print_lead_time(changed, commit.sha, committed_at)

        # When four services get broken commits at once (a unit test, an integration test, a health check, and
        # a change to inventory's API that its own tests accept)
        staged = {s: digest(s, "staging") for s in SERVICES}
        broken = {service: demo.commit_change(service, live.fleet_dir / ".repos", breakage=kind).sha
                  for service, kind in BREAKS.items()}

        def why(service: str, stage: str):
            return stage_status(instance, fleet, fleet.services[service], stage)

        def sha_of(service: str) -> str | None:
            record = history.latest(instance, image_key(service))
            return record.git_sha if record else None

        dev_e2e = e2e_key(fleet.environments["dev"])

        def e2e_failed_with_broken_inventory() -> bool:
            # inventory passed its own unit and integration tests and runs in dev, where the fleet's e2e failed
            dev = digest("inventory", "dev")
            return (dev == digest("inventory", "image") and why("inventory", "staging").reason.startswith(
                f"the end-to-end tests of 'dev' failed with inventory sha256:{dev[7:19]}"))

        stopped = live.wait_for("each broken commit stopped at its stage", lambda: (
            all(sha_of(s) == broken[s] for s in BREAKS)
            and why("orders", "integration").state == BLOCKED
            and why("payments", "dev").state == BLOCKED
            and why("gateway", "integration").state == FAILED
            and e2e_failed_with_broken_inventory()), BREAKS_SECONDS, instance)
        print(f"four broken commits stopped at their stages: {stopped:.0f} s")
        # then each says why, in words, and no other service moved or broke
        assert "unit_tests did not pass" in why("orders", "integration").reason
        assert "integration_tests did not pass" in why("payments", "dev").reason
        assert "health" in why("gateway", "integration").reason.lower(), why("gateway", "integration")
        assert {s: digest(s, "staging") for s in SERVICES} == staged
        assert why("inventory", "staging").state == WAITING
        # (the e2e test that rejected inventory's new reservation ids, which its own tests accepted)
        failed_e2e = history.latest(instance, dev_e2e)
        assert failed_e2e.value(M.DEPLOYED_DIGESTS)["inventory"] == digest("inventory", "dev")
        evidence = history.check_metadata_for(instance, dg.AssetCheckKey(dev_e2e, "e2e_tests"), failed_e2e.digest)
        assert "test_an_order_is_reserved_by_inventory_and_authorised_by_payments" in evidence["failing_tests"]
        # The UI, as a release manager reads it: inventory's staging, healthy and running the previous release,
        # shows no failed check (nothing in the failed e2e run is evidence about it)
        browsing = time.monotonic()
        assert ui.check_results(environment_key("inventory", "staging"), DEPLOYMENT_CHECKS) == dict.fromkeys(
            DEPLOYMENT_CHECKS, "Succeeded")
        assert not ui.page_shows("Execution failed") and not ui.page_shows("Failed")

        # and the matrix shows what each stage waits for, as `release-graph why` says it (inventory/staging
        # for a passing e2e run, payments/prod for an approval, orders/prod for its provider)
        def as_why_says(shown) -> bool:
            return all(row["waiting_for"] == ("" if (status := why(s, e)).state == UP_TO_DATE
                                              else f"{status.state}: {status.reason}")
                       for (s, e), row in shown.items())

        shown = ui.wait_for_matrix("as release-graph why says", as_why_says)
        assert shown[("inventory", "staging")]["waiting_for"].startswith("waiting: the end-to-end tests of 'dev'")
        assert shown[("payments", "prod")]["waiting_for"].startswith("waiting: waiting for an approval of")
        assert shown[("orders", "staging")]["waiting_for"] == ""  # it runs what dev holds: nothing to wait for
        print(f"UI: staging's checks and the matrix: {time.monotonic() - browsing:.0f} s")
        # When each is repaired, the repairs flow to staging with no manual step
        repaired = {s: demo.commit_change(s, live.fleet_dir / ".repos", repair=True).sha for s in BREAKS}
        flowed = live.wait_for("every repair in staging", lambda: all(
            sha_of(s) == repaired[s] and digest(s, "staging") == digest(s, "image") for s in BREAKS),
            NEXT_STAGE_SECONDS, instance)
        print(f"four repairs -> staging: {flowed:.0f} s")

        # When prod is approved, consumers first, every approval reaches prod in dependency order: from the
        # terminal, and the last one from the UI's launchpad
        *by_cli, by_ui = reversed(topological_order(fleet.services))
        for service in by_cli:
            done = live.cli("approve", service, "--env", "prod", "--by", "rm@shop.example", "--ticket", "CHG-1")
            assert done.returncode == 0, done.stdout + done.stderr
            assert "next:" in done.stdout and "Traceback" not in done.stdout + done.stderr
        ui_approval = approval_key(fleet.services[by_ui], fleet.environments["prod"])
        browsing = time.monotonic()
        run_id = ui.approve(ui_approval, approver="rm@shop.example", ticket="CHG-UI")
        print(f"UI: {by_ui}'s approval from the launchpad, its run succeeded: {time.monotonic() - browsing:.0f} s")
        approval = history.latest(instance, ui_approval)
        assert (approval.run_id, approval.value(M.APPROVER), approval.value(M.TICKET)) == (
            run_id, "rm@shop.example", "CHG-UI")
        assert approval.digest == digest(by_ui, "staging")
        approved_at = time.monotonic()
        approved = {s: digest(s, "staging") for s in SERVICES}
        # and a newer inventory commit supersedes the approved digest in staging right away (one that answers
        # 400 ms slower: every test accepts it)
        newer = demo.commit_change("inventory", live.fleet_dir / ".repos", breakage="slow").sha
        newer_at = time.monotonic()
        live.wait_for("every approved digest in prod", lambda: all(
            digest(s, "prod") == approved[s] for s in SERVICES), NEXT_STAGE_SECONDS, instance)
        print(f"approvals -> all of prod: {time.monotonic() - approved_at:.0f} s")
        deployed_at = {s: history.latest(instance, environment_key(s, "prod")).timestamp for s in SERVICES}
        for service in SERVICES:
            for provider in fleet.services[service].hard_deps:
                assert deployed_at[provider] <= deployed_at[service], (provider, service)

        # When a provider gets a new commit alone, it is rebuilt once and reaches staging under its consumers (its
        # dev e2e run passing)
        live.wait_for("the newer inventory commit in staging", lambda: (
            sha_of("inventory") == newer and digest("inventory", "staging") == digest("inventory", "image")),
            NEXT_STAGE_SECONDS, instance)
        print_lead_time("inventory", newer, newer_at)
        # the approved digest stays in prod, and prod says what the newer one waits for
        assert digest("inventory", "prod") == approved["inventory"]
        # (for the staging e2e run with the newer digest first, then for an approval of it)
        waiting = why("inventory", "prod").reason
        assert waiting.startswith("waiting for") and digest("inventory", "staging")[7:19] in waiting, waiting

        # When the slow commit is approved, its prod canary takes half of the shoppers' traffic, is measured
        # slower than prod allows, and goes back: the approved version served throughout
        slow = digest("inventory", "staging")
        live.wait_for("the slow commit's staging e2e run", lambda: why("inventory", "prod").reason.startswith(
            "waiting for an approval"), NEXT_STAGE_SECONDS, instance)
        before_canary = shoppers.snapshot()
        done = live.cli("approve", "inventory", "--env", "prod", "--by", "rm@shop.example", "--ticket", "CHG-2")
        assert done.returncode == 0, done.stdout + done.stderr
        rolled_back = live.wait_for("the slow canary rolled back", lambda: why("inventory", "prod").state == FAILED,
                                    NEXT_STAGE_SECONDS, instance)
        print(f"slow inventory approved -> its prod canary rolled back: {rolled_back:.0f} s")
        failed_prod = why("inventory", "prod")
        assert "rolled back" in failed_prod.reason and "mean response time" in failed_prod.reason, failed_prod
        assert digest("inventory", "prod") == approved["inventory"]
        rollback = history.rollbacks(instance, environment_key("inventory", "prod"))
        assert [(r.digest, r.value("serving")) for r in rollback] == [(slow, approved["inventory"])], rollback
        # and the UI's matrix shows the rolled-back stage as `release-graph why` says it
        shown = ui.wait_for_matrix("the rolled-back canary, as release-graph why says", as_why_says)
        assert "rolled back" in shown[("inventory", "prod")]["waiting_for"], shown[("inventory", "prod")]
        # (and the shoppers were served meanwhile: the canary was slow, not down; at most 1 % of their requests
        # failed, what the analysis itself tolerates)
        during = demo.Traffic(shoppers.snapshot() - before_canary)
        print(f"shoppers on prod's gateway during the slow canary: {during.line()}; last server errors: "
              f"{shoppers.last_server_errors()}")
        assert during.statuses[200] > 0 and during.failed <= during.requests // 100, (
            during.line(), shoppers.last_server_errors())

        # and the team's inbox got, signed and once each, the broken health check's failure and the rollback, with
        # links into this UI
        inbox = live.inbox
        live.wait_for("the rollback in the team's inbox", lambda: any(
            m["stage"] == "inventory/prod" for m in inbox.of_kind("rolled_back")), 120, instance)
        told = [(m["kind"], m["stage"], m["sha"]) for m in inbox.messages]
        print(f"team inbox: {len(told)} notifications, {inbox.refused} refused: "
              + "; ".join(f"{kind} {stage}@{sha[:7]}" for kind, stage, sha in told))
        assert len(told) == len(set(told)) and inbox.refused == 0, told
        assert ("gateway", broken["gateway"]) in {(m["service"], m["sha"]) for m in inbox.of_kind("failed")}, told
        rollback_note = next(m for m in inbox.of_kind("rolled_back") if m["stage"] == "inventory/prod")
        assert "mean response time" in rollback_note["reason"], rollback_note
        assert rollback_note["link"].startswith(f"http://127.0.0.1:{live.ui_port}/"), rollback_note
        # and other tools follow the deployments as CDEvents: every service upgraded in staging, and inventory's
        # prod rolled back to the version it had, each event once
        live.wait_for("the rollback as a CDEvent", lambda: any(
            e["type"] == "dev.cdevents.service.rolledback.0.2.0" and e["subject"] == "inventory"
            for e in inbox.cdevents), 120, instance)
        seen = [(e["type"].split(".")[3], e["subject"], e["data"]["subject"]["content"]["environment"]["id"])
                for e in inbox.cdevents]
        print(f"deployment events: {len(seen)} CDEvents, " + ", ".join(
            f"{kind} {n}" for kind, n in sorted(Counter(kind for kind, _, _ in seen).items())))
        assert len({e["id"] for e in inbox.cdevents}) == len(inbox.cdevents), seen
        assert {s for kind, s, env in seen if kind == "upgraded" and env == "staging"} == set(SERVICES), seen
        back = [e for e in inbox.cdevents if e["type"].endswith("rolledback.0.2.0")]
        assert [(e["subject"], e["data"]["subject"]["content"]["environment"]["id"]) for e in back] == [
            ("inventory", "prod")], seen
        assert approved["inventory"] in back[0]["data"]["subject"]["content"]["artifactId"], back[0]

        # (and no secret reached the instance's storage: event log, runs, compute logs; neither the payments key
        # deployed to every environment, nor the integration's, nor the key the notifications are signed with, nor
        # the provenance key (its PEM, the PEM's base64, its base64 body))
        pem = live.env["SHOP_PROVENANCE_KEY"]
        secrets = [live.env["SHOP_PAYMENTS_API_KEY"].encode(), live.env["SHOP_PAYMENTS_TEST_KEY"].encode(), inbox.key,
                   pem.encode(), base64.b64encode(pem.encode()).rstrip(b"="),
                   "".join(line for line in pem.splitlines() if "-----" not in line).encode()]
        leaked = [str(path) for path in live.home.rglob("*")
                  if path.is_file() and any(secret in path.read_bytes() for secret in secrets)]
        assert not leaked, leaked
        # (nor does the engine show the payments keys: no `inspect` of a container of the fleet holds one; payments
        # reads its key from a file)
        fleet_containers = docker_client.containers.list(all=True, filters={"label": f"{L.FLEET}={live.fleet_name}"})
        shown = [c.name for c in fleet_containers
                 if any(secret in json.dumps(docker_client.api.inspect_container(c.id)).encode()
                        for secret in secrets[:2])]
        assert fleet_containers and not shown, shown
        # every image was signed, and every prod deployment verified its statement before it went out
        for service in SERVICES:
            assert history.latest(instance, image_key(service)).value(M.PROVENANCE), service
            verified = str(history.latest(instance, environment_key(service, "prod")).value(M.PROVENANCE_VERIFIED, ""))
            assert verified.startswith("verified: built from "), (service, verified)

        # Then: only the broken commits' own runs failed (and the e2e runs in dev that tested broken inventory, and
        # the rolled-back canary), no run held two services' stages, no image was built twice
        runs = list(instance.get_runs(limit=500))
        failed = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
        broken_inventory = next(r.digest for r in history.history(instance, image_key("inventory"))
                                if r.git_sha == broken["inventory"])
        tested_in = {r.run_id: r.value(M.DEPLOYED_DIGESTS) for r in history.history(instance, dev_e2e)}
        assert failed and all(r.tags.get(SHA_TAG) in broken.values()
                              or tested_in.get(r.run_id, {}).get("inventory") == broken_inventory
                              or r.run_id == failed_prod.run_id for r in failed), [
            (r.run_id, r.tags.get(SERVICE_TAG), r.tags.get(SHA_TAG), tested_in.get(r.run_id)) for r in failed]
        for run in runs:
            services = {key.path[0] for key in run.asset_selection or ()} - {"fleet"}
            assert len(services) <= 1, (run.run_id, services)
            if services:
                assert run.tags.get(SERVICE_TAG) == services.pop(), run.run_id
        for service in SERVICES:
            builds = [r for r in history.history(instance, image_key(service)) if r.value("built")]
            assert len({r.git_sha for r in builds}) == len(builds), service
        # and every other stage is up to date, as `release-graph why` says
        for service in SERVICES:
            for environment in fleet.environments:
                if (service, environment) != ("inventory", "prod"):
                    assert why(service, environment).state == UP_TO_DATE, why(service, environment)
        # (the status exits 1: a release manager's terminal shows the rolled-back stage)
        status = live.cli("status")
        assert status.returncode == 1 and "inventory/prod: failed" in status.stdout, status.stdout + status.stderr
        # and DORA's figures are read from what the instance recorded: four approved prod changes and the
        # rolled-back canary (failed, not restored yet)
        dora = live.cli("dora", "--days", "7", "--json")
        assert dora.returncode == 0, dora.stdout + dora.stderr
        week = json.loads(dora.stdout)["fleet_figures"]["7"]
        print(f"DORA over the story: {week}")
        assert week["changes"] >= len(SERVICES) + 1 and week["failed_changes"] >= 1, week
        assert week["lead_time_seconds"] and 0 < week["change_failure_rate"] < 1, week
        print(f"runs: {len(runs)} ({len(failed)} failed, each a broken commit's own, a dev e2e run that tested "
              f"one, or the rolled-back canary) for {len(SERVICES)} services")
