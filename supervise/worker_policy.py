"""How many workers a service may have, as the service itself declares it.

A service declares its policy in its distribution's metadata, under the entry-point group
``supervise.worker_policies``: the entry point's name is the service's registered name, its
value a `WorkerPolicy` constant of a light module (supervise's own are here). The master reads
the metadata and imports only that module, never the service's: importing a service may
start threads or monkey-patch (eventlet), which a process that forks must not do. A service
named as ``module:Class`` has no registered name, and so no policy of its own.

    [project.entry-points."supervise.worker_policies"]
    nova-compute = "supervise.worker_policy:ONE_WORKER"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from supervise import hosted
from supervise.config import MAX_WORKERS, ConfigError

ENTRY_POINT_GROUP = "supervise.worker_policies"


@dataclass(frozen=True)
class WorkerPolicy:
    """`default_workers` replaces the CPU count as the default (None: keep it); asking for
    more than `max_workers` (flag, environment or config file) is a usage error, and SIGTTIN
    stops there. `why` ends the error line."""

    default_workers: int | None = None
    max_workers: int = MAX_WORKERS
    why: str = ""

    def defaults(self) -> dict[str, Any]:
        return {} if self.default_workers is None else {"workers": self.default_workers}

    def most(self) -> str:
        return "one worker" if self.max_workers == 1 else f"{self.max_workers} workers"

    def check(self, service: str, workers: int) -> None:
        if workers > self.max_workers:
            why = f" ({self.why})" if self.why else ""
            raise ConfigError(f"{service} runs at most {self.most()}{why}: workers = {workers}")


ANY_WORKERS = WorkerPolicy()
ONE_WORKER = WorkerPolicy(
    default_workers=1, max_workers=1, why="one process per host by design, as nova runs it"
)


def of(service: hosted.ServiceRef) -> WorkerPolicy:
    """The policy `service` declares, or ANY_WORKERS. Raises hosted.ServiceNotFound (one
    line) when the declaration cannot be loaded or is not a WorkerPolicy."""
    entry_point = hosted.find_entry_point(ENTRY_POINT_GROUP, service.name)
    if entry_point is None:
        return ANY_WORKERS
    try:
        policy = entry_point.load()
    except Exception as error:
        raise hosted.ServiceNotFound(
            f"cannot load the worker policy {entry_point.value!r} of service {service.name!r}: "
            f"{type(error).__name__}: {error}"
        ) from None
    if not isinstance(policy, WorkerPolicy):
        raise hosted.ServiceNotFound(
            f"the worker policy {entry_point.value!r} of service {service.name!r} "
            "is not a WorkerPolicy"
        )
    return policy
