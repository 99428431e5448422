"""The eventlet executor under a real master, on both transports: workers monkey-patch right
after fork (the master never imports eventlet), handlers run on green threads, and RPC,
periodic tasks, heartbeats, drain, reloads and SIGUSR2 work as with threads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from supervise.db import Database
from supervise.rpc.client import RPCClient
from supervise.rpc.dispatcher import Target
from tests.functional.conftest import (
    ROOT,
    RPC_SERVICE,
    each_transport,
    start_rpc_workers,
    wait_until,
)
from tests.functional.load import Load
from tests.functional.test_rpc_reliability import reload_under_load

GREEN = ("--executor", "eventlet")
HOOKS = "tests.functional.nova_services:hook_service"


def runs_green(pid: int) -> bool:
    """Whether process `pid` has loaded greenlet (eventlet's C half): read from the kernel's
    map of its memory, not asked of the process."""
    with open(f"/proc/{pid}/maps") as maps:
        return "greenlet" in maps.read()


def serve_green(supervise, transport_url, topic, workers=1, *args, env=None, host="hosta"):
    return start_rpc_workers(
        supervise, transport_url, topic, workers, *GREEN, *args, host=host, env=env
    )


def problems(log: str) -> list[str]:
    """Lines an operator would have to read: warnings, errors, tracebacks."""
    return [
        line
        for line in log.splitlines()
        if " INFO " not in line and "received SIGTERM" not in line and line.strip()
    ]


@each_transport
def test_64_green_handlers_sleeping_2_s_take_2_s_and_the_worker_stays_responsive(
    supervise, transport_url, topic, client
):
    # 64 sleepers and room for more: the echo calls show the I/O thread still turns; the
    # watchdog pings show the worker's loop still heartbeats to the master.
    sup = serve_green(
        supervise,
        transport_url,
        topic,
        1,
        "--executor-thread-pool-size", "72",
        env={"WATCHDOG_USEC": "400000"},
    )  # fmt: skip
    (worker,) = sup.worker_pids()
    assert runs_green(worker)
    assert not runs_green(sup.pid), "the master imported eventlet"

    with ThreadPoolExecutor(64) as callers:
        began = time.monotonic()
        sleeps = [callers.submit(client.call, {}, "green_sleep", ms=2000) for _ in range(64)]
        # The echo calls are timed once the 64 sleeps are in the worker.
        wait_until(lambda: sup.in_flight() == 64, 10, "64 calls in flight")
        pings = len(sup.notify.with_key("WATCHDOG"))
        echoes = []
        for _ in range(5):
            sent = time.monotonic()
            assert client.call({}, "echo", payload="here") == "here"
            echoes.append(time.monotonic() - sent)
        assert all(not s.done() for s in sleeps), "the echo calls were timed after the sleeps"
        assert [s.result(timeout=30) for s in sleeps] == [2000] * 64
        elapsed = time.monotonic() - began
    assert elapsed < 4.0, f"64 sleeps of 2 s took {elapsed:.1f} s: not concurrent"
    assert max(echoes) < 0.5, f"a call took {max(echoes):.3f} s while 64 handlers slept"
    assert len(sup.notify.with_key("WATCHDOG")) >= pings + 3, "no heartbeats while handlers slept"

    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0
    assert not problems(sup.log()), problems(sup.log())


@each_transport
def test_rolling_and_mutate_reloads_and_a_drain_under_load_fail_no_call(
    supervise, transport_url, topic, client
):
    rolling = serve_green(supervise, transport_url, topic, 2)
    before = rolling.worker_pids()
    load = reload_under_load(rolling, client)
    assert not load.failures, load.failures[:5]
    assert not rolling.worker_pids() & before
    assert all(runs_green(pid) for pid in rolling.worker_pids())

    mutate = serve_green(supervise, transport_url, topic, 2, "--reload-method", "mutate", host="b")
    load = reload_under_load(mutate, client)  # replaced one at a time: no reset() to call
    assert not load.failures, load.failures[:5]

    # One host drains (SIGTERM) while the other serves on: its in-flight calls are answered.
    with Load(client, ms=50).running() as load:
        load.wait_for_calls(50)
        rolling.signal(signal.SIGTERM)
        assert rolling.wait_exit(timeout=30) == 0
        load.wait_for_calls(50)
    assert not load.failures, load.failures[:5]
    assert not problems(rolling.log()), problems(rolling.log())


@each_transport
def test_periodic_tasks_reports_and_a_mutate_reload_of_a_nova_service(
    supervise, transport_url, tmp_path, messenger
):
    database = f"sqlite:///{tmp_path / 'services.db'}"
    sup = supervise(
        HOOKS,
        "--workers", "2",
        "--transport-url", transport_url,
        "--host", "hosta",
        "--database-url", database,
        "--periodic-fuzzy-delay", "0",
        "--periodic-workers", "all",
        "--report-interval", "0.5",
        "--reload-method", "mutate",
        "--heartbeat-interval", "0.5",
        *GREEN,
    )  # fmt: skip
    pids = sup.wait_ready(2)
    assert all(runs_green(pid) for pid in pids)
    wait_until(lambda: {e.pid for e in sup.events("tick")} == pids, what="ticks in both workers")
    records = Database(database)

    def last_report():
        return records.service_get_by_host_and_binary("hosta", "nova-hooks").updated_at

    first = wait_until(last_report, what="a report")
    wait_until(lambda: last_report() != first, what="a second report")
    hooks = RPCClient(messenger, Target(topic="hooks"), timeout=10)  # the Service's own topic
    assert hooks.call({}, "echo", payload=3) == 3

    sup.signal(signal.SIGHUP)
    wait_until(lambda: len(sup.events("reset")) == 2, what="both managers reset")
    ticks = len(sup.events("tick"))
    wait_until(lambda: len(sup.events("tick")) > ticks + 2, what="ticks after the reset")
    assert sup.worker_pids() == pids
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0
    assert len(sup.events("cleanup_host")) == 2
    assert not problems(sup.log()), problems(sup.log())


def test_usr2_dumps_the_stack_of_every_green_handler(supervise, rabbit_url, topic, client):
    sup = serve_green(supervise, rabbit_url, topic, 1)
    (worker,) = sup.worker_pids()
    with ThreadPoolExecutor(8) as callers:
        sleeps = [callers.submit(client.call, {}, "green_sleep", ms=5000) for _ in range(8)]
        next_signal = [time.monotonic()]

        def dump_of_eight_sleepers() -> bool:
            if time.monotonic() >= next_signal[0]:  # until the 8 calls have reached the worker
                os.kill(worker, signal.SIGUSR2)
                next_signal[0] += 0.5
            records = sup.log().split("thread stacks:")[1:]
            return any(
                r.count("in green_sleep") == 8 and "in _handle_signals" in r for r in records
            )

        wait_until(dump_of_eight_sleepers, what="a dump showing 8 green handlers and the loop")
        assert [s.result(timeout=30) for s in sleeps] == [5000] * 8


def test_a_mutate_reload_to_another_executor_replaces_every_worker(
    supervise, rabbit_url, topic, tmp_path
):
    conf = tmp_path / "supervise.conf"
    conf.write_text("[DEFAULT]\nexecutor = threading\n")
    sup = supervise(
        RPC_SERVICE,
        "--config-file", str(conf),
        "--workers", "2",
        "--transport-url", rabbit_url,
        "--topic", topic,
        "--host", "hosta",
        "--reload-method", "mutate",
        "--heartbeat-interval", "0.5",
    )  # fmt: skip
    threaded = sup.wait_ready(2)
    assert not any(runs_green(pid) for pid in threaded), "threads imported eventlet"
    conf.write_text("[DEFAULT]\nexecutor = eventlet\n")
    sup.signal(signal.SIGHUP)
    green = wait_until(
        lambda: len(p := sup.worker_pids()) == 2 and not p & threaded and p, what="2 new workers"
    )
    wait_until(lambda: len(sup.notify.with_key("READY")) == 2, what="READY=1 after the reload")
    assert all(runs_green(pid) for pid in green)
    assert not runs_green(sup.pid)


def test_preload_with_the_eventlet_executor_is_refused_in_one_line(supervise):
    sup = supervise(RPC_SERVICE, "--preload", *GREEN)
    assert sup.wait_exit() == 2
    assert "preload and executor eventlet exclude each other" in sup.log()
    assert len(sup.log().strip().splitlines()) == 1, sup.log()


GREEN_POOL_FULL = """
from supervise.rpc import executors
executors.monkey_patch()
import time
pool = executors.GreenExecutor(2)
done = []
began = time.monotonic()
for i in range(6):
    pool.submit(lambda i: (time.sleep(0.2), done.append(i)), i)
submitted = time.monotonic() - began
pool.shutdown(wait=True)
print(f"{submitted:.3f} {time.monotonic() - began:.3f} {sorted(done)}")
"""


def test_a_full_green_pool_queues_work_without_blocking_the_submitter():
    """The I/O thread submits; a GreenPool's own spawn would hold it until a handler ends."""
    done = subprocess.run(
        [sys.executable, "-c", GREEN_POOL_FULL],
        capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0 and not done.stderr, done.stderr
    submitted, total, ran = done.stdout.split(" ", 2)
    assert float(submitted) < 0.1
    assert ran.strip() == str(list(range(6)))
    assert 0.55 < float(total) < 1.5  # three rounds of two
