"""nova-conductor under a real master: its RPC API over the services and compute_nodes
tables, on both transports; the race guard through RPC; TooOldComputeService; bad arguments
and a database outage are error replies, and the workers keep serving. Also `echo`'s record
and the --topic rules."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import kombu
import pytest

from supervise.db import ComputeNodeRecord, Database, ServiceRecord
from supervise.rpc.client import Messenger, RPCClient
from supervise.rpc.dispatcher import Target
from supervise.rpc.transport_url import kombu_urls
from supervise.rpc.wire import RemoteError
from supervise.services.versions import OLDEST_SUPPORTED_COMPUTE_VERSION, SERVICE_VERSION
from tests.functional.conftest import Supervisor, each_transport, wait_until
from tests.functional.test_notifications import inner, take
from tests.pg import PostgresServer, free_port

HOST = "ctl"
COMPUTE = {"host": "cmp1", "binary": "nova-compute", "topic": "compute"}


def start_conductor(
    supervise: Callable[..., Supervisor], transport_url: str, database_url: str
) -> Supervisor:
    sup = supervise(
        "nova-conductor", "--workers", "2", "--host", HOST, "--transport-url", transport_url,
        "--database-url", database_url, "--report-interval", "1",
    )  # fmt: skip
    sup.wait_ready(2, timeout=60)
    return sup


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'services.db'}"


@pytest.fixture
def conductor(supervise, transport_url, sqlite_url) -> Supervisor:
    return start_conductor(supervise, transport_url, sqlite_url)


@pytest.fixture
def api(messenger: Messenger) -> RPCClient:
    return RPCClient(messenger, Target(topic="conductor", version="3.0"), timeout=20)


def remote_error(call: Callable[[], object]) -> RemoteError:
    with pytest.raises(RemoteError) as error:
        call()
    return error.value


def assert_served_cleanly(sup: Supervisor, pids: set[int]) -> None:
    """The workers that served are the ones still serving, and nothing was logged at ERROR."""
    assert sup.worker_pids() == pids
    log = sup.log()
    assert "Traceback" not in log and " ERROR " not in log, log


@each_transport
def test_the_records_api(conductor, api, sqlite_url) -> None:
    own = [ServiceRecord.from_primitive(r) for r in api.call({}, "service_get_all")]
    assert [(r.host, r.binary, r.topic, r.version) for r in own] == [
        (HOST, "nova-conductor", "conductor", SERVICE_VERSION)
    ]
    created = ServiceRecord.from_primitive(
        api.call({}, "service_create", values={**COMPUTE, "version": SERVICE_VERSION})
    )
    found = api.call({}, "service_get_by_host_and_binary", host="cmp1", binary="nova-compute")
    assert ServiceRecord.from_primitive(found) == created
    assert created == Database(sqlite_url).service_get(created.id)  # the same row, as JSON
    assert api.call({}, "service_get_by_host_and_binary", host="cmp9", binary="x") is None
    assert [r["id"] for r in api.call({}, "service_get_all", binary="nova-compute")] == [created.id]

    error = remote_error(lambda: api.call({}, "service_create", values={**COMPUTE, "version": 1}))
    assert error.exc_type == "ServiceBinaryExists"
    updated = api.call(
        {}, "service_update", service_id=created.id,
        values={"disabled": True, "disabled_reason": "maintenance"},
    )  # fmt: skip
    assert (updated["disabled"], updated["disabled_reason"]) == (True, "maintenance")
    reported = api.call({}, "service_report", service_id=created.id)
    assert reported["report_count"] == 1 and reported["last_seen_up"] is not None
    assert api.call({}, "service_get_minimum_version", binary="nova-compute") == SERVICE_VERSION
    assert api.call({}, "service_get_minimum_version", binary="nova-nothing") is None

    first = api.call({}, "compute_node_update", host="cmp1", values={"vcpus": 4})
    again = api.call({}, "compute_node_update", host="cmp1", values={"vcpus_used": 1})
    assert again["id"] == first["id"] and (again["vcpus"], again["vcpus_used"]) == (4, 1)
    nodes = [ComputeNodeRecord.from_primitive(n) for n in api.call({}, "compute_node_get_all")]
    assert nodes == Database(sqlite_url).compute_node_get_all()

    assert api.call({}, "service_destroy", service_id=created.id) is None
    assert (
        api.call({}, "service_get_by_host_and_binary", host="cmp1", binary="nova-compute") is None
    )
    error = remote_error(lambda: api.call({}, "service_report", service_id=created.id))
    assert (error.exc_type, error.value) == (
        "ServiceNotFound",
        f"service {created.id} could not be found",
    )


CREATORS = 12


@each_transport
def test_concurrent_creates_through_rpc_leave_one_row(conductor, api, sqlite_url) -> None:
    """Service.start's race guard, as a compute runs it through the conductor."""
    barrier = threading.Barrier(CREATORS, timeout=30)
    outcomes: list[tuple[str, int]] = []
    failures: list[BaseException] = []

    def register() -> None:
        try:
            barrier.wait()
            try:
                record = api.call({}, "service_create", values={**COMPUTE, "version": 1})
                outcome = "created"
            except RemoteError as error:
                assert error.exc_type == "ServiceBinaryExists", error
                record = api.call(
                    {}, "service_get_by_host_and_binary", host="cmp1", binary="nova-compute"
                )
                outcome = "re-read"
            outcomes.append((outcome, record["id"]))
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=register) for _ in range(CREATORS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures[0]
    assert sorted(kind for kind, _ in outcomes) == ["created"] + ["re-read"] * (CREATORS - 1)
    ids = {service_id for _, service_id in outcomes}
    rows = Database(sqlite_url).service_get_all(binary="nova-compute")
    assert len(ids) == 1 and [row.id for row in rows] == list(ids)


@each_transport
def test_a_too_old_compute_is_refused(conductor, api) -> None:
    pids = conductor.worker_pids()
    old = OLDEST_SUPPORTED_COMPUTE_VERSION - 1
    expected = (
        f"nova-compute service version {old} is older than the oldest this conductor "
        f"supports, {OLDEST_SUPPORTED_COMPUTE_VERSION}"
    )
    for values in ({**COMPUTE, "version": old}, COMPUTE):  # no version: 0, nova's default
        error = remote_error(lambda v=values: api.call({}, "service_create", values=v))
        assert (error.exc_type, error.value) == ("TooOldComputeService", expected)
    assert api.call({}, "service_get_all", binary="nova-compute") == []

    compute = api.call({}, "service_create", values={**COMPUTE, "version": SERVICE_VERSION})
    error = remote_error(
        lambda: api.call({}, "service_update", service_id=compute["id"], values={"version": old})
    )
    assert error.exc_type == "TooOldComputeService"
    own = api.call({}, "service_get_by_host_and_binary", host=HOST, binary="nova-conductor")
    assert (
        api.call({}, "service_update", service_id=own["id"], values={"version": 0})["version"] == 0
    )
    assert_served_cleanly(conductor, pids)


C = COMPUTE
BAD_ID = "service_id must be an integer from 1 to"
BAD_CALLS = [
    ("service_create", {"values": {**C, "report_count": 9}}, "unknown values: 'report_count'"),
    ("service_create", {"values": {"host": "cmp1"}}, "values lack binary"),
    ("service_create", {"values": [1]}, "values must be an object, got [1]"),
    ("service_create", {"values": {**C, "host": 5}}, "host must be a non-empty string, got 5"),
    ("service_create", {"values": {**C, "host": ""}}, "host must be a non-empty string"),
    ("service_create", {"values": {**C, "host": "h" * 256}}, "host must be at most 255"),
    ("service_create", {"values": {**C, "host": "a\x00b"}}, "host must be UTF-8 text without"),
    ("service_create", {"values": {**C, "host": "\ud800"}}, "host must be UTF-8 text without"),
    ("service_create", {"values": {**C, "version": "1"}}, "version must be an integer from 0"),
    ("service_create", {"values": {**C, "version": 2**40}}, "version must be an integer from 0"),
    ("service_update", {"service_id": "1", "values": {}}, BAD_ID),
    ("service_update", {"service_id": True, "values": {}}, BAD_ID),
    ("service_update", {"service_id": 1.5, "values": {}}, BAD_ID),
    ("service_update", {"service_id": [1], "values": {}}, BAD_ID),
    ("service_update", {"service_id": 0, "values": {}}, BAD_ID),
    ("service_update", {"service_id": 1, "values": {"host": "x"}}, "unknown values: 'host'"),
    ("service_update", {"service_id": 1, "values": {"disabled": 1}}, "disabled must be true"),
    ("service_update", {"service_id": 1, "values": {"forced_down": "y"}}, "forced_down must be"),
    ("service_report", {"service_id": None}, BAD_ID),
    ("service_destroy", {"service_id": {"id": 1}}, BAD_ID),
    ("service_get_all", {"host": 1}, "host must be a non-empty string"),
    ("service_get_by_host_and_binary", {"host": "h", "binary": None}, "binary must be a"),
    ("service_get_minimum_version", {"binary": ["nova-compute"]}, "binary must be a"),
    ("compute_node_update", {"host": "c", "values": {"vcpus": -1}}, "vcpus must be an integer"),
    ("compute_node_update", {"host": "c", "values": {"memory_mb": 1.5}}, "memory_mb must be"),
    ("compute_node_update", {"host": "c", "values": {"local_gb": True}}, "local_gb must be"),
    ("compute_node_update", {"host": "c", "values": {"load": 1}}, "unknown values: 'load'"),
    ("compute_node_update", {"host": "c"}, "missing a required argument: 'values'"),
]


def test_bad_arguments_are_error_replies_of_one_line(conductor, api, sqlite_url) -> None:
    pids = conductor.worker_pids()
    for method, arguments, message in BAD_CALLS:
        error = remote_error(lambda m=method, a=arguments: api.call({}, m, **a))
        assert error.exc_type == "InvalidArguments", (method, arguments, error)
        assert message in error.value and "\n" not in error.value, (method, arguments, error)
    database = Database(sqlite_url)
    assert [r.binary for r in database.service_get_all()] == ["nova-conductor"]
    assert database.compute_node_get_all() == []
    assert api.call({}, "compute_node_get_all") == []  # still serving
    assert_served_cleanly(conductor, pids)


def test_a_database_outage_is_an_error_reply_and_the_workers_survive(
    supervise, rabbit_url, api, postgres_server: PostgresServer, postgres_url: str
) -> None:
    Database(postgres_url).sync()  # a database server is synced by the operator
    sup = start_conductor(supervise, rabbit_url, postgres_url)
    pids = sup.worker_pids()
    compute = api.call({}, "service_create", values={**COMPUTE, "version": SERVICE_VERSION})
    postgres_server.stop()
    try:
        for method, arguments in [
            ("service_report", {"service_id": compute["id"]}),
            ("compute_node_update", {"host": "cmp1", "values": {"vcpus": 2}}),
            ("service_get_all", {}),
        ]:
            error = remote_error(lambda m=method, a=arguments: api.call({}, m, **a))
            assert error.exc_type == "DatabaseUnavailable", (method, error)
            assert re.match(r"cannot reach the database postgresql\+psycopg://", error.value)
            assert "\n" not in error.value
        wait_until(lambda: "cannot report service state" in sup.log(), 15, "the heartbeat warning")
    finally:
        postgres_server.start()
    wait_until(
        lambda: api.call({}, "service_report", service_id=compute["id"])["report_count"] == 1,
        timeout=20,
        what="the database back",
    )
    assert api.call({}, "compute_node_update", host="cmp1", values={"vcpus": 2})["vcpus"] == 2
    assert_served_cleanly(sup, pids)


# ----- echo and --topic --------------------------------------------------------------------


def test_echo_has_a_record_a_heartbeat_and_honours_topic(
    supervise, rabbit_url, messenger, sqlite_url, topic
) -> None:
    sup = supervise(
        "echo", "--workers", "2", "--host", "e1", "--transport-url", rabbit_url,
        "--database-url", sqlite_url, "--topic", topic, "--report-interval", "0.5",
    )  # fmt: skip
    sup.wait_ready(2, timeout=60)
    assert RPCClient(messenger, Target(topic=topic), timeout=10).call({}, "echo", payload=[1]) == [
        1
    ]
    database = Database(sqlite_url)
    record = wait_until(
        lambda: (
            (r := database.service_get_by_host_and_binary("e1", "echo"))
            and r.report_count >= 2
            and r
        ),
        what="echo's heartbeats",
    )
    assert (record.topic, record.version) == (topic, SERVICE_VERSION)
    assert len(database.service_get_all()) == 1


@pytest.mark.parametrize("binary", ["nova-conductor", "nova-scheduler", "nova-compute"])
def test_a_nova_service_refuses_another_topic(supervise, rabbit_url, sqlite_url, binary) -> None:
    sup = supervise(
        binary, "--workers", "1", "--transport-url", rabbit_url, "--database-url", sqlite_url,
        "--topic", "elsewhere",
    )  # fmt: skip
    assert sup.wait_exit(60) == 2
    log = sup.log()
    fixed = binary.removeprefix("nova-")
    errors = [line for line in log.splitlines() if " ERROR " in line and "worker" in line]
    assert len(errors) == 1, log
    assert errors[0].endswith(
        f"service {binary} cannot start: {binary} serves topic {fixed}, fixed by its binary: "
        "it cannot serve --topic elsewhere"
    ), errors[0]
    assert "Traceback" not in log


def test_a_nova_service_takes_its_own_topic(supervise, rabbit_url, sqlite_url, api) -> None:
    sup = supervise(
        "nova-conductor", "--workers", "1", "--transport-url", rabbit_url,
        "--database-url", sqlite_url, "--topic", "conductor",
    )  # fmt: skip
    sup.wait_ready(1, timeout=60)
    assert [r["topic"] for r in api.call({}, "service_get_all")] == ["conductor"]


@each_transport
def test_the_conductor_notifies_the_records_it_writes(
    supervise, transport_url, sqlite_url, api
) -> None:
    """With `[oslo_messaging_notifications] driver = messagingv2`, the conductor sends nova's
    service.create for its own record and for one it creates for a compute, service.update
    for a disable, and service.delete; never for a heartbeat."""
    topic = f"notify_{uuid.uuid4().hex[:12]}"
    sup = supervise(
        "nova-conductor", "--workers", "1", "--host", HOST, "--transport-url", transport_url,
        "--database-url", sqlite_url, "--report-interval", "0.2",
        "--notification-driver", "messagingv2", "--notification-topics", topic,
    )  # fmt: skip
    sup.wait_ready(1, timeout=60)
    created = api.call({}, "service_create", values={**COMPUTE, "version": SERVICE_VERSION})
    api.call({}, "service_report", service_id=created["id"])
    api.call({}, "service_update", service_id=created["id"], values={"disabled": True})
    api.call({}, "service_destroy", service_id=created["id"])
    messages = [inner(body) for body in take(transport_url, f"{topic}.info", 4)]
    seen = [
        (m["event_type"], m["publisher_id"], m["payload"]["nova_object.data"]["disabled"])
        for m in messages
    ]
    assert seen == [
        ("service.create", f"nova-conductor:{HOST}", False),
        ("service.create", "nova-compute:cmp1", False),
        ("service.update", "nova-compute:cmp1", True),
        ("service.delete", "nova-compute:cmp1", True),
    ]
    report_count = Database(sqlite_url).service_get_by_host_and_binary(HOST, "nova-conductor")
    wait_until(
        lambda: (
            Database(sqlite_url).service_get_by_host_and_binary(HOST, "nova-conductor").report_count
            > report_count.report_count + 2
        ),
        what="the conductor's own heartbeats",
    )
    with kombu.Connection(kombu_urls(transport_url)) as conn:  # heartbeats sent nothing
        assert conn.channel().basic_get(f"{topic}.info", no_ack=True) is None
    assert_served_cleanly(sup, sup.worker_pids())


def test_a_database_not_synced_stops_the_conductor_with_one_line(
    supervise, rabbit_url, postgres_url: str
) -> None:
    """A database server is synced by the operator: until then the conductor cannot start,
    and no restart would fix it (exit 2)."""
    sup = supervise(
        "nova-conductor", "--workers", "2", "--host", HOST, "--transport-url", rabbit_url,
        "--database-url", postgres_url,
    )  # fmt: skip
    assert sup.wait_exit(60) == 2
    log = sup.log()
    assert "has no supervise schema; run 'supervise db sync'" in log
    assert "Traceback" not in log, log


def test_an_unreachable_database_is_one_line_per_start_and_a_crash_loop(
    supervise, rabbit_url
) -> None:
    """Nothing listens on the database's port: each start fails with one line (no traceback),
    the master restarts the workers with back-off, and past the crash budget exits 3."""
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/nova"
    sup = supervise(
        "nova-conductor", "--workers", "1", "--host", HOST, "--transport-url", rabbit_url,
        "--database-url", url, "--max-restarts", "2", "--restart-backoff", "0.05",
    )  # fmt: skip
    assert sup.wait_exit(60) == 3
    log = sup.log()
    failed = [line for line in log.splitlines() if "failed to start: cannot reach" in line]
    assert len(failed) == 3, log
    assert "Traceback" not in log, log
