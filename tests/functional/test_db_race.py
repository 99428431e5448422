"""Processes racing on one services database, on SQLite and on a real PostgreSQL cluster.

- 16 processes register the same (host, binary) at once on an empty database through the
  race guard (create; on ServiceBinaryExists re-read by host and binary): exactly one
  live row, and no process fails;
- 8 processes x 100 heartbeats (`service_report`) on one row: report_count is exactly 800;
- 16 processes call `ensure_schema` at once on a new SQLite file;
- 16 processes make the first `compute_node_update` of one host at once: one row;
- 4 processes x 6 threads register at once, as the conductor's workers do: one row (on
  SQLite, checking the file beside an open connection once dropped its locks).

The processes are forked (multiprocessing's fork start method) from a parent that has used
the same `Database` object, so each child also relies on the engine being disposed after
fork. They start together at a barrier; every wait has a deadline.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from supervise.db import (
    Database,
    DatabaseUnavailable,
    SchemaError,
    ServiceBinaryExists,
    migration,
)

if TYPE_CHECKING:
    from tests.pg import PostgresServer

HOST, BINARY, TOPIC = "node1", "nova-conductor", "conductor"
REGISTRANTS = 16
REPORTERS, REPORTS_EACH = 8, 100
DEADLINE = 60.0

FORK = multiprocessing.get_context("fork")


def _child(work: Callable[..., Any], args: tuple, barrier: Any, results: Any, index: int) -> None:
    try:
        barrier.wait()
        started = time.monotonic()
        value = work(*args)
        results.put((index, "ok", value, time.monotonic() - started))
    except BaseException as error:
        results.put((index, "failed", f"{error!r}\n{traceback.format_exc()}", 0.0))


def run_at_once(count: int, work: Callable[..., Any], *args: Any) -> tuple[list[Any], float]:
    """Run `work(*args)` in `count` forked processes released together by a barrier; their
    return values (in process order) and the seconds from the release to the last one."""
    barrier = FORK.Barrier(count + 1, timeout=DEADLINE)
    results = FORK.Queue()
    processes = [
        FORK.Process(target=_child, args=(work, args, barrier, results, i), daemon=True)
        for i in range(count)
    ]
    for process in processes:
        process.start()
    try:
        barrier.wait()
        released = time.monotonic()
        deadline = released + DEADLINE
        outcomes: dict[int, tuple[str, Any]] = {}
        while len(outcomes) < count:
            try:
                index, status, value, _ = results.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"only {len(outcomes)} of {count} processes finished in {DEADLINE} s"
                ) from None
            outcomes[index] = (status, value)
        elapsed = time.monotonic() - released
        for process in processes:
            process.join(timeout=max(0.1, deadline - time.monotonic()))
            assert process.exitcode == 0, f"process {process.pid} exited {process.exitcode}"
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(5)
    failures = [value for status, value in outcomes.values() if status != "ok"]
    assert not failures, f"{len(failures)} processes failed; the first:\n{failures[0]}"
    return [outcomes[i][1] for i in range(count)], elapsed


def register(db: Database) -> tuple[str, int]:
    outcome = race_guard(db)
    db.close()
    return outcome


def race_guard(db: Database) -> tuple[str, int]:
    """Service.start's race guard."""
    try:
        record = db.service_create({"host": HOST, "binary": BINARY, "topic": TOPIC})
        outcome = "created"
    except ServiceBinaryExists:
        record = db.service_get_by_host_and_binary(HOST, BINARY)
        assert record is not None, "ServiceBinaryExists, yet no record to re-read"
        outcome = "re-read"
    return outcome, record.id


def report(db: Database, service_id: int, times: int) -> int:
    for _ in range(times):
        db.service_report(service_id)
    db.close()
    return times


def ensure_schema_and_register(db: Database) -> tuple[str, int]:
    db.ensure_schema()
    return register(db)


def test_concurrent_registration_leaves_one_live_row(database: Database) -> None:
    assert database.service_get_all() == []  # the parent's pool now holds a connection
    outcomes, elapsed = run_at_once(REGISTRANTS, register, database)
    kinds = [kind for kind, _ in outcomes]
    ids = {service_id for _, service_id in outcomes}
    assert kinds.count("created") == 1, kinds
    assert kinds.count("re-read") == REGISTRANTS - 1, kinds
    assert len(ids) == 1
    live = database.service_get_all(host=HOST, binary=BINARY)
    assert [record.id for record in live] == list(ids)
    print(f"\n{database.url.get_backend_name()}: {REGISTRANTS} registrations in {elapsed:.3f} s")


def test_concurrent_reports_are_all_counted(database: Database) -> None:
    record = database.service_create({"host": HOST, "binary": BINARY, "topic": TOPIC})
    counts, elapsed = run_at_once(REPORTERS, report, database, record.id, REPORTS_EACH)
    assert sum(counts) == REPORTERS * REPORTS_EACH
    after = database.service_get(record.id)
    assert after.report_count == REPORTERS * REPORTS_EACH
    assert after.last_seen_up is not None and after.last_seen_up >= record.created_at
    print(
        f"\n{database.url.get_backend_name()}: {REPORTERS} x {REPORTS_EACH} reports in "
        f"{elapsed:.3f} s ({REPORTERS * REPORTS_EACH / elapsed:.0f}/s)"
    )


def update_compute_node(db: Database, vcpus: int) -> int:
    node = db.compute_node_update(HOST, {"vcpus": vcpus, "memory_mb": 1024})
    db.close()
    return node.id


def test_concurrent_first_compute_node_updates_leave_one_row(database: Database) -> None:
    assert database.compute_node_get_all() == []
    outcomes, elapsed = run_at_once(REGISTRANTS, update_compute_node, database, 8)
    ids = set(outcomes)
    nodes = database.compute_node_get_all()
    assert len(ids) == 1 and [node.id for node in nodes] == list(ids)
    assert (nodes[0].host, nodes[0].vcpus, nodes[0].memory_mb) == (HOST, 8, 1024)
    print(f"\n{database.url.get_backend_name()}: {REGISTRANTS} first updates in {elapsed:.3f} s")


def register_in_threads(db: Database, threads: int) -> list[tuple[str, int]]:
    outcomes: list[tuple[str, int]] = []
    workers = [
        threading.Thread(target=lambda: outcomes.append(race_guard(db))) for _ in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(DEADLINE)
    return outcomes


def test_concurrent_registration_from_threads_of_several_processes(database: Database) -> None:
    database.service_get_all()
    outcomes, _ = run_at_once(4, register_in_threads, database, 6)
    kinds = [kind for per_process in outcomes for kind, _ in per_process]
    assert len(kinds) == 24 and kinds.count("created") == 1, kinds
    assert len(database.service_get_all()) == 1


def test_concurrent_first_start_on_a_new_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "state" / "supervise.db"
    database = Database(f"sqlite:///{path}")
    outcomes, elapsed = run_at_once(REGISTRANTS, ensure_schema_and_register, database)
    kinds = [kind for kind, _ in outcomes]
    assert kinds.count("created") == 1, kinds
    assert len({service_id for _, service_id in outcomes}) == 1
    assert database.schema_revision() == migration.head()
    assert len(database.service_get_all()) == 1
    database.close()
    print(f"\nsqlite: {REGISTRANTS} x (ensure_schema + registration) in {elapsed:.3f} s")


def test_postgresql_needs_db_sync_and_ensure_schema_only_checks(postgres_url: str) -> None:
    database = Database(postgres_url)
    with pytest.raises(SchemaError, match="supervise db sync"):
        database.ensure_schema()
    with pytest.raises(SchemaError, match='relation "services" does not exist') as error:
        database.service_get_all()
    assert "\n" not in str(error.value)
    outcomes, _ = run_at_once(4, Database.sync, database)
    assert outcomes == [migration.head()] * 4
    assert database.ensure_schema() == migration.head()
    database.close()


def test_the_postgresql_server_can_stop_and_start(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    database = Database(postgres_url)
    database.sync()
    record = database.service_create({"host": HOST, "binary": BINARY, "topic": TOPIC})
    postgres_server.stop()
    try:
        with pytest.raises(DatabaseUnavailable, match="cannot reach the database") as error:
            database.service_report(record.id)
        assert "\n" not in str(error.value)
    finally:
        postgres_server.start()
    assert database.service_report(record.id).report_count == 1  # the pool recovers
    database.close()
