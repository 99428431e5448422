"""The services database: `Database(url)` and its service record API, with nova's semantics.

One `Database` per process role, never a module-global engine. Every method opens and
closes its own transaction and returns plain frozen records (`ServiceRecord`,
`ComputeNodeRecord`), so callers never hold a session or a connection. Errors are
`DatabaseError`s with one-line messages.

SQLite (the embedded default) runs in WAL mode with a busy timeout; SQLAlchemy, not the
sqlite3 module, emits BEGIN (pysqlite's own transaction handling is switched off with
``isolation_level = None``, the recipe of SQLAlchemy's SQLite documentation), and every
write transaction starts with ``BEGIN IMMEDIATE`` so that a read-modify-write takes the
write lock before it reads. PostgreSQL is reached through psycopg 3 (``postgresql://`` is
taken to mean ``postgresql+psycopg://``).

Engines are disposed in a forked child (``engine.dispose(close=False)``): the child opens
connections of its own and leaves the parent's sockets and files alone.

Times are naive datetimes in UTC, as nova's (see `utcnow`); `last_seen_up` is set from the
clock of the process reporting, as nova's servicegroup does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import sqlite3
import time
import uuid
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.url import URL, make_url
from sqlalchemy.pool import StaticPool

from supervise import private_files
from supervise.db import migration
from supervise.db.errors import (
    UNIQUE_HOST_BINARY,
    UNIQUE_HOST_TOPIC,
    BadDatabaseURL,
    DatabaseError,
    DatabaseFileError,
    DatabaseLocked,
    SchemaError,
    ServiceBinaryExists,
    ServiceNotFound,
    ServiceTopicExists,
    first_line,
    translate,
    violated_constraint,
)
from supervise.db.models import COLUMNS, RESOURCES, ComputeNode, Service, utcnow
from supervise.db.records import ComputeNodeRecord, ServiceRecord

SERVICES = Service.__table__
COMPUTE_NODES = ComputeNode.__table__
_BEGIN = "supervise_begin"


class Cancellable(Protocol):
    def raise_if_set(self) -> None: ...


# Engines alive in this process; a forked child disposes of them before anything else runs.
_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


def _dispose_after_fork() -> None:
    for engine in list(_ENGINES):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_dispose_after_fork)


def _make_directory(path: str) -> None:
    """Create the directory of an SQLite file when missing (0700), as a one-line error if
    not; refuse one another user could change (`private_files`)."""
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, mode=private_files.PRIVATE_DIRECTORY, exist_ok=True)
    except OSError as error:
        raise DatabaseFileError(
            f"cannot create the database directory {directory}: {error.strerror}"
        ) from error
    if not os.path.isdir(directory):
        raise DatabaseFileError(f"the database directory {directory} is not a directory")
    private_files.check_directory(directory)


_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def _check_files(path: str) -> None:
    """Before SQLite opens `path` by name: create it 0600 if missing, and refuse it, or its
    -wal or -shm, if it is a symlink or another user's (`private_files`). SQLite gives the
    files it creates the mode of the database file."""
    try:
        private_files.create_file(path)
    except OSError as error:
        if error.errno not in _READ_ONLY:
            raise DatabaseFileError(f"cannot open {path}: {error.strerror}") from error
    for name in (path, path + "-wal", path + "-shm"):
        with contextlib.suppress(OSError):  # unreadable: SQLite says what it cannot do
            private_files.check_file(name)


class Database:
    """The services database at `url`, any SQLAlchemy URL.

    `busy_timeout`: seconds an SQLite statement waits for another process's lock.
    `connect_timeout`: seconds to wait for a database server to answer a connection.
    """

    def __init__(self, url: str, *, busy_timeout: float = 30.0, connect_timeout: float = 10.0):
        try:
            parsed = make_url(url)
        except (sa_exc.ArgumentError, ValueError) as error:
            raise BadDatabaseURL(f"bad database URL {url!r}: {first_line(error)}") from None
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.busy_timeout = busy_timeout
        self.sqlite_path: str | None = None
        kwargs: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            connect_args: dict[str, Any] = {"timeout": busy_timeout, "check_same_thread": False}
            path = parsed.database or ""
            if parsed.query.get("uri") in ("true", "1"):
                path = path.removeprefix("file:").split("?", 1)[0]
            if path in ("", ":memory:") or parsed.query.get("mode") == "memory":
                kwargs["poolclass"] = StaticPool  # one process, one connection
            else:
                self.sqlite_path = os.path.abspath(path)
                if path == parsed.database:  # not a file: URI; keep working after a chdir
                    parsed = parsed.set(database=self.sqlite_path)
            kwargs["connect_args"] = connect_args
        else:
            kwargs["pool_pre_ping"] = True
            if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
                kwargs["connect_args"] = {"connect_timeout": max(1, round(connect_timeout))}
        self.url: URL = parsed
        self.safe_url = parsed.render_as_string(hide_password=True)
        try:
            self.engine: Engine = sa.create_engine(parsed, **kwargs)
        except (sa_exc.NoSuchModuleError, ModuleNotFoundError) as error:
            hint = (
                "; install supervise[postgres]" if parsed.get_backend_name() == "postgresql" else ""
            )
            raise BadDatabaseURL(
                f"no driver for the database URL {self.safe_url}: {first_line(error)}{hint}"
            ) from None
        except (sa_exc.ArgumentError, TypeError, ValueError) as error:
            raise BadDatabaseURL(f"bad database URL {self.safe_url}: {first_line(error)}") from None
        if self.is_sqlite:
            self._set_up_sqlite()
        # Read-modify-write transactions go through `writer`: on SQLite they BEGIN IMMEDIATE.
        self.writer: Engine = self.engine.execution_options(**{_BEGIN: "IMMEDIATE"})
        _ENGINES.add(self.engine)

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    def __repr__(self) -> str:
        return f"Database({self.safe_url!r})"

    def close(self) -> None:
        """Close the pooled connections; the object stays usable and reconnects on use."""
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- engine set-up ----------------------------------------------------------------------

    def _set_up_sqlite(self) -> None:
        path = self.sqlite_path
        busy_ms = int(self.busy_timeout * 1000)

        @event.listens_for(self.engine, "do_connect")
        def make_directory(dialect, connection_record, cargs, cparams):  # type: ignore[no-untyped-def]
            if path is not None:
                _make_directory(path)
                _check_files(path)

        @event.listens_for(self.engine, "connect")
        def on_connect(dbapi_connection, connection_record):  # type: ignore[no-untyped-def]
            # SQLAlchemy emits BEGIN itself (below); the sqlite3 module must not.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
                if path is not None:
                    (mode,) = cursor.execute("PRAGMA journal_mode").fetchone()
                    if mode.lower() != "wal":
                        try:
                            cursor.execute("PRAGMA journal_mode = WAL")
                        except sqlite3.OperationalError as error:
                            # A read-only file can still be read in its own mode.
                            if not getattr(error, "sqlite_errorname", "").startswith(
                                "SQLITE_READONLY"
                            ):
                                raise
                    # WAL with synchronous=NORMAL stays consistent after a crash.
                    cursor.execute("PRAGMA synchronous = NORMAL")
            finally:
                cursor.close()

        @event.listens_for(self.engine, "begin")
        def on_begin(connection):  # type: ignore[no-untyped-def]
            mode = connection.get_execution_options().get(_BEGIN)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")

    # -- transactions -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self, engine: Engine) -> Iterator[Connection]:
        try:
            with engine.begin() as connection:
                yield connection
        except DatabaseError:
            raise
        except (sa_exc.SQLAlchemyError, sqlite3.Error) as error:
            raise translate(error, self.safe_url) from error

    def reading(self) -> contextlib.AbstractContextManager[Connection]:
        """A read transaction (on SQLite a deferred BEGIN: readers never wait in WAL)."""
        return self._transaction(self.engine)

    def writing(self) -> contextlib.AbstractContextManager[Connection]:
        """A write transaction (on SQLite BEGIN IMMEDIATE: the write lock before any read)."""
        return self._transaction(self.writer)

    # -- schema -----------------------------------------------------------------------------

    def schema_revision(self) -> str | None:
        """The Alembic revision of the database; None when never synced."""
        with self.reading() as connection:
            return migration.current(connection)

    def sync(self) -> str:
        """Upgrade the schema to the head revision (`supervise db sync`); return it.

        Safe when several processes sync at once: on SQLite they take a file lock beside
        the database in turn, on PostgreSQL a transaction-level advisory lock.
        """
        with self._schema_lock():
            return self._upgrade()

    def ensure_schema(self, lock_timeout: float = 60.0) -> str:
        """Make sure the schema is at the head revision; return it.

        SQLite (the embedded default): sync it, serialised by a lock file beside the
        database, so that any number of processes may call this at once on a new file.
        A database server: only check, as an operator runs `supervise db sync` for it;
        SchemaError when it is behind.
        """
        if not self.is_sqlite:
            revision = self.schema_revision()
            self._check_revision(revision)
            return revision  # type: ignore[return-value]
        with self._schema_lock(lock_timeout):
            return self._upgrade()

    def prepare(self, cancel: Cancellable | None = None) -> None:
        """What a Service does first with its records backend: `ensure_schema`, unless the
        worker was told to stop meanwhile (`cancel`, the worker's hosted.Cancel)."""
        if cancel is not None:
            cancel.raise_if_set()
        self.ensure_schema()

    def _check_revision(self, revision: str | None) -> None:
        head = migration.head()
        if revision == head:
            return
        if revision is None:
            raise SchemaError(
                f"the database {self.safe_url} has no supervise schema; run 'supervise db sync'"
            )
        if migration.known(revision):
            raise SchemaError(
                f"the database {self.safe_url} is at schema revision {revision}, not {head}; "
                "run 'supervise db sync'"
            )
        raise SchemaError(
            f"the database {self.safe_url} is at schema revision {revision}, unknown to this "
            "supervise (a newer version's?)"
        )

    def _upgrade(self) -> str:
        if self.schema_revision() == migration.head():
            return migration.head()  # the common case, read-only: no write lock taken
        with self.writing() as connection:
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7418952131)")
            revision = migration.current(connection)
            if revision is not None and not migration.known(revision):
                self._check_revision(revision)
            if revision != migration.head():
                try:
                    migration.upgrade(connection)
                except (DatabaseError, sa_exc.SQLAlchemyError):
                    raise
                except Exception as error:  # alembic's CommandError and kin
                    raise SchemaError(
                        f"cannot migrate the database {self.safe_url}: {first_line(error)}"
                    ) from error
            return migration.head()

    @contextlib.contextmanager
    def _schema_lock(self, timeout: float = 60.0) -> Iterator[None]:
        """On an SQLite file, an exclusive flock on `<database>.lock`; else nothing."""
        if self.sqlite_path is None:
            yield
            return
        _make_directory(self.sqlite_path)
        lock_path = self.sqlite_path + ".lock"
        try:
            fd = private_files.open_file(lock_path)
        except OSError as error:
            if error.errno in _READ_ONLY:
                yield  # a read-only place: SQLite itself reports what cannot be done
                return
            raise DatabaseFileError(
                f"cannot open the lock file {lock_path}: {error.strerror}"
            ) from error
        try:
            deadline = time.monotonic() + timeout
            delay = 0.001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise DatabaseLocked(
                            f"{self.safe_url}: another process held {lock_path} for more "
                            f"than {timeout:g} s"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
            yield
        finally:
            os.close(fd)  # also releases the lock

    # -- service records --------------------------------------------------------------------

    @staticmethod
    def _columns(values: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(values) - set(COLUMNS)
        if unknown:
            raise ValueError(f"not columns of services: {', '.join(sorted(unknown))}")
        return dict(values)

    @staticmethod
    def _live(service_id: int) -> sa.ColumnElement[bool]:
        return sa.and_(SERVICES.c.id == service_id, SERVICES.c.deleted == 0)

    def _exists_error(
        self, error: sa_exc.IntegrityError, values: Mapping[str, Any]
    ) -> DatabaseError:
        constraint = violated_constraint(error)
        if constraint == UNIQUE_HOST_BINARY:
            return ServiceBinaryExists(values.get("host"), values.get("binary"))
        if constraint == UNIQUE_HOST_TOPIC:
            return ServiceTopicExists(values.get("host"), values.get("topic"))
        return translate(error, self.safe_url)

    @contextlib.contextmanager
    def _binary_first(
        self, values: Mapping[str, Any], updating: int | None = None
    ) -> Iterator[None]:
        """A row clashing on both constraints is reported as ServiceBinaryExists whichever
        constraint the database checked first (SQLite the last declared, PostgreSQL the
        first created): the race guard re-reads by (host, binary)."""
        try:
            yield
        except ServiceTopicExists as error:
            host, binary = values.get("host"), values.get("binary")
            if host is not None and binary is not None:
                other = self.service_get_by_host_and_binary(host, binary)
                if other is not None and other.id != updating:
                    raise ServiceBinaryExists(host, binary) from error
            raise

    @staticmethod
    def _get(connection: Connection, service_id: int) -> ServiceRecord:
        row = connection.execute(sa.select(SERVICES).where(Database._live(service_id))).first()
        if row is None:
            raise ServiceNotFound(service_id)
        return ServiceRecord.from_row(row)

    def service_get(self, service_id: int) -> ServiceRecord:
        """The live service `service_id`; ServiceNotFound if none (or soft-deleted)."""
        with self.reading() as connection:
            return self._get(connection, service_id)

    def service_get_by_host_and_binary(self, host: str, binary: str) -> ServiceRecord | None:
        """The live service of (host, binary), None if none: as nova's
        objects.Service.get_by_host_and_binary, the lookup of Service.start."""
        query = sa.select(SERVICES).where(
            SERVICES.c.host == host, SERVICES.c.binary == binary, SERVICES.c.deleted == 0
        )
        with self.reading() as connection:
            row = connection.execute(query).first()
        return None if row is None else ServiceRecord.from_row(row)

    def service_get_all(
        self, host: str | None = None, binary: str | None = None, disabled: bool | None = None
    ) -> list[ServiceRecord]:
        """Live services, by id, optionally only those of a host, a binary, a disabled state."""
        query = sa.select(SERVICES).where(SERVICES.c.deleted == 0).order_by(SERVICES.c.id)
        if host is not None:
            query = query.where(SERVICES.c.host == host)
        if binary is not None:
            query = query.where(SERVICES.c.binary == binary)
        if disabled is not None:
            query = query.where(SERVICES.c.disabled == disabled)
        with self.reading() as connection:
            return [ServiceRecord.from_row(row) for row in connection.execute(query)]

    def service_create(self, values: Mapping[str, Any]) -> ServiceRecord:
        """Insert a service record; a uuid is generated unless given.

        ServiceBinaryExists when a live record has the same (host, binary), else
        ServiceTopicExists when one has the same (host, topic). The race guard of a
        caller: on ServiceExists, re-read with service_get_by_host_and_binary.
        """
        values = self._columns(values)
        values.setdefault("uuid", str(uuid.uuid4()))
        with self._binary_first(values), self.writing() as connection:
            try:
                result = connection.execute(sa.insert(SERVICES).values(values))
            except sa_exc.IntegrityError as error:
                raise self._exists_error(error, values) from error
            return self._get(connection, result.inserted_primary_key[0])

    def service_update(self, service_id: int, values: Mapping[str, Any]) -> ServiceRecord:
        """Update a live record and return it, as nova's service_update: a report_count
        greater than the stored one also sets last_seen_up. ServiceNotFound if none."""
        values = self._columns(values)
        now = utcnow()
        merged: dict[str, Any] = {}
        with self._binary_first(merged, service_id), self.writing() as connection:
            current = self._get(connection, service_id)
            if "report_count" in values and values["report_count"] > current.report_count:
                values.setdefault("last_seen_up", now)
            values.setdefault("updated_at", now)
            merged.update(dataclasses.asdict(current), **values)
            try:
                connection.execute(sa.update(SERVICES).where(self._live(service_id)).values(values))
            except sa_exc.IntegrityError as error:
                raise self._exists_error(error, merged) from error
            return self._get(connection, service_id)

    def service_report(self, service_id: int) -> ServiceRecord:
        """The heartbeat: one atomic ``UPDATE services SET report_count = report_count + 1,
        last_seen_up = now, updated_at = now`` of a live record; returns the record after it.
        ServiceNotFound if the record is gone."""
        now = utcnow()
        statement = (
            sa.update(SERVICES)
            .where(self._live(service_id))
            .values(report_count=SERVICES.c.report_count + 1, last_seen_up=now, updated_at=now)
        )
        with self.writing() as connection:
            if connection.dialect.update_returning:
                row = connection.execute(statement.returning(*SERVICES.c)).first()
                if row is None:
                    raise ServiceNotFound(service_id)
                return ServiceRecord.from_row(row)
            if connection.execute(statement).rowcount != 1:
                raise ServiceNotFound(service_id)
            return self._get(connection, service_id)

    def service_destroy(self, service_id: int) -> None:
        """Soft-delete a live record, as nova: deleted = id, deleted_at = now, updated_at
        kept. The same (host, binary) can then register again. ServiceNotFound if none."""
        statement = (
            sa.update(SERVICES)
            .where(self._live(service_id))
            .values(deleted=SERVICES.c.id, deleted_at=utcnow(), updated_at=SERVICES.c.updated_at)
        )
        with self.writing() as connection:
            if connection.execute(statement).rowcount != 1:
                raise ServiceNotFound(service_id)

    def service_get_minimum_version(self, binary: str) -> int | None:
        """The lowest version among the live services of `binary` (not deleted, not forced
        down), as nova's service_get_minimum_version; None when there are none."""
        query = sa.select(sa.func.min(SERVICES.c.version)).where(
            SERVICES.c.binary == binary,
            SERVICES.c.deleted == 0,
            SERVICES.c.forced_down == sa.false(),
        )
        with self.reading() as connection:
            return connection.execute(query).scalar()

    # -- compute nodes ----------------------------------------------------------------------

    def compute_node_update(self, host: str, values: Mapping[str, Any]) -> ComputeNodeRecord:
        """Set the resources of `host`'s live compute node, creating it if missing (absent
        resources start at 0); return it. One ``INSERT ... ON CONFLICT (host, deleted) DO
        UPDATE`` on both SQLite and PostgreSQL: two first updates at once leave one row."""
        unknown = set(values) - set(RESOURCES)
        if unknown:
            raise ValueError(f"not resources of compute_nodes: {', '.join(sorted(unknown))}")
        with self.writing() as connection:
            dialect = postgresql if connection.dialect.name == "postgresql" else sqlite_dialect
            statement = (
                dialect.insert(COMPUTE_NODES)
                .values(host=host, **values)
                .on_conflict_do_update(
                    index_elements=[COMPUTE_NODES.c.host, COMPUTE_NODES.c.deleted],
                    set_={**values, "updated_at": utcnow()},
                )
                .returning(*COMPUTE_NODES.c)
            )
            return ComputeNodeRecord.from_row(connection.execute(statement).one())

    def compute_node_get_by_host(self, host: str) -> ComputeNodeRecord | None:
        query = sa.select(COMPUTE_NODES).where(
            COMPUTE_NODES.c.host == host, COMPUTE_NODES.c.deleted == 0
        )
        with self.reading() as connection:
            row = connection.execute(query).first()
        return None if row is None else ComputeNodeRecord.from_row(row)

    def compute_node_get_all(self) -> list[ComputeNodeRecord]:
        """The live compute nodes, by id."""
        live = COMPUTE_NODES.c.deleted == 0
        query = sa.select(COMPUTE_NODES).where(live).order_by(COMPUTE_NODES.c.id)
        with self.reading() as connection:
            return [ComputeNodeRecord.from_row(row) for row in connection.execute(query)]
