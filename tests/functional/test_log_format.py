"""`log_format = json` in the master and its workers, and a reload that changes it."""

from __future__ import annotations

import json
import signal

from tests.functional.conftest import wait_until

RECORDER = "tests.functional.services:Recorder"
FAST = ("--restart-backoff", "0.1", "--heartbeat-interval", "0.5")


def test_json_lines_from_every_process_until_a_mutate_reload_makes_them_text(supervise, tmp_path):
    conf = tmp_path / "supervise.conf"
    conf.write_text("[DEFAULT]\nlog_format = json\n")
    sup = supervise(
        RECORDER, "--workers", "2", "--config-file", str(conf), "--reload-method", "mutate",
        *FAST,
    )  # fmt: skip
    pids = sup.wait_ready(2)
    sup.signal(signal.SIGUSR2)

    def stack_dumps() -> list[dict]:
        entries = [json.loads(line) for line in sup.log().splitlines()]
        return [e for e in entries if e["message"].startswith("thread stacks:\n")]

    # A dump of every thread is one record, so one JSON line, whatever it holds.
    dumps = wait_until(lambda: len(found := stack_dumps()) == 2 and found, what="two dumps")
    assert {(e["pid"], e["level"]) for e in dumps} == {(pid, "WARNING") for pid in pids}
    assert all("in _loop" in e["message"] for e in dumps)
    entries = [json.loads(line) for line in sup.log().splitlines()]
    roles = {(e["role"], e["pid"]) for e in entries}
    assert ("master", sup.pid) in roles
    assert {role for role, pid in roles if pid in pids} == {"worker 0/1", "worker 1/1"}

    conf.write_text("[DEFAULT]\nlog_format = text\n")
    sup.signal(signal.SIGHUP)
    wait_until(lambda: sup.log().count("supervise.worker: reset in place") == 2, what="resets")
    lines = sup.log().splitlines()
    text = [line for line in lines if not line.startswith("{")]
    assert any(f"INFO [master pid {sup.pid}] supervise.master: reload: 2 workers" in line
               for line in text), text  # fmt: skip
    for pid in pids:
        assert any(f"pid {pid}] supervise.worker: reset in place" in line for line in text), text
