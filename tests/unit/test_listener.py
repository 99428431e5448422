"""The master's one-request connections, served from a selector loop as the master runs it."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervise import listener as listener_module
from supervise.listener import Listener


class Loop:
    """A selector loop on a thread of the test, as the master's loop runs a Listener."""

    def __init__(self, path: Path, handle, **options):
        self.selector = selectors.DefaultSelector()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.listen()
        self.listener = Listener(server, self.selector, handle, **options)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            deadline = self.listener.deadline()
            timeout = 0.05 if deadline is None else max(0.0, min(0.05, deadline - time.monotonic()))
            for key, _ in self.selector.select(timeout):
                key.data()
            self.listener.run_due(time.monotonic())

    def stop(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.listener.close()


@pytest.fixture
def loop(tmp_path: Path) -> Iterator:
    loops = []

    def start(handle, **options):
        options = {"terminator": b"\n", "max_request": 1024, "timeout": 2.0, **options}
        loops.append(Loop(tmp_path / f"s{len(loops)}", handle, **options))
        return tmp_path / f"s{len(loops) - 1}"

    yield start
    for each in loops:
        each.stop()


def connect(path: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(5)
    client.connect(str(path))
    return client


def read_all(client: socket.socket) -> bytes:
    parts = []
    while chunk := client.recv(65536):
        parts.append(chunk)
    return b"".join(parts)


def test_one_request_one_response_then_closed(loop) -> None:
    path = loop(lambda request, _peer: b"got " + request + b"\n")
    with connect(path) as client:
        client.sendall(b"hel")
        client.sendall(b"lo\nignored")
        assert read_all(client) == b"got hello\n"


def test_a_request_over_the_limit_gets_the_refusal(loop) -> None:
    seen = []
    path = loop(lambda r, _p: seen.append(r) or b"ok\n", max_request=10, too_large=b"big\n")
    with connect(path) as client:
        client.sendall(b"x" * 11)
        assert read_all(client) == b"big\n"
    with connect(path) as client:
        client.sendall(b"x" * 5000 + b"\n")
        assert read_all(client) == b"big\n"
    assert seen == []


def test_an_idle_client_is_closed_and_others_are_served_meanwhile(loop) -> None:
    path = loop(lambda r, _p: b"ok\n", timeout=0.5)
    idle = connect(path)
    with connect(path) as client:
        client.sendall(b"a\n")
        assert read_all(client) == b"ok\n"
    started = time.monotonic()
    assert read_all(idle) == b""  # closed by the listener
    assert time.monotonic() - started < 2
    idle.close()


def test_a_large_response_to_a_slow_reader_does_not_block(loop) -> None:
    big = b"y" * (8 << 20)
    path = loop(lambda r, _p: big if r == b"big" else b"small\n", timeout=10)
    slow = connect(path)
    slow.sendall(b"big\n")
    with connect(path) as client:  # served while the slow reader has not read anything
        client.sendall(b"s\n")
        assert read_all(client) == b"small\n"
    assert len(read_all(slow)) == len(big)
    slow.close()


def test_a_handler_that_raises_closes_the_connection_and_the_loop_goes_on(loop) -> None:
    def handle(request, _peer):
        if request == b"bad":
            raise RuntimeError("a bug")
        return b"ok\n"

    path = loop(handle)
    with connect(path) as client:
        client.sendall(b"bad\n")
        assert read_all(client) == b""
    with connect(path) as client:
        client.sendall(b"good\n")
        assert read_all(client) == b"ok\n"


def test_past_the_connection_limit_the_oldest_is_closed(loop, monkeypatch) -> None:
    monkeypatch.setattr(listener_module, "MAX_CONNECTIONS", 3)
    path = loop(lambda r, _p: b"ok\n", timeout=30)
    clients = [connect(path) for _ in range(3)]
    with connect(path) as newest:
        newest.sendall(b"a\n")
        assert read_all(newest) == b"ok\n"
    assert read_all(clients[0]) == b""
    for client in clients:
        client.close()
