"""nova Services for the functional tests (kept apart: it imports SQLAlchemy and Alembic,
which would slow down every worker of the lighter test services)."""

from __future__ import annotations

import os
import time

from supervise.manager import Manager
from supervise.periodic import periodic_task
from supervise.rpc.dispatcher import Target
from supervise.service import Service
from supervise.services.compute import ComputeManager
from supervise.services.conductor_api import ConductorAPI
from supervise.services.versions import OLDEST_SUPPORTED_COMPUTE_VERSION
from tests.functional.services import behaviour, handle, record, take


class HookRecorder(Manager):
    """A manager that records its hooks (and their arguments) and a fast periodic task.
    Behaviour files: ``fail-init`` (init_host raises), ``init-delay`` (seconds it takes)."""

    target = Target(version="1.0")

    def __init__(self, host=None, **kwargs):
        super().__init__(host=host, service_name="hooks", **kwargs)

    def _record(self, event: str) -> None:
        record(event, -1, -1)

    def init_host(self, service_ref) -> None:
        self._record("init_host:" + ("none" if service_ref is None else "ref"))
        delay = behaviour("init-delay")
        if delay:
            time.sleep(float(delay))
        if behaviour("fail-init") is not None:
            raise RuntimeError("init_host told to fail by the test")

    def pre_start_hook(self, service_ref) -> None:
        self._record(f"pre_start_hook:{service_ref.id}")

    def post_start_hook(self) -> None:
        self._record("post_start_hook")

    def graceful_shutdown(self, timeout: float) -> None:
        self._record(f"graceful_shutdown:{timeout:g}")

    def cleanup_host(self) -> None:
        self._record("cleanup_host")

    def reset(self) -> None:
        self._record("reset")

    def echo(self, context: dict, payload):
        return payload

    @periodic_task(spacing=0.2, run_immediately=True)
    def _tick(self, context: dict) -> None:
        self._record("tick")


def hook_service(context):
    return Service.create(
        binary="nova-hooks",
        manager=HookRecorder,
        conf=context.conf,
        worker_id=context.worker_id,
        cancel=context.cancel,
    )


class OldComputeManager(ComputeManager):
    """A nova-compute of a version the conductor no longer supports."""

    service_version = OLDEST_SUPPORTED_COMPUTE_VERSION - 1


def old_compute(context):
    return Service.create(
        binary="nova-compute",
        manager=OldComputeManager,
        conf=context.conf,
        worker_id=context.worker_id,
        cancel=context.cancel,
        db=ConductorAPI(context.conf),
    )


class WhereManager(Manager):
    """Says which host and worker answered: for the tests of several hosts."""

    target = Target(version="1.0")

    def __init__(self, host=None, **kwargs):
        super().__init__(host=host, service_name="where", **kwargs)

    def where(self, context: dict, id: str, ms: float = 0) -> dict:
        """`take` and `handle` the id, then name this host and process."""
        take(id)
        handle(id, ms)
        return {"host": self.host, "pid": os.getpid()}


def where_service(context):
    return Service.create(
        binary="where",
        topic=context.conf.topic,
        manager=WhereManager,
        conf=context.conf,
        worker_id=context.worker_id,
        cancel=context.cancel,
    )
