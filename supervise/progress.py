"""What a worker's heartbeat tells the master: proof that its work moves on, and its counters.

The worker's RPC server keeps a `Tracker`; at each heartbeat the worker sends a `Progress`
snapshot of it to the master, which judges from it whether the worker is hung (its consume
loop stuck, or every handler thread busy for too long) and whether it has handled enough
messages to be recycled, and which adds its counters into the metrics it serves. Counters
are cumulative since the worker started, so a lost heartbeat loses nothing.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

# Upper bounds, in seconds, of the handler latency histogram; a last bucket holds the rest.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Method names come from the network: past this many, the rest are counted together.
MAX_METHODS = 64
UNKNOWN_METHOD = "<unknown>"
OTHER_METHODS = "<other>"


@dataclass
class MethodStats:
    handled: int = 0
    failed: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    sum: float = 0.0

    @classmethod
    def from_json(cls, data: Any) -> MethodStats:
        buckets = data["buckets"]
        stats = cls(_count(data["handled"]), _count(data["failed"]), [_count(n) for n in buckets])
        if len(stats.buckets) != len(LATENCY_BUCKETS) + 1:
            raise ValueError("wrong number of latency buckets")
        stats.sum = float(data["sum"])
        return stats


@dataclass
class Progress:
    consumer_age: float | None = None
    in_flight: int = 0
    pool_size: int = 0
    oldest_age: float | None = None
    oldest_method: str | None = None
    youngest_age: float | None = None
    methods: dict[str, MethodStats] = field(default_factory=dict)
    redelivered: int = 0
    dead_lettered: int = 0
    paused: bool = False

    @property
    def handled(self) -> int:
        return sum(stats.handled for stats in self.methods.values())

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Progress:
        """Raises ValueError (or a KeyError, TypeError) for anything but a to_json()."""
        methods = data["methods"]
        if not isinstance(methods, dict) or len(methods) > MAX_METHODS + 2:
            raise ValueError("bad methods")
        return cls(
            consumer_age=_seconds_or_none(data["consumer_age"]),
            in_flight=_count(data["in_flight"]),
            pool_size=_count(data["pool_size"]),
            oldest_age=_seconds_or_none(data["oldest_age"]),
            oldest_method=None if data["oldest_method"] is None else str(data["oldest_method"]),
            youngest_age=_seconds_or_none(data["youngest_age"]),
            methods={str(name): MethodStats.from_json(s) for name, s in methods.items()},
            redelivered=_count(data["redelivered"]),
            dead_lettered=_count(data["dead_lettered"]),
            paused=data["paused"] is True,
        )


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value


def _seconds_or_none(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"not a duration: {value!r}")
    return float(value)


class Tracker:
    """The RPC server's counters and in-flight messages, safe to use from any thread."""

    def __init__(self, pool_size: int):
        self.pool_size = pool_size
        self._lock = threading.Lock()
        self._tokens = itertools.count()
        self._in_flight: dict[int, tuple[str, float]] = {}  # token: (method, start); oldest first
        self._methods: dict[str, MethodStats] = {}
        self._redelivered = 0
        self._dead_lettered = 0
        self._probe_done: float | None = None
        self.paused = False

    def begin(self, method: str) -> int:
        """A message taken into flight; returns its token for `end`."""
        with self._lock:
            token = next(self._tokens)
            self._in_flight[token] = (method, time.monotonic())
        return token

    def end(self, token: int, method: str, failed: bool) -> None:
        """`method` is the name it was counted under at `begin`, or UNKNOWN_METHOD if the
        dispatcher found no such method."""
        with self._lock:
            _, started = self._in_flight.pop(token)
            elapsed = time.monotonic() - started
            stats = self._methods.get(method)
            if stats is None:
                if len(self._methods) >= MAX_METHODS and method != UNKNOWN_METHOD:
                    method = OTHER_METHODS
                stats = self._methods.setdefault(method, MethodStats())
            stats.handled += 1
            stats.failed += failed
            stats.buckets[bisect.bisect_left(LATENCY_BUCKETS, elapsed)] += 1
            stats.sum += elapsed

    def redelivered(self) -> None:
        with self._lock:
            self._redelivered += 1

    def dead_lettered(self) -> None:
        with self._lock:
            self._dead_lettered += 1

    def probe_done(self) -> None:
        """The consume loop ran a probe task: it is turning."""
        self._probe_done = time.monotonic()

    def forget_probe(self) -> None:
        """No consumer to judge (reconnecting, paused): the next probe starts afresh."""
        self._probe_done = None

    def long_running(self, older_than: float) -> list[tuple[int, str, float]]:
        """(token, method, age) of the messages in flight for longer than `older_than`."""
        now = time.monotonic()
        with self._lock:
            items = list(self._in_flight.items())
        return [(t, m, now - s) for t, (m, s) in items if now - s > older_than]

    def snapshot(self, consuming: bool) -> Progress:
        now = time.monotonic()
        with self._lock:
            starts = list(self._in_flight.values())
            methods = {
                name: MethodStats(s.handled, s.failed, list(s.buckets), s.sum)
                for name, s in self._methods.items()
            }
            redelivered, dead_lettered = self._redelivered, self._dead_lettered
        probe = self._probe_done
        oldest = min(starts, key=lambda item: item[1], default=None)
        youngest = max((start for _, start in starts), default=None)
        return Progress(
            consumer_age=now - probe if consuming and probe is not None else None,
            in_flight=len(starts),
            pool_size=self.pool_size,
            oldest_age=None if oldest is None else now - oldest[1],
            oldest_method=None if oldest is None else oldest[0],
            youngest_age=None if youngest is None else now - youngest,
            methods=methods,
            redelivered=redelivered,
            dead_lettered=dead_lettered,
            paused=self.paused,
        )
