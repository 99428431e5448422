"""The master and its workers as real processes, driven by real signals."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass

import psutil
import pytest

from tests.functional.conftest import Supervisor, wait_until

RECORDER = "tests.functional.services:Recorder"
FAST = ("--restart-backoff", "0.1", "--heartbeat-interval", "0.5")


def slot_of(supervisor: Supervisor, pid: int) -> int:
    return next(e.slot for e in supervisor.events("started") if e.pid == pid)


def test_killed_worker_is_replaced_in_its_slot_and_others_untouched(supervise):
    sup = supervise(RECORDER, "--workers", "4", *FAST)
    before = sup.wait_ready(4)
    victim = min(before)
    victim_slot = slot_of(sup, victim)

    os.kill(victim, signal.SIGKILL)

    after = wait_until(
        lambda: (p := sup.worker_pids()) - before and len(p) == 4 and p, what="replacement"
    )
    replacement = (after - before).pop()
    wait_until(lambda: replacement in {e.pid for e in sup.events("started")}, what="started")
    assert after - {replacement} == before - {victim}
    assert slot_of(sup, replacement) == victim_slot
    assert (
        f"WARNING [master pid {sup.pid}] supervise.master: Child {victim} killed by signal 9"
        in sup.log()
    )


def test_sigterm_runs_every_stop_and_exits_zero(supervise):
    sup = supervise(RECORDER, "--workers", "4", *FAST)
    pids = sup.wait_ready(4)
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0
    assert {e.pid for e in sup.events("stopped")} == pids
    assert [m for _, m in sup.notify.with_key("STOPPING")], "no STOPPING=1"
    assert not sup.group_processes()


def test_second_term_while_draining_is_harmless(supervise):
    sup = supervise(RECORDER, "--workers", "2", *FAST)
    sup.wait_ready(2)
    sup.behave("hang-stop")
    sup.signal(signal.SIGTERM)
    wait_until(lambda: len(sup.events("stopping")) == 2, what="both workers stopping")
    sup.signal(signal.SIGTERM)
    for pid in sup.worker_pids():
        os.kill(pid, signal.SIGTERM)  # a TERM straight to a draining worker, too
    time.sleep(0.3)  # give a wrongly handled TERM the time to do damage
    assert sup.process.poll() is None
    assert len(sup.worker_pids()) == 2


def test_hanging_stop_is_killed_at_the_deadline_with_no_orphan(supervise):
    sup = supervise(RECORDER, "--workers", "3", "--graceful-shutdown-timeout", "1.5", *FAST)
    pids = sup.wait_ready(3)
    sup.behave("hang-stop")
    began = time.monotonic()
    sup.signal(signal.SIGTERM)
    code = sup.wait_exit(timeout=10)
    took = time.monotonic() - began
    assert code == 4
    assert 1.5 <= took < 3.0, took
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)
    assert not sup.group_processes()


def test_killing_the_master_makes_every_worker_exit(supervise):
    sup = supervise(RECORDER, "--workers", "4", *FAST)
    pids = sup.wait_ready(4)
    sup.signal(signal.SIGKILL)
    sup.wait_exit()
    wait_until(lambda: not sup.group_processes(), timeout=10, what="workers to exit")
    assert {e.pid for e in sup.events("stopped")} == pids  # they drained, not died


def test_rolling_reload_replaces_every_worker_keeping_enough_ready(supervise):
    sup = supervise(RECORDER, "--workers", "4", "--reload-batch", "2", *FAST)
    before = sup.wait_ready(4)
    sup.behave("start-delay", "0.2")  # new workers take a while, so overlap would show
    sup.signal(signal.SIGHUP)

    after = wait_until(
        lambda: (p := sup.worker_pids()) and not (p & before) and len(p) == 4 and p,
        what="a new generation",
    )
    wait_until(lambda: len(sup.notify.with_key("READY")) == 2, what="READY=1 after reload")
    assert len(sup.notify.with_key("RELOADING")) == 1
    assert "MONOTONIC_USEC" in sup.notify.with_key("RELOADING")[0][1]
    assert not after & before
    assert {e.generation for e in sup.events("started") if e.pid in after} == {2}
    assert min_serving(sup) >= 4 - 2


def min_serving(sup: Supervisor, workers: int = 4) -> int:
    """Fewest workers serving at once after the first all-ready moment, from the events
    the workers wrote (started .. stopping), not from the master's own bookkeeping."""
    timeline = sorted(
        [(e.time, +1) for e in sup.events("started")]
        + [(e.time, -1) for e in sup.events("stopping")]
    )
    serving, lowest, seen_full = 0, None, False
    for _, change in timeline:
        serving += change
        if serving == workers:
            seen_full = True
        if seen_full:
            lowest = serving if lowest is None else min(lowest, serving)
    return lowest


def test_two_quick_reloads_then_term_exit_cleanly(supervise):
    sup = supervise(RECORDER, "--workers", "2", *FAST)
    sup.wait_ready(2)
    sup.signal(signal.SIGHUP)
    sup.signal(signal.SIGHUP)
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0
    assert not sup.group_processes()


def test_reload_to_a_generation_that_fails_keeps_the_old_workers(supervise):
    sup = supervise(RECORDER, "--workers", "3", *FAST)
    before = sup.wait_ready(3)
    sup.behave("fail-start")
    sup.signal(signal.SIGHUP)
    wait_until(lambda: "reload to generation 2 failed" in sup.log(), what="failed reload")
    wait_until(lambda: len(sup.notify.with_key("READY")) == 2, what="READY=1 after failure")
    assert sup.worker_pids() == before
    assert sup.process.poll() is None
    sup.unbehave("fail-start")
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0


def test_crash_loop_backs_off_then_exits_with_the_crash_loop_status(supervise):
    sup = supervise(
        RECORDER, "--workers", "1", "--max-restarts", "4", "--restart-backoff", "0.2",
        "--heartbeat-interval", "0.5", "--preload", behaviours={"fail-start": ""},
    )  # fmt: skip
    assert sup.wait_exit(timeout=20) == 3
    failed = [e.time for e in sup.events("failed")]
    starting = [e.time for e in sup.events("starting")]
    assert len(starting) == len(failed) == 5  # a start and four restarts; exit 5 gives up
    # from one failure to the next start: the back-off, plus the time to reap and fork
    # (preloaded, so that importing the service is not part of it)
    delays = [start - fail for fail, start in zip(failed, starting[1:], strict=False)]
    assert delays[0] < 0.2, delays  # the first crash of a healthy slot respawns at once
    for delay, backoff in zip(delays[1:], (0.2, 0.4, 0.8), strict=True):
        assert backoff <= delay < backoff * 1.25 + 0.5, delays
    assert delays[1] < delays[2] < delays[3], delays
    assert not sup.notify.with_key("READY"), "READY=1 sent although no worker ever started"


def test_ttin_and_ttou_add_and_remove_a_worker(supervise):
    sup = supervise(RECORDER, "--workers", "2", *FAST)
    sup.wait_ready(2)
    sup.signal(signal.SIGTTIN)
    wait_until(lambda: len(sup.worker_pids()) == 3, what="a third worker")
    # Signals of one kind sent back to back may merge into one: wait between them.
    sup.signal(signal.SIGTTOU)
    wait_until(lambda: len(sup.worker_pids()) == 2, what="two workers left")
    sup.signal(signal.SIGTTOU)
    wait_until(lambda: len(sup.worker_pids()) == 1, what="one worker left")
    sup.signal(signal.SIGTTOU)  # never below one
    time.sleep(0.3)
    assert len(sup.worker_pids()) == 1
    assert "one worker is the fewest" in sup.log()


def test_ready_is_sent_only_after_every_worker_started(supervise):
    sup = supervise(RECORDER, "--workers", "4", *FAST, behaviours={"start-delay": "0.3"})
    ready_at = wait_until(lambda: sup.notify.with_key("READY"), what="READY=1")[0][0]
    started = sup.events("started")
    assert len(started) == 4
    assert max(e.time for e in started) <= ready_at
    status = sup.notify.with_key("READY")[0][1]["STATUS"]
    assert status.startswith("4/4 workers ready")


def test_mutate_reload_resets_each_worker_in_place(supervise):
    sup = supervise(RECORDER, "--workers", "3", "--reload-method", "mutate", *FAST)
    before = sup.wait_ready(3)
    sup.signal(signal.SIGHUP)
    wait_until(lambda: len(sup.events("reset")) == 3, what="three resets")
    wait_until(lambda: len(sup.notify.with_key("READY")) == 2, what="READY=1 after reload")
    assert sup.worker_pids() == before
    assert sorted(e.pid for e in sup.events("reset")) == sorted(before)


def test_outside_hup_and_int_do_not_stop_a_worker(supervise):
    sup = supervise(RECORDER, "--workers", "2", *FAST)
    pids = sup.wait_ready(2)
    for pid in pids:
        os.kill(pid, signal.SIGHUP)
        os.kill(pid, signal.SIGINT)
    time.sleep(0.3)
    assert sup.worker_pids() == pids
    assert not sup.events("stopping")


def test_cotyledon_style_service_runs_and_stops(supervise):
    sup = supervise("tests.functional.services:CotyledonRecorder", "--workers", "2", *FAST)
    pids = sup.wait_ready(2)
    wait_until(lambda: len(sup.events("run")) == 2, what="run() in both workers")
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0
    assert {e.pid for e in sup.events("stopping")} == pids


def test_mutate_reload_replaces_a_cotyledon_service_without_reload(supervise):
    sup = supervise(
        "tests.functional.services:CotyledonWithoutReload",
        "--workers",
        "2",
        "--reload-method",
        "mutate",
        *FAST,
    )
    before = sup.wait_ready(2)
    sup.signal(signal.SIGHUP)
    wait_until(lambda: len(p := sup.worker_pids()) == 2 and not p & before, what="two new workers")
    wait_until(lambda: len(sup.notify.with_key("READY")) == 2, what="READY=1 after reload")
    for pid in before:  # drained by the master, after READY=1: an expected exit, at INFO
        line = f"INFO [master pid {sup.pid}] supervise.master: Child {pid} exited with status 0"
        wait_until(lambda line=line: line in sup.log(), what=f"child {pid}'s exit")
    assert "cannot reset in place and are replaced" in sup.log()
    assert "giving up" not in sup.log()


def test_mutate_reload_of_a_service_that_cannot_reset_replaces_one_worker_at_a_time(supervise):
    sup = supervise(
        "tests.functional.services:CotyledonWithoutReload", "--workers", "3",
        "--reload-method", "mutate", *FAST,
    )  # fmt: skip
    before = sup.wait_ready(3)
    sup.signal(signal.SIGHUP)
    wait_until(
        lambda: len(p := sup.worker_pids()) == 3 and not p & before, what="three new workers"
    )
    wait_until(lambda: len(sup.notify.with_key("READY")) == 2, what="READY=1 after reload")
    assert min_serving(sup, workers=3) >= 2


def test_mutate_reload_hands_the_new_configuration_to_reset(supervise, tmp_path):
    conf = tmp_path / "supervise.conf"
    conf.write_text("[DEFAULT]\ngraceful_shutdown_timeout = 30\n")
    sup = supervise(
        "tests.functional.services:ConfigRecorder", "--workers", "2", "--config-file", str(conf),
        "--reload-method", "mutate", *FAST,
    )  # fmt: skip
    pids = sup.wait_ready(2)
    conf.write_text("[DEFAULT]\ngraceful_shutdown_timeout = 7\n")
    sup.signal(signal.SIGHUP)
    wait_until(lambda: len(sup.events("reset-with:7:True")) == 2, what="two resets with 7 s")
    assert {e.pid for e in sup.events("reset-with:7:True")} == pids == sup.worker_pids()


def test_term_during_start_cancels_it_then_stops_what_started(supervise):
    sup = supervise(RECORDER, "--workers", "2", *FAST, behaviours={"start-until-cancelled": ""})
    wait_until(lambda: len(sup.events("starting")) == 2, what="two starts")
    began = time.monotonic()
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0
    assert time.monotonic() - began < 1.0
    assert sup.log().count("cancelling its start") == 2
    assert sup.log().count("start ended (Cancelled: told to stop while starting)") == 2
    assert {e.pid for e in sup.events("stopped")} == {e.pid for e in sup.events("starting")}
    assert "Traceback" not in sup.log() and "WARNING" not in sup.log()


def test_term_during_a_start_that_ignores_it_stops_once_started(supervise):
    sup = supervise(RECORDER, "--workers", "1", *FAST, behaviours={"start-delay": "0.5"})
    wait_until(lambda: sup.events("starting"), what="a start")
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0
    assert [e.kind for e in sup.events()] == ["starting", "started", "stopping", "stopped"]
    assert "start finished after the stop (SIGTERM): stopping what started" in sup.log()
    assert not sup.notify.with_key("READY")
    assert "Traceback" not in sup.log()


def test_quit_during_start_exits_at_once(supervise):
    sup = supervise(RECORDER, "--workers", "1", *FAST, behaviours={"start-delay": "30"})
    wait_until(lambda: sup.events("starting"), what="a start")
    began = time.monotonic()
    sup.signal(signal.SIGQUIT)
    assert sup.wait_exit() == 0
    assert time.monotonic() - began < 1.0
    assert "fast stop: exiting without draining" in sup.log()


@pytest.mark.parametrize("signum", [signal.SIGQUIT])
def test_fast_stop_exits_without_draining(supervise, signum):
    sup = supervise(RECORDER, "--workers", "2", *FAST)
    sup.wait_ready(2)
    sup.behave("hang-stop")
    began = time.monotonic()
    sup.signal(signum)
    assert sup.wait_exit() == 0
    assert time.monotonic() - began < 1.5
    assert not sup.events("stopping")


def test_second_int_turns_a_drain_into_a_fast_stop(supervise):
    sup = supervise(RECORDER, "--workers", "2", *FAST)
    sup.wait_ready(2)
    sup.behave("hang-stop")
    sup.signal(signal.SIGINT)
    wait_until(lambda: len(sup.events("stopping")) == 2, what="a graceful drain")
    began = time.monotonic()
    sup.signal(signal.SIGINT)
    assert sup.wait_exit() == 0
    assert time.monotonic() - began < 1.5
    assert not sup.group_processes()


def test_worker_not_ready_in_time_is_killed_and_replaced(supervise):
    sup = supervise(
        RECORDER, "--workers", "1", "--worker-ready-timeout", "0.5", *FAST,
        behaviours={"start-delay": "30"},
    )  # fmt: skip
    first = wait_until(lambda: sup.events("starting"), what="a first start")[0].pid
    wait_until(lambda: f"Child {first} (slot 0) not ready after 0.5 s" in sup.log(), what="kill")
    sup.unbehave("start-delay")
    wait_until(lambda: sup.events("started"), what="a replacement that starts")
    assert f"Child {first} killed by signal 9 (hung: not ready after 0.5 s)" in sup.log()


def test_preloaded_service_respawns(supervise):
    sup = supervise(RECORDER, "--workers", "2", "--preload", *FAST)
    before = sup.wait_ready(2)
    os.kill(min(before), signal.SIGKILL)
    wait_until(lambda: len(p := sup.worker_pids()) == 2 and p != before, what="a preloaded respawn")


def test_workers_do_not_inherit_the_notify_socket_and_logs_name_their_process(supervise):
    sup = supervise(RECORDER, "--workers", "2", *FAST, env={"WATCHDOG_USEC": "2000000"})
    pids = sup.wait_ready(2)
    assert not sup.events("inherited-notify-socket")
    log = sup.log()
    assert f"[master pid {sup.pid}]" in log
    for pid in pids:
        slot = slot_of(sup, pid)
        assert f"[worker {slot}/1 pid {pid}]" in log
        assert psutil.Process(pid).cmdline()[0] == (f"supervise: worker {slot} {RECORDER}")
    assert psutil.Process(sup.pid).cmdline()[0] == f"supervise: master {RECORDER}"


def test_watchdog_pings_only_while_every_worker_heartbeats(supervise):
    """Without worker_timeout: with it, the master replaces such a worker itself (in
    tests/functional/test_health.py)."""
    sup = supervise(
        RECORDER, "--workers", "2", "--worker-timeout", "0", env={"WATCHDOG_USEC": "400000"}
    )
    pids = sup.wait_ready(2)
    wait_until(lambda: len(sup.notify.with_key("WATCHDOG")) >= 3, what="watchdog pings")
    stuck = min(pids)
    os.kill(stuck, signal.SIGSTOP)  # a hung worker: alive, but no more heartbeats
    try:
        # heartbeats every 0.1 s (a quarter of WATCHDOG_USEC); stale after three.
        time.sleep(0.5)
        pings = len(sup.notify.with_key("WATCHDOG"))
        time.sleep(1.0)
        assert len(sup.notify.with_key("WATCHDOG")) == pings, "pinged with a hung worker"
    finally:
        os.kill(stuck, signal.SIGCONT)
    wait_until(lambda: len(sup.notify.with_key("WATCHDOG")) > pings, what="pings after recovery")


def test_usr1_reopens_log_files_in_master_and_workers(supervise, tmp_path):
    log_file = tmp_path / "service.log"
    sup = supervise(RECORDER, "--workers", "2", "--log-file", str(log_file), *FAST)
    sup.wait_ready(2)
    rotated = tmp_path / "service.log.1"
    log_file.rename(rotated)
    sup.signal(signal.SIGUSR1)
    wait_until(log_file.exists, what="a reopened log file")
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0
    text = log_file.read_text()
    assert "master exiting with status 0" in text
    assert text.count("supervise.worker: stopped") == 2
    assert "all 2 workers ready" in rotated.read_text()


def test_usr2_dumps_every_worker_thread_stack(supervise, tmp_path):
    log_file = tmp_path / "service.log"
    sup = supervise(
        "tests.functional.services:CotyledonRecorder",
        "--workers",
        "2",
        "--log-file",
        str(log_file),
        *FAST,
    )
    sup.wait_ready(2)
    sup.signal(signal.SIGUSR2)

    def dumps() -> list[str]:
        records = log_file.read_text().split("thread stacks:")[1:]
        return [r for r in records if "in run" in r and "in _handle_signals" in r]

    # logged by the worker's loop, not from a signal handler
    wait_until(lambda: len(dumps()) == 2, what="two stack dumps showing run() and the loop")
    for record in dumps():  # one whole record each, not two interleaved dumps
        assert record.count("in _loop") == 1


def test_ctrl_c_in_a_terminal_drains_the_whole_tree_once(supervise):
    """A terminal's Ctrl-C sends INT to every process of the foreground group."""
    sup = supervise(RECORDER, "--workers", "3", *FAST)
    pids = sup.wait_ready(3)
    os.killpg(sup.pid, signal.SIGINT)
    assert sup.wait_exit() == 0
    assert {e.pid for e in sup.events("stopped")} == pids
    assert "Child" in sup.log() and "killed by signal" not in sup.log()


def test_reload_rereads_the_config_file_and_resizes(supervise, tmp_path):
    conf = tmp_path / "supervise.conf"
    conf.write_text("[DEFAULT]\nworkers = 2\n")
    sup = supervise(RECORDER, "--config-file", str(conf), *FAST)
    before = sup.wait_ready(2)
    conf.write_text("[DEFAULT]\nworkers = 3\n")
    sup.signal(signal.SIGHUP)
    wait_until(lambda: len(p := sup.worker_pids()) == 3 and not p & before, what="3 new workers")
    wait_until(lambda: len(sup.notify.with_key("READY")) == 2, what="READY=1 after reload")


def test_unparsable_config_on_reload_keeps_the_running_one(supervise, tmp_path):
    conf = tmp_path / "supervise.conf"
    conf.write_text("[DEFAULT]\nworkers = 2\n")
    sup = supervise(RECORDER, "--config-file", str(conf), *FAST)
    before = sup.wait_ready(2)
    conf.write_text("[DEFAULT]\nworkers = many\n")
    sup.signal(signal.SIGHUP)
    wait_until(lambda: len(sup.notify.with_key("READY")) == 2, what="READY=1 after reload")
    assert "reload failed, keeping the running configuration" in sup.log()
    assert "workers: expected a whole number, got 'many'" in sup.log()
    assert sup.worker_pids() == before


def test_service_that_cannot_be_imported_stops_the_master_with_status_2(supervise):
    sup = supervise("os:NoSuchService", "--workers", "2", *FAST)
    assert sup.wait_exit() == 2
    assert "module 'os' has no 'NoSuchService'" in sup.log()
    assert "Traceback" not in sup.log()


def test_a_cotyledon_service_subclass_runs_unchanged(supervise):
    pytest.importorskip("cotyledon", reason="the cotyledon extra is not installed")
    sup = supervise("tests.functional.services:RealCotyledonService", "--workers", "2", *FAST)
    pids = sup.wait_ready(2)
    wait_until(lambda: len(sup.events("run")) == 2, what="run() in both workers")
    assert {e.slot for e in sup.events("run")} == {0, 1}  # worker_id is the slot
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0
    assert {e.pid for e in sup.events("stopping")} == pids


def test_mutate_reload_replaces_a_cotyledon_subclass_with_its_default_reload(supervise):
    pytest.importorskip("cotyledon", reason="the cotyledon extra is not installed")
    sup = supervise(
        "tests.functional.services:RealCotyledonService", "--workers", "2",
        "--reload-method", "mutate", *FAST,
    )  # fmt: skip
    before = sup.wait_ready(2)
    sup.signal(signal.SIGHUP)
    wait_until(lambda: len(p := sup.worker_pids()) == 2 and not p & before, what="two new workers")
    wait_until(lambda: len(sup.notify.with_key("READY")) == 2, what="READY=1 after reload")
    assert "cannot reset in place" in sup.log()


# ----- what workers leave behind ---------------------------------------------------------

SPAWNER = "tests.functional.services:Spawner"


@dataclass(frozen=True)
class LeftBehind:
    worker: int
    child: int  # a `sleep` in the worker's process group
    daemon: int  # a `sleep` detached into a session of its own


def left_behind(sup: Supervisor) -> dict[int, LeftBehind]:
    """By worker pid, what each Spawner worker started."""
    path = sup.workdir / "descendants"
    lines = path.read_text().splitlines() if path.exists() else []
    return {int(w): LeftBehind(int(w), int(c), int(d)) for w, c, d in map(str.split, lines)}


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def spawner(supervise):
    """Start Spawner workers; at the end, kill any `sleep` they started that is still there
    (the daemons leave the master's session, which the fixture's cleanup kills)."""
    started: list[Supervisor] = []

    def start(*args: str) -> Supervisor:
        sup = supervise(SPAWNER, *args, *FAST)
        started.append(sup)
        return sup

    yield start
    for sup in started:
        for spawned in left_behind(sup).values():
            for pid in (spawned.child, spawned.daemon):
                with contextlib.suppress(psutil.NoSuchProcess):
                    if psutil.Process(pid).name() == "sleep":
                        os.kill(pid, signal.SIGKILL)


def wait_spawned(sup: Supervisor, pids: set[int]) -> dict[int, LeftBehind]:
    spawned = wait_until(
        lambda: (found := left_behind(sup)).keys() >= pids and found, what="descendants"
    )
    return {pid: spawned[pid] for pid in pids}


def test_the_master_adopts_what_a_worker_detaches_and_each_worker_leads_its_group(spawner):
    sup = spawner("--workers", "2")
    pids = sup.wait_ready(2)
    for pid, spawned in wait_spawned(sup, pids).items():
        assert os.getpgid(pid) == pid
        assert os.getpgid(spawned.child) == pid
        assert os.getsid(spawned.daemon) != os.getsid(pid) == sup.pid  # it left the session
        assert psutil.Process(spawned.daemon).ppid() == sup.pid  # the master is a subreaper


def test_what_a_killed_worker_left_behind_is_stopped(spawner):
    sup = spawner("--workers", "2")
    pids = sup.wait_ready(2)
    spawned = wait_spawned(sup, pids)
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    left = (spawned[victim].child, spawned[victim].daemon)
    wait_until(lambda: not any(map(running, left)), timeout=5, what="what it left to stop")
    wait_until(lambda: len(sup.worker_pids()) == 2, what="a replacement")
    assert f"Child {victim} left processes in its group" in sup.log()
    assert sup.process.poll() is None
    assert "Traceback" not in sup.log()


def test_what_replaced_workers_left_behind_is_stopped_by_a_reload(spawner):
    sup = spawner("--workers", "2")
    before = sup.wait_ready(2)
    spawned = wait_spawned(sup, before)
    sup.signal(signal.SIGHUP)
    wait_until(lambda: not sup.worker_pids() & before, what="a new generation")
    left = [pid for s in spawned.values() for pid in (s.child, s.daemon)]
    wait_until(lambda: not any(map(running, left)), timeout=5, what="what they left to stop")
    # exits the master asked for are logged as expected
    for pid in before:
        assert (
            f"INFO [master pid {sup.pid}] supervise.master: Child {pid} exited with status 0"
            in sup.log()
        )


def test_no_descendant_outlives_a_stop(spawner):
    sup = spawner("--workers", "2")
    pids = sup.wait_ready(2)
    spawned = wait_spawned(sup, pids)
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0
    left = [pid for s in left_behind(sup).values() for pid in (s.worker, s.child, s.daemon)]
    assert len(left) == 3 * len(spawned)
    assert not [pid for pid in left if running(pid)]
    assert not sup.group_processes()
