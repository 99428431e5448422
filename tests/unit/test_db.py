"""supervise.db on SQLite: nova's service record semantics, migrations, one-line errors.

Each test has a database file of its own in tmp_path. The concurrent cases (16 processes
registering at once, 8 reporting at once) and PostgreSQL are in
tests/functional/test_db_race.py.
"""

from __future__ import annotations

import datetime
import os
import pwd
import shutil
import socket
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event

from supervise.config import Config
from supervise.db import (
    BadDatabaseURL,
    Database,
    DatabaseCorrupt,
    DatabaseError,
    DatabaseFileError,
    DatabaseLocked,
    DatabaseReadOnly,
    DatabaseUnavailable,
    SchemaError,
    ServiceBinaryExists,
    ServiceExists,
    ServiceNotFound,
    ServiceRecord,
    ServiceTopicExists,
    cli,
    migration,
    utcnow,
)
from supervise.db.models import Base

CONDUCTOR = {"host": "node1", "binary": "nova-conductor", "topic": "conductor"}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "supervise.db"


@pytest.fixture
def db(db_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{db_path}")
    database.ensure_schema()
    yield database
    database.close()


def assert_one_line(error: BaseException, *fragments: str) -> str:
    message = str(error)
    assert message.strip(), "the message is empty"
    assert "\n" not in message and "\r" not in message, f"not one line: {message!r}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from {message!r}"
    return message


def register(db: Database, values: dict[str, str]) -> ServiceRecord:
    """The race guard of Service.start: create, or re-read what a sibling created."""
    try:
        return db.service_create(values)
    except ServiceBinaryExists:
        record = db.service_get_by_host_and_binary(values["host"], values["binary"])
        assert record is not None
        return record


# ----- create and the unique constraints ---------------------------------------------------


def test_create_fills_nova_defaults(db: Database) -> None:
    before = utcnow()
    record = db.service_create(CONDUCTOR)
    assert isinstance(record, ServiceRecord)
    assert (record.host, record.binary, record.topic) == ("node1", "nova-conductor", "conductor")
    assert record.report_count == 0
    assert record.disabled is False and record.disabled_reason is None
    assert record.forced_down is False
    assert record.version == 0
    assert record.deleted == 0 and record.deleted_at is None
    assert record.last_seen_up is None and record.updated_at is None
    assert len(record.uuid or "") == 36
    # naive UTC, as nova's
    assert record.created_at is not None and record.created_at.tzinfo is None
    assert before <= record.created_at <= utcnow()
    now_utc = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    assert abs(now_utc - record.created_at) < datetime.timedelta(seconds=5)
    assert db.service_get(record.id) == record


def test_records_are_frozen(db: Database) -> None:
    record = db.service_create(CONDUCTOR)
    with pytest.raises(AttributeError):
        record.host = "other"  # type: ignore[misc]


def test_create_keeps_given_values(db: Database) -> None:
    record = db.service_create(
        {**CONDUCTOR, "uuid": "1b7c8e0c-3a34-4e52-9d62-0c6e3c0e2d10", "disabled": True,
         "disabled_reason": "maintenance", "version": 66}
    )  # fmt: skip
    assert record.uuid == "1b7c8e0c-3a34-4e52-9d62-0c6e3c0e2d10"
    assert (record.disabled, record.disabled_reason, record.version) == (True, "maintenance", 66)


def test_create_rejects_unknown_columns(db: Database) -> None:
    with pytest.raises(ValueError, match="availability_zone"):
        db.service_create({**CONDUCTOR, "availability_zone": "nova"})


def test_same_host_and_binary_raises_service_binary_exists(db: Database) -> None:
    db.service_create(CONDUCTOR)
    with pytest.raises(ServiceBinaryExists) as error:
        db.service_create({**CONDUCTOR, "topic": "other-topic"})
    assert isinstance(error.value, ServiceExists) and isinstance(error.value, DatabaseError)
    assert_one_line(error.value, "node1", "nova-conductor")


def test_same_host_and_topic_raises_service_topic_exists(db: Database) -> None:
    db.service_create(CONDUCTOR)
    with pytest.raises(ServiceTopicExists) as error:
        db.service_create({**CONDUCTOR, "binary": "nova-other"})
    assert isinstance(error.value, ServiceExists)
    assert_one_line(error.value, "node1", "conductor")


def test_a_clash_on_both_constraints_is_reported_as_binary_exists(db: Database) -> None:
    db.service_create(CONDUCTOR)
    with pytest.raises(ServiceBinaryExists):
        db.service_create(CONDUCTOR)


def test_other_hosts_and_binaries_coexist(db: Database) -> None:
    a = db.service_create(CONDUCTOR)
    b = db.service_create({**CONDUCTOR, "host": "node2"})
    c = db.service_create({"host": "node1", "binary": "nova-scheduler", "topic": "scheduler"})
    assert len({a.id, b.id, c.id}) == 3


def test_race_guard_rereads_the_winner(db: Database) -> None:
    winner = db.service_create(CONDUCTOR)
    loser = register(db, CONDUCTOR)
    assert loser == winner
    assert len(db.service_get_all(host="node1", binary="nova-conductor")) == 1


# ----- reads -------------------------------------------------------------------------------


def test_get_by_host_and_binary(db: Database) -> None:
    assert db.service_get_by_host_and_binary("node1", "nova-conductor") is None
    record = db.service_create(CONDUCTOR)
    assert db.service_get_by_host_and_binary("node1", "nova-conductor") == record
    assert db.service_get_by_host_and_binary("node2", "nova-conductor") is None
    assert db.service_get_by_host_and_binary("node1", "nova-scheduler") is None


def test_get_missing_raises_service_not_found(db: Database) -> None:
    with pytest.raises(ServiceNotFound) as error:
        db.service_get(42)
    assert_one_line(error.value, "42")


def test_get_all_filters(db: Database) -> None:
    a = db.service_create(CONDUCTOR)
    b = db.service_create({"host": "node1", "binary": "nova-scheduler", "topic": "scheduler"})
    c = db.service_create({**CONDUCTOR, "host": "node2"})
    d = db.service_create({"host": "node2", "binary": "nova-compute", "topic": "compute"})
    db.service_update(d.id, {"disabled": True, "disabled_reason": "broken disk"})
    ids = lambda records: [r.id for r in records]  # noqa: E731
    assert ids(db.service_get_all()) == [a.id, b.id, c.id, d.id]
    assert ids(db.service_get_all(host="node1")) == [a.id, b.id]
    assert ids(db.service_get_all(binary="nova-conductor")) == [a.id, c.id]
    assert ids(db.service_get_all(host="node2", binary="nova-conductor")) == [c.id]
    assert ids(db.service_get_all(host="node3")) == []
    assert ids(db.service_get_all(disabled=True)) == [d.id]
    assert ids(db.service_get_all(host="node2", disabled=False)) == [c.id]


# ----- update and report -------------------------------------------------------------------


def test_update_changes_fields_and_updated_at(db: Database) -> None:
    record = db.service_create(CONDUCTOR)
    updated = db.service_update(record.id, {"disabled": True, "disabled_reason": "upgrade"})
    assert (updated.disabled, updated.disabled_reason) == (True, "upgrade")
    assert updated.updated_at is not None and updated.updated_at >= record.created_at
    assert updated.report_count == 0 and updated.last_seen_up is None
    assert db.service_get(record.id) == updated
    forced = db.service_update(record.id, {"forced_down": True})
    assert forced.forced_down is True and forced.disabled is True


def test_update_of_a_greater_report_count_sets_last_seen_up(db: Database) -> None:
    record = db.service_create(CONDUCTOR)
    updated = db.service_update(record.id, {"report_count": 3})
    assert updated.report_count == 3 and updated.last_seen_up is not None
    again = db.service_update(record.id, {"report_count": 3, "topic": "conductor2"})
    assert again.last_seen_up == updated.last_seen_up


def test_update_missing_or_bad_values(db: Database) -> None:
    record = db.service_create(CONDUCTOR)
    with pytest.raises(ServiceNotFound):
        db.service_update(record.id + 1, {"disabled": True})
    with pytest.raises(ValueError, match="bogus"):
        db.service_update(record.id, {"bogus": 1})


def test_update_onto_another_record_raises_exists(db: Database) -> None:
    db.service_create(CONDUCTOR)
    other = db.service_create({"host": "node1", "binary": "nova-scheduler", "topic": "scheduler"})
    with pytest.raises(ServiceTopicExists):
        db.service_update(other.id, {"topic": "conductor"})
    with pytest.raises(ServiceBinaryExists):
        db.service_update(other.id, {"binary": "nova-conductor"})
    # Its own (host, binary) is no clash: only the topic is.
    assert db.service_update(other.id, {"topic": "scheduler2"}).topic == "scheduler2"


def test_report_increments_and_sets_last_seen_up(db: Database) -> None:
    record = db.service_create(CONDUCTOR)
    first = db.service_report(record.id)
    assert first.report_count == 1
    assert first.last_seen_up is not None and first.last_seen_up >= record.created_at
    assert first.updated_at == first.last_seen_up
    second = db.service_report(record.id)
    assert second.report_count == 2 and second.last_seen_up >= first.last_seen_up
    assert db.service_get(record.id).report_count == 2


def test_report_is_one_atomic_update(db: Database) -> None:
    """No read-modify-write: the transaction holds exactly one statement, an UPDATE that
    adds 1 to the stored report_count in the database."""
    record = db.service_create(CONDUCTOR)
    statements: list[str] = []

    @event.listens_for(db.engine, "before_cursor_execute")
    def capture(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        statements.append(" ".join(statement.split()))

    db.service_report(record.id)
    event.remove(db.engine, "before_cursor_execute", capture)
    assert statements[0] == "BEGIN IMMEDIATE"
    work = [s for s in statements[1:] if s not in ("COMMIT",)]
    assert len(work) == 1, work
    assert work[0].startswith("UPDATE services SET")
    assert "report_count=(services.report_count + ?)" in work[0]


def test_report_of_a_missing_or_deleted_record(db: Database) -> None:
    record = db.service_create(CONDUCTOR)
    with pytest.raises(ServiceNotFound):
        db.service_report(record.id + 1)
    db.service_destroy(record.id)
    with pytest.raises(ServiceNotFound):
        db.service_report(record.id)


# ----- soft delete -------------------------------------------------------------------------


def test_destroy_soft_deletes_and_the_service_registers_again(db: Database) -> None:
    record = db.service_report(db.service_create(CONDUCTOR).id)
    db.service_destroy(record.id)
    assert db.service_get_by_host_and_binary("node1", "nova-conductor") is None
    assert db.service_get_all() == []
    with pytest.raises(ServiceNotFound):
        db.service_get(record.id)
    with pytest.raises(ServiceNotFound):
        db.service_destroy(record.id)
    with db.reading() as connection:
        row = connection.execute(
            sa.text("SELECT deleted, deleted_at, updated_at FROM services WHERE id = :id"),
            {"id": record.id},
        ).one()
    assert row.deleted == record.id
    assert row.deleted_at is not None
    again = db.service_create(CONDUCTOR)
    assert again.id != record.id and again.deleted == 0
    assert db.service_get_by_host_and_binary("node1", "nova-conductor") == again
    # and the second registration can go too: (host, binary, deleted=id) stays unique
    db.service_destroy(again.id)
    assert db.service_create(CONDUCTOR).report_count == 0


def test_destroy_keeps_updated_at(db: Database) -> None:
    record = db.service_report(db.service_create(CONDUCTOR).id)
    db.service_destroy(record.id)
    with db.reading() as connection:
        updated_at = connection.execute(
            sa.select(sa.column("updated_at")).select_from(sa.table("services"))
        ).scalar_one()
    assert str(updated_at).startswith(str(record.updated_at)[:19])


# ----- migrations --------------------------------------------------------------------------


def test_sync_upgrades_an_empty_file_and_is_idempotent(db_path: Path) -> None:
    database = Database(f"sqlite:///{db_path}")
    assert not db_path.parent.exists()
    assert database.schema_revision() is None
    assert database.sync() == migration.head()
    assert database.schema_revision() == migration.head()
    record = database.service_create(CONDUCTOR)
    assert database.sync() == migration.head()
    assert database.ensure_schema() == migration.head()
    assert database.service_get(record.id) == record
    with database.reading() as connection:
        tables = set(sa.inspect(connection).get_table_names())
        journal = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
    assert tables == {"alembic_version", "services", "compute_nodes"}
    assert journal == "wal"
    database.close()


def test_migrations_create_what_the_model_declares(db: Database) -> None:
    with db.reading() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        inspector = sa.inspect(connection)
        uniques = {
            u["name"]: u["column_names"] for u in inspector.get_unique_constraints("services")
        }
        indexes = {i["name"]: i for i in inspector.get_indexes("services")}
    assert differences == []
    assert uniques == {
        "uniq_services0host0binary0deleted": ["host", "binary", "deleted"],
        "uniq_services0host0topic0deleted": ["host", "topic", "deleted"],
    }
    assert indexes["services_uuid_idx"]["unique"]


def test_migrations_downgrade_and_upgrade_again(db: Database) -> None:
    with db.writing() as connection:
        from alembic import command

        command.downgrade(migration.alembic_config(connection), "base")
    assert db.schema_revision() is None
    assert db.sync() == migration.head()
    assert db.service_create(CONDUCTOR).id == 1


def test_an_unknown_revision_is_a_schema_error(db: Database) -> None:
    with db.writing() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    with pytest.raises(SchemaError) as error:
        db.sync()
    assert_one_line(error.value, "ffffffffffff", "unknown")
    with pytest.raises(SchemaError):
        db.ensure_schema()


def test_an_unsynced_database_says_to_run_db_sync(db_path: Path) -> None:
    database = Database(f"sqlite:///{db_path}")
    with pytest.raises(SchemaError) as error:
        database.service_create(CONDUCTOR)
    assert_one_line(error.value, "no such table", "supervise db sync")
    database.close()


def test_the_migration_scripts_need_no_alembic_ini() -> None:
    assert os.path.isfile(os.path.join(migration.MIGRATIONS_DIR, "env.py"))
    assert migration.head() == "8c2e4b6d9f10"
    assert not any(name.endswith(".ini") for name in os.listdir(migration.MIGRATIONS_DIR))


# ----- engines -----------------------------------------------------------------------------


def test_sqlite_sessions_are_wal_with_a_busy_timeout(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'x.db'}", busy_timeout=2.5)
    with database.reading() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 2500
    database.close()


def test_reads_begin_deferred_and_writes_begin_immediate(db: Database) -> None:
    statements: list[str] = []

    @event.listens_for(db.engine, "before_cursor_execute")
    def capture(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        statements.append(statement)

    db.service_get_all()
    assert statements[0] == "BEGIN"
    statements.clear()
    db.service_create(CONDUCTOR)
    assert statements[0] == "BEGIN IMMEDIATE"
    event.remove(db.engine, "before_cursor_execute", capture)


def test_in_memory_sqlite(tmp_path: Path) -> None:
    database = Database("sqlite://")
    database.ensure_schema()
    record = database.service_create(CONDUCTOR)
    assert database.service_report(record.id).report_count == 1
    database.close()


def test_a_forked_child_gets_its_own_connections(db: Database) -> None:
    record = db.service_create(CONDUCTOR)  # the parent's pool now holds a connection
    parent_pool = db.engine.pool
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and say what it saw; never return into pytest
        status = 1
        try:
            fresh_pool = db.engine.pool is not parent_pool
            count = db.service_report(record.id).report_count
            os.write(write_end, f"{fresh_pool} {count}".encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as stream:
        said = stream.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert said == "True 1"
    assert db.engine.pool is parent_pool
    assert db.service_report(record.id).report_count == 2


# ----- errors: one line each ---------------------------------------------------------------


def test_bad_urls() -> None:
    with pytest.raises(BadDatabaseURL) as error:
        Database("not a url")
    assert_one_line(error.value, "not a url")
    with pytest.raises(BadDatabaseURL) as error:
        Database("nosuchdb://host/x")
    assert_one_line(error.value, "nosuchdb")


def test_the_password_never_shows(tmp_path: Path) -> None:
    database = Database("postgresql://nova:s3cret@127.0.0.1:1/nova")
    assert "s3cret" not in database.safe_url and "s3cret" not in repr(database)
    assert database.url.drivername == "postgresql+psycopg"


def test_an_unreachable_server(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    database = Database(f"postgresql+psycopg://nova:s3cret@127.0.0.1:{port}/nova")
    with pytest.raises(DatabaseUnavailable) as error:
        database.service_get_all()
    message = assert_one_line(error.value, f"127.0.0.1:{port}", "refused")
    assert "s3cret" not in message
    with pytest.raises(DatabaseUnavailable):
        database.ensure_schema()


def test_a_missing_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c" / "supervise.db"
    database = Database(f"sqlite:///{path}")
    database.ensure_schema()
    assert path.is_file()
    database.close()


def test_a_directory_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    database = Database(f"sqlite:///{blocker / 'state' / 'supervise.db'}")
    with pytest.raises(DatabaseFileError) as error:
        database.ensure_schema()
    assert_one_line(error.value, str(blocker / "state"))
    with pytest.raises(DatabaseFileError) as error:
        database.service_get_all()
    assert_one_line(error.value, str(blocker / "state"))


def in_child_as_nobody(check: Callable[[], str]) -> str:
    """`check()` in a forked child that runs as the unprivileged user nobody when we are root
    (root writes into any directory); what it returned, or the text of what it raised."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            if os.geteuid() == 0:
                entry = pwd.getpwnam("nobody")
                os.setgroups([])
                os.setgid(entry.pw_gid)
                os.setuid(entry.pw_uid)
            try:
                said = check()
            except Exception as error:
                said = f"{type(error).__name__}: {error}"
            os.write(write_end, said.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as stream:
        said = stream.read()
    os.waitpid(pid, 0)
    return said


def test_an_unwritable_directory(db: Database) -> None:
    directory = Path(tempfile.mkdtemp(prefix="supervise-ro-"))
    try:
        directory.chmod(0o755)  # others may enter, not write

        def sync() -> str:
            Database(f"sqlite:///{directory / 'supervise.db'}").ensure_schema()
            return "synced"

        said = in_child_as_nobody(sync)
        assert said.startswith("DatabaseFileError: "), said
        assert_one_line(said, str(directory))
    finally:
        shutil.rmtree(directory)


def test_a_corrupt_file(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not an SQLite database, " * 200)
    database = Database(f"sqlite:///{db_path}")
    with pytest.raises(DatabaseCorrupt) as error:
        database.ensure_schema()
    assert_one_line(error.value, str(db_path), "not a database")


def test_a_read_only_file(db: Database, db_path: Path) -> None:
    db.service_create(CONDUCTOR)
    db.close()
    read_only = Database(f"sqlite:///file:{db_path}?mode=ro&uri=true")
    assert read_only.ensure_schema() == migration.head()  # current: nothing to write
    assert [r.host for r in read_only.service_get_all()] == ["node1"]
    with pytest.raises(DatabaseReadOnly) as error:
        read_only.service_create({**CONDUCTOR, "host": "node2"})
    assert_one_line(error.value, "readonly")
    read_only.close()


def test_a_locked_file(db: Database, db_path: Path) -> None:
    record = db.service_create(CONDUCTOR)
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        impatient = Database(f"sqlite:///{db_path}", busy_timeout=0.2)
        with pytest.raises(DatabaseLocked) as error:
            impatient.service_report(record.id)
        assert isinstance(error.value, DatabaseUnavailable)
        assert_one_line(error.value, "locked")
        impatient.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert db.service_report(record.id).report_count == 1


# ----- supervise db sync -------------------------------------------------------------------


def test_db_sync_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = Config(state_dir=str(tmp_path / "state"))
    assert cli.main(conf) == 0
    first = capsys.readouterr().out
    assert "upgraded from schema revision (empty) to 8c2e4b6d9f10" in first
    assert str(tmp_path / "state" / "supervise.db") in first
    assert cli.main(conf) == 0
    assert "already current" in capsys.readouterr().out
    url = f"sqlite:///{tmp_path / 'other.db'}"
    assert cli.main(Config(state_dir=str(tmp_path / "state"), database_url=url)) == 0
    assert Database(url).schema_revision() == migration.head()


def test_db_sync_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(Config(database_url="nosuchdb://x/y")) == 2
    assert_one_line(capsys.readouterr().err.rstrip("\n"), "supervise: error:", "nosuchdb")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main(Config(state_dir=str(blocker / "state"))) == 1
    assert_one_line(capsys.readouterr().err.rstrip("\n"), "supervise: error:", str(blocker))
