"""Wire compatibility with a stock oslo.messaging, both ways, through a real RabbitMQ.

A. A stock oslo.messaging ``RPCClient`` calls supervise workers (``serve``).
B. Our `RPCClient` calls a stock oslo.messaging RPC server running in this process.

oslo's transports are built on a private ``ConfigOpts`` (tests/functional/oslo_clients.py).
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import oslo_messaging
import pytest
from oslo_messaging.rpc.dispatcher import DefaultRPCAccessPolicy

from supervise.rpc import wire
from supervise.rpc.client import RPCClient
from supervise.rpc.dispatcher import Target
from tests.functional.conftest import wait_until

# ----- oslo.messaging fixtures -------------------------------------------------------------


@pytest.fixture
def oslo_client(oslo_transport, topic) -> oslo_messaging.RPCClient:
    return oslo_messaging.get_rpc_client(
        oslo_transport, oslo_messaging.Target(topic=topic), timeout=10
    )


class Recorded:
    """What oslo endpoints saw: (server, method, context, args), in order of arrival."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[tuple[str, str, dict, dict]] = []

    def add(self, server: str, method: str, context: dict, args: dict) -> None:
        with self._lock:
            self._items.append((server, method, context, args))

    def where(self, method: str, **args) -> list[tuple[str, str, dict, dict]]:
        with self._lock:
            return [
                item
                for item in self._items
                if item[1] == method and all(item[3].get(k) == v for k, v in args.items())
            ]


class OsloEndpoint:
    """A plain oslo.messaging endpoint (no namespace, version 1.0)."""

    target = oslo_messaging.Target(version="1.0")

    def __init__(self, server: str, recorded: Recorded) -> None:
        self.server = server
        self.recorded = recorded

    def echo(self, ctxt, payload):
        self.recorded.add(self.server, "echo", ctxt, {"payload": payload})
        return payload

    def record(self, ctxt, marker):
        self.recorded.add(self.server, "record", ctxt, {"marker": marker})

    def whoami(self, ctxt):
        return self.server

    def context(self, ctxt):
        self.recorded.add(self.server, "context", ctxt, {})
        return ctxt

    def fail(self, ctxt, message):
        raise ValueError(message)

    def slow(self, ctxt, seconds):
        time.sleep(seconds)
        return f"slept {seconds}"


class OsloNamespacedEndpoint:
    target = oslo_messaging.Target(namespace="interop", version="1.2")

    def __init__(self, server: str) -> None:
        self.server = server

    def where(self, ctxt, arg):
        return {"server": self.server, "arg": arg}


@pytest.fixture
def oslo_server(oslo_transport, topic) -> Iterator[Callable[[str], Recorded]]:
    """``oslo_server("hostb")`` starts a stock oslo.messaging RPC server on the test's
    topic, with the server name given; all of them share one `Recorded`, returned."""
    recorded = Recorded()
    servers: list[oslo_messaging.MessageHandlingServer] = []

    def start(server: str) -> Recorded:
        rpc_server = oslo_messaging.get_rpc_server(
            oslo_transport,
            oslo_messaging.Target(topic=topic, server=server),
            [OsloEndpoint(server, recorded), OsloNamespacedEndpoint(server)],
            executor="threading",
            access_policy=DefaultRPCAccessPolicy,
        )
        servers.append(rpc_server)
        rpc_server.start()  # the queues are declared and bound when start returns
        return recorded

    try:
        yield start
    finally:
        for rpc_server in servers:
            rpc_server.stop()
        for rpc_server in servers:
            rpc_server.wait()


def _marker() -> str:
    return f"marker-{uuid.uuid4().hex}"


def _pids_that_logged(log: str, marker: str) -> list[int]:
    """The pids of the workers whose log lines mention `marker`, one entry per line."""
    return [
        int(pid)
        for pid in re.findall(rf"\[worker \d+/\d+ pid (\d+)\][^\n]*{re.escape(marker)}", log)
    ]


# ----- A. stock oslo.messaging client -> supervise workers ---------------------------------


def test_oslo_call_cast_fanout_and_server_targeting(serve, oslo_client):
    sup = serve(2, host="hosta")
    workers = sup.worker_pids()

    assert oslo_client.call({}, "echo", payload={"a": [1, "b", None]}) == {"a": [1, "b", None]}

    marker = _marker()
    assert oslo_client.cast({}, "fail", message=marker) is None
    wait_until(
        lambda: len(_pids_that_logged(sup.log(), marker)) == 1, what="the cast in one worker"
    )

    marker = _marker()
    oslo_client.prepare(fanout=True).cast({}, "fail", message=marker)
    wait_until(
        lambda: sorted(_pids_that_logged(sup.log(), marker)) == sorted(workers),
        what="the fanout cast in every worker, once each",
    )

    targeted = oslo_client.prepare(server="hosta")
    assert {targeted.call({}, "pid") for _ in range(10)} <= workers
    with pytest.raises(oslo_messaging.MessagingTimeout):
        oslo_client.prepare(server="nohost", timeout=1).call({}, "pid")


def test_oslo_context_and_baseapi_ping(serve, oslo_client):
    serve(1)
    context = {"user": "u1", "project_id": "p", "roles": ["admin"], "is_admin": False}
    assert oslo_client.call(context, "context") == context
    ping = oslo_client.prepare(namespace="baseapi", version="1.1").call({}, "ping", arg="x")
    assert ping == {"service": "echo", "arg": "x"}


def test_oslo_remote_errors_and_version_negotiation(serve, oslo_client):
    serve(1)
    # A builtin exception is rebuilt as its own class by oslo. Its class cannot be swapped
    # for oslo's "_Remote" subclass, so oslo puts the remote traceback in its message.
    with pytest.raises(ValueError) as error:
        oslo_client.call({}, "fail", message="boom")
    assert type(error.value) is ValueError
    assert error.value.args[0].startswith("boom\nTraceback (most recent call last):")
    assert "raise ValueError(message)" in error.value.args[0]

    assert oslo_client.prepare(version="1.0").call({}, "echo", payload=1) == 1
    with pytest.raises(oslo_messaging.RemoteError) as error:
        oslo_client.prepare(version="2.0").call({}, "echo", payload=1)
    assert error.value.exc_type == "UnsupportedVersion"
    assert (
        error.value.value == "Endpoint does not support RPC version '2.0'. Attempted method: 'echo'"
    )

    with pytest.raises(oslo_messaging.RemoteError) as error:
        oslo_client.call({}, "no_such_method")
    assert error.value.exc_type == "NoSuchMethod"
    assert error.value.value == "Endpoint does not support RPC method 'no_such_method'"


def test_oslo_call_monitor_heartbeats_keep_a_long_call_alive(serve, oslo_client):
    """nova makes long calls with ``call_monitor_timeout``: the oslo client gives up when
    no message arrives for that long, and an oslo server sends a heartbeat reply
    (``ending: false``) every ``_timeout / 2`` s while the method runs."""
    serve(1)
    assert oslo_client.prepare(timeout=20).call({}, "sleep", ms=4500) == 4500  # unmonitored
    monitored = oslo_client.prepare(timeout=20, call_monitor_timeout=2)
    began = time.monotonic()
    try:
        result = monitored.call({}, "sleep", ms=4500)
    except oslo_messaging.MessagingTimeout:
        result = f"MessagingTimeout after {time.monotonic() - began:.1f} s"
    assert result == 4500, "no call-monitor heartbeat came from the supervise worker"


# ----- B. supervise client -> stock oslo.messaging server ----------------------------------


def test_call_cast_fanout_and_server_targeting_to_oslo(oslo_server, client):
    recorded = oslo_server("hostb")
    oslo_server("hostc")

    assert client.call({}, "echo", payload={"a": [1, "b", None]}) == {"a": [1, "b", None]}

    marker = _marker()
    assert client.cast({}, "record", marker=marker) is None
    wait_until(lambda: recorded.where("record", marker=marker), what="the cast")
    assert len(recorded.where("record", marker=marker)) == 1

    marker = _marker()
    client.prepare(fanout=True).cast({}, "record", marker=marker)
    wait_until(
        lambda: (
            sorted(item[0] for item in recorded.where("record", marker=marker))
            == ["hostb", "hostc"]
        ),
        what="the fanout cast on both oslo servers",
    )

    for server in ("hostb", "hostc"):
        assert {client.prepare(server=server).call({}, "whoami") for _ in range(5)} == {server}


def test_context_arrives_at_oslo_endpoint_as_a_dict(oslo_server, client):
    recorded = oslo_server("hostb")
    context = {"user": "u1", "project_id": "p", "roles": ["admin"], "is_admin": False}

    returned = client.call(context, "context")
    [(_, _, seen, _)] = recorded.where("context")
    assert type(seen) is dict
    assert seen == returned
    # oslo's driver always adds the message's _timeout to the context, as client_timeout;
    # like oslo's own client without a call monitor, ours sends none.
    assert {k: v for k, v in seen.items() if k != "client_timeout"} == context
    assert seen["client_timeout"] is None

    marker = _marker()
    client.cast(context, "record", marker=marker)
    [(_, _, seen, _)] = wait_until(lambda: recorded.where("record", marker=marker))
    assert seen == {**context, "client_timeout": None}


def test_remote_error_from_oslo(oslo_server, client):
    oslo_server("hostb")
    with pytest.raises(wire.RemoteError) as error:
        client.call({}, "fail", message="boom")
    assert error.value.exc_type == "ValueError"
    assert error.value.value == "boom"
    assert error.value.traceback.startswith("Traceback (most recent call last):")
    assert "raise ValueError(message)" in error.value.traceback
    assert error.value.traceback.rstrip().endswith("ValueError: boom")


def test_namespace_and_version_to_oslo(oslo_server, client):
    oslo_server("hostb")
    namespaced = client.prepare(namespace="interop")
    for version in ("1.0", "1.2"):
        assert namespaced.prepare(version=version).call({}, "where", arg=version) == {
            "server": "hostb",
            "arg": version,
        }
    assert client.prepare(version="1.0").call({}, "echo", payload=2) == 2

    for wrong in (namespaced.prepare(version="1.3"), namespaced.prepare(version="2.0")):
        with pytest.raises(wire.RemoteError) as error:
            wrong.call({}, "where", arg=1)
        assert error.value.exc_type == "UnsupportedVersion"
        assert error.value.value == (
            f"Endpoint does not support RPC version {wrong.target.version}. Attempted method: where"
        )

    with pytest.raises(wire.RemoteError) as error:
        client.prepare(namespace="nowhere").call({}, "where", arg=1)
    assert error.value.exc_type == "UnsupportedVersion"
    with pytest.raises(wire.RemoteError) as error:
        client.call({}, "where", arg=1)  # exists, but only in namespace "interop"
    assert error.value.exc_type == "NoSuchMethod"
    assert error.value.value == "Endpoint does not support RPC method where"


def test_oslo_heartbeats_keep_a_monitored_supervise_call_alive(oslo_server, messenger, topic):
    """With a call monitor our client sends ``_timeout``; an oslo server then sends an
    ``ending: false`` heartbeat every ``_timeout / 2`` s while the method runs, which must
    neither end the call early (only the last reply carries the result) nor let it time out."""
    oslo_server("hostb")
    client = RPCClient(messenger, Target(topic=topic), timeout=10, call_monitor_timeout=2)
    began = time.monotonic()
    result = client.call({}, "slow", seconds=3)
    assert result == "slept 3", f"got {result!r} after {time.monotonic() - began:.1f} s"
    assert time.monotonic() - began >= 3
