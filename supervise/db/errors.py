"""Database errors: each message is one line meant for an operator.

Every error this package raises is a `DatabaseError`. The SQLAlchemy and DBAPI exceptions
under them are translated by `translate`, so callers never see a driver's multi-line text
or a SQLAlchemy "Background on this error" link.

    DatabaseError
    ├── BadDatabaseURL          the URL cannot be parsed or names an unsupported driver
    ├── DatabaseUnavailable     transient: server unreachable, connection lost, ...
    │   └── DatabaseLocked      SQLite: the busy timeout expired on a lock
    ├── DatabaseFileError       SQLite: the file or its directory cannot be opened or created
    │   ├── DatabaseReadOnly    SQLite: the file, or its file system, is read-only
    │   └── DatabaseCorrupt     SQLite: not a database, or a malformed one
    ├── SchemaError             tables missing or of another version: run `supervise db sync`
    ├── ServiceNotFound         no live service record with that id
    └── ServiceExists           create (or update) hit a unique constraint
        ├── ServiceBinaryExists     (host, binary, deleted)
        └── ServiceTopicExists      (host, topic, deleted)
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import exc as sa_exc

UNIQUE_HOST_BINARY = "uniq_services0host0binary0deleted"
UNIQUE_HOST_TOPIC = "uniq_services0host0topic0deleted"
UNIQUE_COMPUTE_HOST = "uniq_compute_nodes0host0deleted"


class DatabaseError(Exception):
    """Base of every error of supervise.db; the message is one line."""


class BadDatabaseURL(DatabaseError):
    pass


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached now; trying again later may work."""


class DatabaseLocked(DatabaseUnavailable):
    pass


class DatabaseFileError(DatabaseError):
    pass


class DatabaseReadOnly(DatabaseFileError):
    pass


class DatabaseCorrupt(DatabaseFileError):
    pass


class SchemaError(DatabaseError):
    pass


class ServiceNotFound(DatabaseError):
    def __init__(self, service_id: int):
        super().__init__(f"service {service_id} could not be found")
        self.service_id = service_id


class ServiceExists(DatabaseError):
    """A live service already has this (host, binary) or (host, topic)."""


class ServiceBinaryExists(ServiceExists):
    def __init__(self, host: str | None, binary: str | None):
        super().__init__(f"service with host {host} binary {binary} exists")
        self.host = host
        self.binary = binary


class ServiceTopicExists(ServiceExists):
    def __init__(self, host: str | None, topic: str | None):
        super().__init__(f"service with host {host} topic {topic} exists")
        self.host = host
        self.topic = topic


def first_line(error: BaseException | str) -> str:
    """The first non-blank line of an error's text, stripped."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__ if isinstance(error, BaseException) else ""


def violated_constraint(error: sa_exc.IntegrityError) -> str | None:
    """Which unique constraint of `services` an IntegrityError is about, if either."""
    orig = error.orig
    diag = getattr(orig, "diag", None)  # psycopg: the constraint's name
    name = getattr(diag, "constraint_name", None)
    if name in (UNIQUE_HOST_BINARY, UNIQUE_HOST_TOPIC):
        return name
    # SQLite: "UNIQUE constraint failed: services.host, services.binary, services.deleted"
    text = str(orig)
    if "services.binary" in text or UNIQUE_HOST_BINARY in text:
        return UNIQUE_HOST_BINARY
    if "services.topic" in text or UNIQUE_HOST_TOPIC in text:
        return UNIQUE_HOST_TOPIC
    return None


def _sqlite_error(orig: sqlite3.Error, where: str) -> DatabaseError:
    name = getattr(orig, "sqlite_errorname", "") or ""
    text = first_line(orig)
    message = f"{where}: {text}"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in text:
        return DatabaseLocked(f"{message} (another process holds it too long)")
    if name.startswith("SQLITE_READONLY") or "readonly database" in text:
        return DatabaseReadOnly(message)
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "not a database" in text:
        return DatabaseCorrupt(message)
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_FULL", "SQLITE_PERM")):
        return DatabaseFileError(message)
    if "no such table" in text or "no such column" in text:
        return SchemaError(f"{message}; run 'supervise db sync'")
    return DatabaseError(message)


def translate(error: Exception, where: str) -> DatabaseError:
    """A one-line DatabaseError for an exception raised by SQLAlchemy or its driver.

    `where` names the database (its URL without the password) and starts the message.
    """
    if isinstance(error, DatabaseError):
        return error
    orig: Any = getattr(error, "orig", None) or error
    if isinstance(orig, sqlite3.Error):
        return _sqlite_error(orig, where)
    text = first_line(orig)
    sqlstate = getattr(orig, "sqlstate", None) or ""
    if sqlstate == "42P01" or ("relation" in text and "does not exist" in text):
        return SchemaError(f"{where}: {text}; run 'supervise db sync'")
    if isinstance(error, sa_exc.DBAPIError) and (
        error.connection_invalidated
        or isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError)
    ):
        return DatabaseUnavailable(f"cannot reach the database {where}: {text}")
    if isinstance(error, sa_exc.TimeoutError):
        return DatabaseUnavailable(f"{where}: no database connection free in time: {text}")
    return DatabaseError(f"{where}: {type(orig).__name__}: {text}")
