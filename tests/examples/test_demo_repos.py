"""The demo fleet's git repositories, made by `python -m release_graph.demo repos` and `commit`.

Given the shop's service folders, `repos` creates one repository per service that the Git sensor can watch;
rerunning it keeps their history; `commit` adds one real commit a user can watch the sensor release.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from release_graph import demo
from release_graph.fleet import load_fleet

SHOP_DIR = Path(__file__).resolve().parents[2] / "examples" / "shop"
SOURCES = SHOP_DIR / "services"
SERVICES = ("gateway", "inventory", "orders", "payments")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def heads(repos: Path) -> dict[str, str]:
    return {service: git(repos / service, "rev-parse", "HEAD") for service in SERVICES}


def commit_count(repo: Path) -> int:
    return int(git(repo, "rev-list", "--count", "HEAD"))


@pytest.fixture(autouse=True)
def demo_dir(monkeypatch):
    """`python -m release_graph.demo` finds the demo through $RELEASE_GRAPH_DEMO_DIR (else ./examples/shop)."""
    monkeypatch.setenv("RELEASE_GRAPH_DEMO_DIR", str(SHOP_DIR))


@pytest.fixture
def repos(tmp_path) -> Path:
    return tmp_path / "repos"


@pytest.fixture
def sources(tmp_path) -> Path:
    """A copy of the shop's service folders that a test may edit."""
    copy = tmp_path / "services"
    shutil.copytree(SOURCES, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_repos_creates_one_repository_per_service_with_one_commit_on_main(repos, capsys):
    assert demo.main(["repos", "--repos-dir", str(repos)]) == 0

    out = capsys.readouterr().out
    for service in SERVICES:
        repo = repos / service
        assert f"{service}: created {repo} (main at " in out
        assert git(repo, "symbolic-ref", "--short", "HEAD") == "main"
        assert git(repo, "log", "--format=%an <%ae> | %cn | %s") == (
            f"Shop Demo <demo@shop.example> | Shop Demo | Import {service} from examples/shop/services/{service}"
        )
        assert git(repo, "status", "--porcelain") == ""
        tracked = set(git(repo, "ls-files").splitlines())
        assert {"Dockerfile", "VERSION", "app.py", "shopkit.py", "tests/junit_runner.py"} <= tracked
        assert not any("__pycache__" in path for path in tracked)
        assert (repo / "app.py").read_bytes() == (SOURCES / service / "app.py").read_bytes()


def test_the_demo_manifest_is_valid_against_the_repositories_it_names(tmp_path):
    shutil.copy(SHOP_DIR / "fleet.yaml", tmp_path / "fleet.yaml")
    shutil.copy(SHOP_DIR / "waivers.yaml", tmp_path / "waivers.yaml")
    shutil.copytree(SHOP_DIR / "e2e", tmp_path / "e2e")
    shutil.copytree(SHOP_DIR / "osv", tmp_path / "osv")  # the offline vulnerability database
    demo.sync_repos(SOURCES, tmp_path / ".repos")

    fleet = load_fleet(tmp_path / "fleet.yaml")  # also checks each repo's Dockerfile and build context

    assert (fleet.name, fleet.registry) == ("shop", "127.0.0.1:5000/shop")
    assert set(fleet.services) == set(SERVICES) == set(demo.service_sources(SOURCES))
    assert {name: set(s.hard_deps) for name, s in fleet.services.items()} == {
        "gateway": {"orders"}, "orders": {"inventory", "payments"}, "inventory": set(), "payments": set(),
    }
    for service in fleet.services.values():
        assert service.repo_url == str(tmp_path / ".repos" / service.name)
        assert (service.port, service.health, service.language, service.build.test_target,
                service.build.integration_target) == (8080, "/healthz", "python", "test", "integration")
        # Every hard edge is a URL the service's code calls, set to the service name on the fleet's network.
        assert {f"{dep.upper()}_URL": f"http://{dep}:8080" for dep in service.hard_deps} == dict(service.env)
    assert list(fleet.environments) == ["dev", "staging", "prod"]
    assert [env.requires_approval for env in fleet.environments.values()] == [False, False, True]
    assert fleet.e2e is not None and fleet.e2e.context == "e2e"
    assert all(env.secrets["payments"]["PAYMENTS_API_KEY"].source == "env" for env in fleet.environments.values())


def test_rerunning_repos_leaves_every_repository_as_it_is(repos, capsys):
    demo.sync_repos(SOURCES, repos)
    before = heads(repos)

    assert demo.main(["repos", "--repos-dir", str(repos)]) == 0

    assert heads(repos) == before
    assert all(commit_count(repos / service) == 1 for service in SERVICES)
    assert capsys.readouterr().out.count(": unchanged ") == len(SERVICES)


def test_commit_bumps_the_version_in_one_new_commit(repos, capsys):
    demo.sync_repos(SOURCES, repos)
    before = heads(repos)

    assert demo.main(["commit", "payments", "--repos-dir", str(repos)]) == 0

    repo = repos / "payments"
    head = git(repo, "rev-parse", "HEAD")
    assert git(repo, "rev-parse", "HEAD~1") == before["payments"]
    assert git(repo, "log", "-1", "--format=%an <%ae> | %s") == "Shop Demo <demo@shop.example> | Bump payments to 1.0.1"
    assert git(repo, "show", "--name-only", "--format=", "HEAD") == "VERSION"
    assert (repo / "VERSION").read_text() == "1.0.1\n"
    assert git(repo, "status", "--porcelain") == ""
    assert f'payments: committed {head[:12]} "Bump payments to 1.0.1" on main' in capsys.readouterr().out
    assert {s: h for s, h in heads(repos).items() if s != "payments"} == {
        s: h for s, h in before.items() if s != "payments"}


def test_commit_takes_a_message(repos):
    demo.sync_repos(SOURCES, repos)

    result = demo.commit_change("orders", repos, message="Faster order lookups")

    assert git(repos / "orders", "log", "-1", "--format=%s") == "Faster order lookups"
    assert (result.version, result.sha) == ("1.0.1", git(repos / "orders", "rev-parse", "HEAD"))


def test_rerunning_repos_after_a_demo_commit_keeps_that_commit(repos):
    demo.sync_repos(SOURCES, repos)
    demo.commit_change("orders", repos)
    before = heads(repos)

    results = demo.sync_repos(SOURCES, repos)

    assert heads(repos) == before
    assert {r.action for r in results} == {"unchanged"}
    assert (repos / "orders" / "VERSION").read_text() == "1.0.1\n"


def test_a_changed_source_folder_is_merged_into_main_keeping_demo_commits(repos, sources):
    demo.sync_repos(sources, repos)
    demo.commit_change("orders", repos)
    with (sources / "orders" / "app.py").open("a") as app:
        app.write("# a change made in the source folder\n")

    results = {r.service: r for r in demo.sync_repos(sources, repos)}

    repo = repos / "orders"
    assert results["orders"].action == "updated"
    assert results["orders"].head == git(repo, "rev-parse", "HEAD")
    assert (repo / "app.py").read_text().endswith("# a change made in the source folder\n")
    assert (repo / "VERSION").read_text() == "1.0.1\n"  # the demo commit survived
    assert git(repo, "log", "--first-parent", "--format=%s").splitlines() == [
        "Merge updated examples/shop/services/orders",
        "Bump orders to 1.0.1",
        "Import orders from examples/shop/services/orders",
    ]
    assert git(repo, "log", "-1", "--format=%s", "HEAD^2") == "Update orders from examples/shop/services/orders"
    assert {r.action for name, r in results.items() if name != "orders"} == {"unchanged"}
    assert demo.sync_repos(sources, repos)[SERVICES.index("orders")].action == "unchanged"


def test_a_source_change_without_demo_commits_fast_forwards_main(repos, sources):
    demo.sync_repos(sources, repos)
    (sources / "inventory" / "NOTES.md").write_text("stock is counted in units\n")

    demo.sync_repos(sources, repos)

    repo = repos / "inventory"
    assert commit_count(repo) == 2
    assert git(repo, "log", "-1", "--format=%s") == "Update inventory from examples/shop/services/inventory"
    assert (repo / "NOTES.md").is_file()


def test_a_source_change_that_conflicts_with_a_demo_commit_leaves_the_repository_as_it_was(repos, sources):
    demo.sync_repos(sources, repos)
    demo.commit_change("orders", repos)
    before = git(repos / "orders", "rev-parse", "HEAD")
    (sources / "orders" / "VERSION").write_text("2.0.0\n")

    with pytest.raises(demo.DemoError) as caught:
        demo.sync_repos(sources, repos)

    assert str(caught.value).startswith(f"{repos / 'orders'}: `git merge")
    assert "CONFLICT (content): Merge conflict in VERSION" in str(caught.value)
    assert "rerun with --force" in str(caught.value)
    assert git(repos / "orders", "rev-parse", "HEAD") == before
    assert git(repos / "orders", "status", "--porcelain") == ""
    # The failed import is not recorded, so the next run tries again instead of calling it unchanged.
    with pytest.raises(demo.DemoError):
        demo.sync_repos(sources, repos)


def test_force_recreates_every_repository_from_its_source_folder(repos, capsys):
    demo.sync_repos(SOURCES, repos)
    demo.commit_change("gateway", repos)

    assert demo.main(["repos", "--force", "--repos-dir", str(repos)]) == 0

    assert all(commit_count(repos / service) == 1 for service in SERVICES)
    assert (repos / "gateway" / "VERSION").read_text() == "1.0.0\n"
    assert capsys.readouterr().out.count(": recreated ") == len(SERVICES)


def test_each_breakage_is_committed_and_repair_removes_them_all(repos):
    demo.sync_repos(SOURCES, repos)
    repo = repos / "inventory"

    broken = [demo.commit_change("inventory", repos, breakage=kind) for kind in demo.BREAK_KINDS]

    assert [r.changed for r in broken] == [
        ("VERSION", "tests/unit/test_demo_breakage.py"),
        ("VERSION", "tests/integration/test_demo_breakage.py"),
        ("VERSION", "debug_shell.py"),
        ("VERSION", "Dockerfile"),
        ("VERSION", "Dockerfile"),
        ("VERSION", "app.py"),
    ]
    assert broken[3].message == "Bump inventory to 1.0.4 and break its health (demo)"
    assert "\nENV HEALTHZ_STATUS=500\n" in (repo / "Dockerfile").read_text()
    # the slow breakage: every API request 400 ms slower, which no test notices and a canary analysis does
    assert (repo / "Dockerfile").read_text().endswith("\nENV EXTRA_LATENCY_MS=400\n")
    # the e2e breakage: inventory's reservation ids, 16 hex digits where the shop's e2e test expects 12
    assert 'reservation_id = f"res-{secrets.token_hex(8)}"' in (repo / "app.py").read_text()
    assert git(repo, "status", "--porcelain") == ""

    repaired = demo.commit_change("inventory", repos, repair=True)

    assert set(repaired.changed) == {"VERSION", "tests/unit/test_demo_breakage.py",
                                     "tests/integration/test_demo_breakage.py", "debug_shell.py", "Dockerfile",
                                     "app.py"}
    assert (repo / "Dockerfile").read_bytes() == (SOURCES / "inventory" / "Dockerfile").read_bytes()
    assert (repo / "app.py").read_bytes() == (SOURCES / "inventory" / "app.py").read_bytes()
    assert set(git(repo, "ls-files").splitlines()) == set(git(repos / "inventory", "ls-tree", "-r", "--name-only",
                                                              "refs/demo/source").splitlines())
    assert git(repo, "status", "--porcelain") == ""


# --- bad input: every case names what is wrong and where ---------------------------------------------


def test_commit_before_repos_exist_says_to_create_them(repos, capsys):
    assert demo.main(["commit", "orders", "--repos-dir", str(repos)]) == 2

    assert capsys.readouterr().err == (
        f"demo: error: {repos}: no demo repositories yet; run `python -m release_graph.demo repos` first\n"
    )


def test_commit_to_an_unknown_service_names_it_and_the_known_ones(repos):
    demo.sync_repos(SOURCES, repos)

    with pytest.raises(demo.DemoError) as caught:
        demo.commit_change("shipping", repos)

    assert str(caught.value) == (
        f"service 'shipping': no demo repository {repos / 'shipping'} (services: gateway, inventory, orders, payments)"
    )


def test_commit_refuses_a_version_file_it_cannot_bump(repos):
    demo.sync_repos(SOURCES, repos)
    (repos / "orders" / "VERSION").write_text("one\n")

    with pytest.raises(demo.DemoError) as caught:
        demo.commit_change("orders", repos)

    version_file = repos / "orders" / "VERSION"
    assert str(caught.value) == f"{version_file}: service 'orders': expected a version like 1.2.3, got 'one'"
    assert commit_count(repos / "orders") == 1


def test_commit_refuses_an_unknown_breakage(repos, capsys):
    demo.sync_repos(SOURCES, repos)

    with pytest.raises(demo.DemoError, match=r"^--break: unknown kind 'network' \(kinds: unit-test, "):
        demo.commit_change("orders", repos, breakage="network")
    with pytest.raises(SystemExit) as exited:
        demo.main(["commit", "orders", "--break", "network", "--repos-dir", str(repos)])
    assert exited.value.code == 2
    assert "argument --break: invalid choice: 'network'" in capsys.readouterr().err


def test_an_e2e_breakage_is_refused_for_a_service_that_has_none(repos):
    demo.sync_repos(SOURCES, repos)
    head = git(repos / "gateway", "rev-parse", "HEAD")

    with pytest.raises(demo.DemoError, match=r"^--break e2e: service 'gateway' has no such breakage "
                                             r"\(services with one: inventory\)$"):
        demo.commit_change("gateway", repos, breakage="e2e")

    assert git(repos / "gateway", "rev-parse", "HEAD") == head
    assert git(repos / "gateway", "status", "--porcelain") == ""


def test_commit_refuses_a_branch_other_than_main(repos):
    demo.sync_repos(SOURCES, repos)
    git(repos / "orders", "checkout", "-q", "-b", "feature")

    with pytest.raises(demo.DemoError, match="branch 'feature' is checked out; the demo commits on 'main'"):
        demo.commit_change("orders", repos)


def test_repos_refuses_a_folder_in_the_way_that_is_not_a_git_repository(repos):
    (repos / "orders").mkdir(parents=True)
    (repos / "orders" / "notes.txt").write_text("mine\n")

    with pytest.raises(demo.DemoError) as caught:
        demo.sync_repos(SOURCES, repos)

    assert str(caught.value) == (
        f"{repos / 'orders'}: exists but is not a git repository; remove it or rerun with --force"
    )
    assert (repos / "orders" / "notes.txt").read_text() == "mine\n"


def test_repos_refuses_a_git_repository_it_did_not_create(repos):
    (repos / "orders").mkdir(parents=True)
    git(repos / "orders", "init", "-q")

    with pytest.raises(demo.DemoError) as caught:
        demo.sync_repos(SOURCES, repos)

    assert str(caught.value) == (
        f"{repos / 'orders'}: not created by release_graph.demo (no refs/demo/source); rerun with --force"
    )


def test_repos_refuses_a_missing_source_folder(tmp_path, capsys):
    missing = tmp_path / "nowhere"

    assert demo.main(["repos", "--sources", str(missing), "--repos-dir", str(tmp_path / "repos")]) == 2

    assert capsys.readouterr().err == f"demo: error: {missing}: the demo services' source folder does not exist\n"


def test_a_service_folder_without_a_dockerfile_is_refused_naming_it(tmp_path, repos):
    source = tmp_path / "shipping"
    source.mkdir()

    with pytest.raises(demo.DemoError) as caught:
        demo.sync_repo("shipping", source, repos / "shipping")

    assert str(caught.value) == f"{source}: service 'shipping': not a demo service source folder (no Dockerfile)"
    assert not (repos / "shipping").exists()
