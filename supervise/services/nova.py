"""Reference services in nova's shape: ``nova-conductor``, ``nova-scheduler``, ``nova-compute``.

Each is a `Service` with a manager of its own: a record in the services table, an RPC
server on its topic, a heartbeat and periodic tasks. The conductor
(supervise/services/conductor.py) is the only one with database access: ``supervise
--workers 4 nova-conductor``. The scheduler (scheduler.py) and the compute (compute.py) reach
the records only through it (conductor_api.py), so their hosts need only a transport_url.
"""

from __future__ import annotations

from typing import Any

from supervise.hosted import WorkerContext
from supervise.manager import Manager
from supervise.service import Service
from supervise.services.compute import ComputeManager
from supervise.services.conductor import ConductorManager
from supervise.services.conductor_api import ConductorAPI
from supervise.services.scheduler import SchedulerManager


def _service(
    binary: str, manager: type[Manager], context: WorkerContext, db: Any = None
) -> Service:
    return Service.create(
        binary=binary,
        manager=manager,
        conf=context.conf,
        worker_id=context.worker_id,
        cancel=context.cancel,
        db=db,
    )


def conductor(context: WorkerContext) -> Service:
    return _service("nova-conductor", ConductorManager, context)


def scheduler(context: WorkerContext) -> Service:
    return _service("nova-scheduler", SchedulerManager, context, ConductorAPI(context.conf))


def compute(context: WorkerContext) -> Service:
    return _service("nova-compute", ComputeManager, context, ConductorAPI(context.conf))
