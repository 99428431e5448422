"""Workers killed, reloaded and stopped under call and cast load, and stops at random moments
of start-up: nothing accepted is lost, no call fails, every exit is clean. Each test prints
its counts (run with ``-s`` to see them)."""

from __future__ import annotations

import datetime
import os
import random
import signal
import time
from collections.abc import Callable

import pytest

from tests.functional.conftest import RPC_SERVICE, Supervisor, each_transport, wait_until
from tests.functional.load import Load, handled

# A kill storm must not end in the master's crash-loop exit or in dead letters:
# what is tested here is that a message outlives any number of its workers.
STORM = (
    "--max-restarts", "1000",
    "--restart-backoff", "0.01",
    "--restart-backoff-max", "0.1",
    "--max-redeliveries", "100",
)  # fmt: skip


def report(test: str, load: Load, seen: dict[str, int], **more: object) -> dict[str, int]:
    """Print and return the counts of a load: sent, answered or processed, duplicated, lost."""
    casts = set(load.cast_ids)
    counts = {
        "calls sent": len(load.called_ids),
        "calls answered": load.succeeded,
        "calls failed": len(load.failures),
        "casts sent": len(casts),
        "casts processed": len(casts & seen.keys()),
        "duplicated": sum(n - 1 for n in seen.values() if n > 1),
        "lost": len(load.called_ids) - load.succeeded + len(casts - seen.keys()),
    }
    print(f"\n{test}: " + ", ".join(f"{k} {v}" for k, v in {**counts, **more}.items()))
    return counts


def wait_for_every_cast(load: Load, *masters: Supervisor) -> dict[str, int]:
    def seen() -> dict[str, int]:
        total: dict[str, int] = {}
        for sup in masters:
            for unique, count in handled(sup.workdir).items():
                total[unique] = total.get(unique, 0) + count
        return total

    wait_until(lambda: set(load.cast_ids) <= seen().keys(), timeout=30, what="every cast")
    return seen()


def every(period: float, seconds: float, act: Callable[[], bool]) -> int:
    """Call `act` every `period` seconds for `seconds`, at a steady pace whatever each call
    takes; return how many calls acted (returned true)."""
    acted = 0
    next_at = time.monotonic()
    end = next_at + seconds
    while next_at < end:
        time.sleep(max(0.0, next_at - time.monotonic()))
        acted += bool(act())
        next_at += period
    return acted


def stop(sup: Supervisor) -> int:
    sup.signal(signal.SIGTERM)
    return sup.wait_exit(timeout=30)


def recorded_load(client) -> Load:
    return Load(client, callers=8, ms=10, recorded=True, casters=2)


@each_transport
def test_kill_a_random_worker_every_300_ms_for_20_s(serve, client, request):
    sup = serve(4, *STORM)

    def kill_one() -> bool:
        pids = sup.worker_pids()
        if pids:
            os.kill(random.choice(sorted(pids)), signal.SIGKILL)
        return bool(pids)

    with recorded_load(client).running() as load:
        load.wait_for_calls(50)
        kills = every(0.3, 20, kill_one)
        load.wait_for_calls(50)  # served again once the storm is over
    seen = wait_for_every_cast(load, sup)
    code = stop(sup)
    counts = report(request.node.name, load, seen, **{"worker deaths": kills, "master exit": code})
    assert not load.failures, load.failures[:5]
    assert counts["calls answered"] == counts["calls sent"]
    assert counts["casts processed"] == counts["casts sent"] > 0
    assert kills >= 60
    assert code == 0


@each_transport
@pytest.mark.parametrize("method", ["rolling", "mutate"])
def test_sighup_every_2_s_for_20_s_fails_no_call(serve, client, method, request):
    sup = serve(2, "--reload-method", method)
    with recorded_load(client).running() as load:
        load.wait_for_calls(50)
        signals = every(2, 20, lambda: sup.signal(signal.SIGHUP) or True)
        load.wait_for_calls(50)
    seen = wait_for_every_cast(load, sup)
    code = stop(sup)
    log = sup.log()
    reloads = log.count("reload: generation")  # a HUP during a reload merges into one more
    deaths = log.count("killed by signal") + log.count("exited with status 1")
    counts = report(
        request.node.name,
        load,
        seen,
        **{
            "SIGHUP sent": signals,
            "reloads": reloads,
            "worker deaths": deaths,
            "master exit": code,
        },
    )
    assert not load.failures, load.failures[:5]
    assert counts["calls answered"] == counts["calls sent"]
    assert counts["casts processed"] == counts["casts sent"] > 0
    assert reloads >= 3
    assert deaths == 0
    assert code == 0


@each_transport
def test_sigterm_under_load_leaves_every_call_answered_or_queued_for_the_next_server(
    serve, client, request
):
    first = serve(2)
    with recorded_load(client).running() as load:
        load.wait_for_calls(50)
        code = stop(first)
        sent_before_exit = set(load.called_ids)
        answered_by_first = handled(first.workdir).keys()
        second = serve(2)
        load.wait_for_calls(50)
    seen = wait_for_every_cast(load, first, second)
    queued = len(sent_before_exit - answered_by_first)
    counts = report(
        request.node.name,
        load,
        seen,
        **{"queued for the next server": queued, "master exit": code, "worker deaths": 0},
    )
    assert code == 0
    assert not load.failures, load.failures[:5]
    assert counts["calls answered"] == counts["calls sent"]
    assert counts["casts processed"] == counts["casts sent"] > 0
    assert "killed by signal" not in first.log()


STARTS_PER_TRANSPORT = 50  # 100 stops in all


def time_to_ready(start) -> float:
    """From the master's loop to a ready worker, as its log tells, for one master."""
    sup = start()
    sup.wait_ready(1)
    assert stop(sup) == 0
    times = {}
    for line in sup.log().splitlines():
        for event in ("starting 1 workers", "ready:"):
            if event in line and event not in times:
                times[event] = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return (times["ready:"] - times["starting 1 workers"]).total_seconds()


@each_transport
def test_sigterm_at_random_moments_of_start_always_exits_cleanly(
    supervise, transport_url, topic, request
):
    def start() -> Supervisor:
        sup = supervise(
            RPC_SERVICE, "--workers", "1", "--transport-url", transport_url, "--topic", topic,
            "--heartbeat-interval", "0.5",
        )  # fmt: skip
        wait_until(lambda: "starting 1 workers" in sup.log(), what="the master's loop")
        return sup

    window = min(time_to_ready(start) for _ in range(2))  # warm: the start-up to aim at
    moments = {"before the worker started": 0, "during its start": 0, "once it served": 0}
    for _ in range(STARTS_PER_TRANSPORT):
        sup = start()
        time.sleep(random.uniform(0, window))  # a random moment of the start
        code = stop(sup)
        log = sup.log()
        assert code == 0, log
        assert "Traceback" not in log, log
        assert " ERROR " not in log, log
        if "cancelling its start" in log:
            moments["during its start"] += 1
        elif "ready:" in log:
            moments["once it served"] += 1
        else:
            moments["before the worker started"] += 1
        sup.cleanup()
    print(
        f"\n{request.node.name}: {STARTS_PER_TRANSPORT} stops, all exit 0, "
        f"window {window:.3f} s, {moments}"
    )
    assert moments["during its start"] >= 5
