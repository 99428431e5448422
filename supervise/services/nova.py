"""Reference services in nova's shape: ``nova-conductor``, ``nova-scheduler``, ``nova-compute``.

Each is a `Service` with a manager of its own: a record in the services table, an RPC
server on its topic, a heartbeat and periodic tasks. The conductor (its manager in
supervise/services/conductor.py) is the database front: ``supervise --workers 4
nova-conductor``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from supervise.hosted import WorkerContext
from supervise.manager import Manager
from supervise.periodic import periodic_task
from supervise.rpc.dispatcher import Target
from supervise.service import Service
from supervise.services.conductor import ConductorManager

LOG = logging.getLogger(__name__)


class SchedulerManager(Manager):
    target = Target(version="4.0")

    def __init__(self, host: str | None = None, **kwargs: Any):
        super().__init__(host=host, service_name="scheduler", **kwargs)

    def select_destinations(self, context: dict, count: int = 1) -> list[str]:
        """Hosts of up compute services, as many as asked for (fewer if there are not)."""
        services = self.service.db.service_get_all(binary="nova-compute")
        up = [s.host for s in services if self.service.servicegroup.is_up(s)]
        return sorted(up)[:count]


class ComputeManager(Manager):
    target = Target(version="6.0")

    def __init__(self, host: str | None = None, **kwargs: Any):
        super().__init__(host=host, service_name="compute", **kwargs)
        self.started = time.monotonic()

    def get_host_uptime(self, context: dict) -> float:
        return round(time.monotonic() - self.started, 3)

    @periodic_task(spacing=60, run_immediately=True)
    def _update_available_resource(self, context: dict) -> None:
        LOG.info("compute on %s: %d CPUs available", self.host, len(os.sched_getaffinity(0)))


def _service(binary: str, manager: type[Manager], context: WorkerContext) -> Service:
    return Service.create(
        binary=binary,
        manager=manager,
        conf=context.conf,
        worker_id=context.worker_id,
        cancel=context.cancel,
    )


def conductor(context: WorkerContext) -> Service:
    return _service("nova-conductor", ConductorManager, context)


def scheduler(context: WorkerContext) -> Service:
    return _service("nova-scheduler", SchedulerManager, context)


def compute(context: WorkerContext) -> Service:
    return _service("nova-compute", ComputeManager, context)
