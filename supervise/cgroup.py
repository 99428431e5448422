"""What the kernel's cgroup v2 files tell about this process: CPU quota and OOM kills."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _own_cgroup_dir() -> Path | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return CGROUP_ROOT / line[3:].lstrip("/")
    return None


def cpu_quota() -> float | None:
    """CPUs' worth of time the cgroup's cpu.max allows, or None when unlimited or unknown."""
    directory = _own_cgroup_dir()
    if directory is None:
        return None
    try:
        quota, period = (directory / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup's CPU quota."""
    cpus = len(os.sched_getaffinity(0))
    quota = cpu_quota()
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def oom_kill_count() -> int | None:
    """How many processes of this cgroup the OOM killer has killed so far, if known."""
    directory = _own_cgroup_dir()
    if directory is None:
        return None
    try:
        for line in (directory / "memory.events").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        return None
    return None
