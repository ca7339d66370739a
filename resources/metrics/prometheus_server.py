"""The Prometheus release-graph runs itself (Debian package `prometheus`), scraping what ScrapeTargets lists.

`PrometheusServer(home, port=...)` keeps everything under `home`: `prometheus.yml` (scrape every 2 s, targets
from `file_sd` files in `home/targets`, or the folder given), `data/` (its storage), `prometheus.log`, and for
a detached server `server.json` (pid and port) and `prometheus.env` (`RELEASE_GRAPH_PROMETHEUS_URL=...`, for
`make demo` to pass on). Tests start one on a free port in a temporary folder and stop it; `make demo` runs

    python -m resources.metrics.prometheus_server ensure [--home DIR] [--port 9090]

which is idempotent: a running one is kept (its configuration rewritten and reloaded if it changed), a dead
one restarted; when the port is taken by something else (a distribution's own Prometheus on 9090, say) it
takes a free port and says so in `prometheus.env`. `stop` ends a detached one by its recorded pid.

Nothing here starts a process or touches the file system at import or construction time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from release_graph.fleet.model import PROMETHEUS_URL_VARIABLE
from resources.metrics.prometheus import SCRAPE_INTERVAL_SECONDS
from resources.state import state_dir

DEFAULT_PORT = 9090


class PrometheusNotStarted(RuntimeError):
    """Prometheus could not be started (not installed, port taken, exited); the message says which."""


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _write_atomically(path: Path, text: str) -> bool:
    """Writes `text` unless the file already holds it; True when it changed."""
    with contextlib.suppress(FileNotFoundError):
        if path.read_text() == text:
            return False
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)
    return True


class PrometheusServer:
    """One Prometheus process with its own configuration, storage and log under `home`."""

    def __init__(self, home: Path | str, *, port: int = DEFAULT_PORT, host: str = "127.0.0.1",
                 targets_dir: Path | str | None = None, scrape_interval_seconds: float = SCRAPE_INTERVAL_SECONDS,
                 retention: str = "2d", executable: str = "prometheus") -> None:
        self.home = Path(home).resolve()
        self.host = host
        self.port = port
        self.targets_dir = Path(targets_dir).resolve() if targets_dir else self.home / "targets"
        self.scrape_interval_seconds = scrape_interval_seconds
        self.retention = retention
        self.executable = executable
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.home / "prometheus.yml"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_path(self) -> Path:
        return self.home / "prometheus.log"

    @property
    def state_path(self) -> Path:
        return self.home / "server.json"

    @property
    def env_path(self) -> Path:
        return self.home / "prometheus.env"

    def config_text(self) -> str:
        interval = f"{self.scrape_interval_seconds:g}s"
        files = json.dumps(str(self.targets_dir / "*.json"))  # a JSON string is a YAML double-quoted scalar
        return (
            "# Written by release-graph (resources/metrics/prometheus_server.py); rewritten on every start.\n"
            "global:\n"
            f"  scrape_interval: {interval}\n"
            f"  scrape_timeout: {interval}  # never longer than the interval (Prometheus refuses that)\n"
            "  evaluation_interval: 15s\n"
            "scrape_configs:\n"
            "  - job_name: release-graph\n"
            "    file_sd_configs:\n"
            f"      - files: [{files}]\n"
            "        refresh_interval: 30s  # a backstop: changes to the files are seen at once (inotify)\n"
        )

    def write_config(self) -> bool:
        """Writes prometheus.yml (and creates the folders); True when the file changed."""
        for folder in (self.home, self.data_dir, self.targets_dir):
            folder.mkdir(parents=True, exist_ok=True)
        return _write_atomically(self.config_path, self.config_text())

    def ready(self, timeout_seconds: float = 1.0) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=timeout_seconds) as response:
                return response.status == 200
        except OSError:
            return False

    def start(self, *, detach: bool = False, timeout_seconds: float = 30.0) -> None:
        """Starts Prometheus and returns once it answers `/-/ready`. `detach`: it outlives this process and
        is recorded in server.json and prometheus.env (for `stop` from another process and for `make demo`)."""
        executable = shutil.which(self.executable)
        if executable is None:
            raise PrometheusNotStarted(f"{self.executable!r} is not installed: `make host` (scripts/setup_host.sh) "
                                       "installs the Debian package prometheus")
        if not port_is_free(self.host, self.port):
            raise PrometheusNotStarted(f"cannot start Prometheus on {self.host}:{self.port}: the port is taken")
        self.write_config()
        command = [executable, f"--config.file={self.config_path}", f"--web.listen-address={self.host}:{self.port}",
                   f"--storage.tsdb.path={self.data_dir}", f"--storage.tsdb.retention.time={self.retention}"]
        with open(self.log_path, "ab") as log:
            # Its own session: a Ctrl-C meant for `make demo` or pytest does not reach it half-way.
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_seconds
        while not self.ready():
            if self._process.poll() is not None:
                raise PrometheusNotStarted(f"Prometheus on {self.host}:{self.port} exited with "
                                           f"{self._process.returncode}: {self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise PrometheusNotStarted(f"Prometheus on {self.host}:{self.port} not ready after "
                                           f"{timeout_seconds:g} s: {self._log_tail()}")
            time.sleep(0.05)
        if detach:
            _write_atomically(self.state_path, json.dumps({"pid": self._process.pid, "port": self.port,
                                                           "host": self.host, "url": self.url}) + "\n")
            _write_atomically(self.env_path, f"{PROMETHEUS_URL_VARIABLE}={self.url}\n")

    def pid(self) -> int | None:
        """The pid of the Prometheus this object started, or of the detached one recorded under `home`, if it
        still runs with this home's configuration (a pid reused by another program is not ours)."""
        if self._process is not None:
            return self._process.pid if self._process.poll() is None else None
        try:
            pid = int(json.loads(self.state_path.read_text())["pid"])
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        return pid if f"--config.file={self.config_path}".encode() in command_line else None

    def reload(self) -> None:
        """Rereads prometheus.yml (SIGHUP), e.g. after write_config changed it."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGHUP)

    def stop(self, timeout_seconds: float = 10.0) -> None:
        """Stops it (SIGTERM, then SIGKILL after `timeout_seconds`); nothing happens if it is not running."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(timeout=timeout_seconds)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(timeout=timeout_seconds)
            self._process = None
        else:
            pid = self.pid()
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout_seconds
                while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
                    if time.monotonic() > deadline:
                        os.kill(pid, signal.SIGKILL)
                        break
                    time.sleep(0.05)
        self.state_path.unlink(missing_ok=True)

    def _log_tail(self, characters: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:].strip()
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()


def _state(pid: int) -> str:
    """The process state letter from /proc (Z: a zombie, gone but not yet reaped by its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "X"


def ensure(home: Path | str, preferred_port: int = DEFAULT_PORT) -> PrometheusServer:
    """A detached Prometheus under `home`, running and ready: the recorded one if it answers, else a new one
    on `preferred_port`, or on a free port when that one is taken by something else."""
    home = Path(home)
    try:
        recorded = json.loads((home / "server.json").read_text())
        server = PrometheusServer(home, port=int(recorded["port"]), host=recorded.get("host", "127.0.0.1"))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        server = None
    if server is not None and server.pid() is not None:
        if server.write_config():
            server.reload()
        if server.ready(timeout_seconds=3.0):
            _write_atomically(server.env_path, f"{PROMETHEUS_URL_VARIABLE}={server.url}\n")
            return server
        server.stop()  # running but not answering: start afresh
    port = preferred_port if port_is_free("127.0.0.1", preferred_port) else free_port()
    server = PrometheusServer(home, port=port)
    server.start(detach=True)
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resources.metrics.prometheus_server",
                                     description="The Prometheus release-graph runs for its rollout analysis.")
    parser.add_argument("action", choices=("ensure", "stop", "status"))
    parser.add_argument("--home", type=Path, default=None,
                        help="its folder (default: <state folder>/prometheus, the one ScrapeTargets.default() uses)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="preferred port for ensure (9090)")
    args = parser.parse_args(argv)
    home = args.home or state_dir() / "prometheus"
    if args.action == "ensure":
        started = time.monotonic()
        try:
            server = ensure(home, args.port)
        except PrometheusNotStarted as exc:
            print(f"prometheus: {exc}", file=sys.stderr)
            return 1
        note = "" if server.port == args.port else f" (port {args.port} is taken)"
        print(f"prometheus: {server.url}{note}, ready in {time.monotonic() - started:.1f} s; "
              f"targets in {server.targets_dir}; {PROMETHEUS_URL_VARIABLE} in {server.env_path}")
        return 0
    server = PrometheusServer(home)
    if args.action == "stop":
        server.stop()
        server.env_path.unlink(missing_ok=True)
        print(f"prometheus: stopped (home {home})")
        return 0
    try:
        recorded = json.loads(server.state_path.read_text())
        server = PrometheusServer(home, port=int(recorded["port"]), host=recorded.get("host", "127.0.0.1"))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        print(f"prometheus: not running (home {home})")
        return 3
    running = server.pid() is not None and server.ready()
    print(f"prometheus: {'running at ' + server.url if running else 'not running'} (home {home})")
    return 0 if running else 3


if __name__ == "__main__":
    sys.exit(main())
