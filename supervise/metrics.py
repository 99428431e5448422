"""The master's running totals, from its workers' heartbeats and its own events.

A worker's heartbeat carries cumulative counters since that worker started (`Progress`). The
master adds, at each heartbeat, the difference between a worker's new counters and its previous
ones (from zero at its first), so the totals here outlive every worker: they survive an exit, a
recycle and a reload, and never go backwards. The master's own events (exits by cause, reloads)
and the CPU time psutil reads from each worker are counted here too.

Serving them is `supervise.metrics_endpoint`'s job; it imports prometheus_client, so it is
imported only when `metrics_port` is set and a master without metrics starts without it.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeVar

from supervise.progress import MAX_METHODS, OTHER_METHODS, UNKNOWN_METHOD, MethodStats, Progress

if TYPE_CHECKING:
    from supervise.config import Config
    from supervise.listener import Listener
    from supervise.master import Master

N = TypeVar("N", int, float)


class Metrics:
    def __init__(self, exit_causes: Iterable[str] = ()) -> None:
        self.methods: dict[str, MethodStats] = {}
        self.redelivered = 0
        self.dead_lettered = 0
        # By ExitCause value, each from zero, so that a cause's series exists before it happens.
        self.exits: collections.Counter[str] = collections.Counter(dict.fromkeys(exit_causes, 0))
        self.reloads: collections.Counter[str] = collections.Counter()  # completed, failed
        self.cpu_seconds: collections.Counter[int] = collections.Counter()  # by slot

    def add_progress(self, previous: Progress | None, new: Progress | None) -> None:
        """A worker's heartbeat: count what it did since its `previous` one (None: since it
        started)."""
        if new is None or new is previous:
            return
        before = previous or Progress()
        for name, stats in new.methods.items():
            self._add_method(name, stats, before.methods.get(name))
        self.redelivered += _increase(before.redelivered, new.redelivered)
        self.dead_lettered += _increase(before.dead_lettered, new.dead_lettered)

    def _add_method(self, name: str, stats: MethodStats, before: MethodStats | None) -> None:
        before = before or MethodStats()
        total = self.methods.get(name)
        if total is None:
            # Method names come from the workers, of every generation: bounded here too.
            if len(self.methods) >= MAX_METHODS and name not in (UNKNOWN_METHOD, OTHER_METHODS):
                name = OTHER_METHODS
            total = self.methods.setdefault(name, MethodStats())
        total.handled += _increase(before.handled, stats.handled)
        total.failed += _increase(before.failed, stats.failed)
        for index, count in enumerate(stats.buckets):
            total.buckets[index] += _increase(before.buckets[index], count)
        total.sum += _increase(before.sum, stats.sum)

    def add_cpu(self, slot: int, previous: float | None, new: float | None) -> None:
        """A worker's CPU time (user + system seconds), sampled by the master at each of its
        heartbeats; `previous` is its sample before (None: it has just started)."""
        if new is not None:
            self.cpu_seconds[slot] += _increase(previous or 0.0, new)

    def count_exit(self, cause: str) -> None:
        self.exits[cause] += 1

    def count_reload(self, completed: bool) -> None:
        self.reloads["completed" if completed else "failed"] += 1

    def listen(self, conf: Config, master: Master) -> Listener:
        """Serve the metrics on `conf.metrics_host`:`metrics_port` from the master's loop;
        raises ConfigError if it cannot listen there."""
        from supervise import metrics_endpoint

        return metrics_endpoint.listen(conf, master, self)


def _increase(before: N, after: N) -> N:
    """How much a cumulative counter grew; a counter lower than before started again."""
    return after - before if after >= before else after
