"""GitResource against real repositories: local paths and a real `git daemon` on 127.0.0.1."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import tarfile
import time
from pathlib import Path

import pytest

from resources.git import GitError, GitResource, mirror_name

README = "# orders\n"


@pytest.fixture
def git(tmp_path: Path) -> GitResource:
    return GitResource(mirror_dir=str(tmp_path / "mirrors"))


# --- construction ------------------------------------------------------------------------------------------


def test_constructing_the_resource_touches_no_disk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RELEASE_GRAPH_STATE", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    resource = GitResource()
    assert list(tmp_path.iterdir()) == []
    assert resource.mirror_root() == tmp_path / ".dagster_home" / "git-mirrors"
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert resource.mirror_root() == tmp_path / "home" / "git-mirrors"
    monkeypatch.setenv("RELEASE_GRAPH_STATE", str(tmp_path / "state"))
    assert resource.mirror_root() == tmp_path / "state" / "git-mirrors"
    assert GitResource(mirror_dir=str(tmp_path / "m")).mirror_root() == tmp_path / "m"
    assert list(tmp_path.iterdir()) == []


# --- branch heads ------------------------------------------------------------------------------------------


def test_given_a_local_and_a_served_repo_when_asking_for_heads_then_each_branch_gets_its_sha(
    git, new_repo, git_daemon
):
    orders = new_repo("orders")
    orders_head = orders.commit("orders: first", {"README.md": README})
    payments = new_repo("payments", base=git_daemon.base)
    payments_main = payments.commit("payments: first", {"app.py": "print(1)\n"})
    payments.git("branch", "release")
    payments_release = payments.head("release")
    payments_main = payments.commit("payments: second", {"app.py": "print(2)\n"})

    heads = git.remote_heads([
        (str(orders.path), "main"),
        (git_daemon.url("payments"), "main"),
        (git_daemon.url("payments"), "release"),
    ])

    assert heads[(str(orders.path), "main")].sha == orders_head
    assert heads[(git_daemon.url("payments"), "main")].sha == payments_main
    assert heads[(git_daemon.url("payments"), "release")].sha == payments_release
    assert all(h.ok and h.error is None for h in heads.values())
    # Two branches of one repo cost one ls-remote, not two.
    assert git_daemon.requests_for("payments") == 1


def test_missing_branch_deleted_repo_and_stopped_daemon_are_told_apart(git, new_repo, git_daemon, tmp_path):
    served = new_repo("inventory", base=git_daemon.base)
    served.commit("first", {"README.md": "x\n"})
    gone = new_repo("legacy", base=git_daemon.base)
    gone.commit("first", {"README.md": "x\n"})
    shutil.rmtree(gone.path)
    local_missing = str(tmp_path / "repos" / "never-created")

    heads = git.remote_heads([
        (git_daemon.url("inventory"), "develop"),
        (git_daemon.url("legacy"), "main"),
        (local_missing, "main"),
    ])
    branch = heads[(git_daemon.url("inventory"), "develop")]
    assert (branch.problem, branch.sha) == ("branch_missing", None)
    assert branch.error == f"branch 'develop' does not exist in {git_daemon.url('inventory')}"
    deleted = heads[(git_daemon.url("legacy"), "main")]
    assert deleted.problem == "repository_missing"
    assert deleted.error.startswith(f"repository {git_daemon.url('legacy')} was not found")
    assert "not exported" in deleted.error
    local = heads[(local_missing, "main")]
    assert local.problem == "repository_missing"
    assert f"'{local_missing}' does not appear to be a git repository" in local.error
    assert "Please make sure" not in local.error  # git's generic advice is dropped

    git_daemon.stop()
    down = git.remote_heads([(git_daemon.url("inventory"), "main")])[(git_daemon.url("inventory"), "main")]
    assert down.problem == "unreachable"
    assert down.error.startswith(f"repository {git_daemon.url('inventory')} is unreachable: ")
    assert "Connection refused" in down.error


def test_a_remote_that_never_answers_times_out_and_remotes_are_queried_in_parallel(tmp_path, silent_port):
    git = GitResource(mirror_dir=str(tmp_path / "mirrors"), timeout_seconds=1, max_parallel=8)
    targets = [(f"git://127.0.0.1:{silent_port}/repo{i}", "main") for i in range(4)]

    started = time.monotonic()
    heads = git.remote_heads(targets)
    elapsed = time.monotonic() - started

    assert {h.problem for h in heads.values()} == {"unreachable"}
    assert heads[targets[0]].error == f"repository {targets[0][0]} is unreachable: no answer within 1 s"
    # Four hanging remotes at 1 s each: in parallel well under the 4 s a serial poll would take.
    assert elapsed < 3, elapsed


def test_a_password_in_the_url_never_reaches_the_message(git, free_port):
    url = f"http://release-bot:s3cr3t-token@127.0.0.1:{free_port}/orders.git"
    head = git.remote_heads([(url, "main")])[(url, "main")]
    assert head.problem == "unreachable"
    assert "s3cr3t-token" not in head.error
    assert f"http://release-bot:***@127.0.0.1:{free_port}/orders.git" in head.error


# --- the mirror --------------------------------------------------------------------------------------------


def test_the_mirror_is_created_once_and_fetched_only_for_a_commit_it_lacks(git, new_repo, git_daemon):
    repo = new_repo("orders", base=git_daemon.base)
    first = repo.commit("first", {"README.md": README})
    url = git_daemon.url("orders")

    path = git.ensure_commit(url, first)
    assert path == Path(git.mirror_dir) / mirror_name(url)
    assert path.name.startswith("orders-") and path.name.endswith(".git")
    assert git_daemon.requests_for("orders") == 1  # the first fetch
    assert git.mirror(url) == path

    # A commit the mirror holds needs no network: it works with the daemon stopped.
    git_daemon.stop()
    assert git.ensure_commit(url, first) == path
    assert git.commit_info(url, first).sha == first
    git_daemon.start()

    second = repo.commit("second", {"README.md": README + "more\n"})
    git.ensure_commit(url, second)
    assert git_daemon.requests_for("orders") == 2
    assert git.has_commit(url, second)


def test_a_commit_on_no_branch_is_an_error_naming_the_repo(git, new_repo):
    repo = new_repo("orders")
    repo.commit("first", {"README.md": README})
    with pytest.raises(GitError) as raised:
        git.ensure_commit(str(repo.path), "0" * 40)
    assert str(raised.value) == f"commit {'0' * 40} is not on any branch or tag of {repo.path}"
    assert raised.value.url == str(repo.path)


def test_an_option_shaped_sha_is_refused_before_git_sees_it(git, new_repo):
    repo = new_repo("orders")
    repo.commit("first", {"README.md": README})
    with pytest.raises(GitError, match="is not a commit id"):
        git.commit_info(str(repo.path), "--output=/tmp/x")


# --- reading commits ---------------------------------------------------------------------------------------


def test_commit_info_reads_author_time_and_the_whole_message(git, new_repo):
    repo = new_repo("orders")
    repo.commit("first", {"README.md": README})
    sha = repo.commit("orders: refuse empty carts\n\nAn empty cart used to create an order.", {"a.py": "1\n"})
    url = str(repo.path)
    git.ensure_commit(url, sha)

    info = git.commit_info(url, sha)

    assert info.sha == sha
    assert info.short_sha == sha[:12]
    assert (info.author_name, info.author_email) == ("Ada Lovelace", "ada@example.com")
    assert info.author == "Ada Lovelace <ada@example.com>"
    assert info.committed_at == "2024-05-01T12:01:00+00:00"
    assert info.message == "orders: refuse empty carts\n\nAn empty cart used to create an order."
    assert info.subject == "orders: refuse empty carts"


def test_commits_between_lists_newest_first_and_only_those_touching_a_path(git, new_repo):
    mono = new_repo("shop")
    base = mono.commit("both", {"services/cart/app.py": "1\n", "services/search/app.py": "1\n"})
    cart1 = mono.commit("cart 1", {"services/cart/app.py": "2\n"})
    search1 = mono.commit("search 1", {"services/search/app.py": "2\n"})
    cart2 = mono.commit("cart 2", {"services/cart/app.py": "3\n"})
    docs = mono.commit("docs", {"README.md": "docs\n"})
    url = str(mono.path)
    git.ensure_commit(url, docs)

    assert git.commits_between(url, base, docs) == [docs, cart2, search1, cart1]
    assert git.commits_between(url, base, docs, "services/cart") == [cart2, cart1]
    assert git.commits_between(url, base, docs, "./services/search/") == [search1]
    assert git.commits_between(url, cart2, docs, "services/cart") == []
    assert git.last_commit_touching(url, docs, "services/cart") == cart2
    assert git.last_commit_touching(url, docs, ".") == docs
    assert git.last_commit_touching(url, docs, "services/nothing-here") is None
    assert git.path_exists(url, docs, "services/cart")
    assert not git.path_exists(url, docs, "services/nothing-here")


def test_release_commit_of_a_monorepo_service_is_the_newest_commit_in_its_folder(git, new_repo, git_daemon):
    mono = new_repo("shop", base=git_daemon.base)
    cart = mono.commit("cart", {"services/cart/app.py": "1\n"})
    mono.commit("docs", {"README.md": "docs\n"})
    url = git_daemon.url("shop")

    assert git.release_commit(url, "main", "services/cart") == cart
    assert git.release_commit(url, "main") == mono.head()
    with pytest.raises(GitError, match=r"path 'services/gone' does not exist at the head"):
        git.release_commit(url, "main", "services/gone")
    with pytest.raises(GitError, match=r"branch 'develop' does not exist"):
        git.release_commit(url, "develop")


def test_a_force_push_makes_the_old_head_no_ancestor(git, new_repo, git_daemon, tmp_path):
    repo = new_repo("orders", base=git_daemon.base)
    first = repo.commit("first", {"README.md": README})
    dropped = repo.commit("oops", {"secrets.txt": "oops\n"})
    url = git_daemon.url("orders")
    git.ensure_commit(url, dropped)
    assert git.is_ancestor(url, first, dropped)
    assert not git.is_ancestor(url, dropped, first)

    repo.rewrite_to(first)
    rewritten = repo.commit("without the secret", {"README.md": README + "fixed\n"})
    git.ensure_commit(url, rewritten)
    # This mirror saw the dropped commit before the force-push ...
    assert git.has_commit(url, dropped)
    assert not git.is_ancestor(url, dropped, rewritten)
    assert git.is_ancestor(url, first, rewritten)
    # ... a fresh one never did: the old head is simply not in the history of the new one.
    fresh = GitResource(mirror_dir=str(tmp_path / "fresh-mirrors"))
    fresh.ensure_commit(url, rewritten)
    assert not fresh.has_commit(url, dropped)
    assert not fresh.is_ancestor(url, dropped, rewritten)


# --- exact trees -------------------------------------------------------------------------------------------


def _commit_a_service(repo) -> str:
    repo.commit("service", {
        "services/orders/Dockerfile": "FROM 127.0.0.1:5000/base/busybox:latest\n",
        "services/orders/app.sh": "#!/bin/sh\necho ok\n",
        "services/orders/VERSION": "$Format:%H$\n",
        ".gitattributes": "notes.txt export-ignore\nservices/orders/VERSION export-subst\n",
        "notes.txt": "kept\n",
    })
    (repo.path / "services/orders/app.sh").chmod(0o755)
    (repo.path / "services/orders/run").symlink_to("app.sh")
    repo.git("add", "services/orders/app.sh", "services/orders/run")
    return repo.commit("make app.sh executable, run links to it", {})


def test_export_writes_exactly_the_committed_tree_never_the_working_copy(git, new_repo, tmp_path):
    repo = new_repo("shop")
    sha = _commit_a_service(repo)
    # The working copy differs from the commit: an edit, an untracked file.
    (repo.path / "services/orders/Dockerfile").write_text("FROM uncommitted\n")
    (repo.path / "services/orders/local.env").write_text("TOKEN=abc\n")
    url = str(repo.path)
    git.ensure_commit(url, sha)

    whole = git.export(url, sha, tmp_path / "whole")
    assert sorted(p.relative_to(whole).as_posix() for p in whole.rglob("*") if p.is_file()) == [
        ".gitattributes", "notes.txt", "services/orders/Dockerfile", "services/orders/VERSION",
        "services/orders/app.sh", "services/orders/run",
    ]
    assert (whole / "services/orders/Dockerfile").read_text() == "FROM 127.0.0.1:5000/base/busybox:latest\n"
    # The repo's own attributes neither drop nor rewrite files: the tree is exported as committed.
    assert (whole / "notes.txt").read_text() == "kept\n"
    assert (whole / "services/orders/VERSION").read_text() == "$Format:%H$\n"
    assert os.stat(whole / "services/orders/app.sh").st_mode & stat.S_IXUSR
    assert os.readlink(whole / "services/orders/run") == "app.sh"

    context = git.export(url, sha, tmp_path / "context", subpath="services/orders")
    assert sorted(p.name for p in context.iterdir()) == ["Dockerfile", "VERSION", "app.sh", "run"]

    with tarfile.open(fileobj=io.BytesIO(git.archive_bytes(url, sha, "services/orders"))) as archive:
        assert sorted(m.name for m in archive.getmembers() if m.isfile()) == ["Dockerfile", "VERSION", "app.sh"]
        assert archive.extractfile("Dockerfile").read() == b"FROM 127.0.0.1:5000/base/busybox:latest\n"


def test_export_refuses_a_folder_with_files_and_names_a_missing_subpath(git, new_repo, tmp_path):
    repo = new_repo("shop")
    sha = _commit_a_service(repo)
    url = str(repo.path)
    git.ensure_commit(url, sha)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "stale.txt").write_text("from an earlier build\n")
    with pytest.raises(GitError, match=r"busy is not empty"):
        git.export(url, sha, busy)

    with pytest.raises(GitError) as raised:
        git.export(url, sha, tmp_path / "nothing", subpath="services/payments")
    assert str(raised.value).startswith(f"git archive {url}: ")
    assert "services/payments" in str(raised.value)


def tar_of(*members: tuple[str, str | None, str]) -> tarfile.TarFile:
    """An in-memory tar: (name, link target or None, kind) with kind file, symlink or hardlink."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, link, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = 2
                archive.addfile(info, io.BytesIO(b"ok"))
            else:
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = link
                archive.addfile(info)
    buffer.seek(0)
    return tarfile.open(fileobj=buffer)


def escaping_tree(kind: str, outside: Path) -> list[tuple[str, str | None, str]]:
    """A tree whose member `kind` would reach `outside` (a folder beside the extraction's destination)."""
    return {
        "absolute path": [(f"{outside}/evil", None, "file")],
        "parent path": [("src/../../outside/evil", None, "file")],
        "absolute symlink": [("etc", str(outside), "symlink"), ("etc/evil", None, "file")],
        "escaping symlink": [("src/up", "../../outside", "symlink"), ("src/up/evil", None, "file")],
        "escaping hard link": [("passwd", "../outside/secret", "hardlink")],
    }[kind]


@pytest.mark.parametrize("filters", [True, False], ids=["python with extraction filters", "python 3.11.2"])
@pytest.mark.parametrize("kind", ["absolute path", "parent path", "absolute symlink", "escaping symlink",
                                  "escaping hard link"])
def test_a_tree_archive_never_writes_outside_its_folder_with_or_without_extraction_filters(
        kind, filters, tmp_path, monkeypatch):
    from resources.git import extract_tree

    if not filters:  # the user-code image's Debian Python has no tarfile filters (PEP 706 came in 3.11.4)
        monkeypatch.delattr(tarfile, "data_filter")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    dest = tmp_path / "tree"
    dest.mkdir()
    tree = tar_of(*escaping_tree(kind, outside))
    if kind == "absolute path":  # stripped to a path inside the folder (with filters) or refused (without)
        with contextlib.suppress(GitError):
            extract_tree(tree, dest)
    else:
        with pytest.raises((GitError, tarfile.FilterError)):
            extract_tree(tree, dest)
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert not any(p.is_symlink() or p.name == "passwd" for p in dest.rglob("*"))


def test_without_extraction_filters_a_tree_with_inner_links_is_extracted(tmp_path, monkeypatch):
    from resources.git import extract_tree

    monkeypatch.delattr(tarfile, "data_filter")
    dest = tmp_path / "tree"
    dest.mkdir()
    extract_tree(tar_of(("src/app.py", None, "file"), ("src/link.py", "app.py", "symlink"),
                        ("copy.py", "src/app.py", "hardlink")), dest)
    assert (dest / "src" / "link.py").read_text() == "ok" and (dest / "copy.py").read_text() == "ok"
