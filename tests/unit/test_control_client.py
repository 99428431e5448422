"""The control verbs' side: finding a master's socket, and the status table."""

from __future__ import annotations

import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervise import config, control_client, exitcodes
from supervise.control_client import ClientError, find_sockets, format_status


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sv-") as directory:  # short: a socket path
        yield Path(directory)


def bind(path: Path) -> socket.socket:
    path.parent.mkdir(exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    return sock


def conf_for(directory: Path) -> config.Config:
    return config.load({"runtime_dir": str(directory)}, [], {})


def test_a_master_is_found_by_name_beside_or_in_a_directory_of_its_name(runtime_dir) -> None:
    flat, nested = bind(runtime_dir / "echo.sock"), bind(runtime_dir / "nova" / "nova.sock")
    conf = conf_for(runtime_dir)
    assert find_sockets("echo", conf) == [str(runtime_dir / "echo.sock")]
    assert find_sockets("nova", conf) == [str(runtime_dir / "nova" / "nova.sock")]
    (runtime_dir / "notes.txt").write_text("not a socket")
    assert find_sockets(None, conf) == sorted(
        [str(runtime_dir / "echo.sock"), str(runtime_dir / "nova" / "nova.sock")]
    )
    flat.close()
    nested.close()


def test_none_running_is_one_line_and_its_own_exit_code(runtime_dir) -> None:
    for name, text in ((None, "no supervise master is running"), ("echo", "of echo")):
        with pytest.raises(ClientError) as error:
            find_sockets(name, conf_for(runtime_dir))
        assert error.value.code == exitcodes.NOT_RUNNING
        assert text in str(error.value) and "\n" not in str(error.value)


def test_a_stale_socket_is_not_a_running_master(runtime_dir) -> None:
    bind(runtime_dir / "echo.sock").close()  # bound, never listened on: connect is refused
    (runtime_dir / "echo.sock").chmod(0o600)
    with pytest.raises(ClientError) as error:
        control_client.ask(str(runtime_dir / "echo.sock"), {"command": "status"}, 1)
    assert error.value.code == exitcodes.NOT_RUNNING and "stale socket" in str(error.value)


def test_the_table_escapes_what_it_shows_and_aligns_its_columns() -> None:
    worker = {
        **dict.fromkeys(key for _, key in control_client.COLUMNS),
        **{"slot": 0, "pid": 12, "generation": 1, "state": "ready", "uptime": 3725.0},
        **{"rss": 50 << 20, "cpu_percent": 1.25, "handled": 7, "in_flight": 1},
        **{"oldest_age": 0.5, "oldest_method": "echo", "restarts": 2, "last_exit": "signal 9"},
    }
    status = {
        "service": "evil\x1b[2J",
        "master_pid": 10,
        "generation": 1,
        "phase": "running",
        "drained": True,
        "reloading_to": None,
        "workers": [worker, {"slot": 1, "state": "respawning"}],
    }
    header, titles, first, second = format_status(status).splitlines()
    assert header == "evil\\x1b[2J: master 10, generation 1, running, drained, 2 workers"
    assert first.split() == [
        *("0", "12", "1", "ready", "1h02m", "50.0M", "1.2", "7", "1", "0.5s", "echo", "2"),
        *("signal", "9"),
    ]
    assert second.split()[:4] == ["1", "-", "-", "respawning"]
    assert titles.index("STATE") == first.index("ready") == second.index("respawning")


def test_a_master_that_does_not_answer_times_out_in_one_line(runtime_dir) -> None:
    path = runtime_dir / "echo.sock"
    silent = bind(path)
    silent.listen()  # accepted by the kernel, never answered
    path.chmod(0o600)
    started = time.monotonic()
    with pytest.raises(ClientError) as error:
        control_client.ask(str(path), {"command": "status"}, 0.3)
    assert time.monotonic() - started < 2
    assert error.value.code == exitcodes.FAILED
    assert str(error.value) == f"the master at {path} did not answer within 0.3 s"
    silent.close()
