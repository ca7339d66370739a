"""The harness of the live stories, the fixture `live`: a copy of the demo fleet run by the real daemon
(`dagster dev`, as `make demo` starts it), under its own fleet name, registry repositories, ports and
DAGSTER_HOME, so it never meets a running `make demo` or another test; the fixture removes its environments
and images afterwards. The fixture `ui`: that instance's Dagster UI in a real browser, read and used as a
release manager would. A story that needs its own registry or engine (to stop them) overrides the fixture
`live_settings`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest
import yaml

from release_graph import demo
from release_graph.fleet import load_fleet
from release_graph.release.why import stage_status
from release_graph.security.provenance import generate_key_pem
from resources.containers import ContainerEngine
from resources.registry import Registry, RegistryError
from resources.targets import DeployTargets, DockerTargetConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
RELEASE_PREFIX = re.compile(r"^\[service=[^\]]*\] ")  # release_graph/release/tracing.py log_prefix


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class LiveSettings:
    """What a story may change about its demo copy: the registry its images go to (`host:port`) and
    environment variables of the daemon (e.g. DOCKER_HOST for an engine endpoint of its own)."""

    registry: str = "127.0.0.1:5000"
    env: dict[str, str] = field(default_factory=dict)
    name: str = "live"  # the fleet is `<run id><name>`: two stories in one pytest process never share one


class LiveDemo:
    def __init__(self, root: Path, fleet_name: str, settings: LiveSettings | None = None):
        self.settings = settings or LiveSettings()
        self.root = root
        self.fleet_dir = root / "shop"
        self.home = root / "home"
        self.state = Path(f"/tmp/{fleet_name}-state")  # haproxy's admin socket path must stay short
        self.fleet_name = fleet_name
        self.ui_port = free_port()
        self.process: subprocess.Popen | None = None
        self.env: dict[str, str] = {}
        # the demo team's inbox, as `make demo` starts it: every notification the daemon sends lands here
        self.inbox = demo.Inbox(0, os.urandom(16).hex().encode())

    def prepare(self) -> None:
        shutil.copytree(REPO_ROOT / "examples" / "shop", self.fleet_dir,
                        ignore=shutil.ignore_patterns(".repos", "__pycache__"))
        text = (self.fleet_dir / "fleet.yaml").read_text().replace("fleet: shop", f"fleet: {self.fleet_name}")
        text = text.replace("registry: 127.0.0.1:5000/shop", f"registry: {self.settings.registry}/{self.fleet_name}")
        for port in ("18081", "18082", "18080"):
            text = text.replace(f": {port}}}", f": {free_port()}}}")
        text = text.replace("ui_url: http://127.0.0.1:3000", f"ui_url: http://127.0.0.1:{self.ui_port}")
        (self.fleet_dir / "fleet.yaml").write_text(text)
        demo.sync_repos(self.fleet_dir / "services", self.fleet_dir / ".repos")
        self.home.mkdir()
        shutil.copy(REPO_ROOT / "dagster.yaml", self.home / "dagster.yaml")
        self.env = {**os.environ, "DAGSTER_HOME": str(self.home), "RELEASE_GRAPH_STATE": str(self.state),
                    "RELEASE_GRAPH_FLEET": str(self.fleet_dir / "fleet.yaml"),
                    "SHOP_PAYMENTS_API_KEY": "demo-" + os.urandom(8).hex(),
                    "SHOP_PAYMENTS_TEST_KEY": "test-" + os.urandom(8).hex(),
                    "SHOP_NOTIFY_URL": self.inbox.url, "SHOP_NOTIFY_KEY": self.inbox.key.decode(),
                    # the key the demo's image provenance is signed with, as `make demo` generates it
                    "SHOP_PROVENANCE_KEY": generate_key_pem(),
                    "SHOP_CDEVENTS_SINK_URL": self.inbox.cdevents_url,
                    "RELEASE_GRAPH_GIT_POLL_SECONDS": "4",  # as `make demo` sets it (DEMO_GIT_POLL_SECONDS)
                    "MALLOC_ARENA_MAX": "2",  # as `make demo` sets it (ORCHESTRATOR_MALLOC_ARENAS)
                    # the security tools `make test` installed (semgrep in its own venv)
                    "RELEASE_GRAPH_TOOLS": os.environ.get("RELEASE_GRAPH_TOOLS") or str(REPO_ROOT / ".tools"),
                    **self.settings.env}

    @property
    def fleet(self):
        return load_fleet(self.fleet_dir / "fleet.yaml")

    def start(self) -> None:
        # As `make demo` runs it; its own process group, so the daemon and code server stop with it.
        with open(self.root / "dagster-dev.log", "wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(self.ui_port),
                 "-m", "release_graph.definitions"],
                cwd=self.root, env=self.env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(
                f"http://127.0.0.1:{self.ui_port}/server_info", timeout=2
            ):
                return
            assert self.process.poll() is None, self.log_tail()
            time.sleep(1)
        pytest.fail(f"dagster dev did not answer in 120 s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)

    def keep_only(self, service: str) -> None:
        """The copied fleet with one service: no fleet e2e (it needs all four), no settings of the others."""
        fleet_yaml = self.fleet_dir / "fleet.yaml"
        manifest = yaml.safe_load(fleet_yaml.read_text())
        # the fleet's waivers name the owners of every service: the one kept carries them all, so they stay valid
        owners = sorted({owner for entry in manifest["services"].values() for owner in entry.get("owners", [])})
        manifest["services"] = {service: {**manifest["services"][service], "owners": owners}}
        manifest.pop("e2e", None)
        integration_secrets = (manifest.get("integration") or {}).get("secrets") or {}
        if service in integration_secrets:
            manifest["integration"]["secrets"] = {service: integration_secrets[service]}
        else:
            manifest.pop("integration", None)
        for environment in manifest["environments"].values():
            for field_name in ("publish", "secrets"):
                kept = {k: v for k, v in (environment.get(field_name) or {}).items() if k == service}
                environment.pop(field_name, None)
                if kept:
                    environment[field_name] = kept
        fleet_yaml.write_text(yaml.safe_dump(manifest, sort_keys=False))

    @staticmethod
    def log_messages(instance, run_id: str) -> list[str]:
        """The run's log lines without the release prefix every stage's line carries ([service=… trace_id=…])."""
        return [RELEASE_PREFIX.sub("", e.user_message) for e in instance.all_logs(run_id) if e.user_message]

    @staticmethod
    def builds_in(instance, run_id: str, service: str) -> int:
        """How many builds of `service`'s image the run's image step finished (the engine says `Successfully
        built` once per build; the unit-test stage's build is another step)."""
        step = dg.AssetKey([service, "image"]).to_python_identifier()  # stock-00 -> stock_00__image
        return sum(1 for e in instance.all_logs(run_id) if e.step_key == step
                   and RELEASE_PREFIX.sub("", e.user_message or "").startswith("Successfully built"))

    @staticmethod
    def failure_reasons(instance, run_id: str) -> list[str]:
        """Why a run failed, as its event log says: each failed step's error, and the run's own failure or
        engine message (a run worker that died says so only there)."""
        kinds = {dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.ENGINE_EVENT}
        reasons = []
        for entry in instance.all_logs(run_id, of_type=kinds):
            event = entry.dagster_event
            if event.event_type == dg.DagsterEventType.STEP_FAILURE:
                error = event.step_failure_data.error
                while error.cause is not None:  # the step's own exception is the innermost one
                    error = error.cause
                reasons.append(f"{event.step_key}: {error.message.strip()[-800:]}")
            elif event.event_type == dg.DagsterEventType.RUN_FAILURE or "fail" in (entry.user_message or "").lower():
                reasons.append((entry.user_message or event.message or "").strip()[-600:])
        return reasons

    def log_tail(self, lines: int = 60) -> str:
        path = self.root / "dagster-dev.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(Path(sys.executable).parent / "release-graph"), *args], env=self.env,
                              capture_output=True, text=True, timeout=120)

    def wait_for(self, what: str, condition, timeout: float, instance) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if condition():
                return time.monotonic() - started
            assert self.process.poll() is None, f"dagster dev stopped:\n{self.log_tail()}"
            time.sleep(3)
        fleet = self.fleet
        waits = [stage_status(instance, fleet, fleet.services[s], e).line()
                 for s in fleet.services for e in fleet.environments]
        newest = instance.get_runs(limit=15)
        runs = [f"{run.run_id[:8]} {run.status.value} {sorted(k.to_user_string() for k in run.asset_selection or ())}"
                for run in newest]
        runs += [f"  {run.run_id[:8]}: {why}" for run in newest if run.status == dg.DagsterRunStatus.FAILURE
                 for why in self.failure_reasons(instance, run.run_id)]
        # CI shows a failure's last lines: the daemon's log first, then the runs and what each stage waits for
        pytest.fail(f"{what}: not within {timeout:.0f} s.\n{self.log_tail()}\nNewest runs:\n" + "\n".join(runs)
                    + "\nStages:\n" + "\n".join(waits))


class Orchestrator(LiveDemo):
    """The instance as deploy/compose.yaml runs it, without containers: the code server, the webserver and the
    daemon as separate processes, on Postgres storage (deploy/postgres/dagster.yaml as shipped). `process` is
    the webserver (what must keep answering); the daemon may be killed and started again on its own."""

    def __init__(self, root: Path, fleet_name: str, settings: LiveSettings | None = None, *, postgres=None):
        super().__init__(root, fleet_name, settings)
        self.postgres = postgres
        self.code_port = free_port()
        self.code_server: subprocess.Popen | None = None
        self.daemon: subprocess.Popen | None = None

    def prepare(self) -> None:
        super().prepare()
        database = self.fleet_name.lower()
        self.postgres.create_database(database)
        shutil.copy(REPO_ROOT / "deploy" / "postgres" / "dagster.yaml", self.home / "dagster.yaml")
        self.env.update(self.postgres.env(database))
        (self.root / "workspace.yaml").write_text(yaml.safe_dump({"load_from": [{"grpc_server": {
            "host": "127.0.0.1", "port": self.code_port, "location_name": "release_graph"}}]}))

    def spawn(self, name: str, *argv: str) -> subprocess.Popen:
        with open(self.root / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
            return subprocess.Popen([str(Path(sys.executable).parent / argv[0]), *argv[1:]], cwd=self.root,
                                    env=self.env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)

    def graphql(self, query: str) -> dict:
        request = urllib.request.Request(f"http://127.0.0.1:{self.ui_port}/graphql",
                                         data=json.dumps({"query": query}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())["data"]

    def location_loaded(self) -> bool:
        with contextlib.suppress(OSError, KeyError, TypeError, ValueError):
            entries = self.graphql("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                                   "locationOrLoadError { __typename } } } } }")["workspaceOrError"]["locationEntries"]
            return any(e["loadStatus"] == "LOADED" and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"
                       for e in entries)
        return False

    def start(self) -> None:
        self.code_server = self.spawn("code-server", "dagster", "code-server", "start", "-h", "127.0.0.1",
                                      "-p", str(self.code_port), "-m", "release_graph.definitions")
        self.process = self.spawn("webserver", "dagster-webserver", "-h", "127.0.0.1", "-p", str(self.ui_port),
                                  "-w", "workspace.yaml")
        deadline = time.monotonic() + 180
        while not self.location_loaded():
            assert self.code_server.poll() is None and self.process.poll() is None, self.log_tail()
            if time.monotonic() > deadline:
                pytest.fail(f"the webserver did not show the code location in 180 s:\n{self.log_tail()}")
            time.sleep(1)
        self.start_daemon()

    def start_daemon(self) -> None:
        self.daemon = self.spawn("daemon", "dagster-daemon", "run", "-w", "workspace.yaml")

    def kill_daemon(self) -> None:
        """SIGKILL to the daemon's process group: no shutdown, no last tick written."""
        os.killpg(self.daemon.pid, signal.SIGKILL)
        self.daemon.wait(timeout=30)

    def stop(self) -> None:
        for process in (self.daemon, self.process, self.code_server):
            if process and process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 60) -> str:
        tails = []
        for name in ("code-server", "webserver", "daemon"):
            path = self.root / f"{name}.log"
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines // 3:]
                tails.append(f"--- {name}.log\n" + "\n".join(tail))
        return "\n".join(tails)


@pytest.fixture
def orchestrator_on_postgres():
    """The `live_harness` of a story that runs the orchestrator as separate processes on a private PostgreSQL."""
    from resources import postgres_server

    with postgres_server.temporary("dagster") as server:
        yield lambda *args, **kwargs: Orchestrator(*args, postgres=server, **kwargs)


@pytest.fixture
def live_settings() -> LiveSettings:
    """The demo as `make demo` runs it (the host's registry and engine); a story overrides this fixture."""
    return LiveSettings()


@pytest.fixture
def live_harness():
    """How the story's instance runs: `dagster dev` (LiveDemo); a story overrides this fixture."""
    return LiveDemo


@pytest.fixture
def live(tmp_path, run_id, docker_client, live_settings, live_harness):
    world = live_harness(tmp_path, f"{run_id}{live_settings.name}", live_settings)
    world.prepare()
    try:
        with world.inbox:
            yield world
    finally:
        world.stop()
        fleet = world.fleet
        target = DeployTargets(engine=ContainerEngine(), docker=DockerTargetConfig(
            state_dir=str(world.state / "targets"))).for_environment("docker")
        for environment in fleet.environments:
            target.teardown_environment(fleet.name, environment)
        registry = Registry()
        for service in fleet.services.values():
            repository = service.image_repository(fleet)
            with contextlib.suppress(RegistryError):
                for tag in registry.tags(repository):
                    digest = registry.manifest_digest(repository, tag)
                    if digest:
                        registry.delete(repository, digest)
            # local images go at the session's end (tests/conftest.py): removing one now breaks parallel builds
        shutil.rmtree(world.state, ignore_errors=True)


MATERIALIZE = re.compile(r"\bMaterialize$")  # the button's name is its icon's label and its text


class ReleaseManagerUI:
    """The Dagster UI of the live demo in headless Chromium, through what a release manager sees and clicks
    (texts and roles, the URLs the UI links to). A step that fails leaves a screenshot in the test's folder."""

    TIMEOUT_MS = 60_000  # the UI answers slowly while the demo builds and deploys on the same two cores

    def __init__(self, browser, url: str, shots: Path):
        self.url, self.shots = url, shots
        from playwright.sync_api import expect

        self.page = browser.new_page(viewport={"width": 1600, "height": 1000})
        self.page.set_default_timeout(self.TIMEOUT_MS)
        expect.set_options(timeout=self.TIMEOUT_MS)  # assertions too (their own default is 5 s)

    @contextlib.contextmanager
    def step(self, name: str):
        try:
            yield
        except BaseException:
            shot = self.shots / f"ui-{name}.png"
            with contextlib.suppress(Exception):
                self.page.screenshot(path=str(shot), full_page=True)
            print(f"\nUI step '{name}' failed at {self.page.url}; screenshot: {shot}")
            raise

    def open_asset(self, key: dg.AssetKey, view: str | None = None) -> None:
        self.page.goto(f"{self.url}/assets/{'/'.join(key.path)}" + (f"?view={view}" if view else ""))

    def check_results(self, key: dg.AssetKey, names) -> dict[str, str]:
        """{check: the result the asset's Checks tab lists for it}, e.g. "Succeeded", "Failed", "Execution
        failed", "Not evaluated"."""
        from playwright.sync_api import expect

        with self.step(f"checks-of-{key.to_python_identifier()}"):
            self.open_asset(key, "checks")
            expect(self.page.get_by_text(re.compile(r"^Checks \(\d+\)$"))).to_be_visible()
            results = {}
            for name in names:
                # each entry: the check's name (a title= element) and, beside it, its latest result
                entry = self.page.locator(f'[title="{name}"]').first.locator("xpath=following-sibling::span[1]")
                expect(entry).not_to_have_text("")
                results[name] = entry.inner_text().strip()
            return results

    def page_shows(self, text: str) -> bool:
        return self.page.get_by_text(text, exact=True).count() > 0

    def matrix(self) -> dict[tuple[str, str], dict[str, str]]:
        """The `deployments` table of `fleet/environments` as its asset page shows it: (service, env) -> row."""
        self.open_asset(dg.AssetKey(["fleet", "environments"]))
        table = self.page.locator("table", has=self.page.get_by_role("columnheader", name="waiting_for")).last
        table.wait_for()
        header = table.locator("th").all_inner_texts()
        rows = [dict(zip(header, row.locator("td").all_inner_texts(), strict=True))
                for row in table.locator("tbody tr").all()]
        return {(row["service"], row["environment"]): row for row in rows}

    def wait_for_matrix(self, what: str, condition, timeout: float = 180) -> dict:
        """The matrix once `condition(matrix)` holds (it is refreshed by a run after each change)."""
        with self.step(f"matrix-{what.replace(' ', '-')}"):
            deadline = time.monotonic() + timeout
            while True:
                shown = self.matrix()
                if condition(shown):
                    return shown
                if time.monotonic() > deadline:
                    pytest.fail(f"the matrix in the UI: {what}: not within {timeout:.0f} s; it shows:\n"
                                + "\n".join(f"{s}/{e}: {row['waiting_for'] or '(up to date)'}"
                                             for (s, e), row in shown.items()))
                time.sleep(5)

    def open_launchpad(self, key: dg.AssetKey, attempts: int = 3):
        """The asset's launchpad dialog. Shift-click on Materialize opens it (the same as its menu's "Open
        launchpad"); the button spins while the UI asks the code server for the asset's config schema, seconds
        on a loaded machine. Under CI's load a click was once lost (the asset page stayed as it was, no dialog,
        for a minute): the page is opened again and clicked again, and what it showed is printed."""
        from playwright.sync_api import expect

        launchpad = self.page.get_by_role("dialog")
        for attempt in range(1, attempts + 1):
            self.open_asset(key)
            self.page.get_by_role("button", name=MATERIALIZE).first.click(modifiers=["Shift"])
            try:
                expect(launchpad.get_by_text("Launchpad")).to_be_visible(timeout=self.TIMEOUT_MS // 2)
                return launchpad
            except AssertionError:
                alerts = self.page.get_by_role("alert").all_inner_texts()
                print(f"UI: no launchpad for {key.to_user_string()} after click {attempt}; alerts: {alerts}")
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable: the last attempt raises")

    def approve(self, approval: dg.AssetKey, *, approver: str, ticket: str) -> str:
        """Materialize an approval from its asset's launchpad with the run config a person types; returns the
        run id once the run page says it succeeded."""
        from playwright.sync_api import expect

        with self.step(f"approve-{approval.to_python_identifier()}"):
            launchpad = self.open_launchpad(approval)
            launchpad.locator(".CodeMirror").click()  # the run config editor (CodeMirror's own class name)
            self.page.keyboard.press("Control+A")
            # one line of YAML: the editor indents typed newlines on its own
            self.page.keyboard.insert_text(f"ops: {{{approval.to_python_identifier()}: {{config: "
                                           f"{{approver: {approver}, ticket: {ticket}}}}}}}")
            expect(launchpad.get_by_text("No errors")).to_be_visible()  # validated by the server
            launchpad.get_by_role("button", name=MATERIALIZE).click()
            self.page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
            run_id = self.page.url.rsplit("/", 1)[-1].split("?")[0]
            expect(self.page.get_by_text("Success", exact=True).first).to_be_visible(timeout=180_000)
            return run_id


@pytest.fixture
def ui(live, browser, tmp_path) -> ReleaseManagerUI:
    return ReleaseManagerUI(browser, f"http://127.0.0.1:{live.ui_port}", tmp_path)
