"""The control socket and its verbs, against real masters: scale, drain and resume under
load, status, and what another user, a bad socket or a bad client gets."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervise import control_client, exitcodes
from supervise.control import MAX_REQUEST
from tests.functional.conftest import (
    PYTHON_M_SUPERVISE,
    ROOT,
    RPC_SERVICE,
    each_transport,
    wait_until,
)
from tests.functional.load import Load

RECORDER = "tests.functional.services:Recorder"
NOBODY = 65534


def ask(path: Path, request: dict, timeout: float = 10) -> dict:
    return control_client.ask(str(path), request, timeout)


def control_socket(sup) -> Path:
    (path,) = sup.runtime_dir.glob("*.sock")
    return path


def raw(path: Path, data: bytes, timeout: float = 10) -> bytes:
    """Send `data` as it is and read the whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(str(path))
        with contextlib.suppress(BrokenPipeError):  # answered and closed before the end
            client.sendall(data)
        parts = []
        while chunk := client.recv(65536):
            parts.append(chunk)
    return b"".join(parts)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_scale_4_8_2_by_the_control_socket_and_by_ttin_ttou(supervise):
    sup = supervise(RECORDER, "--workers", "4")
    sup.wait_ready(4)
    for count in (8, 2):
        done = sup.control("scale", str(count))
        assert done.returncode == 0, done.stderr
        assert one_line(done.stdout) == f"{RECORDER}: scaling to {count} workers"
        wait_until(lambda c=count: len(sup.worker_pids()) == c, 20, f"{count} workers")
    for target, signum in ((8, signal.SIGTTIN), (2, signal.SIGTTOU)):
        while (count := len(sup.status()["workers"])) != target:
            sup.signal(signum)
            step = count + (1 if signum == signal.SIGTTIN else -1)
            wait_until(lambda s=step: len(sup.status()["workers"]) == s, 20, f"{step} slots")
        wait_until(lambda t=target: len(sup.worker_pids()) == t, 20, f"{target} workers")
    assert {w["pid"] for w in sup.status()["workers"]} == sup.worker_pids()


def test_scale_past_the_limits_is_refused_and_changes_nothing(supervise):
    sup = supervise(RECORDER, "--workers", "2")
    pids = sup.wait_ready(2)
    for count, code, error in (
        ("300", exitcodes.FAILED, "at most 256 workers: 300 refused"),
        ("0", exitcodes.FAILED, "a whole number from 1"),
        ("many", exitcodes.USAGE, "expected a number of workers"),
    ):
        done = sup.control("scale", count)
        assert done.returncode == code, done
        assert error in one_line(done.stderr)
    assert sup.worker_pids() == pids and len(sup.status()["workers"]) == 2


@each_transport
def test_drain_then_resume_under_load(serve, client):
    sup = serve(2)
    load = Load(client, callers=8, ms=20)
    with load.running():
        load.wait_for_calls(40)
        done = sup.control("drain")
        assert done.returncode == 0, done.stderr
        wait_until(
            lambda: all(
                w["state"] == "drained" and w["in_flight"] == 0 for w in sup.status()["workers"]
            ),
            what="every worker drained, nothing in flight",
        )
        assert "drained" in sup.notify.with_key("STATUS")[-1][1]["STATUS"]
        # A worker started while drained does not consume either.
        assert sup.control("scale", "3").returncode == 0
        wait_until(lambda: len(sup.status()["workers"]) == 3, what="a third slot")
        wait_until(
            lambda: all(w["state"] == "drained" for w in sup.status()["workers"]),
            20,
            "the new worker ready and drained",
        )
        answered = load.succeeded
        time.sleep(1.0)  # a window in which nothing may be answered
        assert load.succeeded == answered, "a drained master answered calls"
        assert sum(w["handled"] or 0 for w in sup.status()["workers"]) >= answered
        assert sup.control("resume").returncode == 0
        load.wait_for_calls(8 + 40)  # the 8 calls that waited, then more
    assert load.failures == []

    def all_ready() -> list[dict] | None:
        workers = sup.status()["workers"]
        return workers if all(w["state"] == "ready" for w in workers) else None

    workers = wait_until(all_ready, what="every worker ready again at its next heartbeat")
    assert all(w["handled"] > 0 for w in workers), workers
    assert "drained" not in sup.notify.with_key("STATUS")[-1][1]["STATUS"]


def test_status_shows_each_worker(serve, client):
    sup = serve(2)
    for _ in range(20):
        client.call({}, "sleep", ms=0)
    # CPU % needs two samples (heartbeats) of a worker; the first only starts the count.
    first = wait_until(
        lambda: (
            (s := sup.status())
            and sum(w["handled"] or 0 for w in s["workers"]) >= 20
            and all(w["cpu_percent"] is not None for w in s["workers"])
            and s
        ),
        what="20 calls handled and CPU measured in the status",
    )
    assert first["master_pid"] == sup.pid and first["phase"] == "running"
    assert first["drained"] is False and first["reloading_to"] is None
    assert {w["pid"] for w in first["workers"]} == sup.worker_pids()
    for worker in first["workers"]:
        assert worker["state"] == "ready" and worker["generation"] == 1
        assert worker["rss"] > 1 << 20 and worker["cpu_percent"] >= 0 and worker["uptime"] > 0
        assert (worker["restarts"], worker["last_exit"], worker["in_flight"]) == (0, None, 0)
    victim = first["workers"][0]
    os.kill(victim["pid"], signal.SIGKILL)

    def replacement() -> dict | None:
        row = next(w for w in sup.status()["workers"] if w["slot"] == victim["slot"])
        return row if row["state"] == "ready" and row["pid"] != victim["pid"] else None

    row = wait_until(replacement, 20, "the slot's replacement")
    assert (row["restarts"], row["last_exit"]) == (1, "signal 9")
    table = sup.control("status")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"{RPC_SERVICE}: master {sup.pid}, generation 1, running")
    assert lines[1].split()[:4] == ["SLOT", "PID", "GEN", "STATE"]
    assert len(lines) == 4 and "signal 9" in table.stdout


def test_a_status_of_64_workers_answers_within_100_ms(supervise):
    sup = supervise(RECORDER, "--workers", "64", "--heartbeat-interval", "0.5")
    sup.wait_ready(64, timeout=120)
    path = control_socket(sup)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        answer = ask(path, {"command": "status"})
        times.append(time.perf_counter() - started)
        assert len(answer["workers"]) == 64
    print(f"status of 64 workers: {', '.join(f'{t * 1000:.1f} ms' for t in times)}")
    assert statistics.median(times) < 0.1


def test_another_user_is_refused_and_logged_once(supervise):
    sup = supervise(RECORDER, "--workers", "1")
    sup.wait_ready(1)
    path = control_socket(sup)
    # Open the way for the other user, as a mistaken chmod would: the credentials still hold.
    # The client starts as root (the interpreter lives under /root) and connects as nobody.
    os.chmod(sup.runtime_dir, 0o711)
    os.chmod(path, 0o666)
    script = (
        "import os, socket, sys\n"
        f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"
        "for _ in range(20):\n"
        "    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        '    s.sendall(b\'{"command": "stop"}\\n\'); print(s.makefile().readline().strip())\n'
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    replies = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(replies) == 20
    assert all(r == {"ok": False, "error": replies[0]["error"]} for r in replies)
    assert "permission denied" in replies[0]["error"]
    wait_until(lambda: "refused a control connection from uid 65534" in sup.log(), what="log")
    assert sup.log().count("refused a control connection") == 1  # rate-limited
    os.chmod(path, 0o600)
    assert sup.status()["phase"] == "running"


def test_the_client_refuses_a_socket_with_wrong_permissions(supervise):
    sup = supervise(RECORDER, "--workers", "1")
    sup.wait_ready(1)
    os.chmod(control_socket(sup), 0o660)
    done = sup.control("status")
    assert done.returncode == exitcodes.USAGE
    assert "has mode 0660, not 0600: refusing it" in one_line(done.stderr)
    os.chmod(control_socket(sup), 0o600)
    assert sup.control("status").returncode == 0


def test_bad_requests_leave_the_master_serving(supervise):
    sup = supervise(RECORDER, "--workers", "1")
    sup.wait_ready(1)
    path = control_socket(sup)
    for request, error in (
        (b"garbage\n", "not a JSON object"),
        (b"\xff\xfe\n", "not a JSON object"),
        (b"[1, 2]\n", 'a "command"'),
        (b'{"command": 7}\n', 'a "command"'),
        (b'{"command": "rm -rf"}\n', "unknown command"),
        (b'{"command": "scale", "workers": "8"}\n', "whole number"),
        (b'{"command": "scale", "workers": true}\n', "whole number"),
        (b"x" * (MAX_REQUEST + 1), "request larger than"),
    ):
        answer = json.loads(raw(path, request))
        assert answer["ok"] is False and error in answer["error"], (request[:40], answer)
        assert "\n" not in answer["error"]
    # Far larger: the master answers and closes while it is still sent, which resets it.
    with contextlib.suppress(ConnectionResetError):
        raw(path, b"x" * (16 << 20))
    silent = []
    for _ in range(100):  # more than the listener keeps: the oldest are closed
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(path))
        client.sendall(b'{"command": ')  # and never the rest
        silent.append(client)
    started = time.monotonic()
    assert sup.status()["phase"] == "running"
    assert time.monotonic() - started < 1
    for client in silent:
        client.close()
    assert sup.process.poll() is None and "Traceback" not in sup.log()


def test_status_with_no_master_running_says_so(tmp_path):
    def verb(*args):
        return subprocess.run(
            [*PYTHON_M_SUPERVISE, *args, "--runtime-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    done = verb("status")
    assert done.returncode == exitcodes.NOT_RUNNING and done.stdout == ""
    assert one_line(done.stderr) == (
        f"supervise: error: no supervise master is running (no control socket in {tmp_path})"
    )
    done = verb("drain", "echo")
    assert done.returncode == exitcodes.NOT_RUNNING
    assert "no supervise master of echo is running" in one_line(done.stderr)


def test_several_masters_are_addressed_by_name(supervise):
    first = supervise(RECORDER, "--workers", "1")
    shared = {"SUPERVISE_RUNTIME_DIR": str(first.runtime_dir)}
    second = supervise("tests.functional.services:ConfigRecorder", "--workers", "2", env=shared)
    first.wait_ready(1)
    second.wait_ready(2)
    both = first.control("status", "--json")
    assert both.returncode == 0, both.stderr
    pids = {json.loads(line)["master_pid"] for line in both.stdout.splitlines()}
    assert pids == {first.pid, second.pid}
    ambiguous = first.control("drain")
    assert ambiguous.returncode == exitcodes.USAGE
    assert "several supervise masters are running" in one_line(ambiguous.stderr)
    named = first.control("status", "--json", "tests.functional.services:ConfigRecorder")
    assert json.loads(named.stdout)["master_pid"] == second.pid


def test_a_live_socket_is_refused_and_a_stale_one_replaced(supervise):
    first = supervise(RECORDER, "--workers", "1")
    first.wait_ready(1)
    shared = {"SUPERVISE_RUNTIME_DIR": str(first.runtime_dir)}
    rival = supervise(RECORDER, "--workers", "1", env=shared)
    assert rival.wait_exit() == exitcodes.USAGE
    assert "another master serves on" in rival.log()
    os.kill(first.pid, signal.SIGKILL)
    first.wait_exit()
    wait_until(lambda: not first.group_processes(), 20, "the workers of the killed master gone")
    assert control_socket(first).exists()  # left behind
    after = supervise(RECORDER, "--workers", "1", env=shared)
    after.wait_ready(1)
    assert after.status()["master_pid"] == after.pid
    assert "replacing the stale control socket" in after.log()
    after.signal(signal.SIGTERM)
    assert after.wait_exit() == 0
    assert not list(after.runtime_dir.glob("*.sock"))  # removed at exit


@pytest.mark.parametrize("problem", ["group-writable", "symlink", "another user's"])
def test_an_unsafe_runtime_dir_is_refused(supervise, tmp_path, problem):
    target = tmp_path / "dir"
    target.mkdir(mode=0o700)
    runtime = target
    if problem == "group-writable":
        os.chmod(target, 0o770)
    elif problem == "symlink":
        runtime = tmp_path / "link"
        runtime.symlink_to(target)
    else:
        os.chown(target, NOBODY, NOBODY)
    sup = supervise(RECORDER, "--workers", "1", env={"SUPERVISE_RUNTIME_DIR": str(runtime)})
    assert sup.wait_exit() == exitcodes.USAGE
    assert one_line(sup.log()).startswith("supervise: error: ")
    assert "refusing it" in sup.log()


def test_reload_then_stop_then_stop_fast(supervise):
    sup = supervise(RECORDER, "--workers", "2", behaviours={"hang-stop": ""})
    sup.wait_ready(2)
    assert one_line(sup.control("reload").stdout) == f"{RECORDER}: reloading"
    wait_until(lambda: sup.status()["generation"] == 2, 20, "generation 2")
    done = sup.control("stop")
    assert done.returncode == 0 and one_line(done.stdout) == f"{RECORDER}: stopping"
    wait_until(lambda: sup.status()["phase"] == "stopping", what="the master stopping")
    again = sup.control("scale", "3")  # while its workers hang in their stop
    assert again.returncode == exitcodes.FAILED
    assert one_line(again.stderr).endswith("the master is stopping")
    assert one_line(sup.control("stop", "--fast").stdout) == f"{RECORDER}: fast stop"
    assert sup.wait_exit() == exitcodes.OK
    assert "control socket: stop --fast" in sup.log()
