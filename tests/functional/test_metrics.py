"""The master's Prometheus endpoint, scraped from real masters over real sockets."""

from __future__ import annotations

import os
import signal
import socket
import sys
import urllib.error
import urllib.request

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.functional.conftest import RPC_SERVICE, each_transport, wait_until

CALLS = 20
ECHO = (("method", "echo"),)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Scraper:
    """Scrapes a master's endpoint and checks that no counter ever goes backwards."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.highest: dict[tuple, float] = {}

    def scrape(self) -> dict[tuple, float]:
        with urllib.request.urlopen(self.url, timeout=5) as response:
            assert response.status == 200
            body = response.read().decode()
        samples = {}
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples[key] = sample.value
                if family.type in ("counter", "histogram"):
                    assert sample.value >= self.highest.get(key, 0), f"{key} went backwards"
                    self.highest[key] = sample.value
        return samples

    def wait_for(self, name: str, labels: tuple, value: float, timeout: float = 15.0) -> None:
        wait_until(
            lambda: self.scrape().get((name, labels)) == value,
            timeout,
            f"{name}{dict(labels)} == {value} (last {self.scrape().get((name, labels))})",
        )


def call_echo(client, count: int) -> None:
    for index in range(count):
        assert client.call({}, "echo", payload=index) == index


@each_transport
def test_counters_keep_counting_across_a_kill_and_a_reload(serve, client) -> None:
    port = free_port()
    sup = serve(2, "--metrics-port", str(port))
    scraper = Scraper(port)
    call_echo(client, CALLS)
    scraper.wait_for("supervise_rpc_messages_handled_total", ECHO, CALLS)
    samples = scraper.scrape()
    assert samples["supervise_rpc_handler_duration_seconds_count", ECHO] == CALLS
    assert samples["supervise_rpc_messages_failed_total", ECHO] == 0
    assert samples["supervise_workers_configured", ()] == 2
    assert samples["supervise_workers_ready", ()] == 2

    victim = min(sup.worker_pids())
    os.kill(victim, signal.SIGKILL)
    scraper.wait_for("supervise_worker_exits_total", (("cause", "signal"),), 1)
    wait_until(lambda: len(pids := sup.worker_pids()) == 2 and victim not in pids)
    call_echo(client, CALLS)
    scraper.wait_for("supervise_rpc_messages_handled_total", ECHO, 2 * CALLS)

    sup.signal(signal.SIGHUP)
    scraper.wait_for("supervise_reloads_total", (("outcome", "completed"),), 1)
    scraper.wait_for("supervise_worker_exits_total", (("cause", "reload"),), 2)
    call_echo(client, CALLS)
    scraper.wait_for("supervise_rpc_messages_handled_total", ECHO, 3 * CALLS)
    samples = scraper.scrape()
    assert samples["supervise_worker_exits_total", (("cause", "signal"),)] == 1
    assert samples["supervise_reloads_total", (("outcome", "failed"),)] == 0
    for slot in ("0", "1"):
        assert samples["supervise_worker_resident_memory_bytes", (("slot", slot),)] > 1 << 20
        assert samples["supervise_worker_cpu_seconds_total", (("slot", slot),)] > 0


def test_a_workers_calls_since_its_last_heartbeat_count_when_it_exits(serve, client) -> None:
    """With heartbeats far apart, only the one a worker sends as it exits carries its calls."""
    port = free_port()
    sup = serve(1, "--metrics-port", str(port), "--heartbeat-interval", "600")
    scraper = Scraper(port)
    call_echo(client, CALLS)
    assert ("supervise_rpc_messages_handled_total", ECHO) not in scraper.scrape()
    sup.signal(signal.SIGHUP)  # the old worker drains once its replacement is ready
    scraper.wait_for("supervise_worker_exits_total", (("cause", "reload"),), 1)
    assert scraper.scrape().get(("supervise_rpc_messages_handled_total", ECHO)) == CALLS


def request(port: int, data: bytes) -> bytes:
    """Send `data`, then read until the master closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
            parts = []
            while chunk := sock.recv(65536):
                parts.append(chunk)
        except ConnectionResetError:  # closed with some of a large request unread
            return b""
    return b"".join(parts)


def test_bad_requests_get_an_error_or_a_close_and_the_master_keeps_serving(serve, client) -> None:
    port = free_port()
    sup = serve(2, "--metrics-port", str(port))
    scraper = Scraper(port)
    slow = socket.create_connection(("127.0.0.1", port), timeout=5)
    slow.sendall(b"GET /metrics HTTP/1.0\r\n")  # and never the rest
    try:
        assert request(port, b"\x16\x03\x01garbage\r\n\r\n").startswith(b"HTTP/1.0 400 ")
        assert request(port, b"DELETE /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.0 405 ")
        assert request(port, b"GET /admin HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.0 404 ")
        huge = b"GET /metrics HTTP/1.1\r\nX-Big: " + b"x" * (1 << 20) + b"\r\n\r\n"
        answer = request(port, huge)
        assert answer == b"" or answer.startswith(b"HTTP/1.0 431 ")
        with pytest.raises(urllib.error.HTTPError) as not_found:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=5)
        assert not_found.value.code == 404
        assert scraper.scrape()["supervise_workers_ready", ()] == 2  # while `slow` waits
        call_echo(client, 1)
    finally:
        slow.close()
    assert sup.process.poll() is None
    assert len(sup.worker_pids()) == 2


def test_workers_do_not_inherit_the_listening_socket(serve) -> None:
    port = free_port()
    sup = serve(2, "--metrics-port", str(port))
    master_listens = [
        c for c in psutil.Process(sup.pid).net_connections("tcp") if c.laddr.port == port
    ]
    assert [c.status for c in master_listens] == [psutil.CONN_LISTEN]
    for pid in sup.worker_pids():
        assert not [c for c in psutil.Process(pid).net_connections("tcp") if c.laddr.port == port]


def test_a_port_in_use_is_one_line_and_exit_2(supervise) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sup = supervise(RPC_SERVICE, "--metrics-port", str(port))
        assert sup.wait_exit() == 2
    assert sup.log().splitlines() == [
        f"supervise: error: cannot listen for metrics on 127.0.0.1:{port}: Address already in use"
    ]


def test_an_unknown_host_is_one_line_and_exit_2(supervise) -> None:
    sup = supervise(RPC_SERVICE, "--metrics-port", "9", "--metrics-host", "no-such-host.invalid")
    assert sup.wait_exit() == 2
    [line] = sup.log().splitlines()
    assert line.startswith("supervise: error: cannot listen for metrics on no-such-host.invalid:9")


def test_prometheus_client_is_imported_only_with_metrics_on(supervise) -> None:
    importtime = (sys.executable, "-X", "importtime", "-m", "supervise")
    off = supervise("idle", "--workers", "1", program=importtime)
    off.wait_ready(1)
    on = supervise("idle", "--workers", "1", "--metrics-port", str(free_port()), program=importtime)
    on.wait_ready(1)
    assert "prometheus_client" not in off.log()
    assert "prometheus_client" in on.log()
