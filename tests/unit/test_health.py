"""The master's judgements of a worker, from its progress and the master's samples."""

from __future__ import annotations

import random

import pytest

from supervise import health
from supervise.progress import MethodStats, Progress

TIMEOUT = 60.0


def busy(in_flight: int, youngest: float, oldest: float = 95.0, consumer_age=1.0) -> Progress:
    return Progress(
        consumer_age=consumer_age,
        in_flight=in_flight,
        pool_size=64,
        oldest_age=oldest,
        oldest_method="slow",
        youngest_age=youngest,
    )


def test_a_consume_loop_stuck_past_the_timeout_is_hung() -> None:
    assert health.hung(Progress(consumer_age=61.2), 1.0, TIMEOUT) == ("consume loop stuck for 61 s")
    assert health.hung(Progress(consumer_age=59.0), 1.0, TIMEOUT) is None


def test_every_thread_busy_past_the_timeout_is_hung_with_the_oldest_method() -> None:
    assert health.hung(busy(64, youngest=70.4), 1.0, TIMEOUT) == (
        "all 64 handler threads busy for 70 s, the oldest in slow for 95 s"
    )


@pytest.mark.parametrize(
    "progress",
    [
        busy(63, youngest=3000.0),  # long calls, but one thread is free: it still consumes
        busy(64, youngest=59.0),  # the pool is full, but a message entered it 59 s ago
        Progress(in_flight=3, pool_size=0, youngest_age=3000.0),  # no pool to judge
        Progress(consumer_age=None, in_flight=0, pool_size=64),  # reconnecting, or paused
    ],
)
def test_long_calls_with_a_free_thread_or_a_turning_loop_are_not_hung(progress) -> None:
    assert health.hung(progress, 1.0, TIMEOUT) is None


def test_no_heartbeat_for_the_timeout_is_hung_whatever_the_last_progress_said() -> None:
    for progress in (None, Progress(consumer_age=1.0)):
        assert health.hung(progress, 61.0, TIMEOUT) == (
            "no heartbeat for 61 s (its main loop is stuck)"
        )
    assert health.hung(None, 59.0, TIMEOUT) is None


def test_a_zero_timeout_disables_every_condition() -> None:
    assert health.hung(busy(64, youngest=1e6, consumer_age=1e6), 1e6, 0) is None


def handled(count: int) -> Progress:
    return Progress(methods={"a": MethodStats(handled=count - 1), "b": MethodStats(handled=1)})


def test_recycling_is_due_for_memory_then_requests_then_age() -> None:
    limits = health.Limits(max_requests=100, max_age=3600.0)
    memory = 512 << 20
    assert health.recycle_due(handled(10), 513 << 20, 1.0, limits, memory) == (
        "memory",
        "RSS 513 MiB is over max_memory_per_worker (512 MiB)",
    )
    assert health.recycle_due(handled(100), 1 << 20, 1.0, limits, memory) == (
        "requests",
        "handled 100 messages (its limit: 100)",
    )
    assert health.recycle_due(handled(99), 1 << 20, 3600.0, limits, memory) == (
        "age",
        "up for 3600 s (its limit: 3600 s)",
    )
    assert health.recycle_due(handled(99), 1 << 20, 3599.0, limits, memory) is None


def test_no_limit_no_recycling() -> None:
    assert health.recycle_due(handled(10**9), 1 << 40, 1e9, health.Limits(), 0) is None
    assert health.recycle_due(None, None, 0.0, health.Limits(max_requests=1), 1) is None


def test_limits_are_drawn_within_their_jitter() -> None:
    rng = random.Random(7)
    drawn = [health.draw_limits(1000, 50, 3600.0, rng) for _ in range(200)]
    assert {d.max_requests for d in drawn} <= set(range(1000, 1051))
    assert len({d.max_requests for d in drawn}) > 20
    assert all(3240.0 <= d.max_age <= 3600.0 for d in drawn)
    assert max(d.max_age for d in drawn) - min(d.max_age for d in drawn) > 300
    assert health.draw_limits(0, 50, 0.0, rng) == health.Limits(0, 0.0)


def test_a_failed_recycle_is_retried_later_each_time_up_to_a_most() -> None:
    delays = [health.recycle_retry_delay(n, 30.0) for n in range(1, 8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert health.recycle_retry_delay(10**6, 30.0) == 30.0
