"""Nothing lost on reload, drain, crash or broker restart, under a steady call load (on both
transports but for the broker restart, which stops a private RabbitMQ node)."""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time

import pytest

from supervise.rpc.client import RPCClient
from supervise.rpc.dispatcher import Target
from supervise.rpc.io import Cancelled, ConnectionThread
from supervise.rpc.server import RPCServer
from tests.functional.conftest import (
    RPC_SERVICE,
    each_transport,
    private_rabbit,
    rabbitmqctl,
    wait_until,
)
from tests.functional.load import Load


def reload_under_load(sup, client: RPCClient) -> Load:
    """SIGHUP while callers call; return the load once the reload ended and calls went on."""
    with Load(client).running() as load:
        load.wait_for_calls(50)
        sup.signal(signal.SIGHUP)
        wait_until(lambda: len(sup.notify.with_key("READY")) == 2, what="the reload to end")
        load.wait_for_calls(50)
    return load


@each_transport
def test_rolling_reload_under_load_fails_no_call(serve, client):
    sup = serve(2)
    before = sup.worker_pids()
    load = reload_under_load(sup, client)
    assert not load.failures, load.failures[:5]
    assert not sup.worker_pids() & before


@each_transport
def test_mutate_reload_under_load_fails_no_call(serve, client):
    sup = serve(2, "--reload-method", "mutate")
    load = reload_under_load(sup, client)
    assert not load.failures, load.failures[:5]


@each_transport
def test_draining_one_host_under_load_fails_no_call(serve, client):
    """Two hosts serve one topic; one is stopped, as in a rolling restart of a cluster."""
    leaving = serve(2, host="hosta")
    staying = serve(2, host="hostb")
    with Load(client).running() as load:
        load.wait_for_calls(50)
        leaving.signal(signal.SIGTERM)
        assert leaving.wait_exit(timeout=30) == 0
        load.wait_for_calls(50)
    assert not load.failures, load.failures[:5]
    assert staying.process.poll() is None


@private_rabbit
def test_broker_restart_under_load_workers_reconnect_without_crash_loop(serve, client, rabbit_node):
    sup = serve(2)
    pids = sup.worker_pids()
    with Load(client, callers=4).running() as load:
        load.wait_for_calls(20)
        rabbit_node.stop_app()
        try:
            time.sleep(1.0)  # an outage of a second, under load
        finally:
            rabbit_node.start_app()
        restarted = time.monotonic()
        served_before = load.succeeded
        wait_until(lambda: load.succeeded > served_before + 20, timeout=30, what="service again")
        back_after = time.monotonic() - restarted
    assert back_after < 10, back_after
    assert sup.worker_pids() == pids, "workers were replaced: a crash loop"
    assert sup.log().count("connected again after") >= 2
    assert "Traceback" not in sup.log()


@pytest.mark.parametrize("stop", ["server", "connection-thread"])
def test_stop_cancels_a_start_that_waits_for_the_broker(stop, caplog):
    """The worker's lifecycle thread relies on this: stop() from another thread makes a
    start still retrying its first connection raise Cancelled at once."""
    url = _refused_url()
    if stop == "server":
        stoppable = RPCServer(url, Target(topic="t", server="h"), [])
        io, start = stoppable._io, stoppable.start
    else:
        stoppable = io = ConnectionThread(url, name="test-io", heartbeat=0, on_connect=print)
        start = lambda: (io.start(), io.wait_connected())  # noqa: E731
    raised: list[BaseException] = []
    thread = threading.Thread(target=lambda: _catch(start, raised))
    thread.start()
    wait_until(lambda: io.last_error, what="a failed connection attempt")
    began = time.monotonic()
    stoppable.stop()
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - began < 1.0
    assert [type(error) for error in raised] == [Cancelled]
    assert not io._thread.is_alive()
    if stop == "server":  # then the worker's stop waits for it: at once, nothing to send
        caplog.clear()
        began = time.monotonic()
        stoppable.wait()
        assert time.monotonic() - began < 1.0
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def _refused_url() -> str:
    """A RabbitMQ URL whose port nobody listens on: every connection attempt is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"rabbit://guest:guest@127.0.0.1:{sock.getsockname()[1]}/"


def test_term_while_workers_wait_for_the_broker_stops_them_at_once(supervise):
    """The worker's cancel reaches the RPC server's connection retry loop: a SIGTERM while
    the broker cannot be reached ends the start at once, exit 0, not at the drain deadline."""
    sup = supervise(RPC_SERVICE, "--workers", "2", "--transport-url", _refused_url())
    wait_until(lambda: sup.log().count("cannot connect") >= 2, what="both workers retrying")
    began = time.monotonic()
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0
    assert time.monotonic() - began < 2.0
    assert sup.log().count("cancelling its start") == 2
    assert "Traceback" not in sup.log()


def _catch(function, errors: list[BaseException]) -> None:
    try:
        function()
    except BaseException as error:
        errors.append(error)


def test_a_graceful_stop_deletes_the_workers_fanout_queues(serve, rabbit_url, topic):
    vhost = rabbit_url.rsplit("/", 1)[1]

    def fanout_queues() -> list[str]:
        names = rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name").split()
        return [name for name in names if name.startswith(f"{topic}_fanout_")]

    sup = serve(2)
    assert len(fanout_queues()) == 2
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0
    assert fanout_queues() == []


@private_rabbit
def test_a_reconnect_during_a_drain_sends_the_replies(serve, client, rabbit_node, topic):
    """RabbitMQ closes the draining worker's connection while its calls run: it connects
    again, and the replies go out on the new connection, with a few log lines."""
    sup = serve(1, "--graceful-shutdown-timeout", "30")
    results: list[object] = []
    callers = [
        threading.Thread(
            target=lambda: _catch(
                lambda: results.append(client.call({}, "sleep", ms=6000)), results
            )
        )
        for _ in range(4)
    ]
    for caller in callers:
        caller.start()
    wait_until(
        lambda: rabbit_node.queue_info(topic, "messages_unacknowledged") == 4,
        what="4 calls in flight",
    )
    sup.signal(signal.SIGTERM)
    wait_until(lambda: rabbit_node.queue_info(topic, "consumers") == 0, what="the drain")
    rabbit_node.close_connections()
    assert sup.wait_exit(timeout=30) == 0
    for caller in callers:
        caller.join(30)
    assert results == [6000] * 4
    broker_lines = [line for line in sup.log().splitlines() if "broker" in line]
    assert 0 < len(broker_lines) <= 6, "\n".join(broker_lines)
    assert "Traceback" not in sup.log()
