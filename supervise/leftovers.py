"""What exited workers leave behind, and making sure it goes too.

The master is a child subreaper and each worker leads a process group of its own. What a
worker started and left behind is therefore either still in that group (a ``sleep`` it
spawned) or, detached into a session of its own (a ``setsid`` daemon), reparented to the
master instead of to init. After a worker exits, and whenever the master reaps a process,
its group and every child of the master that is not a worker get SIGTERM, and SIGKILL
after `GRACE` seconds; the master does not exit before they are gone.

All of it runs on the master's loop: `deadline` joins the loop's timers and `run_due` its
turn; nothing here waits.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

LOG = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
GRACE = 2.0  # from TERM to KILL
GIVE_UP = 5.0  # from KILL to forgetting a process that does not die (uninterruptible sleep)


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        LOG.warning(
            "prctl(PR_SET_CHILD_SUBREAPER) failed: %s; what workers detach may outlive them",
            os.strerror(ctypes.get_errno()),
        )


def own_children() -> set[int]:
    """Every child of this process, as the kernel sees it (workers and orphans)."""
    pid = os.getpid()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        found: set[int] = set()
        for task in tasks:
            with open(f"/proc/{pid}/task/{task}/children") as children:
                found.update(int(child) for child in children.read().split())
        return found
    except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN: scan every process
        return _children_by_scan(pid)


def _children_by_scan(parent: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{entry}/stat") as stat:
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses
                fields = stat.read().rpartition(")")[2].split()
            if int(fields[1]) == parent:
                found.add(int(entry))
    return found


def _send(kill: Callable[[int, int], None], target: int, signum: int) -> bool:
    """Whether `target` (a pid, or a group for killpg) still had a process to signal."""
    try:
        kill(target, signum)
    except ProcessLookupError:
        return False
    except PermissionError:  # not ours (a reused number): leave it alone
        return False
    return True


@dataclass
class _Pending:
    due: float  # when to KILL it, or, once killed, when to stop waiting for it
    killed: bool = False


class Leftovers:
    def __init__(self) -> None:
        self._groups: dict[int, _Pending] = {}
        self._orphans: dict[int, _Pending] = {}

    @property
    def pending(self) -> bool:
        return bool(self._groups or self._orphans)

    def worker_exited(self, pid: int, workers: Collection[int]) -> None:
        """Worker `pid` was reaped: TERM what it left in its group, and every orphan."""
        if _send(os.killpg, pid, signal.SIGTERM):
            self._groups[pid] = _Pending(time.monotonic() + GRACE)
            LOG.info("Child %d left processes in its group: TERM, KILL in %g s", pid, GRACE)
        self.sweep(workers)

    def reaped(self, pid: int) -> None:
        """A process the master did not fork, reparented to it, exited and was reaped."""
        LOG.debug("reaped %d, a process a worker left behind", pid)
        self._orphans.pop(pid, None)

    def sweep(self, workers: Collection[int]) -> None:
        """TERM every child of the master that is neither a worker nor known already."""
        orphans = own_children() - set(workers) - self._orphans.keys()
        if not orphans:
            return
        LOG.info(
            "processes left behind by workers: %s: TERM, KILL in %g s",
            ", ".join(map(str, sorted(orphans))),
            GRACE,
        )
        kill_at = time.monotonic() + GRACE
        for pid in orphans:
            _send(os.kill, pid, signal.SIGTERM)
            self._orphans[pid] = _Pending(kill_at)

    def deadline(self) -> float | None:
        return min((p.due for p in [*self._groups.values(), *self._orphans.values()]), default=None)

    def run_due(self, workers: Collection[int]) -> None:
        """Forget emptied groups; KILL what outlived its grace; forget what KILL cannot end.
        `workers` are never signalled: a new worker may lead a group of a reused number."""
        now = time.monotonic()
        for pgid in list(self._groups):
            if pgid in workers or not _send(os.killpg, pgid, 0):
                del self._groups[pgid]
            else:
                self._kill_if_due(self._groups, pgid, os.killpg, f"process group {pgid}", now)
        for pid in list(self._orphans):
            self._kill_if_due(self._orphans, pid, os.kill, f"process {pid}", now)

    @staticmethod
    def _kill_if_due(
        table: dict[int, _Pending],
        target: int,
        kill: Callable[[int, int], None],
        what: str,
        now: float,
    ) -> None:
        pending = table[target]
        if pending.due > now:
            return
        if not pending.killed:
            LOG.warning("%s still runs %g s after SIGTERM: killing it", what, GRACE)
            _send(kill, target, signal.SIGKILL)
            pending.killed, pending.due = True, now + GIVE_UP
        else:
            LOG.error("%s survived SIGKILL for %g s: no longer waiting for it", what, GIVE_UP)
            del table[target]
