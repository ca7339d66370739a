"""Given a host prepared by scripts/setup_host.sh, the engine, the registry, the base images and the browser of
the UI stories answer."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request


def test_the_container_engine_answers_the_docker_api(docker_client):
    assert docker_client.ping() is True
    assert docker_client.version()["ApiVersion"]


def test_the_local_registry_holds_the_base_images(registry_addr):
    with urllib.request.urlopen(f"http://{registry_addr}/v2/_catalog", timeout=5) as response:
        repositories = json.load(response)["repositories"]
    assert {"base/python", "base/busybox"} <= set(repositories)


def test_a_container_runs_from_the_python_base_image(docker_client, registry_addr, run_id):
    output = docker_client.containers.run(
        f"{registry_addr}/base/python:bookworm",
        ["python3", "-c", "import http.server, sys; print(sys.version_info[:2])"],
        name=f"{run_id}-smoke",
        labels={"release-graph.test-run": run_id},
        remove=True,
    )
    assert output.strip() == b"(3, 11)"


def test_the_debian_postgresql_and_its_server_user_are_installed():
    """scripts/setup_host.sh installs `postgresql`; the private clusters (resources/postgres_server.py) run its
    binaries as the `postgres` user it creates, because PostgreSQL refuses to run as root."""
    import pwd

    from resources.postgres_server import SERVER_USER, postgres_bin

    for name in ("initdb", "pg_ctl", "pg_isready", "createdb", "psql", "pg_dump"):
        assert postgres_bin(name).startswith("/usr/lib/postgresql/")
    assert pwd.getpwnam(SERVER_USER).pw_uid != 0



def test_the_ui_stories_browser_is_the_distributions_chromium_and_runs_javascript(browser):
    installed = subprocess.run([shutil.which("chromium"), "--version"], capture_output=True, text=True, timeout=60)
    assert f"Chromium {browser.version} " in installed.stdout  # the Debian package, not a downloaded browser
    page = browser.new_page()
    page.set_content("<main><h1>release-graph</h1><script>document.title = 'rendered by JS'</script></main>")
    assert page.get_by_role("heading").inner_text() == "release-graph"
    assert page.title() == "rendered by JS"
