"""The master's judgements of one worker: is it hung, is it due to be recycled.

Pure functions of what the master knows of a worker (its last heartbeat's `Progress`, when
that heartbeat came, its RSS, its age) and of the configuration, so that they are tested
without processes. The master acts on their answers (`supervise.master`).

A worker is hung when, for longer than `worker_timeout`:
- its consume loop did not run the probe its heartbeats sent (`consumer_age`), or
- every one of its handler threads was busy (no message entered flight meanwhile), or
- it sent no heartbeat at all (its main loop, or the whole process, is stuck).

A worker with free handler threads, or whose consume loop turns, is not hung however long its
calls run; a worker without a consumer to judge (reconnecting to the broker, paused, or a
service without an RPC server) is judged by its heartbeats alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from supervise.progress import Progress

MIB = 1 << 20
# A worker's age limit is max_worker_age times a random factor from this range, drawn when it
# is forked: workers started together are then recycled up to a tenth of the age apart.
AGE_JITTER = (0.9, 1.0)
# A recycle whose replacement failed is retried after this, doubling per failure in a row.
RECYCLE_RETRY = 1.0


@dataclass(frozen=True)
class Limits:
    """One worker's own recycling limits, drawn when it is forked; 0 means never."""

    max_requests: int = 0
    max_age: float = 0.0


def draw_limits(
    max_requests: int, jitter: int, max_age: float, rng: random.Random | None = None
) -> Limits:
    rng = rng or random.Random()
    return Limits(
        max_requests=max_requests + rng.randint(0, jitter) if max_requests else 0,
        max_age=max_age * rng.uniform(*AGE_JITTER) if max_age else 0.0,
    )


def hung(progress: Progress | None, since_heartbeat: float, worker_timeout: float) -> str | None:
    """Why the worker is hung, with the evidence, or None if it is not (or 0 disables)."""
    if not worker_timeout:
        return None
    if since_heartbeat > worker_timeout:
        return f"no heartbeat for {since_heartbeat:.0f} s (its main loop is stuck)"
    if progress is None:
        return None
    if progress.consumer_age is not None and progress.consumer_age > worker_timeout:
        return f"consume loop stuck for {progress.consumer_age:.0f} s"
    busy = progress.pool_size and progress.in_flight >= progress.pool_size
    if busy and progress.youngest_age is not None and progress.youngest_age > worker_timeout:
        return (
            f"all {progress.pool_size} handler threads busy for {progress.youngest_age:.0f} s, "
            f"the oldest in {progress.oldest_method} for {progress.oldest_age or 0:.0f} s"
        )
    return None


def recycle_due(
    progress: Progress | None, rss: int | None, age: float, limits: Limits, max_memory: int
) -> tuple[str, str] | None:
    """(cause, evidence) if the worker is due to be recycled, else None. The cause is the
    value of its `ExitCause`: "memory", "requests" or "age"."""
    if max_memory and rss is not None and rss > max_memory:
        return "memory", (
            f"RSS {rss / MIB:.0f} MiB is over max_memory_per_worker ({max_memory / MIB:.0f} MiB)"
        )
    if limits.max_requests and progress is not None and progress.handled >= limits.max_requests:
        return "requests", f"handled {progress.handled} messages (its limit: {limits.max_requests})"
    if limits.max_age and age >= limits.max_age:
        return "age", f"up for {age:.0f} s (its limit: {limits.max_age:.0f} s)"
    return None


def recycle_retry_delay(failures: int, most: float) -> float:
    """How long after its `failures`-th failure in a row a recycle is tried again."""
    return min(most, RECYCLE_RETRY * 2 ** min(failures - 1, 64))
