"""Reference services in nova's shape: ``nova-conductor``, ``nova-scheduler``, ``nova-compute``.

Each is a `Service` with a manager of its own: a record in the services table, an RPC
server on its topic, a heartbeat and periodic tasks. The conductor
(supervise/services/conductor.py) is the only one with database access: ``supervise
--workers 4 nova-conductor``; it sends the service notifications of the records it writes.
The scheduler (scheduler.py) and the compute (compute.py) reach the records only through it
(conductor_api.py), so their hosts need only a transport_url.
"""

from __future__ import annotations

from supervise.config import ConfigError
from supervise.db import Database
from supervise.hosted import WorkerContext
from supervise.manager import Manager
from supervise.notifications import NotifyingRecords, ServiceNotifier
from supervise.service import RecordsBackend, Service, topic_of
from supervise.services.compute import ComputeManager
from supervise.services.conductor import ConductorManager
from supervise.services.conductor_api import ConductorAPI
from supervise.services.scheduler import SchedulerManager


def _service(
    binary: str, manager: type[Manager], context: WorkerContext, db: RecordsBackend
) -> Service:
    """nova's topic is fixed by the binary (its clients send there): a --topic naming
    another one is refused, a ConfigError, so that the master stops with status 2."""
    topic = context.conf.topic
    if topic is not None and topic != topic_of(binary):
        raise ConfigError(
            f"{binary} serves topic {topic_of(binary)}, fixed by its binary: "
            f"it cannot serve --topic {topic}"
        )
    return Service.create(
        binary=binary,
        manager=manager,
        conf=context.conf,
        worker_id=context.worker_id,
        cancel=context.cancel,
        db=db,
    )


def conductor(context: WorkerContext) -> Service:
    conf = context.conf
    records = NotifyingRecords(Database(conf.database), ServiceNotifier.from_config(conf))
    return _service("nova-conductor", ConductorManager, context, records)


def scheduler(context: WorkerContext) -> Service:
    return _service("nova-scheduler", SchedulerManager, context, ConductorAPI(context.conf))


def compute(context: WorkerContext) -> Service:
    return _service("nova-compute", ComputeManager, context, ConductorAPI(context.conf))
