"""supervise@.service under a real systemd (252), installed as docs/deploy.md says, hardened
as shipped: start, status, reload, a killed worker, a crash loop, the watchdog, stop, the
journal, the user it runs as."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

from tests.functional.conftest import wait_until
from tests.systemd.conftest import STATE_DIR, USER, VENV, Host, deploy_block

# The embedded transport's consumers of the topic `echo`, by process (its store's schema).
CONSUMER_PIDS = f"""
import sqlite3
db = sqlite3.connect("file:{STATE_DIR}/queue.db?mode=ro", uri=True)
print(*sorted({{pid for (pid,) in db.execute(
    "SELECT connections.pid FROM consumers JOIN connections"
    " ON connections.id = consumers.connection WHERE consumers.queue = 'echo'")}}))
"""
# Messages of the topic `echo` a consumer holds.
HELD_MESSAGES = f"""
import sqlite3
db = sqlite3.connect("file:{STATE_DIR}/queue.db?mode=ro", uri=True)
print(db.execute("SELECT count(*) FROM messages WHERE queue = 'echo' AND owner IS NOT NULL")
      .fetchone()[0])
"""


def start_echo(host: Host, workers: int = 2, conf: str = "") -> None:
    host.configure("echo", f"[DEFAULT]\nworkers = {workers}\n{conf}")
    host.container.systemctl("start", host.unit("echo"))


def call_pid(host: Host) -> int:
    return int(host.supervise("call", "--timeout", "10", "echo", "pid").stdout)


def test_start_returns_once_every_worker_consumes(host: Host) -> None:
    start_echo(host, workers=3)
    # Right when `systemctl start` has returned: all three count as ready and consume.
    consumers = host.as_user(f"{VENV}/bin/python", "-c", CONSUMER_PIDS).stdout.split()
    state = host.show("echo", "ActiveState", "StatusText")
    workers = host.workers("echo")
    assert state == {"ActiveState": "active", "StatusText": "3/3 workers ready, generation 1"}
    assert len(workers) == 3
    assert sorted(int(pid) for pid in consumers) == workers
    assert call_pid(host) in workers


def test_runs_as_its_own_user_in_private_directories(host: Host) -> None:
    start_echo(host)
    uid = int(host.container.run("id", "-u", USER).stdout)
    assert uid != 0
    master = host.main_pid("echo")
    workers = host.workers("echo")
    assert [host.uid(pid) for pid in [master, *workers]] == [uid] * 3
    listing = host.container.run(
        "stat", "-c", "%U %a %n", STATE_DIR, f"{STATE_DIR}/queue.db", "/run/supervise/echo"
    ).stdout.splitlines()
    assert listing == [
        f"{USER} 700 {STATE_DIR}",
        f"{USER} 600 {STATE_DIR}/queue.db",
        f"{USER} 700 /run/supervise/echo",
    ]
    # The loaded unit, as this systemd rates it.
    security = host.container.run("systemd-analyze", "security", host.unit("echo")).stdout
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security)
    assert exposure and float(exposure[1]) <= 2.0, security


def test_status_text_follows_the_workers(host: Host) -> None:
    start_echo(host, workers=2)
    assert host.show("echo", "StatusText")["StatusText"] == "2/2 workers ready, generation 1"
    host.container.systemctl("kill", "--signal=TTIN", "--kill-whom=main", host.unit("echo"))
    host.wait_for_state("echo", {"StatusText": "3/3 workers ready, generation 1"})


def test_reload_replaces_every_worker_without_a_failed_call(host: Host) -> None:
    start_echo(host, workers=2)
    host.container.systemctl("log-level", "debug")
    master = host.main_pid("echo")
    before = host.workers("echo")
    with host.caller() as caller:
        wait_until(lambda: call_pid(host), what="a call answered")
        host.container.systemctl("reload", host.unit("echo"))
        host.wait_for_state("echo", {"ActiveState": "active", "SubState": "running",
                                     "StatusText": "2/2 workers ready, generation 2"})  # fmt: skip
        counts = caller.finish()
    after = host.workers("echo")
    assert host.main_pid("echo") == master
    assert len(after) == 2 and not set(after) & set(before)
    assert counts["failures"] == [] and counts["succeeded"] > 0, counts
    journal = host.journal("echo")
    assert journal.index("Changed running -> reload") < journal.index("Changed reload -> running")


def test_a_killed_worker_is_replaced_by_the_master_not_by_systemd(host: Host) -> None:
    start_echo(host, workers=2)
    master = host.main_pid("echo")
    victim, survivor = host.workers("echo")
    host.container.run("kill", "-KILL", str(victim))
    wait_until(
        lambda: len(host.workers("echo")) == 2 and victim not in host.workers("echo"),
        what="a replacement worker",
    )
    host.wait_for_state("echo", {"ActiveState": "active", "NRestarts": "0",
                                 "StatusText": "2/2 workers ready, generation 1",
                                 "MainPID": str(master)})  # fmt: skip
    assert survivor in host.workers("echo")
    assert f"Child {victim} killed by signal 9" in host.journal("echo")


def test_a_crash_loop_exits_3_and_systemd_restarts_the_unit(host: Host) -> None:
    # One unexpected exit of a slot is one too many: the master gives up with status 3.
    host.drop_in("echo", "RestartSec=200ms")
    start_echo(host, workers=2, conf="max_restarts = 0\n")
    first = host.main_pid("echo")
    host.container.run("kill", "-KILL", str(host.workers("echo")[0]))
    wait_until(lambda: host.show("echo", "NRestarts")["NRestarts"] == "1", what="a restart")
    host.wait_for_state("echo", {"ActiveState": "active",
                                 "StatusText": "2/2 workers ready, generation 1"})  # fmt: skip
    assert host.main_pid("echo") != first
    journal = host.journal("echo")
    assert "Main process exited, code=exited, status=3/NOTIMPLEMENTED" in journal
    assert "Scheduled restart job, restart counter is at 1" in journal


def test_the_watchdog_fires_when_the_workers_stop_heartbeating(host: Host) -> None:
    host.drop_in("echo", "WatchdogSec=2\nRestart=no\nEnvironment=SUPERVISE_WORKER_TIMEOUT=0")
    start_echo(host, workers=2)
    for pid in host.workers("echo"):
        host.container.run("kill", "-STOP", str(pid))
    host.wait_for_state("echo", {"ActiveState": "failed", "Result": "watchdog"}, timeout=30)
    assert "Watchdog timeout (limit 2s)!" in host.journal("echo")


def test_stop_drains_and_exits_0_without_systemd_killing_anything(host: Host) -> None:
    start_echo(host, workers=2)
    host.container.systemctl("log-level", "debug")
    workers = host.workers("echo")
    call = subprocess.Popen(
        host.container.command(
            "runuser", "-u", USER, "--", f"{VENV}/bin/supervise", "call", "--state-dir",
            STATE_DIR, "--timeout", "30", "echo", "sleep", "ms=1500",
        ),
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(
            lambda: host.as_user(f"{VENV}/bin/python", "-c", HELD_MESSAGES).stdout.strip() == "1",
            what="a worker holding the call",
        )
        host.container.systemctl("stop", host.unit("echo"))
        out, _ = call.communicate(timeout=60)
    finally:
        if call.poll() is None:
            os.killpg(call.pid, signal.SIGKILL)
            call.wait()
    assert (call.returncode, out) == (0, "1500\n")  # answered during the drain
    assert host.show("echo", "ActiveState", "Result", "ExecMainStatus") == {
        "ActiveState": "inactive",
        "Result": "success",
        "ExecMainStatus": "0",
    }
    journal = host.journal("echo")
    for pid in workers:
        assert f"Child {pid} exited with status 0" in journal
    assert "Main process exited, code=exited, status=0/SUCCESS" in journal
    assert "SIGKILL" not in journal and "Killing process" not in journal, journal


def test_the_journal_has_supervise_lines_stamped_once(host: Host) -> None:
    start_echo(host, workers=2)
    journal = host.container.run(
        "journalctl", "--no-pager", "-o", "short-iso", "-u", host.unit("echo")
    ).stdout
    lines = [line for line in journal.splitlines() if " supervise[" in line]
    master = host.main_pid("echo")
    assert any(f"INFO [master pid {master}] supervise.master: all 2 workers ready" in line
               for line in lines), journal  # fmt: skip
    assert all(not re.search(r"\d\d:\d\d:\d\d,\d{3}", line) for line in lines), journal


def test_a_missing_config_file_fails_the_start_without_a_restart(host: Host) -> None:
    result = host.container.systemctl("start", host.unit("echo"), check=False)
    assert result.returncode != 0
    assert host.show("echo", "ActiveState", "ExecMainStatus", "NRestarts") == {
        "ActiveState": "failed",
        "ExecMainStatus": "2",
        "NRestarts": "0",
    }
    assert (
        "supervise: error: cannot read config file /etc/supervise/echo.conf: "
        "No such file or directory" in host.journal("echo")
    )


def test_nova_conductor_as_deploy_md_runs_it(host: Host) -> None:
    host.sh(deploy_block("instance"), timeout=120)
    uid = int(host.container.run("id", "-u", USER).stdout)
    assert host.show("nova-conductor", "ActiveState", "StatusText") == {
        "ActiveState": "active",
        "StatusText": "4/4 workers ready, generation 1",
    }
    workers = host.workers("nova-conductor")
    assert [host.uid(pid) for pid in workers] == [uid] * 4
    ping = host.supervise(
        "call", "--namespace", "baseapi", "--api-version", "1.1", "conductor", "ping", "arg=x"
    )
    assert json.loads(ping.stdout)["arg"] == "x"
    host.container.systemctl("stop", host.unit("nova-conductor"))
    assert host.show("nova-conductor", "Result", "ExecMainStatus") == {
        "Result": "success",
        "ExecMainStatus": "0",
    }


def test_the_control_verbs_reach_the_unit_as_root_and_as_its_user(host: Host) -> None:
    start_echo(host, workers=2)
    master, workers = host.main_pid("echo"), host.workers("echo")
    assert host.container.run("stat", "-c", "%U %a", "/run/supervise/echo/echo.sock").stdout == (
        f"{USER} 600\n"
    )
    table = host.container.run(f"{VENV}/bin/supervise", "status", "echo").stdout.splitlines()
    assert table[0].startswith(f"echo: master {master}, generation 1, running")
    assert sorted(int(line.split()[1]) for line in table[2:]) == workers
    status = json.loads(host.as_user(f"{VENV}/bin/supervise", "status", "--json").stdout)
    assert status["master_pid"] == master and len(status["workers"]) == 2
    host.as_user(f"{VENV}/bin/supervise", "drain", "echo")
    host.wait_for_state("echo", {"StatusText": "2/2 workers ready, generation 1, drained"})
    host.container.run(f"{VENV}/bin/supervise", "resume")
    host.wait_for_state("echo", {"StatusText": "2/2 workers ready, generation 1"})
    assert call_pid(host) in workers
