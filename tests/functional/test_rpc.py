"""RPC to workers under a real master, through RabbitMQ and (`each_transport`) the embedded
transport; tests of RabbitMQ itself (failover, AMQP heartbeats, no broker) use RabbitMQ only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from supervise.rpc import wire
from supervise.rpc.client import BrokerUnreachable, MessagingTimeout, Messenger, RPCClient
from supervise.rpc.dispatcher import Target
from tests.functional.conftest import each_transport, wait_until


@each_transport
def test_call_cast_and_ping(serve, client):
    serve(2)
    assert client.call({}, "echo", payload={"a": [1, 2]}) == {"a": [1, 2]}
    ping = client.prepare(namespace="baseapi", version="1.1").call({}, "ping", arg="x")
    assert ping == {"service": "echo", "arg": "x"}
    client.cast({}, "echo", payload=1)
    assert client.call({"user": "u1", "roles": ["admin"]}, "context") == {
        "user": "u1",
        "roles": ["admin"],
    }


@each_transport
def test_calls_spread_over_workers_and_server_targeting(serve, client):
    sup = serve(2, host="hosta")
    pids = {client.call({}, "pid") for _ in range(40)}
    assert pids == sup.worker_pids()
    assert client.prepare(server="hosta").call({}, "pid") in pids
    with pytest.raises(Exception, match="no reply"):
        client.prepare(server="nohost", timeout=0.5).call({}, "pid")


@each_transport
def test_fanout_reaches_every_worker(serve, client, topic):
    sup = serve(3)
    client.prepare(fanout=True).cast({}, "fail", message="fanout-marker")
    wait_until(
        lambda: sup.log().count("fanout-marker") == 3, what="the fanout cast in all 3 workers"
    )


@each_transport
def test_remote_error_carries_class_message_and_traceback(serve, client):
    serve(1)
    with pytest.raises(wire.RemoteError) as error:
        client.call({}, "fail", message="boom")
    assert error.value.exc_type == "ValueError"
    assert error.value.value == "boom"
    assert "raise ValueError(message)" in error.value.traceback


@each_transport
def test_killed_worker_calls_are_answered_by_another(serve, client):
    sup = serve(2, "--heartbeat-interval", "0.1")
    victim = client.call({}, "pid")

    def victim_in_flight() -> int:
        return sum(w["in_flight"] or 0 for w in sup.status()["workers"] if w["pid"] == victim)

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(client.call, {}, "sleep", ms=1500) for _ in range(16)]
        wait_until(victim_in_flight, 10, "calls in flight in the victim")
        os.kill(victim, signal.SIGKILL)
        results = [f.result(timeout=30) for f in futures]
    assert results == [1500] * 16
    assert f"Child {victim} killed by signal 9" in sup.log()


@each_transport
def test_poison_message_is_dead_lettered_and_the_loop_ends(serve, client):
    sup = serve(2, "--max-redeliveries", "2", "--max-restarts", "10")
    with pytest.raises(wire.RemoteError) as error:
        client.prepare(timeout=30).call({}, "die")
    assert error.value.exc_type == "DeadLettered"
    assert "moving it to queue supervise_dead_letter" in sup.log()
    # the workers serve on, and the message waits in the dead-letter queue
    assert client.call({}, "echo", payload=1) == 1
    assert sup.process.poll() is None
    deaths = sup.log().count("killed by signal 9")
    assert deaths == 3, deaths  # the first delivery and two redeliveries


def test_client_with_no_broker_fails_clearly_within_its_timeout(topic):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    messenger = Messenger(f"rabbit://guest:guest@127.0.0.1:{port}/")
    try:
        began = time.monotonic()
        with pytest.raises(BrokerUnreachable, match="cannot reach the broker"):
            RPCClient(messenger, Target(topic=topic), timeout=1.5).call({}, "echo", payload=1)
        assert time.monotonic() - began < 3
    finally:
        messenger.close()


def test_failover_to_the_next_host_of_the_url(supervise, rabbit_url, topic, messenger):
    vhost = rabbit_url.rsplit("/", 1)[1]
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead_port = unused.getsockname()[1]
    url = f"rabbit://guest:guest@127.0.0.1:{dead_port},guest:guest@localhost:5672/{vhost}"
    sup = supervise(
        "tests.functional.services:RPCTestService",
        "--workers", "1", "--transport-url", url, "--topic", topic, "--publisher-confirms",
    )  # fmt: skip
    sup.wait_ready(1)
    assert RPCClient(messenger, Target(topic=topic), timeout=10).call({}, "echo", payload=3) == 3
    assert "guest:guest" not in sup.log()


def test_amqp_heartbeats_flow_during_a_long_handler(serve, client):
    sup = serve(1, "--heartbeat-timeout-threshold", "2")
    assert client.prepare(timeout=20).call({}, "sleep", ms=7000) == 7000
    assert "lost the connection" not in sup.log()


def run_call(transport_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "supervise", "call", "--transport-url", transport_url, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@each_transport
def test_call_command_prints_json_and_exits_1_on_errors(serve, transport_url, topic):
    serve(1)
    done = run_call(transport_url, topic, "echo", 'payload={"k": [1, "x"]}')
    assert (done.returncode, done.stdout, done.stderr) == (0, '{"k": [1, "x"]}\n', "")
    done = run_call(transport_url, "--json", '{"message": "bad"}', topic, "fail")
    assert done.returncode == 1
    assert done.stderr == "supervise: remote error: ValueError: bad\n"
    done = run_call(transport_url, "--timeout", "0.5", topic, "sleep", "ms=3000")
    assert done.returncode == 1
    assert done.stderr == f"supervise: no reply to 'sleep' on topic '{topic}' within 0.5 s\n"
    done = run_call(transport_url, "--cast", topic, "echo", "payload=1")
    assert (done.returncode, done.stdout) == (0, "")


def test_call_command_with_no_broker_says_so(topic):
    done = run_call("rabbit://guest:secret@127.0.0.1:1/", "--timeout", "1", topic, "echo")
    assert done.returncode == 1
    assert done.stderr.startswith("supervise: cannot reach the broker at ")
    assert "secret" not in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1


@each_transport
def test_call_monitor_heartbeats_between_supervise_client_and_server(serve, client):
    sup = serve(1)
    monitored = client.prepare(timeout=20, call_monitor_timeout=2)
    assert monitored.call({}, "sleep", ms=4500) == 4500
    victim = sup.worker_pids().pop()
    os.kill(victim, signal.SIGSTOP)  # no more heartbeats: the caller gives up early
    try:
        began = time.monotonic()
        with pytest.raises(MessagingTimeout, match="nor heartbeat within 2 s"):
            monitored.call({}, "sleep", ms=100)
        assert time.monotonic() - began < 5
    finally:
        os.kill(victim, signal.SIGCONT)
