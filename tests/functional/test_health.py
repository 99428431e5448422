"""Hung workers are aborted and replaced; workers past a limit are recycled without a failed
call; every exit is logged with its cause. Real masters, workers, brokers and signals."""

from __future__ import annotations

import itertools
import os
import re
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psutil

from supervise import exitcodes
from supervise.master import HUNG_ABORT_GRACE
from supervise.rpc.client import RPCClient
from supervise.rpc.dispatcher import Target
from tests.functional.conftest import RPC_SERVICE, each_transport, wait_until
from tests.functional.load import Load, handled

HEARTBEAT = ("--heartbeat-interval", "0.5")
# A frame of a handler blocked in TestEndpoint.hang, as faulthandler writes it.
HANG_FRAME = re.compile(r'File ".*services\.py", line \d+ in hang')


def replaced(sup, pid: int, workers: int, timeout: float) -> set[int]:
    """Wait until `pid` is gone and `workers` live workers serve again; return their pids."""
    return wait_until(
        lambda: pid not in (pids := sup.worker_pids()) and len(pids) == workers and pids,
        timeout,
        f"worker {pid} replaced",
    )


@each_transport
def test_a_worker_whose_every_handler_hangs_is_aborted_and_its_calls_answered_by_another(
    serve, messenger, topic, tmp_path
):
    log_file = tmp_path / "service.log"
    sup = serve(1, "--worker-timeout", "2", "--executor-thread-pool-size", "4",
                "--log-file", str(log_file))  # fmt: skip
    [stuck] = sup.worker_pids()
    client = RPCClient(messenger, Target(topic=topic), timeout=30)
    ids = [uuid.uuid4().hex for _ in range(4)]
    began = time.monotonic()
    with ThreadPoolExecutor(len(ids)) as pool:
        calls = [pool.submit(client.call, {}, "hang", id=unique) for unique in ids]
        [serving] = replaced(sup, stuck, 1, timeout=2 + 0.5 + 5)
        took = time.monotonic() - began
        answers = [call.result(timeout=30) for call in calls]
    print(f"replaced after {took:.1f} s; {len(answers)} calls answered")
    assert answers == ids
    assert all(handled(sup.workdir)[unique] == 1 for unique in ids)
    text = log_file.read_text()
    assert f"Child {stuck} (slot 0) is hung: all 4 handler threads busy for" in text
    assert "the oldest in hang for" in text
    assert f"Child {stuck} killed by signal 6 (hung: all 4 handler threads busy" in text
    assert "Fatal Python error: Aborted" in text  # faulthandler's dump, in the log file
    assert len(HANG_FRAME.findall(text)) >= 4, "every blocked handler's frame"
    assert text.count("was redelivered (1 of 3): queued again") == 4
    assert serving != stuck and psutil.pid_exists(sup.pid)


@each_transport
def test_a_worker_whose_consume_loop_is_stuck_is_replaced(serve, client):
    sup = serve(1, "--worker-timeout", "2")
    [stuck] = sup.worker_pids()
    client.cast({}, "stall_consumer")
    began = time.monotonic()
    replaced(sup, stuck, 1, timeout=2 + 0.5 + 5)
    print(f"replaced after {time.monotonic() - began:.1f} s")
    assert client.call({}, "echo", payload="after") == "after"
    assert f"Child {stuck} (slot 0) is hung: consume loop stuck for" in sup.log()
    assert f"Child {stuck} killed by signal 6 (hung: consume loop stuck for" in sup.log()


def test_after_a_log_reopen_the_stack_dump_goes_to_the_new_log_file(serve, client, tmp_path):
    log_file = tmp_path / "service.log"
    sup = serve(1, "--worker-timeout", "2", "--log-file", str(log_file))
    [stuck] = sup.worker_pids()
    rotated = tmp_path / "service.log.1"
    log_file.rename(rotated)
    sup.signal(signal.SIGUSR1)
    wait_until(log_file.exists, what="a reopened log file")
    client.cast({}, "stall_consumer")
    replaced(sup, stuck, 1, timeout=2 + 0.5 + 5)
    text = log_file.read_text()
    assert "Fatal Python error: Aborted" in text
    assert re.search(r'File ".*services\.py", line \d+ in <lambda>', text), "the stalled loop"
    assert "Fatal Python error" not in rotated.read_text() + sup.log()


def test_a_worker_without_heartbeats_is_killed_after_its_abort_grace(
    supervise, transport_url, topic, client
):
    """A stopped worker (SIGSTOP) sends no heartbeat and cannot take its SIGABRT: SIGKILL
    follows it. Meanwhile the master, which deals with it, still pings systemd's watchdog."""
    sup = supervise(
        RPC_SERVICE, "--workers", "1", "--transport-url", transport_url, "--topic", topic,
        *HEARTBEAT, "--worker-timeout", "1", env={"WATCHDOG_USEC": "1000000"},
    )  # fmt: skip
    [stuck] = sup.wait_ready(1)
    os.kill(stuck, signal.SIGSTOP)
    began = time.monotonic()
    pings = len(sup.notify.with_key("WATCHDOG"))
    wait_until(lambda: len(sup.notify.with_key("WATCHDOG")) >= pings + 4, 4, "watchdog pings")
    replaced(sup, stuck, 1, timeout=1 + 0.5 + HUNG_ABORT_GRACE + 5)
    print(f"replaced after {time.monotonic() - began:.1f} s")
    assert client.call({}, "echo", payload="after") == "after"
    text = sup.log()
    assert f"Child {stuck} (slot 0) is hung: no heartbeat for 1 s" in text
    assert f"Child {stuck} (slot 0) still runs 5 s after SIGABRT: killing it" in text
    assert f"Child {stuck} killed by signal 9 (hung: no heartbeat for 1 s" in text


def test_long_calls_with_free_threads_never_make_a_worker_hung(serve, client, messenger, topic):
    """Calls of 8 s against a worker_timeout of 3 s: three of the four threads are busy, the
    fourth and the consume loop serve short calls meanwhile. Each long call is logged once
    as it passes rpc_handler_timeout."""
    sup = serve(1, "--worker-timeout", "3", "--executor-thread-pool-size", "4",
                "--rpc-handler-timeout", "2")  # fmt: skip
    [pid] = sup.worker_pids()
    slow = RPCClient(messenger, Target(topic=topic), timeout=30)
    with (
        ThreadPoolExecutor(3) as pool,
        Load(client, callers=1, ms=20).running() as load,
    ):
        long_calls = [pool.submit(slow.call, {}, "sleep", ms=8000) for _ in range(3)]
        assert [call.result(timeout=30) for call in long_calls] == [8000] * 3
    print(f"{load.succeeded} short calls beside the long ones")
    assert not load.failures, load.failures[:5]
    assert load.succeeded > 50
    assert sup.worker_pids() == {pid}
    assert "is hung" not in sup.log()
    long = "a call to sleep has been running for 2 s (rpc_handler_timeout 2 s)"
    assert sup.log().count(long) == 3


def test_a_worker_that_hangs_every_time_ends_in_the_crash_loop_exit(supervise, transport_url):
    """Each worker's consume loop stalls once it has started: each is found hung 3 s later,
    more slowly than the restart window of 3 s lets the crash budget see; the hung streak
    ends it."""
    sup = supervise(
        RPC_SERVICE,
        "--workers", "1", "--transport-url", transport_url, "--topic", "stalls", *HEARTBEAT,
        "--worker-timeout", "3", "--restart-window", "3", "--max-restarts", "1",
        behaviours={"stall-consumer": ""},
    )  # fmt: skip
    assert sup.wait_exit(timeout=30) == exitcodes.CRASH_LOOP
    text = sup.log()
    print(f"{text.count('is hung: consume loop stuck')} hung workers")
    assert text.count("is hung: consume loop stuck") == 2
    assert "slot 0: 2 workers in a row hung (max_restarts 1): giving up" in text
    assert "unexpected exits within" not in text


def recycled_under_load(sup, client, cause: str, count: int, provoke=None) -> Load:
    """Run a load until `count` workers exited for `cause`; return the load."""
    with Load(client, callers=4, ms=20).running() as load:
        load.wait_for_calls(20)
        if provoke is not None:
            provoke()
        wait_until(
            lambda: sup.log().count(f"exited with status 0 ({cause})") >= count,
            timeout=30,
            what=f"{count} workers recycled ({cause})",
        )
        load.wait_for_calls(20)
    print(f"{load.succeeded} calls, {len(load.failures)} failed, {count} recycled ({cause})")
    return load


def one_recycle_at_a_time(text: str) -> None:
    """Every recycle's replacement is ready before the next recycle starts."""
    events = re.findall(r"its replacement starts|is ready; draining the old one", text)
    assert len(events) >= 4, events
    assert all(a != b for a, b in itertools.pairwise(events)), events


@each_transport
def test_a_worker_over_its_memory_limit_is_recycled_without_a_failed_call(serve, client):
    sup = serve(2, "--max-memory-per-worker", "100M")
    before = sup.worker_pids()
    rss = {pid: psutil.Process(pid).memory_info().rss >> 20 for pid in before}
    print(f"RSS before, MiB: {rss}")
    assert max(rss.values()) < 70
    load = recycled_under_load(
        sup, client, "memory", 1, provoke=lambda: client.call({}, "allocate", mb=96)
    )
    assert not load.failures, load.failures[:5]
    assert re.search(r"Recycling child \d+ \(slot \d\): RSS \d+ MiB is over", sup.log())
    assert len(sup.worker_pids()) == 2 and len(sup.worker_pids() & before) == 1


@each_transport
def test_a_worker_past_its_requests_is_recycled_without_a_failed_call(serve, client):
    sup = serve(2, "--max-requests-per-worker", "100", "--max-requests-jitter", "20")
    before = sup.worker_pids()
    load = recycled_under_load(sup, client, "requests", 4)
    assert not load.failures, load.failures[:5]
    text = sup.log()
    limits = [int(n) for n in re.findall(r"messages \(its limit: (\d+)\)", text)]
    assert limits and all(100 <= n <= 120 for n in limits), limits
    one_recycle_at_a_time(text)
    assert not sup.worker_pids() & before


def test_workers_past_their_age_are_recycled_one_at_a_time(serve, client):
    sup = serve(2, "--max-worker-age", "3")
    before = sup.worker_pids()
    load = recycled_under_load(sup, client, "age", 3)
    assert not load.failures, load.failures[:5]
    text = sup.log()
    assert re.search(r"Recycling child \d+ \(slot \d\): up for \d+ s \(its limit: \d+ s\)", text)
    one_recycle_at_a_time(text)
    assert not sup.worker_pids() & before


def test_a_recycle_whose_replacement_fails_keeps_the_old_worker_and_retries(serve, client):
    """The replacements of a worker past its age fail to start: each is gone before it is
    ready, the old worker serves on, and the recycle is tried again later, until one starts."""
    sup = serve(1, "--max-worker-age", "3")
    [old] = sup.worker_pids()
    sup.behave("fail-start")
    failed = f"Recycling child {old} (slot 0, age) failed"
    with Load(client, callers=2, ms=20).running() as load:
        wait_until(lambda: sup.log().count(failed) >= 2, timeout=20, what="two failed recycles")
        assert sup.worker_pids() == {old}
        sup.unbehave("fail-start")
        wait_until(
            lambda: f"Child {old} exited with status 0 (age)" in sup.log(),
            timeout=20,
            what="the recycle to succeed",
        )
        load.wait_for_calls(20)
    text = sup.log()
    print(f"{text.count(failed)} failed recycles; {load.succeeded} calls")
    assert not load.failures, load.failures[:5]
    assert "is recycled again in 1.0 s" in text and "is recycled again in 2.0 s" in text
    assert "reload to generation" not in text  # not taken for a failed reload
    assert old not in sup.worker_pids()


def test_every_exit_cause_is_logged(serve):
    """A worker killed from outside, its replacement failing to start, a reload, a scale-down
    and a stop: one exit line each, with its cause."""
    sup = serve(2)
    victim = min(sup.worker_pids())
    sup.behave("fail-start")
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: f"Child {victim} killed by signal 9 (signal 9)" in sup.log(), what="kill")
    wait_until(lambda: "exited with status 1 (crash (status 1))" in sup.log(), what="a crash")
    sup.unbehave("fail-start")
    wait_until(lambda: sup.log().count("Started child") >= 4 and len(sup.worker_pids()) == 2)
    sup.signal(signal.SIGHUP)
    reloaded = "exited with status 0 (reload)"
    wait_until(lambda: sup.log().count(reloaded) == 2, timeout=20, what="a reload")
    sup.signal(signal.SIGTTOU)
    wait_until(lambda: "exited with status 0 (scale-down)" in sup.log(), what="a scale-down")
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0
    assert "exited with status 0 (stop)" in sup.log()
