"""The embedded transport (``local://``) across real processes, and its bad input.

The RPC suite runs on it too (`each_transport` in test_rpc*.py); these tests are about the
transport itself: plain kombu producers and consumers in processes of their own.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import amqp.exceptions
import kombu
import pytest

from supervise.config import Config
from supervise.rpc.embedded_store import LOCK_TIMEOUT, Store
from supervise.rpc.transport_url import local_transport_url
from tests.functional.conftest import ROOT, wait_until

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the local transport is Linux's")

EXCHANGE = "openstack"


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def url(state_dir: Path) -> str:
    return local_transport_url(str(state_dir))


def queue_file(url: str) -> str:
    return url.removeprefix("local://")


class Peers:
    """`queue_peer` processes of a test, killed at its end whatever happened."""

    def __init__(self, url: str, workdir: Path):
        self.url = url
        self.workdir = workdir
        self.started: list[subprocess.Popen] = []

    def _start(self, *args: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.functional.queue_peer", *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.started.append(process)
        return process

    def consume(
        self, name: str, queue: str, key: str, *, exchange=EXCHANGE, type="topic", prefetch=0,
        hold=False,
    ) -> Received:  # fmt: skip
        out = self.workdir / name
        flags = ["--prefetch", str(prefetch), *(["--hold"] if hold else [])]
        process = self._start("consume", self.url, exchange, type, key, queue, str(out), *flags)
        wait_until(lambda: Path(f"{out}.ready").exists() or process.poll() is not None)
        assert process.poll() is None, f"consumer {name} exited with {process.returncode}"
        return Received(out, process)

    def publish(self, exchange: str, key: str, count: int) -> None:
        process = self._start("publish", self.url, exchange, key, str(count))
        assert process.wait(60) == 0

    def cleanup(self) -> None:
        for process in self.started:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(10)


class Received:
    """What one consumer process recorded: (body, redelivered) per delivery."""

    def __init__(self, path: Path, process: subprocess.Popen):
        self.path = path
        self.process = process

    def lines(self) -> list[tuple[str, bool]]:
        if not self.path.exists():
            return []
        return [
            (body, flag == "1")
            for body, flag in (line.split() for line in self.path.read_text().splitlines())
        ]

    def bodies(self) -> list[str]:
        return [body for body, _ in self.lines()]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(10) == 0


@pytest.fixture
def peers(url: str, tmp_path: Path) -> Iterator[Peers]:
    peers = Peers(url, tmp_path)
    yield peers
    peers.cleanup()


def rows(url: str, sql: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(queue_file(url))) as db:
        return db.execute(sql).fetchall()


def drain(conn: kombu.Connection) -> None:
    with contextlib.suppress(TimeoutError):
        while True:
            conn.drain_events(timeout=0)


# ----- across processes --------------------------------------------------------------------


def test_two_consumers_one_producer_10000_messages_none_lost_none_duplicated(peers, url):
    consumers = [peers.consume(f"c{i}", "work", "work", prefetch=50) for i in range(2)]
    peers.publish(EXCHANGE, "work", 10_000)  # a process that declared nothing
    wait_until(lambda: sum(len(c.lines()) for c in consumers) >= 10_000, 60, "10,000 deliveries")
    for consumer in consumers:
        consumer.stop()
    received = Counter(body for consumer in consumers for body in consumer.bodies())
    assert set(received) == {str(number) for number in range(10_000)}, "lost messages"
    assert received.most_common(1)[0][1] == 1, "duplicated messages"
    shares = [len(consumer.lines()) for consumer in consumers]
    assert min(shares) > 1000, f"one consumer did (nearly) all the work: {shares}"
    assert rows(url, "SELECT count(*) FROM messages") == [(0,)], "acked messages were kept"


def test_a_consumer_killed_holding_messages_has_them_all_redelivered(peers):
    holder = peers.consume("holder", "work", "work", prefetch=10, hold=True)
    peers.publish(EXCHANGE, "work", 30)
    wait_until(lambda: len(holder.lines()) == 10, what="the holder to take its prefetch")
    other = peers.consume("other", "work", "work", prefetch=100)
    wait_until(lambda: len(other.lines()) == 20, what="the other consumer to take the rest")
    held = set(holder.bodies())
    holder.process.kill()
    killed_at = time.monotonic()
    wait_until(lambda: len(other.lines()) == 30, 5, "the held messages to be redelivered")
    redelivery_took = time.monotonic() - killed_at
    assert sorted(other.bodies(), key=int) == [str(number) for number in range(30)]
    assert {body for body, redelivered in other.lines() if redelivered} == held
    assert redelivery_took < 2, f"redelivery took {redelivery_took:.2f} s"


def test_fanout_reaches_every_consumer_process(peers):
    consumers = [
        peers.consume(f"f{i}", f"fan_{i}", "any", exchange="fan", type="fanout") for i in range(3)
    ]
    peers.publish("fan", "whatever", 5)
    for consumer in consumers:
        wait_until(lambda c=consumer: len(c.lines()) == 5, what=f"5 messages in {consumer.path}")
    assert all(sorted(c.bodies()) == ["0", "1", "2", "3", "4"] for c in consumers)


def test_a_publisher_that_declared_nothing_reaches_a_queue_bound_by_another_process(peers, url):
    exact = peers.consume("exact", "exact_q", "compute.host1")
    pattern = peers.consume("pattern", "pattern_q", "compute.*")
    peers.publish(EXCHANGE, "compute.host1", 2)  # both bindings match
    peers.publish(EXCHANGE, "compute.host2", 1)  # only the pattern does
    peers.publish(EXCHANGE, "conductor", 1)  # no binding: dropped, as AMQP does
    wait_until(lambda: len(pattern.lines()) == 3, what="3 messages through compute.*")
    wait_until(lambda: len(exact.lines()) == 2, what="2 messages through compute.host1")
    assert rows(url, "SELECT count(*) FROM messages") == [(0,)]


def test_a_process_with_two_connections_still_receives_after_every_other_process_left(peers, url):
    """Each connection's open checks the file: those checks must not release the POSIX
    locks SQLite holds for this process's first connection. Without them, the next process
    to close believes it is the file's last user and deletes the write-ahead log this process
    still reads: it never sees a message again (a compute after a conductor restart)."""
    received: list[str] = []
    with kombu.Connection(url) as consuming, kombu.Connection(url) as other:
        queue = kombu.Queue("q", kombu.Exchange(EXCHANGE, type="topic"), routing_key="q")
        consumer = kombu.Consumer(
            consuming.channel(), [queue], on_message=lambda m: received.append(m.body.decode())
        )
        consumer.consume()
        other.connect()  # a second connection of this process, as a compute's server has
        for count in (1, 2):
            peers.publish(EXCHANGE, "q", 1)  # a process that comes, publishes and goes

            def delivered(count=count) -> bool:
                with contextlib.suppress(TimeoutError):
                    consuming.drain_events(timeout=0.1)
                return len(received) == count

            wait_until(delivered, 5, f"message {count} to reach the process")
    assert received == ["0", "0"]


# ----- one process ------------------------------------------------------------------------


def test_expired_messages_are_dropped(url):
    with kombu.Connection(url) as conn:
        queue = kombu.Queue("q", kombu.Exchange(EXCHANGE, type="topic"), routing_key="q")
        producer = kombu.Producer(conn.channel(), exchange=queue.exchange)
        queue(conn.default_channel).declare()
        producer.publish("short", routing_key="q", expiration=0.001)
        producer.publish("long", routing_key="q", expiration=60)
        producer.publish("forever", routing_key="q")
        published = time.time()
        wait_until(lambda: time.time() > published + 0.001, what="the first message to expire")
        assert conn.default_channel.queue_declare("q", passive=True).message_count == 2
        received = []
        consumer = kombu.Consumer(conn.channel(), [queue], on_message=received.append)
        consumer.consume()
        drain(conn)
        assert [message.body for message in received] == [b"long", b"forever"]
        for message in received:
            message.ack()
        drain(conn)
    assert rows(url, "SELECT count(*) FROM messages") == [(0,)]


def test_a_sweep_drops_expired_messages_and_unused_expiring_queues(url):
    with kombu.Connection(url) as conn:
        channel = conn.channel()
        kombu.Queue("unused", queue_arguments={"x-expires": 1})(channel).declare()
        kept = kombu.Queue("kept", queue_arguments={"x-expires": 1})
        kombu.Consumer(channel, [kept], on_message=lambda m: None).consume()
        kombu.Producer(channel).publish("x", routing_key="unused", expiration=0.001)
        declared = time.time()
        wait_until(lambda: time.time() > declared + 0.002, what="both to expire")
        store = Store(queue_file(url))
        try:
            store.sweep(force=True)
        finally:
            store.close()
        assert rows(url, "SELECT name FROM queues") == [("kept",)]
        assert rows(url, "SELECT count(*) FROM messages") == [(0,)]
        with pytest.raises(amqp.exceptions.NotFound):
            conn.channel().queue_declare("unused", passive=True)


def test_prefetch_bounds_what_a_channel_holds_unacked(url):
    with kombu.Connection(url) as conn:
        queue = kombu.Queue("q")
        queue(conn.default_channel).declare()
        producer = kombu.Producer(conn.default_channel)
        for number in range(10):
            producer.publish(number, routing_key="q")
        received = []
        consumer = kombu.Consumer(conn.channel(), [queue], on_message=received.append)
        consumer.qos(prefetch_count=3)
        consumer.consume()
        drain(conn)
        assert len(received) == 3
        received[0].ack()
        drain(conn)
        assert len(received) == 4
        assert conn.default_channel.queue_declare("q", passive=True).message_count == 6


def test_a_closed_channel_and_a_requeue_hand_messages_back_flagged_redelivered(url):
    with kombu.Connection(url) as conn:
        queue = kombu.Queue("q")
        queue(conn.default_channel).declare()
        for body in ("a", "b"):
            kombu.Producer(conn.default_channel).publish(body, routing_key="q")
        first: list[kombu.Message] = []
        channel = conn.channel()
        kombu.Consumer(channel, [queue], on_message=first.append).consume()
        drain(conn)
        assert [m.delivery_info["redelivered"] for m in first] == [False, False]
        first[0].requeue()
        channel.close()  # "b" is still held: it goes back too
        second: list[kombu.Message] = []
        kombu.Consumer(conn.channel(), [queue], on_message=second.append).consume()
        drain(conn)
        assert sorted((m.body, m.delivery_info["redelivered"]) for m in second) == [
            (b"a", True),
            (b"b", True),
        ]


def test_acked_messages_are_deleted_and_the_file_stops_growing(url):
    body = "x" * 2000

    def round_trip(count: int) -> int:
        with kombu.Connection(url) as conn:
            queue = kombu.Queue("q")
            queue(conn.default_channel).declare()
            producer = kombu.Producer(conn.default_channel)
            for _ in range(count):
                producer.publish(body, routing_key="q")
            consumer = kombu.Consumer(conn.channel(), [queue], on_message=lambda m: m.ack())
            consumer.consume()
            drain(conn)
        assert rows(url, "SELECT count(*) FROM messages") == [(0,)]
        files = [queue_file(url) + suffix for suffix in ("", "-wal")]
        return sum(os.path.getsize(path) for path in files if os.path.exists(path))

    grown = round_trip(1000)
    assert round_trip(1000) <= grown * 1.1
    assert round_trip(1000) <= grown * 1.1


def test_a_backlog_once_consumed_is_given_back_to_the_file_system(url):
    with kombu.Connection(url) as conn:
        queue = kombu.Queue("q")
        queue(conn.default_channel).declare()
        producer = kombu.Producer(conn.default_channel)
        for _ in range(5000):
            producer.publish("x" * 2000, routing_key="q")
        consumer = kombu.Consumer(conn.channel(), [queue], on_message=lambda m: m.ack())
        consumer.consume()
        drain(conn)
    before = os.path.getsize(queue_file(url))
    store = Store(queue_file(url))
    try:
        store.sweep(force=True)
    finally:
        store.close()
    rows(url, "PRAGMA wal_checkpoint(TRUNCATE)")
    after = os.path.getsize(queue_file(url))
    assert before > 8 << 20 and after < 6 << 20, (before, after)


# ----- bad input --------------------------------------------------------------------------


def missing_directory(state_dir: Path) -> str:
    shutil.rmtree(state_dir)
    return re.escape(f"no directory {state_dir}")


def garbage_file(state_dir: Path) -> str:
    (state_dir / "queue.db").write_bytes(os.urandom(8192))
    return re.escape(f"{state_dir}/queue.db is not a SQLite database (damaged, or some other")


def damaged_database(state_dir: Path) -> str:
    path = state_dir / "queue.db"
    Store(str(path)).close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
    with open(path, "r+b") as stream:  # scribble over every page but the first
        stream.seek(4096)
        stream.write(b"\x5a" * 4096 * (pages - 1))
    return re.escape(str(path)) + " (is damaged|is not a SQLite database)"


def someone_elses_database(state_dir: Path) -> str:
    with contextlib.closing(sqlite3.connect(state_dir / "queue.db")) as db:
        db.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY)")
    return re.escape(f"{state_dir}/queue.db is a SQLite database of something else")


BAD_FILES: dict[str, Callable[[Path], str]] = {
    "missing-directory": missing_directory,
    "garbage-file": garbage_file,
    "damaged-database": damaged_database,
    "someone-elses-database": someone_elses_database,
}


def run_call(url: str, *command: str, call_timeout: float = 3) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*command, sys.executable, "-m", "supervise", "call", "--transport-url", url,
         "--timeout", str(call_timeout), "echo", "echo", "payload=1"],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip


def assert_one_line(done: subprocess.CompletedProcess, url: str, problem: str) -> None:
    """`problem` is a regular expression."""
    assert done.returncode == 1, done
    assert done.stderr.startswith(f"supervise: cannot connect to {url}: QueueFileUnusable: ")
    assert re.search(problem, done.stderr), done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_queue_file_is_one_clear_line_for_kombu_and_supervise_call(case, state_dir, url):
    problem = BAD_FILES[case](state_dir)
    with pytest.raises(Exception, match=problem) as error:
        kombu.Connection(url).connect()
    assert type(error.value).__name__ == "QueueFileUnusable" and "\n" not in str(error.value)
    began = time.monotonic()
    assert_one_line(run_call(url), url, problem)
    assert time.monotonic() - began < 5


@pytest.mark.parametrize("file_exists", [True, False], ids=["file", "no-file"])
def test_a_read_only_state_directory_is_one_clear_line(file_exists, state_dir, url):
    if file_exists:
        Store(queue_file(url)).close()
    # root writes anywhere; in a user namespace of its own it does not
    command = ["unshare", "--user"] if os.geteuid() == 0 else []
    if command and subprocess.run([*command, "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root, and cannot make a user namespace")
    state_dir.chmod(0o555)
    try:
        problem = re.escape(f"directory {state_dir} is read-only")
        assert_one_line(run_call(url, *command), url, problem)
    finally:
        state_dir.chmod(0o755)


def test_a_locked_queue_file_is_one_clear_line_after_the_lock_timeout(url):
    Store(queue_file(url)).close()
    with contextlib.closing(sqlite3.connect(queue_file(url), isolation_level=None)) as db:
        db.execute("BEGIN EXCLUSIVE")  # another program holds the write lock
        began = time.monotonic()
        done = run_call(url, call_timeout=LOCK_TIMEOUT + 5)
        waited = time.monotonic() - began
    problem = re.escape(f"is locked by another process (waited {LOCK_TIMEOUT:g} s)")
    assert_one_line(done, url, problem)
    assert LOCK_TIMEOUT <= waited < LOCK_TIMEOUT + 5


@pytest.mark.parametrize("case", ["missing-directory", "garbage-file"])
def test_workers_that_cannot_open_the_queue_file_stop_the_master_with_status_2(
    case, supervise, state_dir, url
):
    problem = BAD_FILES[case](state_dir)
    database = f"sqlite:///{state_dir.parent / 'services.db'}"  # elsewhere: it would mkdir
    sup = supervise("echo", "--workers", "2", "--transport-url", url, "--database-url", database)
    assert sup.wait_exit(timeout=20) == 2
    log = sup.log()
    errors = [line for line in log.splitlines() if " ERROR " in line and re.search(problem, line)]
    assert errors, log
    assert all("service echo cannot start: cannot connect to " in line for line in errors), log
    assert "Traceback" not in log, log


# ----- the default -------------------------------------------------------------------------


def test_supervise_call_reaches_workers_started_with_the_default_transport(supervise, tmp_path):
    state_dir = tmp_path / "default-state"  # the master creates it on its first start
    assert Config(state_dir=str(state_dir)).transport == local_transport_url(str(state_dir))
    env = {"SUPERVISE_STATE_DIR": str(state_dir)}
    sup = supervise("echo", "--workers", "2", env=env)
    sup.wait_ready(2)
    done = subprocess.run(
        [sys.executable, "-m", "supervise", "call", "echo", "pid"],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) in sup.worker_pids()
