"""The processes of a session: every server a benchmark starts runs in a session of its own
(``start_new_session``), and supervise's workers, which each lead a process group of their
own, stay in their master's session. A session is what a benchmark measures and kills."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def live_in_session(sid: int) -> list[psutil.Process]:
    """Live (not zombie) processes of session `sid`."""
    found = []
    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getsid(process.pid) == sid and process.info["status"] != "zombie":
                found.append(process)
    return found


def cpu_of_session(sid: int) -> float:
    """CPU seconds used so far by the live processes of session `sid`."""
    total = 0.0
    for process in live_in_session(sid):
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def kill_session(sid: int, timeout: float = 10.0) -> bool:
    """SIGKILL every process of session `sid` until none is left; False if some outlived
    `timeout` seconds (uninterruptible sleep)."""
    deadline = time.monotonic() + timeout
    while left := live_in_session(sid):
        if time.monotonic() >= deadline:
            return False
        for process in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
        time.sleep(0.01)
    return True


def start(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Run `argv` from the project root, in a session of its own, its output appended to
    `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )
