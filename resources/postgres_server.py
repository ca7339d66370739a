"""A private PostgreSQL for Dagster's instance storage (Debian package `postgresql`), for tests and for users.

`PostgresServer(home, port=...)` keeps one cluster under `home`: `data/` (the cluster, owned by the user that
runs the server), `postgres.log`, the unix socket, and for a detached server `postgres.env` with the
`DAGSTER_PG_*` variables `deploy/postgres/dagster.yaml` reads. Tests start one on a free port in a temporary
folder and remove it; a user runs

    python -m resources.postgres_server ensure --home DIR [--port 5432]
    python -m resources.postgres_server stop --home DIR

`ensure` is idempotent (a running cluster is kept, a stopped one started, a missing one created).

PostgreSQL refuses to run as root (`initdb`/`postgres` exit with "cannot be run as root"). When this process is
root (the project's hosts and CI run as root), `initdb` and `pg_ctl` run as the `postgres` user the Debian
package creates (it owns nothing of ours; `setpriv` changes only the ids, without a login session, PAM or a
TTY). `home` must then be reachable by that user: its data folder is handed over to it. Clients (`createdb`,
`pg_dump`, psycopg2) connect over TCP with the password and run as whoever calls them.

Nothing here starts a process or touches the file system at import or construction time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

DEFAULT_PORT = 5432
SERVER_USER = "postgres"  # created by the Debian package; used only when we are root
SUPERUSER = "dagster"  # the cluster's superuser, the one role Dagster connects as
DEFAULT_DATABASE = "dagster"
BIN_ROOT = Path("/usr/lib/postgresql")


class PostgresNotStarted(RuntimeError):
    """PostgreSQL could not be set up or started (not installed, port taken, exited); the message says which."""


def postgres_bin(name: str) -> str:
    """The newest installed Debian PostgreSQL's `name` (initdb, pg_ctl, pg_dump, createdb...)."""
    candidates = sorted(
        (p for p in BIN_ROOT.glob(f"*/bin/{name}") if p.parent.parent.name.isdigit()),
        key=lambda p: int(p.parent.parent.name),
    )
    if not candidates:
        raise PostgresNotStarted(
            f"{name} not found under {BIN_ROOT}/<version>/bin: install the Debian package `postgresql` "
            "(scripts/setup_host.sh does)"
        )
    return str(candidates[-1])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster with its data, log, socket and password under `home`."""

    def __init__(self, home: Path | str, *, port: int = DEFAULT_PORT, host: str = "127.0.0.1",
                 fsync: bool = True) -> None:
        self.home = Path(home).resolve()
        self.host = host
        self.port = port
        self.fsync = fsync  # off only for throwaway test clusters (see `temporary`)

    # --- paths -----------------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_path(self) -> Path:
        return self.home / "postgres.log"

    @property
    def password_path(self) -> Path:
        return self.home / "password"

    @property
    def env_path(self) -> Path:
        return self.home / "postgres.env"

    @property
    def password(self) -> str:
        return self.password_path.read_text().strip()

    def env(self, database: str = DEFAULT_DATABASE) -> dict[str, str]:
        """The variables deploy/postgres/dagster.yaml reads."""
        return {
            "DAGSTER_PG_HOST": self.host, "DAGSTER_PG_PORT": str(self.port), "DAGSTER_PG_USERNAME": SUPERUSER,
            "DAGSTER_PG_PASSWORD": self.password, "DAGSTER_PG_DB": database,
        }

    def url(self, database: str = DEFAULT_DATABASE) -> str:
        return f"postgresql+psycopg2://{SUPERUSER}:{self.password}@{self.host}:{self.port}/{database}"

    # --- processes -------------------------------------------------------------------------------------
    def _as_server_user(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        return ["setpriv", f"--reuid={SERVER_USER}", f"--regid={SERVER_USER}", "--clear-groups", *argv]

    def _client_env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.password, "PGHOST": self.host, "PGPORT": str(self.port),
                "PGUSER": SUPERUSER}

    def _run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)
        if result.returncode != 0:
            raise PostgresNotStarted(f"{' '.join(argv)} exited with {result.returncode}: "
                                     f"{(result.stderr or result.stdout).strip()[-2000:]}")
        return result

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def init(self) -> None:
        """A new cluster: superuser `dagster` with a generated password; local socket connections by peer only."""
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.password_path.exists():
            old = os.umask(0o077)
            try:
                self.password_path.write_text(secrets.token_hex(16) + "\n")
            finally:
                os.umask(old)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        pwfile = self.home / ".pwfile"
        pwfile.write_text(self.password + "\n")
        try:
            if os.geteuid() == 0:
                user = pwd.getpwnam(SERVER_USER)
                for path in (self.home, self.data_dir, pwfile):
                    os.chown(path, user.pw_uid, user.pw_gid)
                os.chmod(pwfile, 0o600)
            self._run(self._as_server_user([
                postgres_bin("initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256", "--auth-local=peer", "-E", "UTF8", "--locale=C.UTF-8",
                "--no-instructions",
            ]))
        finally:
            pwfile.unlink(missing_ok=True)

    def running(self) -> bool:
        if not self.initialised():
            return False
        result = subprocess.run(self._as_server_user([postgres_bin("pg_ctl"), "status", "-D", str(self.data_dir)]),
                                capture_output=True, text=True, timeout=30)
        return result.returncode == 0

    def start(self, timeout: float = 60.0) -> None:
        """Starts the cluster (initialising it first if needed) and waits until it accepts connections."""
        if not self.initialised():
            self.init()
        if os.geteuid() == 0:
            user = pwd.getpwnam(SERVER_USER)
            self.log_path.touch()
            os.chown(self.log_path, user.pw_uid, user.pw_gid)
        # The socket lives in our home (not /var/run/postgresql, which may not exist): peer connections only.
        options = f"-c listen_addresses={self.host} -p {self.port} -k {self.home}"
        if not self.fsync:
            options += " -c fsync=off"
        self._run(self._as_server_user([
            postgres_bin("pg_ctl"), "start", "-D", str(self.data_dir), "-l", str(self.log_path), "-o", options,
            "-w", "-t", str(int(timeout)),
        ]), stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while subprocess.run([postgres_bin("pg_isready"), "-q", "-h", self.host, "-p", str(self.port)],
                             timeout=10).returncode != 0:
            if time.monotonic() > deadline:
                raise PostgresNotStarted(f"no answer on {self.host}:{self.port}; see {self.log_path}")
            time.sleep(0.1)

    def create_database(self, name: str = DEFAULT_DATABASE) -> None:
        """Creates `name` unless it exists."""
        exists = self._run([postgres_bin("psql"), "-d", "postgres", "-tAc",
                            f"SELECT 1 FROM pg_database WHERE datname = '{name}'"], env=self._client_env())
        if exists.stdout.strip() != "1":
            self._run([postgres_bin("createdb"), name], env=self._client_env())

    def dump(self, database: str = DEFAULT_DATABASE) -> bytes:
        """The whole database as `pg_dump` writes it (schema and every row)."""
        result = subprocess.run([postgres_bin("pg_dump"), "--no-owner", database], capture_output=True,
                                env=self._client_env(), timeout=300)
        if result.returncode != 0:
            raise PostgresNotStarted(f"pg_dump exited with {result.returncode}: {result.stderr.decode()[-2000:]}")
        return result.stdout

    def stop(self) -> None:
        """Stops the cluster (fast shutdown: open connections are closed); a stopped one is left as it is."""
        if self.running():
            self._run(self._as_server_user([postgres_bin("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast",
                                            "-w", "-t", "60"]))

    def write_env(self, database: str = DEFAULT_DATABASE) -> None:
        old = os.umask(0o077)
        try:
            self.env_path.write_text("".join(f"{k}={v}\n" for k, v in self.env(database).items()))
        finally:
            os.umask(old)


@contextlib.contextmanager
def temporary(database: str = DEFAULT_DATABASE, *, port: int | None = None) -> Iterator[PostgresServer]:
    """A throwaway cluster in a new temporary folder on a free loopback port, with `database` created; stopped
    and removed when the block ends, also on failure. fsync is off: nothing here must survive a crash."""
    # Not under pytest's tmp_path: its parents are private to root, and the server user must reach its folder.
    home = Path(tempfile.mkdtemp(prefix="rg-postgres-"))
    server = PostgresServer(home, port=port or free_port(), fsync=False)
    try:
        server.start()
        server.create_database(database)
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(home, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resources.postgres_server", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["ensure", "stop", "status"])
    parser.add_argument("--home", required=True, help="the cluster's folder (data, log, socket, postgres.env)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--database", default=DEFAULT_DATABASE)
    args = parser.parse_args(argv)
    server = PostgresServer(args.home, port=args.port)
    try:
        if args.command == "ensure":
            if not server.running():
                server.start()
            server.create_database(args.database)
            server.write_env(args.database)
            print(f"postgres on {server.host}:{server.port}, database {args.database}; variables in {server.env_path}")
        elif args.command == "stop":
            server.stop()
            print("postgres stopped")
        else:
            running = server.running()
            print("running" if running else "not running")
            return 0 if running else 1
    except PostgresNotStarted as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
