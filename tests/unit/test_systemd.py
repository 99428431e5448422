"""sd_notify client against real AF_UNIX datagram sockets."""

from __future__ import annotations

import errno
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervise.systemd import Notifier

LOGGER = "supervise.systemd"
RECV_TIMEOUT = 5.0
QUICK = 1.0  # seconds a send may take, generously: it must never wait for the receiver


def recv_lines(receiver: socket.socket) -> list[str]:
    receiver.settimeout(RECV_TIMEOUT)
    return receiver.recv(65536).decode().split("\n")


def warnings_from_notifier(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def open_sockets() -> set[int]:
    sockets = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                sockets.add(int(fd))
        except FileNotFoundError:  # the descriptor listdir itself used
            pass
    return sockets


@pytest.fixture
def receiver_path(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    with receiver:
        yield receiver, path


@pytest.fixture
def receiver(receiver_path: tuple[socket.socket, str]) -> socket.socket:
    return receiver_path[0]


@pytest.fixture
def notifier(receiver_path: tuple[socket.socket, str]) -> Iterator[Notifier]:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": receiver_path[1]})
    yield notifier
    notifier.close()


@pytest.fixture
def forbid_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_socket(*args: object, **kwargs: object) -> socket.socket:
        raise AssertionError("a disabled notifier must not open a socket")

    monkeypatch.setattr(socket, "socket", no_socket)


# Messages


def test_ready(notifier: Notifier, receiver: socket.socket) -> None:
    notifier.ready()
    assert recv_lines(receiver) == ["READY=1"]


def test_ready_with_status(notifier: Notifier, receiver: socket.socket) -> None:
    notifier.ready("4/4 workers ready")
    assert recv_lines(receiver) == ["READY=1", "STATUS=4/4 workers ready"]


def test_reloading_carries_monotonic_usec(notifier: Notifier, receiver: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading("reloading: generation 2")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    reloading, monotonic, status = recv_lines(receiver)
    assert reloading == "RELOADING=1"
    key, _, value = monotonic.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    assert status == "STATUS=reloading: generation 2"


def test_reloading_without_status(notifier: Notifier, receiver: socket.socket) -> None:
    notifier.reloading()
    lines = recv_lines(receiver)
    assert [line.partition("=")[0] for line in lines] == ["RELOADING", "MONOTONIC_USEC"]


def test_stopping(notifier: Notifier, receiver: socket.socket) -> None:
    notifier.stopping()
    assert recv_lines(receiver) == ["STOPPING=1"]
    notifier.stopping("draining 3 workers")
    assert recv_lines(receiver) == ["STOPPING=1", "STATUS=draining 3 workers"]


def test_status(notifier: Notifier, receiver: socket.socket) -> None:
    notifier.status("3/4 workers ready")
    assert recv_lines(receiver) == ["STATUS=3/4 workers ready"]


def test_watchdog(notifier: Notifier, receiver: socket.socket) -> None:
    notifier.watchdog()
    assert recv_lines(receiver) == ["WATCHDOG=1"]


def test_status_newlines_cannot_inject_fields(notifier: Notifier, receiver: socket.socket) -> None:
    notifier.ready("line one\nREADY=0\nline three")
    assert recv_lines(receiver) == ["READY=1", "STATUS=line one READY=0 line three"]


def test_abstract_namespace_socket() -> None:
    name = f"supervise-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(b"\0" + name.encode())
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        try:
            assert notifier.enabled
            notifier.ready("1/1 workers ready")
            assert recv_lines(receiver) == ["READY=1", "STATUS=1/1 workers ready"]
        finally:
            notifier.close()


def test_one_close_on_exec_socket_for_all_messages(
    notifier: Notifier, receiver: socket.socket
) -> None:
    before = open_sockets()
    for _ in range(3):
        notifier.watchdog()
        assert recv_lines(receiver) == ["WATCHDOG=1"]
    (new_fd,) = open_sockets() - before
    flags = Path(f"/proc/self/fdinfo/{new_fd}").read_text().split("flags:")[1].split()[0]
    assert int(flags, 8) & os.O_CLOEXEC


# Environment


def test_environment_variables_are_removed(receiver_path: tuple[socket.socket, str]) -> None:
    environ = {
        "NOTIFY_SOCKET": receiver_path[1],
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": str(os.getpid()),
        "PATH": "/usr/bin",
    }
    notifier = Notifier.from_environment(environ)
    assert notifier.enabled
    assert environ == {"PATH": "/usr/bin"}


def test_removed_from_os_environ_by_default(
    monkeypatch: pytest.MonkeyPatch, receiver_path: tuple[socket.socket, str]
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver_path[1])
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier.from_environment()
    assert notifier.enabled
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        assert name not in os.environ
    child_env = subprocess.run(
        [sys.executable, "-c", "import os; print(sorted(os.environ))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "NOTIFY_SOCKET" not in child_env


def test_environment_removed_even_when_disabled() -> None:
    environ = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}
    assert not Notifier.from_environment(environ).enabled
    assert environ == {}


@pytest.mark.parametrize(
    ("watchdog_env", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "<self>"}, 15.0),
        ({"WATCHDOG_USEC": "1000"}, 0.0005),
        ({}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "<other>"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-30000000"}, None),
        ({"WATCHDOG_USEC": "30s"}, None),
        ({"WATCHDOG_USEC": ""}, None),
    ],
)
def test_watchdog_interval(
    receiver_path: tuple[socket.socket, str],
    watchdog_env: dict[str, str],
    interval: float | None,
) -> None:
    pids = {"<self>": str(os.getpid()), "<other>": str(os.getpid() + 1)}
    environ = {key: pids.get(value, value) for key, value in watchdog_env.items()}
    environ["NOTIFY_SOCKET"] = receiver_path[1]
    assert Notifier.from_environment(environ).watchdog_interval == interval


# Disabled


@pytest.mark.usefixtures("forbid_sockets")
def test_no_op_without_notify_socket(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.ready("ready")
    notifier.reloading("reloading")
    notifier.stopping("stopping")
    notifier.status("status")
    notifier.watchdog()
    assert caplog.records == []


@pytest.mark.usefixtures("forbid_sockets")
@pytest.mark.parametrize("value", ["vsock:2:1234", "run/systemd/notify"])
def test_unsupported_notify_socket_disables_with_one_warning(
    caplog: pytest.LogCaptureFixture, value: str
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.ready()
    notifier.watchdog()
    (warning,) = warnings_from_notifier(caplog)
    assert value in warning.getMessage()


# Receiver trouble


def test_vanished_receiver_logs_one_warning(
    caplog: pytest.LogCaptureFixture,
    notifier: Notifier,
    receiver_path: tuple[socket.socket, str],
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    receiver, path = receiver_path
    notifier.ready()
    assert recv_lines(receiver) == ["READY=1"]

    receiver.close()
    os.unlink(path)
    notifier.watchdog()
    notifier.status("still here")
    notifier.stopping()

    (warning,) = warnings_from_notifier(caplog)
    assert os.strerror(errno.ENOENT) in warning.getMessage()


@pytest.mark.timeout(10)
def test_full_receiver_queue_does_not_block(
    caplog: pytest.LogCaptureFixture,
    notifier: Notifier,
    receiver_path: tuple[socket.socket, str],
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    _, path = receiver_path  # bound, never read
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler:
        # The receive queue holds net.unix.max_dgram_qlen datagrams (10 by default).
        for _ in range(10_000):
            try:
                filler.sendto(b"WATCHDOG=1", socket.MSG_DONTWAIT, path)
            except BlockingIOError:
                break
        else:
            pytest.fail("the receiver's queue never filled up")

    for _ in range(3):
        started = time.monotonic()
        notifier.watchdog()
        assert time.monotonic() - started < QUICK

    (warning,) = warnings_from_notifier(caplog)
    assert os.strerror(errno.EAGAIN) in warning.getMessage()
