"""supervise's lines in a real journal (systemd 252): each with its priority (`journalctl -p`
filters on it), in text and, after a reload to `log_format = json`, as JSON."""

from __future__ import annotations

import json
import re
import textwrap

from tests.functional.conftest import wait_until
from tests.systemd.conftest import VENV, Host
from tests.systemd.test_under_systemd import start_echo

TEXT_OF_AN_OLD_WORKER = re.compile(r"^[A-Z]+ \[worker \d+/1 pid \d+\] ")
# A traceback in text, then a line longer than journald's LineMax in JSON.
PROBE = textwrap.dedent("""
    import logging
    from supervise import logs
    logs.setup("INFO", None, "text")
    log = logging.getLogger("probe")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    logs.change("INFO", "json")
    log.warning("%s", "x" * 100000)
    """)
PROBE_UNIT = f"[Service]\nType=oneshot\nExecStart={VENV}/bin/python /root/probe.py\n"


def entries(host: Host, unit: str) -> list[tuple[int, str]]:
    """(priority, message) of each line the unit's processes wrote to the journal."""
    out = host.container.run("journalctl", "--no-pager", "--all", "-o", "json", "-u", unit).stdout
    found = []
    for line in out.splitlines():
        entry = json.loads(line)
        if entry.get("_TRANSPORT") == "stdout":
            message = entry["MESSAGE"]  # a list of bytes if not printable UTF-8 (--all: even
            # if longer than 4096 bytes, which journalctl would show as null)
            text = bytes(message).decode() if isinstance(message, list) else message
            found.append((int(entry["PRIORITY"]), text))
    return found


def kill_a_worker(host: Host, generation: int) -> int:
    victim = host.workers("echo")[0]
    host.container.run("kill", "-KILL", str(victim))
    wait_until(lambda: victim not in host.workers("echo"), what="the worker gone")
    host.wait_for_state("echo", {"StatusText": f"2/2 workers ready, generation {generation}"})
    return victim


def test_lines_have_their_priority_in_text_and_in_json(host: Host) -> None:
    start_echo(host, workers=2)
    master = host.main_pid("echo")
    victim = kill_a_worker(host, generation=1)
    text = entries(host, host.unit("echo"))
    assert (6, f"INFO [master pid {master}] supervise.master: all 2 workers ready") in text, text
    killed = f"WARNING [master pid {master}] supervise.master: Child {victim} killed by signal 9"
    assert any(priority == 4 and line.startswith(killed) for priority, line in text), text
    assert all(not line.startswith("<") for _, line in text), text

    host.configure("echo", "[DEFAULT]\nworkers = 2\nlog_format = json\n")
    host.container.systemctl("reload", host.unit("echo"))
    host.wait_for_state("echo", {"StatusText": "2/2 workers ready, generation 2"})
    victim = kill_a_worker(host, generation=2)
    after = entries(host, host.unit("echo"))[len(text) :]
    first_json = next(i for i, (_, line) in enumerate(after) if line.startswith("{"))
    logged = []
    for priority, line in after[first_json:]:
        if TEXT_OF_AN_OLD_WORKER.match(line):
            continue  # generation 1 keeps its format until it has drained
        logged.append((priority, json.loads(line)))
    assert all(priority == 6 for priority, e in logged if e["level"] == "INFO"), logged
    roles = {e["role"] for _, e in logged}
    assert {"master", "worker 0/2", "worker 1/2"} <= roles, logged
    assert any(
        priority == 4 and e["pid"] == master and e["message"].startswith(f"Child {victim} killed")
        for priority, e in logged
    ), logged

    # Any process whose stderr is the journal: a traceback's lines are all errors, and a line
    # over journald's 48K limit stays one JSON entry.
    host.container.run("tee", "/root/probe.py", input=PROBE)
    host.container.run("tee", "/etc/systemd/system/probe.service", input=PROBE_UNIT)
    host.container.systemctl("daemon-reload")
    host.container.systemctl("start", "probe.service")  # returns once it has run (oneshot)
    probe = entries(host, "probe.service")
    assert probe[0] == (3, "ERROR [master] probe: failed")
    assert probe[-2] == (3, "  ValueError: boom")
    assert {priority for priority, _ in probe[:-1]} == {3}
    priority, line = probe[-1]
    assert priority == 4 and json.loads(line)["message"].startswith("x" * 40000)
