"""A private PostgreSQL cluster for tests: `initdb` and `pg_ctl` on a free port in a temp dir.

Use it from a test module with ``pytest_plugins = ["tests.pg"]``, then ask for

- `postgres_server`, session-scoped: the running `PostgresServer`; `stop()` and `start()`
  it to simulate an outage (the same port and data survive);
- `postgres_url`: a new, empty database of that server for one test, as a
  ``postgresql+psycopg://`` URL, dropped afterwards.

The tests are skipped when the PostgreSQL binaries or psycopg are missing. As root (which
initdb refuses), the cluster runs as the unprivileged user `nobody`. The cluster is
stopped and its directory removed at the end of the session, whatever happened.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator

import pytest

SUPERUSER = "postgres"
UNPRIVILEGED_USER = "nobody"


def find_bindir() -> str | None:
    """The directory holding initdb and pg_ctl: on PATH, else the newest Debian install."""
    for directory in ["/usr/local/bin", *os.environ.get("PATH", "").split(os.pathsep)]:
        if all(os.access(os.path.join(directory, n), os.X_OK) for n in ("initdb", "pg_ctl")):
            return directory

    def version(path: str) -> tuple[int, ...]:
        name = path.split(os.sep)[-2]
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if os.access(os.path.join(directory, "initdb"), os.X_OK):
            return directory
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One cluster in a temp dir, listening on 127.0.0.1:`port` (and `listen_addresses`, for
    clients in other network namespaces: see `allow`) and a socket in the dir."""

    def __init__(self, bindir: str, listen_addresses: tuple[str, ...] = ("127.0.0.1",)):
        self.bindir = bindir
        self.listen_addresses = listen_addresses
        self.port = free_port()
        self.workdir = tempfile.mkdtemp(prefix="supervise-pg-")
        self.datadir = os.path.join(self.workdir, "data")
        self.logfile = os.path.join(self.workdir, "postgres.log")
        self._as_user: dict[str, object] = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(self.workdir, entry.pw_uid, entry.pw_gid)
            self._as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        command = [os.path.join(self.bindir, args[0]), *args[1:]]
        result = subprocess.run(
            command,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "LC_ALL": "C", "PGTZ": "UTC"},
            **self._as_user,  # type: ignore[arg-type]
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
                f"\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError), open(self.logfile, encoding="utf-8") as stream:
            return "".join(stream.readlines()[-lines:])
        return ""

    def init(self) -> None:
        self._run(
            "initdb",
            "-D",
            self.datadir,
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )

    def allow(self, network: str, user: str) -> None:
        """Let `user` log in from `network` (a CIDR) with its password (initdb's own rules
        trust loopback only); before `start`."""
        with open(os.path.join(self.datadir, "pg_hba.conf"), "a", encoding="utf-8") as rules:
            rules.write(f"host all {user} {network} scram-sha-256\n")

    def start(self, timeout: float = 30.0) -> None:
        """Start (or restart after `stop`) on the same port; returns once it accepts."""
        listen = ",".join(self.listen_addresses)
        options = (
            f"-p {self.port} -k {self.workdir} -c listen_addresses={listen} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200 -c timezone=UTC"
        )
        self._run(
            "pg_ctl",
            "start",
            "-w",
            "-t",
            str(int(timeout)),
            "-D",
            self.datadir,
            "-l",
            self.logfile,
            "-o",
            options,
            timeout=timeout + 10,
        )

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop the server: `fast` disconnects clients; `immediate` is a crash."""
        self._run(
            "pg_ctl", "stop", "-w", "-t", str(int(timeout)), "-D", self.datadir, "-m", mode,
            timeout=timeout + 10,
        )  # fmt: skip

    def is_running(self) -> bool:
        if not os.path.exists(os.path.join(self.datadir, "postmaster.pid")):
            return False
        try:
            self._run("pg_ctl", "status", "-D", self.datadir, timeout=10)
        except RuntimeError:
            return False
        return True

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        conninfo = f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as connection:
            connection.execute(sql)  # type: ignore[arg-type]

    def create_database(self, name: str | None = None, owner: str = SUPERUSER) -> str:
        """Create an empty database; its URL."""
        name = name or f"test_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}" OWNER "{owner}"')
        return self.url(name)

    def create_user(self, name: str, password: str) -> None:
        self._admin(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'")

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def destroy(self) -> None:
        """Stop at once (if running) and remove every file."""
        try:
            if self.is_running():
                self.stop(mode="immediate")
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


def required_bindir() -> str:
    """`find_bindir()`, with psycopg importable; else the test is skipped, or under CI=true
    (.ci/run installs both) failed."""
    missing = pytest.fail if os.environ.get("CI") else pytest.skip
    bindir = find_bindir()
    if bindir is None:
        missing(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: bash scripts/install-postgres"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing("psycopg is not installed: pip install 'supervise[postgres]'")
    return bindir


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer(required_bindir())
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A new empty database on the session's server (started again if a test stopped it)."""
    if not postgres_server.is_running():
        postgres_server.start()
    name = f"test_{uuid.uuid4().hex[:12]}"
    url = postgres_server.create_database(name)
    yield url
    if not postgres_server.is_running():
        postgres_server.start()
    postgres_server.drop_database(name)
