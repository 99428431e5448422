"""Service versions, as nova's (nova/objects/service.py): one number for every binary, raised
whenever what a service sends or expects changes, written into its record at start.

A conductor refuses a nova-compute older than `OLDEST_SUPPORTED_COMPUTE_VERSION` (nova's
TooOldComputeService): such a compute would call an API the conductor no longer serves.
"""

from __future__ import annotations

from supervise.config import ConfigError

SERVICE_VERSION_HISTORY: tuple[str, ...] = (
    "0: no version recorded (the column's default; records written before versions existed)",
    "1: conductor API 3.0: records and compute nodes over RPC, the compute's capabilities cast",
)
SERVICE_VERSION = len(SERVICE_VERSION_HISTORY) - 1
OLDEST_SUPPORTED_COMPUTE_VERSION = 1


class TooOldComputeService(ConfigError):
    """A nova-compute too old for this conductor. No restart fixes it (the compute must be
    upgraded), so it is a ConfigError: the worker exits WORKER_LOAD_FAILED and the master stops.
    The message, its only argument, is one line."""


def check_compute_version(version: int) -> None:
    """TooOldComputeService unless a nova-compute at `version` is supported."""
    if version < OLDEST_SUPPORTED_COMPUTE_VERSION:
        raise TooOldComputeService(
            f"nova-compute service version {version} is older than the oldest this "
            f"conductor supports, {OLDEST_SUPPORTED_COMPUTE_VERSION}"
        )
