"""The local transport's queue file: exchanges, queues, bindings and messages in SQLite.

Everything another process must see lives in the file, bindings included, so a process that
declared nothing can publish. SQLite in WAL mode lets readers run beside one writer; every
read-modify-write runs in ``BEGIN IMMEDIATE`` with a busy timeout, so racing processes queue
for the write lock instead of failing or losing updates. Commits are not synced to disk, only
checkpoints are (``synchronous=NORMAL``): a commit survives any process's crash, and a power
cut may lose the last ones (as RabbitMQ loses the non-durable queues oslo uses) but leaves the
file sound.

A message delivered to a consumer stays in its row, marked with the connection and channel
that hold it (``owner``); an ack deletes it; the death of its holder, a closed channel or a
reject hands it back with ``redelivered`` set. Expired messages are dropped when a consumer
meets them and by a sweep that also removes queues unused past their ``x-expires``, the
connections of processes that died, and free pages beyond a few megabytes, so the file does
not grow without bound. A `Store` is one connection's session with the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from amqp.exceptions import NotFound, PreconditionFailed

from supervise import private_files
from supervise.rpc.embedded_wake import Identity, is_alive

APPLICATION_ID = 0x73757076  # "supv"
SCHEMA_VERSION = 1
LOCK_TIMEOUT = 5.0  # seconds a write waits for another process's lock
SWEEP_INTERVAL = 10.0  # seconds between sweeps, while the file is in use
WINDOW = 256  # ready messages looked at per queue and claim
FREE_PAGES_KEPT = 1024  # pages (4 MiB) left on the free list for reuse
WAL_SIZE_LIMIT = 8 << 20  # bytes the write-ahead log is truncated to after a checkpoint

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
INSERT INTO meta VALUES ('members', 0), ('swept_at', 0);
CREATE TABLE connections (
    id INTEGER PRIMARY KEY AUTOINCREMENT, pid INTEGER NOT NULL, started INTEGER NOT NULL);
CREATE TABLE exchanges (name TEXT PRIMARY KEY, type TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE queues (
    name TEXT PRIMARY KEY, expires_ms INTEGER, idle_since REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE bindings (
    exchange TEXT NOT NULL, routing_key TEXT NOT NULL, queue TEXT NOT NULL,
    wildcard INTEGER NOT NULL, PRIMARY KEY (exchange, routing_key, queue)) WITHOUT ROWID;
CREATE INDEX bindings_by_queue ON bindings (queue);
CREATE INDEX bindings_with_wildcards ON bindings (exchange) WHERE wildcard;
CREATE TABLE consumers (
    queue TEXT NOT NULL, connection INTEGER NOT NULL, channel INTEGER NOT NULL,
    tag TEXT NOT NULL, PRIMARY KEY (queue, connection, channel, tag)) WITHOUT ROWID;
CREATE INDEX consumers_by_connection ON consumers (connection, channel);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY, queue TEXT NOT NULL, owner INTEGER, channel INTEGER,
    redelivered INTEGER NOT NULL DEFAULT 0, expires_at REAL,
    exchange TEXT NOT NULL, routing_key TEXT NOT NULL, body BLOB NOT NULL,
    content_type TEXT, content_encoding TEXT, headers TEXT NOT NULL, properties TEXT NOT NULL);
CREATE INDEX messages_ready ON messages (queue, id) WHERE owner IS NULL;
CREATE INDEX messages_held ON messages (owner, channel) WHERE owner IS NOT NULL;
CREATE INDEX messages_expiring ON messages (expires_at) WHERE expires_at IS NOT NULL;
"""

STORED_COLUMNS = (
    "id, queue, redelivered, exchange, routing_key, body, content_type, content_encoding, "
    "headers, properties"
)


class QueueFileError(Exception):
    """An operation on the queue file failed; the message is one line."""


class QueueFileUnusable(QueueFileError):
    """The queue file cannot be opened or is not one; the message is one line."""


@dataclass(frozen=True)
class Outgoing:
    body: bytes
    content_type: str | None
    content_encoding: str | None
    headers: str  # JSON
    properties: str  # JSON
    expires_at: float | None


class Stored(NamedTuple):
    id: int
    queue: str
    redelivered: int
    exchange: str
    routing_key: str
    body: bytes
    content_type: str | None
    content_encoding: str | None
    headers: str
    properties: str


class Claim(NamedTuple):
    """What one channel asks for: up to `limit` messages from these queues. Messages of its
    `no_ack` queues are deleted as they are taken (AMQP's no-ack: delivered means done)."""

    channel: int
    queues: list[str]
    limit: int
    no_ack: frozenset[str] = frozenset()


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: words split on dots, ``*`` is one word, ``#`` zero or more."""
    words = routing_key.split(".")
    reachable = {0}  # how many words of the key the pattern matched so far
    for part in pattern.split("."):
        if part == "#":
            reachable = set(range(min(reachable), len(words) + 1)) if reachable else set()
        else:
            reachable = {n + 1 for n in reachable if n < len(words) and part in ("*", words[n])}
    return len(words) in reachable


def _has_wildcard(routing_key: str) -> bool:
    return any(word in ("*", "#") for word in routing_key.split("."))


def _json_list(items: Iterable[object]) -> str:
    return json.dumps(list(items))


class Store:
    def __init__(self, path: str):
        self.path = path
        self._db = _open(path)
        self.connection_id = 0
        self.pending_acks: list[int] = []

    def close(self) -> None:
        self._db.close()

    # ----- transactions -------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as error:
            raise QueueFileError(f"queue file {self.path}: {_describe(error)}") from None

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; acks waiting to be written go in it first."""
        db = self._db
        acks, self.pending_acks = self.pending_acks, []
        with self._errors():
            try:
                db.execute("BEGIN IMMEDIATE")
                if acks:
                    db.execute(
                        "DELETE FROM messages WHERE id IN (SELECT value FROM json_each(?)) "
                        "AND owner = ?",
                        (_json_list(acks), self.connection_id),
                    )
                yield db
                db.execute("COMMIT")
            except BaseException:
                self.pending_acks[:0] = acks
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    # ----- connections --------------------------------------------------------------------

    def register(self, identity: Identity) -> list[int]:
        """Join; return the connections that consume, to wake so they watch this process."""
        with self._write() as db:
            cursor = db.execute("INSERT INTO connections (pid, started) VALUES (?, ?)", identity)
            self.connection_id = cursor.lastrowid
            _members_changed(db)
            return [row[0] for row in db.execute("SELECT DISTINCT connection FROM consumers")]

    def unregister(self) -> list[int]:
        """Leave: hand back what this connection holds (redelivered); return whom to wake."""
        with self._write() as db:
            queues = _release(db, "owner = ?", (self.connection_id,), redelivered=True)
            _drop_consumers(db, "connection = ?", (self.connection_id,))
            db.execute("DELETE FROM connections WHERE id = ?", (self.connection_id,))
            _members_changed(db)
            return _consumers_of(db, queues)

    def members_version(self) -> int:
        with self._errors():
            return self._db.execute("SELECT value FROM meta WHERE key = 'members'").fetchone()[0]

    def connection_ids(self) -> set[int]:
        with self._errors():
            return {row[0] for row in self._db.execute("SELECT id FROM connections")}

    def peers(self) -> set[Identity]:
        """The other processes connected to the file."""
        with self._errors():
            rows = self._db.execute(
                "SELECT DISTINCT pid, started FROM connections WHERE pid != ?", (os.getpid(),)
            ).fetchall()
        return {Identity(*row) for row in rows}

    def reap(self, dead: Iterable[Identity]) -> tuple[list[int], int]:
        """Remove the connections of processes that died; hand back (redelivered) what they
        held. Return the connections to wake and how many messages went back."""
        with self._write() as db:
            queues, released = _reap(db, dead)
            return _consumers_of(db, queues), released

    def sweep(self, force: bool = False) -> list[int]:
        """Every SWEEP_INTERVAL at most, whoever comes first: reap the dead, drop expired
        messages and unused expiring queues. Return the connections to wake."""
        now = time.time()
        swept_at = "SELECT value FROM meta WHERE key = 'swept_at'"
        with self._errors():
            if not force and now - self._db.execute(swept_at).fetchone()[0] < SWEEP_INTERVAL:
                return []
        with self._write() as db:
            if not force and now - db.execute(swept_at).fetchone()[0] < SWEEP_INTERVAL:
                return []  # another process was quicker
            db.execute("UPDATE meta SET value = ? WHERE key = 'swept_at'", (now,))
            rows = db.execute("SELECT DISTINCT pid, started FROM connections").fetchall()
            queues, _ = _reap(db, [Identity(*row) for row in rows if not is_alive(Identity(*row))])
            db.execute("DELETE FROM messages WHERE expires_at <= ? AND owner IS NULL", (now,))
            unused = db.execute(
                "SELECT name FROM queues WHERE expires_ms IS NOT NULL "
                "AND idle_since + expires_ms / 1000.0 <= ? "
                "AND NOT EXISTS (SELECT 1 FROM consumers WHERE consumers.queue = queues.name)",
                (now,),
            ).fetchall()
            for (queue,) in unused:
                _delete_queue(db, queue)
            free_pages = db.execute("PRAGMA freelist_count").fetchone()[0]
            wake = _consumers_of(db, queues)
        if free_pages > 2 * FREE_PAGES_KEPT:
            with self._errors():  # a PRAGMA that executescript steps to its end
                self._db.executescript(
                    f"PRAGMA incremental_vacuum({free_pages - FREE_PAGES_KEPT});"
                )
        return wake

    # ----- exchanges, queues, bindings, consumers -----------------------------------------

    def declare_exchange(self, name: str, type: str, passive: bool) -> None:
        with self._errors():
            row = self._db.execute("SELECT type FROM exchanges WHERE name = ?", (name,)).fetchone()
        if row is None and not passive:
            with self._write() as db:
                db.execute("INSERT OR IGNORE INTO exchanges VALUES (?, ?)", (name, type))
                row = db.execute("SELECT type FROM exchanges WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"NOT_FOUND - no exchange {name!r}", method_sig=(40, 10))
        if not passive and row[0] != type:
            raise PreconditionFailed(
                f"PRECONDITION_FAILED - exchange {name!r} is of type {row[0]!r}, not {type!r}",
                method_sig=(40, 10),
            )

    def delete_exchange(self, name: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM bindings WHERE exchange = ?", (name,))
            db.execute("DELETE FROM exchanges WHERE name = ?", (name,))

    def declare_queue(self, name: str, expires_ms: int | None, passive: bool) -> tuple[int, int]:
        """Create the queue unless it exists; return its ready messages and its consumers."""
        if passive:
            with self._errors():
                return self._queue_counts(self._db, name)
        with self._write() as db:
            row = db.execute("SELECT expires_ms FROM queues WHERE name = ?", (name,)).fetchone()
            if row is None:
                db.execute("INSERT INTO queues VALUES (?, ?, ?)", (name, expires_ms, time.time()))
            elif row[0] != expires_ms:
                raise PreconditionFailed(
                    f"PRECONDITION_FAILED - inequivalent arg 'x-expires' for queue {name!r}: "
                    f"received {expires_ms!r} but current is {row[0]!r}",
                    method_sig=(50, 10),
                )
            else:
                db.execute("UPDATE queues SET idle_since = ? WHERE name = ?", (time.time(), name))
            return self._queue_counts(db, name)

    @staticmethod
    def _queue_counts(db: sqlite3.Connection, name: str) -> tuple[int, int]:
        if db.execute("SELECT 1 FROM queues WHERE name = ?", (name,)).fetchone() is None:
            raise NotFound(f"NOT_FOUND - no queue {name!r}", method_sig=(50, 10))
        ready = db.execute(
            "SELECT count(*) FROM messages WHERE queue = ? AND owner IS NULL "
            "AND (expires_at IS NULL OR expires_at > ?)",
            (name, time.time()),
        ).fetchone()[0]
        consumers = db.execute("SELECT count(*) FROM consumers WHERE queue = ?", (name,))
        return ready, consumers.fetchone()[0]

    def delete_queue(self, name: str, if_unused: bool, if_empty: bool) -> int:
        with self._write() as db:
            ready, consumers = self._queue_counts(db, name)
            if (if_unused and consumers) or (if_empty and ready):
                raise PreconditionFailed(
                    f"PRECONDITION_FAILED - queue {name!r} in use", method_sig=(50, 40)
                )
            return _delete_queue(db, name)

    def purge_queue(self, name: str) -> int:
        with self._write() as db:
            self._queue_counts(db, name)
            return db.execute(
                "DELETE FROM messages WHERE queue = ? AND owner IS NULL", (name,)
            ).rowcount

    def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        with self._write() as db:
            _require(db, "queues", queue, "queue")
            _require(db, "exchanges", exchange, "exchange")
            db.execute(
                "INSERT OR IGNORE INTO bindings VALUES (?, ?, ?, ?)",
                (exchange, routing_key, queue, _has_wildcard(routing_key)),
            )

    def unbind(self, queue: str, exchange: str, routing_key: str) -> None:
        with self._write() as db:
            db.execute(
                "DELETE FROM bindings WHERE exchange = ? AND routing_key = ? AND queue = ?",
                (exchange, routing_key, queue),
            )

    def add_consumer(self, queue: str, channel: int, tag: str) -> None:
        with self._write() as db:
            _require(db, "queues", queue, "queue")
            db.execute(
                "INSERT OR IGNORE INTO consumers VALUES (?, ?, ?, ?)",
                (queue, self.connection_id, channel, tag),
            )

    def remove_consumer(self, channel: int, tag: str) -> None:
        with self._write() as db:
            _drop_consumers(
                db, "connection = ? AND channel = ? AND tag = ?", (self.connection_id, channel, tag)
            )

    # ----- messages -----------------------------------------------------------------------

    def publish(self, exchange: str, routing_key: str, message: Outgoing) -> dict[str, list[int]]:
        """Store a copy in every queue the exchange routes to (none: dropped, as AMQP drops
        an unroutable message). Return the connections that consume each of those queues."""
        with self._write() as db:
            queues = _route(db, exchange, routing_key)
            db.executemany(
                "INSERT INTO messages (queue, expires_at, exchange, routing_key, body, "
                "content_type, content_encoding, headers, properties) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        queue,
                        message.expires_at,
                        exchange,
                        routing_key,
                        message.body,
                        message.content_type,
                        message.content_encoding,
                        message.headers,
                        message.properties,
                    )
                    for queue in queues
                ],
            )
            consumers: dict[str, list[int]] = {}
            for queue, connection in db.execute(
                "SELECT DISTINCT queue, connection FROM consumers "
                "WHERE queue IN (SELECT value FROM json_each(?)) ORDER BY connection",
                (_json_list(queues),),
            ):
                consumers.setdefault(queue, []).append(connection)
            return consumers

    def ready_queues(self, queues: Iterable[str]) -> set[str]:
        """Those of `queues` that have a message nobody holds (a read: takes no lock)."""
        with self._errors():
            rows = self._db.execute(
                "SELECT q.value FROM json_each(?) AS q WHERE EXISTS "
                "(SELECT 1 FROM messages WHERE queue = q.value AND owner IS NULL)",
                (_json_list(queues),),
            ).fetchall()
        return {row[0] for row in rows}

    def other_consumers(self, queues: Iterable[str]) -> list[int]:
        with self._errors():
            rows = self._db.execute(
                "SELECT DISTINCT connection FROM consumers "
                "WHERE queue IN (SELECT value FROM json_each(?)) AND connection != ?",
                (_json_list(queues), self.connection_id),
            ).fetchall()
        return [connection for (connection,) in rows]

    def claim(self, claims: list[Claim]) -> tuple[dict[int, list[Stored]], bool, set[str]]:
        """Hold messages for these channels, oldest first, dropping expired ones met on the
        way. Each takes no more than its share of a queue (ready messages / consuming
        connections, rounded up), so competing worker processes split a burst between them
        instead of the first one awake taking it all. Return the messages by channel,
        whether any expired message was dropped (there may be more behind it), and the
        queues where ready messages were left."""
        now = time.time()
        claimed: dict[int, list[Stored]] = {}
        left: set[str] = set()
        with self._write() as db:
            every_queue = {queue for claim in claims for queue in claim.queues}
            consumers = dict(
                db.execute(
                    "SELECT queue, count(DISTINCT connection) FROM consumers "
                    "WHERE queue IN (SELECT value FROM json_each(?)) GROUP BY queue",
                    (_json_list(every_queue),),
                )
            )
            expired: list[int] = []
            for claim in claims:
                live_by_queue: dict[str, list[int]] = {}
                chosen: list[int] = []
                for queue in claim.queues:
                    live = live_by_queue[queue] = []
                    for message_id, expires_at in db.execute(
                        "SELECT id, expires_at FROM messages WHERE queue = ? AND owner IS NULL "
                        "ORDER BY id LIMIT ?",
                        (queue, WINDOW),
                    ):
                        (live if expires_at is None or expires_at > now else expired).append(
                            message_id
                        )
                    share = -(-len(live) // max(1, consumers.get(queue, 1)))
                    chosen.extend(live[:share])
                chosen = sorted(chosen)[: claim.limit]
                taken = set(chosen)
                left.update(q for q, live in live_by_queue.items() if not taken.issuperset(live))
                held = [i for q in claim.queues if q not in claim.no_ack for i in live_by_queue[q]]
                rows = []
                if taken.intersection(held):
                    rows += db.execute(
                        f"UPDATE messages SET owner = ?, channel = ? "
                        f"WHERE id IN (SELECT value FROM json_each(?)) RETURNING {STORED_COLUMNS}",
                        (self.connection_id, claim.channel, _json_list(taken.intersection(held))),
                    ).fetchall()
                if taken.difference(held):
                    rows += db.execute(
                        f"DELETE FROM messages WHERE id IN (SELECT value FROM json_each(?)) "
                        f"RETURNING {STORED_COLUMNS}",
                        (_json_list(taken.difference(held)),),
                    ).fetchall()
                if rows:
                    claimed[claim.channel] = sorted(Stored(*row) for row in rows)
            if expired:
                db.execute(
                    "DELETE FROM messages WHERE id IN (SELECT value FROM json_each(?))",
                    (_json_list(expired),),
                )
        return claimed, bool(expired), left

    def flush_acks(self) -> None:
        with self._write():
            pass

    def release(self, channel: int, ids: Iterable[int], *, redelivered: bool) -> list[int]:
        """Hand back these messages that this channel holds. Return the connections to wake."""
        where = "owner = ? AND channel = ? AND id IN (SELECT value FROM json_each(?))"
        with self._write() as db:
            args = (self.connection_id, channel, _json_list(ids))
            return _consumers_of(db, _release(db, where, args, redelivered=redelivered))

    def close_channel(self, channel: int) -> list[int]:
        """As AMQP on a channel's close: its consumers go, what it holds is redelivered."""
        with self._write() as db:
            _drop_consumers(db, "connection = ? AND channel = ?", (self.connection_id, channel))
            where = "owner = ? AND channel = ?"
            queues = _release(db, where, (self.connection_id, channel), redelivered=True)
            return _consumers_of(db, queues)


# ----- helpers that run inside a write transaction -----------------------------------------


def _members_changed(db: sqlite3.Connection) -> None:
    db.execute("UPDATE meta SET value = value + 1 WHERE key = 'members'")


def _require(db: sqlite3.Connection, table: str, name: str, what: str) -> None:
    if not _exists(db, table, name):
        raise NotFound(f"NOT_FOUND - no {what} {name!r}", method_sig=(50, 20))


def _route(db: sqlite3.Connection, exchange: str, routing_key: str) -> list[str]:
    if not exchange:  # the default exchange: the routing key names the queue
        return [routing_key] if _exists(db, "queues", routing_key) else []
    row = db.execute("SELECT type FROM exchanges WHERE name = ?", (exchange,)).fetchone()
    if row is None:
        return []
    if row[0] == "fanout":
        rows = db.execute("SELECT DISTINCT queue FROM bindings WHERE exchange = ?", (exchange,))
        return [queue for (queue,) in rows]
    queues = [
        queue
        for (queue,) in db.execute(
            "SELECT queue FROM bindings WHERE exchange = ? AND routing_key = ?",
            (exchange, routing_key),
        )
    ]
    if row[0] == "topic":
        queues += [
            queue
            for queue, pattern in db.execute(
                "SELECT queue, routing_key FROM bindings WHERE exchange = ? AND wildcard",
                (exchange,),
            )
            if topic_matches(pattern, routing_key)
        ]
    return list(dict.fromkeys(queues))


def _exists(db: sqlite3.Connection, table: str, name: str) -> bool:
    return db.execute(f"SELECT 1 FROM {table} WHERE name = ?", (name,)).fetchone() is not None


def _consumers_of(db: sqlite3.Connection, queues: Iterable[str]) -> list[int]:
    rows = db.execute(
        "SELECT DISTINCT connection FROM consumers WHERE queue IN (SELECT value FROM json_each(?))",
        (_json_list(queues),),
    )
    return [connection for (connection,) in rows]


def _release(db: sqlite3.Connection, where: str, args: tuple, *, redelivered: bool) -> set[str]:
    rows = db.execute(f"SELECT DISTINCT queue FROM messages WHERE {where}", args)
    queues = {queue for (queue,) in rows}
    if queues:
        db.execute(
            f"UPDATE messages SET owner = NULL, channel = NULL, "
            f"redelivered = redelivered OR ? WHERE {where}",
            (redelivered, *args),
        )
    return queues


def _drop_consumers(db: sqlite3.Connection, where: str, args: tuple) -> None:
    rows = db.execute(f"SELECT DISTINCT queue FROM consumers WHERE {where}", args)
    queues = {queue for (queue,) in rows}
    db.execute(f"DELETE FROM consumers WHERE {where}", args)
    db.execute(
        "UPDATE queues SET idle_since = ? WHERE name IN (SELECT value FROM json_each(?)) "
        "AND NOT EXISTS (SELECT 1 FROM consumers WHERE consumers.queue = queues.name)",
        (time.time(), _json_list(queues)),
    )


def _reap(db: sqlite3.Connection, dead: Iterable[Identity]) -> tuple[set[str], int]:
    """Remove the connections of these processes; return the queues that got messages back,
    and how many."""
    queues: set[str] = set()
    released = 0
    for identity in dead:
        connections = db.execute(
            "SELECT id FROM connections WHERE pid = ? AND started = ?", identity
        ).fetchall()
        for (connection,) in connections:
            held = db.execute("SELECT count(*) FROM messages WHERE owner = ?", (connection,))
            released += held.fetchone()[0]
            queues |= _release(db, "owner = ?", (connection,), redelivered=True)
            _drop_consumers(db, "connection = ?", (connection,))
            db.execute("DELETE FROM connections WHERE id = ?", (connection,))
            _members_changed(db)
    return queues, released


def _delete_queue(db: sqlite3.Connection, name: str) -> int:
    count = db.execute("DELETE FROM messages WHERE queue = ?", (name,)).rowcount
    db.execute("DELETE FROM bindings WHERE queue = ?", (name,))
    db.execute("DELETE FROM consumers WHERE queue = ?", (name,))
    db.execute("DELETE FROM queues WHERE name = ?", (name,))
    return count


# ----- opening the file --------------------------------------------------------------------


def _open(path: str) -> sqlite3.Connection:
    """Open (or create) and check the queue file: private to this user (messages carry auth
    tokens), as SQLite's -wal and -shm beside it (`private_files`; SQLite gives them the
    mode of the file); never through a symlink. Every failure is one QueueFileUnusable line
    that says what to fix."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise QueueFileUnusable(f"no directory {directory}")
    try:
        private_files.create_file(path)
        for companion in ("-wal", "-shm"):
            private_files.check_file(path + companion)
        db = sqlite3.connect(
            f"file:{urllib.parse.quote(path)}?nofollow=1",
            uri=True,
            timeout=LOCK_TIMEOUT,
            isolation_level=None,
            check_same_thread=False,
        )
    except private_files.UnsafePath as error:
        raise QueueFileUnusable(str(error)) from None
    except (OSError, sqlite3.Error) as error:
        raise QueueFileUnusable(_open_failure(path, error)) from None
    try:
        db.execute("BEGIN")  # before changing anything in a file that may not be ours
        _check_schema(db, path)
        db.execute("COMMIT")
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect only on a new file
        _switch_to_wal(db, path)
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        db.execute("BEGIN IMMEDIATE")
        if not _check_schema(db, path):  # still new: nobody created it meanwhile
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
        damage = db.execute("PRAGMA quick_check").fetchone()[0]
        if damage != "ok":
            raise QueueFileUnusable(f"{path} is damaged: {damage}")
    except QueueFileUnusable:
        db.close()
        raise
    except sqlite3.Error as error:
        db.close()
        raise QueueFileUnusable(_open_failure(path, error)) from None
    return db


def _switch_to_wal(db: sqlite3.Connection, path: str) -> None:
    """WAL mode is stored in the file: only its first opener switches. SQLite answers
    "locked" at once, without waiting, when others open the new file at the same moment:
    retry until the lock timeout."""
    deadline = time.monotonic() + LOCK_TIMEOUT
    while db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        try:
            if db.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
                raise QueueFileUnusable(f"{path} cannot be switched to WAL mode")
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.001)


def _check_schema(db: sqlite3.Connection, path: str) -> bool:
    """True if the file holds our schema, False if it is empty; else QueueFileUnusable."""
    application_id = db.execute("PRAGMA application_id").fetchone()[0]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if application_id == APPLICATION_ID:
        if version != SCHEMA_VERSION:
            raise QueueFileUnusable(
                f"{path} has schema {version}; this supervise reads schema {SCHEMA_VERSION}"
            )
        return True
    if application_id != 0 or db.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]:
        raise QueueFileUnusable(f"{path} is a SQLite database of something else")
    return False


def _open_failure(path: str, error: Exception) -> str:
    directory = os.path.dirname(path)
    if isinstance(error, OSError):
        if not os.path.exists(path) and not os.access(directory, os.W_OK):
            return f"directory {directory} is read-only"
        return f"{path}: {error.strerror}"
    text = _describe(error)
    if "locked" in text:
        return f"{path} is locked by another process (waited {LOCK_TIMEOUT:g} s)"
    if "readonly" in text or "unable to open" in text:
        if not os.access(path, os.R_OK | os.W_OK):
            return f"{path} is read-only"
        if not os.access(directory, os.W_OK):
            return f"directory {directory} is read-only (SQLite keeps its log beside the file)"
    if "not a database" in text:
        return f"{path} is not a SQLite database (damaged, or some other file)"
    if "malformed" in text:
        return f"{path} is damaged: {text}"
    return f"{path}: {text}"


def _describe(error: sqlite3.Error) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if "locked" in text:
        return f"{text} (another process held it for more than {LOCK_TIMEOUT:g} s)"
    return text
