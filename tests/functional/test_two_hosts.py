"""Two hosts: each a network namespace of its own (tests/netns.py) running ``supervise
--workers 2 --host H`` of one service, on one RabbitMQ (a private node) and one PostgreSQL
database, both in the root namespace and reached over the namespaces' bridge with users of
their own. ``<topic>.<host>`` reaches that host; ``service list`` shows both; a drain of
one host moves its load to the other with no failed call; a SIGKILL of one host's master
takes its workers with it and loses no call (the broker redelivers what they held).

The namespaces, the database server, the broker's vhost and the two masters are made once
for the module; each test finds both hosts serving (a killed master is started again)."""

from __future__ import annotations

import collections
import json
import os
import secrets
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from supervise.db import Database
from supervise.rpc.client import MessagingTimeout, Messenger, RPCClient
from supervise.rpc.dispatcher import Target
from tests.functional.conftest import PYTHON_M_SUPERVISE, ROOT, Supervisor, wait_until
from tests.functional.load import Load, handled
from tests.netns import HOST_NAMES, Host, Network
from tests.pg import PostgresServer, required_bindir
from tests.rabbit_node import RabbitNode

pytestmark = pytest.mark.slow

SERVICE = "tests.functional.nova_services:where_service"
WORKERS = 2
CALL_MS = 20  # each call's work
CALL_TIMEOUT = 5.0
RETRIES = 2  # a call that timed out is sent again, at most this often (each is counted)
CALLS_AFTER = 60  # calls answered after a drain or a kill, before the test judges


@dataclass(frozen=True)
class Shared:
    """What both hosts reach over the bridge: the broker and the database."""

    transport_url: str
    database_url: str
    topic: str
    passwords: tuple[str, ...]  # which no log may show


@pytest.fixture(scope="module")
def shared(netns_hosts: Network, rabbit_node: RabbitNode) -> Iterator[Shared]:
    run = netns_hosts.id
    user, password = f"supervise-{run}", secrets.token_hex(8)
    server = PostgresServer(required_bindir(), ("127.0.0.1", netns_hosts.gateway))
    vhost = f"supervise-hosts-{run}"
    try:
        server.init()
        server.allow(str(netns_hosts.subnet), user)
        server.start()
        server.create_user(user, password)
        server.create_database("services", owner=user)
        database_url = (
            f"postgresql+psycopg://{user}:{password}@{netns_hosts.gateway}:{server.port}/services"
        )
        database = Database(database_url)
        database.sync()  # a database server is synced by the operator
        database.close()
        rabbit_node.add_vhost(vhost, user, password)
        try:
            transport_url = (
                f"rabbit://{user}:{password}@{netns_hosts.gateway}:{rabbit_node.port}/{vhost}"
            )
            yield Shared(transport_url, database_url, f"where_{run}", (password,))
        finally:
            rabbit_node.delete_vhost(vhost, user)
    finally:
        server.destroy()


class TwoHosts:
    """A master per host, started in its namespace."""

    def __init__(self, network: Network, shared: Shared, workdir: Path):
        self.network = network
        self.shared = shared
        self.workdir = workdir
        self.masters: dict[str, Supervisor] = {}
        self._started = 0

    def start(self, host: Host) -> Supervisor:
        self._started += 1
        workdir = self.workdir / f"{host.name}-{self._started}"
        workdir.mkdir()
        args = [
            "--workers", str(WORKERS), "--host", host.name,
            "--transport-url", self.shared.transport_url,
            "--database-url", self.shared.database_url,
            "--topic", self.shared.topic, "--state-dir", str(workdir / "state"),
            "--report-interval", "1",
        ]  # fmt: skip
        master = Supervisor(workdir, SERVICE, args, {}, host=host)
        self.masters[host.name] = master
        return master

    def serving(self) -> TwoHosts:
        """Every host's master up (those started anew start together), none drained."""
        started = []
        for host in self.network.hosts:
            master = self.masters.get(host.name)
            if master is None or master.process.poll() is not None:
                if master is not None:
                    master.cleanup()
                started.append(self.start(host))
            elif status(master)["drained"]:
                assert master.control("resume").returncode == 0
        for master in started:
            master.wait_ready(WORKERS, timeout=60)
        return self

    def handled(self) -> collections.Counter[str]:
        """How often each id was handled, by every master that ran."""
        counts: collections.Counter[str] = collections.Counter()
        for workdir in self.workdir.iterdir():
            counts += handled(workdir)
        return counts

    def cleanup(self) -> None:
        for master in self.masters.values():
            master.cleanup()


def status(master: Supervisor) -> dict:
    done = master.control("status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def cluster(netns_hosts: Network, shared: Shared, tmp_path_factory) -> Iterator[TwoHosts]:
    hosts = TwoHosts(netns_hosts, shared, tmp_path_factory.mktemp("hosts"))
    try:
        yield hosts.serving()
    finally:
        hosts.cleanup()
        for master in hosts.masters.values():
            log = master.log()
            assert not any(password in log for password in shared.passwords), "a password logged"


@pytest.fixture
def hosts(cluster: TwoHosts) -> TwoHosts:
    return cluster.serving()


def netns_inode(path: str) -> int:
    return os.stat(path).st_ino


@pytest.fixture
def client(shared: Shared) -> Iterator[RPCClient]:
    messenger = Messenger(shared.transport_url)
    yield RPCClient(messenger, Target(topic=shared.topic), timeout=CALL_TIMEOUT)
    messenger.close()


@dataclass
class Answers:
    """`where` calls (for `Load(call=...)`), an id of their own each, of `ms` each: when each
    was sent and answered, and by which host; a call that timed out is sent again, and
    counted."""

    ms: int = CALL_MS
    sent: list[str] = field(default_factory=list)
    answers: dict[str, tuple[float, float, str]] = field(default_factory=dict)
    retried: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, client: RPCClient) -> None:
        unique = uuid.uuid4().hex
        sent_at = time.monotonic()
        with self._lock:
            self.sent.append(unique)
        for attempt in range(RETRIES + 1):
            try:
                answer = client.call({}, "where", id=unique, ms=self.ms)
                break
            except MessagingTimeout:
                if attempt == RETRIES:
                    raise
                with self._lock:
                    self.retried += 1
        with self._lock:
            self.answers[unique] = (sent_at, time.monotonic(), answer["host"])

    def hosts(self, sent_after: float = 0.0) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(h for s, _, h in self.answers.values() if s > sent_after)

    def answerer(self, unique: str) -> str | None:
        with self._lock:
            answer = self.answers.get(unique)
        return None if answer is None else answer[2]


def held(master: Supervisor) -> set[str]:
    """The ids its workers took and have not handled (yet, or ever: they were killed)."""
    path = master.workdir / "taken"
    taken = set(path.read_text().split()) if path.exists() else set()
    return taken - set(handled(master.workdir))


def report(what: str, load: Load, answers: Answers, hosts: TwoHosts, **more: object) -> None:
    counts = hosts.handled()
    duplicated = sum(1 for n in counts.values() if n > 1)
    print(
        f"{what}: made {len(answers.sent)}, answered {len(answers.answers)}, retried "
        f"{answers.retried}, failed {len(load.failures)}, duplicated {duplicated}, by host "
        f"{dict(answers.hosts())}",
        *(f"{k} {v}" for k, v in more.items()),
        sep=", ",
    )


def test_the_queue_of_a_host_reaches_that_host(hosts: TwoHosts, client: RPCClient) -> None:
    answered = collections.Counter()
    for host in hosts.network.hosts:  # each master runs in its host's namespace
        own = netns_inode(f"/run/netns/{host.namespace}")
        assert netns_inode(f"/proc/{hosts.masters[host.name].pid}/ns/net") == own
    for name, master in hosts.masters.items():
        to_host = client.prepare(server=name)
        for _ in range(10):
            answer = to_host.call({}, "where", id=uuid.uuid4().hex)
            assert answer["host"] == name
            assert answer["pid"] in master.worker_pids()
            answered[answer["host"]] += 1
    print(f"calls to <topic>.<host>: made 20, answered by host {dict(answered)}")
    assert answered == {"hosta": 10, "hostb": 10}


def test_service_list_shows_both_hosts(hosts: TwoHosts, shared: Shared) -> None:
    """Asked from inside one host's namespace, as an operator on it would."""
    command = hosts.network.hosts[1].exec(
        *PYTHON_M_SUPERVISE, "service", "list", "--json", "--database-url", shared.database_url
    )

    def both_up() -> list[dict] | None:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        rows = json.loads(done.stdout)
        up = [(r["host"], r["binary"], r["topic"]) for r in rows if r["state"] == "up"]
        return rows if sorted(up) == [(h, "where", shared.topic) for h in HOST_NAMES] else None

    rows = wait_until(both_up, 30, "both hosts' services up")
    print(f"service list: {len(rows)} rows, hosts {sorted(r['host'] for r in rows)}")
    assert len(rows) == 2


def wait_for_both_hosts(answers: Answers) -> None:
    wait_until(lambda: len(answers.hosts()) == 2, 30, "answers from both hosts")


def test_a_drained_host_moves_its_load_to_the_other(hosts: TwoHosts, client: RPCClient) -> None:
    hosta = hosts.masters["hosta"]
    answers = Answers()
    load = Load(client, callers=4, call=answers.call)
    with load.running():
        wait_for_both_hosts(answers)
        assert hosta.control("drain").returncode == 0
        wait_until(
            lambda: {w["state"] for w in status(hosta)["workers"]} == {"drained"},
            30,
            "hosta's workers drained",
        )
        drained_at = time.monotonic()
        wait_until(
            lambda: sum(answers.hosts(drained_at).values()) >= CALLS_AFTER, 30, "calls after it"
        )
        after_drain = answers.hosts(drained_at)
        assert hosta.control("resume").returncode == 0
        resumed_at = time.monotonic()
        wait_until(lambda: answers.hosts(resumed_at)["hosta"], 30, "hosta answering again")
    report("drain of hosta", load, answers, hosts, after_drain=dict(after_drain))
    assert after_drain.keys() == {"hostb"}
    assert load.failures == [] and answers.retried == 0
    assert len(answers.answers) == len(answers.sent)


def kill_under_load(
    hosts: TwoHosts, client: RPCClient, kill: Callable[[Supervisor], None], what: str
) -> tuple[Load, Answers, set[str], set[str]]:
    """Kill hosta with `kill` while its workers hold calls; wait for its processes to be
    gone and for calls sent after that to be answered. The ids hosta held at the kill, the
    ids it took and never handled, and the calls."""
    hosta = hosts.masters["hosta"]
    answers = Answers(ms=100)  # long enough for a call to be held when the kill lands
    load = Load(client, callers=4, call=answers.call)
    with load.running():
        wait_for_both_hosts(answers)
        held_at_kill = wait_until(lambda: held(hosta), 10, "hosta holding a call")
        kill(hosta)
        killed_at = time.monotonic()
        wait_until(lambda: not hosta.group_processes(), 10, "hosta's workers gone")
        gone_at = time.monotonic()
        wait_until(
            lambda: sum(answers.hosts(gone_at).values()) >= CALLS_AFTER, 30, "calls after it"
        )
    never_handled = held(hosta)
    report(
        what, load, answers, hosts, held_by_hosta=len(held_at_kill),
        answered_by={answers.answerer(unique) for unique in held_at_kill | never_handled},
        taken_never_handled=len(never_handled), workers_gone_after=f"{gone_at - killed_at:.2f} s",
        after_gone=dict(answers.hosts(gone_at)),
    )  # fmt: skip
    assert answers.hosts(gone_at).keys() == {"hostb"}
    assert load.failures == [] and answers.retried == 0
    assert len(answers.answers) == len(answers.sent)
    assert set(answers.sent) <= set(hosts.handled())
    return load, answers, held_at_kill, never_handled


def test_a_killed_master_loses_no_call(hosts: TwoHosts, client: RPCClient) -> None:
    """SIGKILL of the master alone: its workers see it gone (parent-death signal, their
    channel's end), finish the calls they hold, answer them and exit; the rest of the load
    goes to hostb."""
    _, answers, held_at_kill, never_handled = kill_under_load(
        hosts, client, lambda master: master.signal(signal.SIGKILL), "SIGKILL of hosta's master"
    )
    assert never_handled == set()
    assert {answers.answerer(unique) for unique in held_at_kill} == {"hosta"}


def test_a_host_whose_every_process_is_killed_loses_no_call(
    hosts: TwoHosts, client: RPCClient
) -> None:
    """SIGKILL of the master and its workers at once, as a host that loses its power: the
    broker gives the calls they held, unacked, to hostb, which answers them."""

    def kill_every_process(master: Supervisor) -> None:
        for process in master.group_processes():  # the master first: no worker respawned
            os.kill(process.pid, signal.SIGKILL)

    _, answers, _, never_handled = kill_under_load(
        hosts, client, kill_every_process, "SIGKILL of every process of hosta"
    )
    assert never_handled
    assert {answers.answerer(unique) for unique in never_handled} == {"hostb"}
