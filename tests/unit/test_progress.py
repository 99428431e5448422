"""The progress a worker's heartbeat carries: counted from any thread, read back strictly."""

from __future__ import annotations

import json
import threading

import pytest

from supervise import progress
from supervise.progress import LATENCY_BUCKETS, MAX_METHODS, Progress, Tracker


def test_counts_survive_the_round_trip_through_json() -> None:
    tracker = Tracker(pool_size=4)
    for failed in (False, False, True):
        tracker.end(tracker.begin("ping"), "ping", failed)
    slow = tracker.begin("slow")
    tracker.redelivered()
    tracker.dead_lettered()
    tracker.probe_done()
    snapshot = Progress.from_json(
        json.loads(json.dumps(tracker.snapshot(consuming=True).to_json()))
    )
    assert snapshot.methods["ping"].handled == 3 and snapshot.methods["ping"].failed == 1
    assert sum(snapshot.methods["ping"].buckets) == 3
    assert len(snapshot.methods["ping"].buckets) == len(LATENCY_BUCKETS) + 1
    assert snapshot.handled == 3
    assert (snapshot.in_flight, snapshot.pool_size, snapshot.oldest_method) == (1, 4, "slow")
    assert snapshot.oldest_age >= 0 and snapshot.youngest_age >= 0
    assert (snapshot.redelivered, snapshot.dead_lettered) == (1, 1)
    assert snapshot.consumer_age is not None and snapshot.consumer_age < 1
    tracker.end(slow, "slow", False)
    assert tracker.snapshot(consuming=True).in_flight == 0


def test_no_consumer_age_without_a_consumer_or_a_probe() -> None:
    tracker = Tracker(pool_size=1)
    assert tracker.snapshot(consuming=True).consumer_age is None
    tracker.probe_done()
    assert tracker.snapshot(consuming=False).consumer_age is None


def test_method_names_past_the_limit_are_counted_together() -> None:
    tracker = Tracker(pool_size=1)
    for index in range(MAX_METHODS + 10):
        name = f"m{index}"
        tracker.end(tracker.begin(name), name, False)
    tracker.end(tracker.begin("x"), progress.UNKNOWN_METHOD, True)
    methods = tracker.snapshot(consuming=False).methods
    assert len(methods) == MAX_METHODS + 2
    assert methods[progress.OTHER_METHODS].handled == 10
    assert methods[progress.UNKNOWN_METHOD].failed == 1


def test_counting_from_many_threads_loses_nothing() -> None:
    tracker = Tracker(pool_size=8)

    def work() -> None:
        for _ in range(2000):
            tracker.end(tracker.begin("ping"), "ping", False)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert tracker.snapshot(consuming=False).methods["ping"].handled == 16000


GOOD = Tracker(pool_size=2).snapshot(consuming=False).to_json()


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {},
        {**GOOD, "in_flight": -1},
        {**GOOD, "in_flight": True},
        {**GOOD, "consumer_age": "soon"},
        {**GOOD, "consumer_age": float("nan")},
        {**GOOD, "methods": []},
        {**GOOD, "methods": {"m": {"handled": 1, "failed": 0, "buckets": [1], "sum": 0}}},
        {**GOOD, "methods": {f"m{i}": {} for i in range(MAX_METHODS + 3)}},
    ],
)
def test_anything_but_a_snapshot_is_refused(bad) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        Progress.from_json(bad)
