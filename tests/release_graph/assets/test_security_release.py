"""Security gates in the release, for real: semgrep and bandit on the released commit, waivers with an owner and
an expiry, a CycloneDX SBOM read out of the pushed image, hadolint and checkov on its Dockerfile, the ECR scan
(moto_server's canned HIGH finding) judged by each environment's threshold in its deploy step, and a digest
pushed by hand that is never promoted."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from release_graph.security import tools

INVENTORY_IMAGE = dg.AssetKey(["inventory", "image"])
OWNED = {"inventory": "    owners: [team:warehouse]"}
NO_WAIVERS = "waivers: []\n"
SHELL_RULES = ("rg-python-subprocess-shell-true", "B602")  # semgrep's and bandit's id for the same line


def key(*path: str) -> dg.AssetKey:
    return dg.AssetKey(list(path))


def waivers(expires: str, rules=SHELL_RULES) -> str:
    entries = "".join(
        f"  - rule: {rule}\n"
        "    service: inventory\n"
        "    location: 'debug_shell.py:*'\n"
        "    owner: team:warehouse\n"
        "    reason: debug helper only reachable from the admin port; removal tracked in WH-12\n"
        f"    expires: {expires}\n"
        for rule in rules
    )
    return "waivers:\n" + entries


def release_head(world):
    """The Git sensor's tick and the image run it requests."""
    (request,) = world.tick("git_commits").run_requests
    return request, world.execute(request)


def run_checks(world, asset: dg.AssetKey, *names: str):
    """Run only these checks of `asset` again (what "Execute checks" does in the UI)."""
    job = world.defs.resolve_implicit_global_asset_job_def()
    subset = job.get_subset(asset_selection=set(),
                            asset_check_selection={dg.AssetCheckKey(asset, name) for name in names})
    return subset.execute_in_process(instance=world.instance, raise_on_error=False)


def table_rows(evaluation, name: str) -> list[dict]:
    return [dict(record.data) for record in evaluation.metadata[name].records]


def failure_texts(world, runs) -> str:
    return "\n".join(text for _, run in runs for text in world.failures(run).values())


@pytest.mark.engine
def test_a_shell_injection_fails_sast_until_a_waiver_accepts_it_and_an_expired_or_broken_waiver_file_errors(
    release_world_factory, docker_client, busybox_as
):
    world = release_world_factory(["inventory"], integration=False, extra_services=OWNED,
                                  files={"waivers.yaml": NO_WAIVERS})
    world.automate()
    # Given inventory released and running in dev
    _, run = release_head(world)
    assert run.success, world.failures(run)
    first = world.latest(INVENTORY_IMAGE)
    clean = world.check_evaluation(INVENTORY_IMAGE, "sast")
    assert clean.passed and clean.metadata["tools"].value == "semgrep, bandit"
    assert clean.metadata["digest"].value == first.digest and clean.metadata["total_findings"].value == 0
    # its SBOM was read out of the pushed image and stored with the run's reports
    sbom = world.check_evaluation(INVENTORY_IMAGE, "sbom")
    path = Path(sbom.metadata["sbom"].value)
    assert path == Path(world.instance.root_directory) / "reports" / run.run_id / "inventory-sbom.cdx.json"
    assert sbom.metadata["sbom_sha256"].value == hashlib.sha256(path.read_bytes()).hexdigest()
    document = json.loads(path.read_text())
    assert document["bomFormat"] == "CycloneDX" and document["metadata"]["component"]["version"] == first.digest
    names = {c["name"]: c["purl"] for c in document["components"]}
    # the Python runtime is Debian's python3; the demo services copy their modules into /app and install no
    # distribution of their own, so the Python distributions found are the ones Debian ships (pip, ...)
    assert names["python3"].startswith("pkg:deb/debian/python3@3.11")
    assert sbom.metadata["python_runtime"].value.startswith("python3 3.11")
    pypi = sorted(n for n, purl in names.items() if purl.startswith("pkg:pypi/"))
    assert pypi and "pip" in pypi and sbom.metadata["sbom_pypi_packages"].value == len(pypi)
    assert not any(n == "inventory" for n in pypi)
    world.automate()
    deployed = world.latest(key("inventory", "dev"))
    assert deployed.digest == first.digest
    assert deployed.value("iam_policy") == {"Version": "2012-10-17", "Statement": []}
    assert deployed.value("security_gate") == "no scan_threshold in this environment"
    # the docker target runs it immutable: the demo image's USER (not root), a read-only root filesystem with
    # in-memory scratch folders, every capability dropped, no privilege escalation
    hardening = world.check_evaluation(key("inventory", "dev"), "hardening")
    assert hardening.passed is True and hardening.severity == dg.AssetCheckSeverity.WARN
    assert hardening.description == "non-root, read-only, no capabilities, no privilege escalation"
    assert hardening.metadata["user"].value == "10001"
    assert hardening.metadata["read_only_root_filesystem"].value is True
    assert hardening.metadata["no_new_privileges"].value is True
    assert hardening.metadata["added_capabilities"].value == "none"
    assert "/tmp" in hardening.metadata["writable_folders"].value
    assert table_rows(hardening, "findings") == []

    # A digest pushed to the registry by hand is never promoted
    repository = world.fleet.services["inventory"].image_repository(world.fleet)
    busybox_as(repository, "by-hand")
    for line in docker_client.images.push(repository, "by-hand", stream=True, decode=True):
        assert "error" not in line, line
    by_hand = world.registry.manifest_digest(repository, "by-hand")
    refused = world.materialize([key("inventory", "dev")],
                                run_config={"ops": {"inventory__dev": {"config": {"digest": by_hand}}}})
    assert not refused.success
    assert f"digest {by_hand} never passed inventory/image: refused" in world.failures(refused)["inventory__dev"]
    assert world.latest(key("inventory", "dev")).digest == first.digest

    # When a commit adds a shell=True call
    commit = world.commit("inventory", breakage="sast")
    _, run = release_head(world)
    # then the blocking SAST check fails with both tools' findings at the file and line
    assert not run.success
    image = world.latest(INVENTORY_IMAGE)
    assert image.git_sha == commit.sha
    failed = world.check_evaluation(INVENTORY_IMAGE, "sast")
    assert failed.passed is False and failed.metadata["digest"].value == image.digest
    rows = table_rows(failed, "findings")
    assert {(r["rule"], r["location"], r["status"]) for r in rows} >= {
        ("rg-python-subprocess-shell-true", "debug_shell.py:7", "blocking"), ("B602", "debug_shell.py:7", "blocking")}
    assert failed.metadata["high_findings"].value >= 2 and failed.metadata["blocking_findings"].value >= 2
    # and dev keeps the previous digest
    world.automate()
    assert world.latest(key("inventory", "dev")).digest == first.digest

    # An expired waiver is an error, never a silent pass
    waivers_file = world.root / "waivers.yaml"
    waivers_file.write_text(waivers("2020-01-31"))
    rerun = run_checks(world, INVENTORY_IMAGE, "sast")
    assert not rerun.success and world.check_evaluation(INVENTORY_IMAGE, "sast") is None
    text = world.failures(rerun)["inventory__image_sast"]
    assert "expired waivers for service 'inventory'" in text
    assert "waivers.yaml:2: rg-python-subprocess-shell-true for service 'inventory' (owner team:warehouse) " \
           "expired on 2020-01-31" in text
    world.automate()
    assert world.latest(key("inventory", "dev")).digest == first.digest

    # So is a waivers file that cannot be read as waivers
    waivers_file.write_text("waivers:\n  - rule: B602\n    owner: someone\n    expires: soon\n")
    rerun = run_checks(world, INVENTORY_IMAGE, "sast")
    assert not rerun.success and world.check_evaluation(INVENTORY_IMAGE, "sast") is None
    text = world.failures(rerun)["inventory__image_sast"]
    assert "invalid waivers file" in text and "waivers.yaml:2: waiver #1 (B602): missing `reason`" in text
    assert "waivers.yaml:3: waiver #1, field `owner`: 'someone' is neither an email address nor team:<name>" in text
    world.automate()
    assert world.latest(key("inventory", "dev")).digest == first.digest

    # With valid waivers the check passes, lists each waiver with its owner and expiry, and the digest moves on
    waivers_file.write_text(waivers("2099-12-31"))
    assert run_checks(world, INVENTORY_IMAGE, "sast").success
    waived = world.check_evaluation(INVENTORY_IMAGE, "sast")
    assert waived.passed and waived.metadata["blocking_findings"].value == 0
    used = table_rows(waived, "waivers_used")
    assert {(u["rule"], u["finding"], u["owner"], u["expires"]) for u in used} == {
        (rule, f"{rule} at debug_shell.py:7", "team:warehouse", "2099-12-31") for rule in SHELL_RULES}
    statuses = {r["rule"]: r["status"] for r in table_rows(waived, "findings")}
    assert {statuses.pop(rule) for rule in SHELL_RULES} == {"waived by team:warehouse until 2099-12-31"}
    assert set(statuses.values()) <= {"below threshold"}  # e.g. bandit's LOW B404 for `import subprocess`
    world.automate()
    assert world.latest(key("inventory", "dev")).digest == image.digest


ECR_ENVIRONMENTS = """\
  staging: {target: docker, scan_threshold: critical}
  prod: {target: docker, scan_threshold: high}
"""


@pytest.fixture
def aws_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.mark.engine
def test_the_ecr_scan_lets_an_image_into_staging_and_prods_deploy_step_refuses_its_high_finding(
    release_world_factory, moto_server, aws_credentials
):
    import boto3

    world = release_world_factory(
        ["inventory"], integration=False, environments=ECR_ENVIRONMENTS, extra_services=OWNED,
        files={"waivers.yaml": NO_WAIVERS},
        extra_top=f"security:\n  scanner: ecr\n  ecr: {{region: us-east-1, endpoint_url: '{moto_server}'}}\n",
    )
    ecr = boto3.client("ecr", region_name="us-east-1", endpoint_url=moto_server)
    try:
        world.automate()
        # Given an image built from inventory's head, whose manifest the ECR backend puts into ECR and scans
        _, run = release_head(world)
        assert run.success, world.failures(run)
        image = world.latest(INVENTORY_IMAGE)
        scan = world.check_evaluation(INVENTORY_IMAGE, "vulnerability_scan")
        assert scan.metadata["digest"].value == image.digest and scan.metadata["scanner"].value == "ecr"
        assert scan.metadata["high_findings"].value == 1 and scan.metadata["critical_findings"].value == 0
        assert [(r["rule"], r["severity"], r["location"]) for r in table_rows(scan, "top_findings")] == [
            ("CVE-9999-9999", "HIGH", "moto_fake@9.9.9")]
        verdicts = {r["environment"]: r["verdict"] for r in table_rows(scan, "environments")}
        assert verdicts == {"staging": "passes", "prod": "blocked"}
        assert scan.passed is False and scan.severity == dg.AssetCheckSeverity.WARN  # evidence, not a gate
        ecr_image = ecr.describe_images(repositoryName=f"{world.fleet.name}/inventory")["imageDetails"][0]
        assert ecr_image["imageDigest"] == image.digest

        # When automation promotes it
        runs = world.automate()
        # then staging ("no CRITICAL") takes it and records the gate ...
        staging = world.latest(key("inventory", "staging"))
        assert staging.digest == image.digest
        assert staging.value("scan_threshold") == "CRITICAL" and staging.value("scan_blocking_findings") == 0
        assert staging.value("security_gate").startswith("passed: ")
        assert staging.value("iam_policy") == {"Version": "2012-10-17", "Statement": []}  # no AWS secrets
        # ... and prod's deploy step ("HIGH" or worse) refuses before anything runs there
        refusal = failure_texts(world, runs)
        assert "service 'inventory', environment 'prod'" in refusal
        assert f"image {image.digest} is above the scan threshold 'HIGH' (blocks CRITICAL, HIGH)" in refusal
        assert "CVE-9999-9999 (HIGH) at moto_fake@9.9.9" in refusal
        assert world.latest(key("inventory", "prod")) is None
        assert world.target().running(world.fleet.name, "prod", "inventory") is None

        # An expired waiver for the finding is no way round the gate: the step refuses, naming it
        waivers_file = world.root / "waivers.yaml"
        waivers_file.write_text(waivers("2020-01-31", rules=["CVE-9999-9999"]).replace(
            "'debug_shell.py:*'", "'moto_fake@*'"))
        refused = world.materialize([key("inventory", "prod")])
        assert not refused.success
        text = world.failures(refused)["inventory__prod"]
        assert "service 'inventory', environment 'prod': the vulnerability gate cannot be applied" in text
        assert "CVE-9999-9999 for service 'inventory' (owner team:warehouse) expired on 2020-01-31" in text
        assert world.latest(key("inventory", "prod")) is None
        # With a valid waiver (an owner, a reason, an expiry), prod takes it and records the waiver
        waivers_file.write_text(waivers_file.read_text().replace("2020-01-31", "2099-12-31"))
        promoted = world.materialize([key("inventory", "prod")])
        assert promoted.success, world.failures(promoted)
        prod = world.latest(key("inventory", "prod"))
        assert prod.digest == image.digest and prod.value("scan_total_findings") == 1
        (used,) = [dict(r.data) for r in prod.metadata["scan_waivers_used"].records]
        assert used["rule"] == "CVE-9999-9999" and used["owner"] == "team:warehouse"
        assert used["expires"] == "2099-12-31"
    finally:
        ecr.delete_repository(repositoryName=f"{world.fleet.name}/inventory", force=True)


SHOP = Path(__file__).resolve().parents[3] / "examples" / "shop"


def demo_osv_files() -> dict[str, str]:
    """The demo's offline OSV records, to lay beside a test fleet's manifest."""
    return {f"osv/PyPI/{path.name}": path.read_text() for path in sorted((SHOP / "osv" / "PyPI").glob("*.json"))}


@pytest.mark.engine
def test_the_osv_scan_of_a_built_image_shows_the_demo_advisories_and_prod_takes_them_only_waived(
    release_world_factory,
):
    # Given inventory, built on the demo's base image, and the demo's OSV records; no waivers yet
    world = release_world_factory(
        ["inventory"], integration=False, environments=ECR_ENVIRONMENTS, extra_services=OWNED,
        files={"waivers.yaml": NO_WAIVERS, **demo_osv_files()},
        extra_top="security:\n  scanner: osv\n  osv: {database: osv}\n",
    )
    world.automate()
    _, run = release_head(world)
    assert run.success, world.failures(run)
    image = world.latest(INVENTORY_IMAGE)
    # then its scan found the published advisories of the image's setuptools and pip, offline
    scan = world.check_evaluation(INVENTORY_IMAGE, "vulnerability_scan")
    assert scan.metadata["digest"].value == image.digest and scan.metadata["scanner"].value == "osv"
    found = [(r["rule"], r["severity"], r["location"], r["fixed_version"]) for r in table_rows(scan, "top_findings")]
    assert found == [
        ("GHSA-5rjg-fvgr-3xxf", "HIGH", "setuptools@66.1.1", "78.1.1"),
        ("GHSA-cx63-2mw6-8hw5", "HIGH", "setuptools@66.1.1", "70.0.0"),
        ("GHSA-mq26-g339-26xf", "LOW", "pip@23.0.1", "23.3"),
    ]
    details = scan.metadata["scan_details"].value
    assert details["osv_records"] == "4" and Path(details["report"]).is_file() and Path(details["sbom"]).is_file()
    print(f"\nosv scan of inventory's image: {scan.metadata['duration_seconds'].value} s "
          f"(SBOM {details['sbom_seconds']} s, matching {details['match_seconds']} s)")
    # and prod's threshold (HIGH) would refuse it while staging's (CRITICAL) takes it
    assert {r["environment"]: r["verdict"] for r in table_rows(scan, "environments")} == {
        "staging": "passes", "prod": "blocked"}

    # When the demo's waivers (an owner, a reason, an expiry) accept the two setuptools advisories (owned here by
    # this fleet's one team)
    (world.root / "waivers.yaml").write_text(
        (SHOP / "waivers.yaml").read_text().replace("team:storefront", "team:warehouse"))
    rescan = run_checks(world, INVENTORY_IMAGE, "vulnerability_scan")
    assert rescan.success
    scan = world.check_evaluation(INVENTORY_IMAGE, "vulnerability_scan")
    # then every environment passes, prod on the strength of the waivers it names
    assert scan.passed
    rows = {r["environment"]: (r["verdict"], str(r["waived"]), r["without_waivers"])
            for r in table_rows(scan, "environments")}
    assert rows == {"staging": ("passes", "2", "passes"), "prod": ("passes", "2", "blocked (2)")}
    assert {(r["rule"], r["owner"], r["expires"]) for r in table_rows(scan, "waivers_used")} == {
        ("GHSA-cx63-2mw6-8hw5", "team:warehouse", "2027-06-30"),
        ("GHSA-5rjg-fvgr-3xxf", "team:warehouse", "2027-06-30"),
    }


@pytest.mark.engine
def test_a_scanner_that_is_not_installed_errors_the_scan_and_nothing_is_promoted(release_world_factory, monkeypatch):
    # Given a host without trivy (whatever else is on PATH stays there: git, the engine's tools)
    monkeypatch.setenv("PATH", os.pathsep.join(
        folder for folder in os.environ["PATH"].split(os.pathsep) if not (Path(folder) / "trivy").exists()))
    world = release_world_factory(["inventory"], integration=False,
                                  environments="  dev: {target: docker, scan_threshold: critical}\n",
                                  extra_top="security:\n  scanner: trivy\n")
    world.automate()
    _, run = release_head(world)
    # then the scan could not run: an error naming the tool, never a clean result
    assert not run.success
    assert world.check_evaluation(INVENTORY_IMAGE, "vulnerability_scan") is None
    text = world.failures(run)["inventory__image_vulnerability_scan"]
    assert "the vulnerability scan (trivy) of sha256:" in text and "trivy is not installed (no `trivy` on PATH)" in text
    assert world.check_evaluation(INVENTORY_IMAGE, "sast").passed  # the other evidence is there
    # and the deploy step refuses an unscanned digest
    runs = world.automate()
    refusal = failure_texts(world, runs)
    digest = world.latest(INVENTORY_IMAGE).digest
    assert f"service 'inventory', environment 'dev': no vulnerability scan of {digest} is recorded" in refusal
    assert world.latest(key("inventory", "dev")) is None
    assert world.target().running(world.fleet.name, "dev", "inventory") is None


@pytest.mark.engine
def test_a_dockerfile_rule_the_policy_lists_blocks_the_release(release_world_factory):
    world = release_world_factory(["inventory"], integration=False,
                                  extra_top="security:\n  compliance_blocking: [DL3003]\n")
    world.automate()
    hadolint_runs = tools.RUNS["hadolint"]
    _, run = release_head(world)
    assert run.success, world.failures(run)
    clean = world.check_evaluation(INVENTORY_IMAGE, "compliance")
    assert clean.passed and clean.metadata["blocking_rules"].value == "DL3003"
    assert clean.metadata["tools"].value == "hadolint, checkov"
    # hadolint ran once for the image, and both checks that read it used that one report
    assert world.check_evaluation(INVENTORY_IMAGE, "dockerfile_lint").passed
    assert tools.RUNS["hadolint"] - hadolint_runs == 1
    world.automate()
    first = world.latest(key("inventory", "dev"))
    assert first is not None
    # When a commit changes directory with `cd` in a RUN line (hadolint DL3003)
    repo = world.repos / "inventory"
    dockerfile = repo / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "RUN cd /tmp && true\n")
    line = len(dockerfile.read_text().splitlines())
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "commit", "-qam", "cd in a RUN line"], check=True)
    _, run = release_head(world)
    # then the compliance check blocks, naming the rule at its line, and dev keeps the previous digest
    assert not run.success
    failed = world.check_evaluation(INVENTORY_IMAGE, "compliance")
    assert failed.passed is False and failed.severity == dg.AssetCheckSeverity.ERROR
    blocking = [r for r in table_rows(failed, "findings") if r["status"] == "blocking"]
    assert [(r["rule"], r["location"], r["tool"]) for r in blocking] == [("DL3003", f"Dockerfile:{line}", "hadolint")]
    lint = world.check_evaluation(INVENTORY_IMAGE, "dockerfile_lint")
    assert "DL3003" in [r["rule"] for r in table_rows(lint, "findings")]
    assert tools.RUNS["hadolint"] - hadolint_runs == 2  # once per commit
    world.automate()
    assert world.latest(key("inventory", "dev")).digest == first.digest
