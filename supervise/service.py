"""The nova Service: a record in the services table, an RPC server, a heartbeat and periodic
tasks, started and stopped in nova's order.

start: ``db.prepare(cancel)`` -> look up the record -> ``manager.init_host(ref)`` -> create
(race guard) or update the record (its version, as nova's _update_service_ref) ->
``manager.pre_start_hook(ref)`` -> RPC server on ``Target(topic,
server=host)`` with the manager, its additional endpoints and ``baseapi`` -> consuming ->
``manager.post_start_hook()`` -> servicegroup join -> periodic tasks after a random delay.

stop: shutdown flag -> stop consuming -> ``manager.graceful_shutdown(timeout)`` (bounded by
``manager_shutdown_timeout``) -> in-flight calls finish and are acked -> timers stop ->
``manager.cleanup_host()``.

A stop while it starts (the worker's `Cancel`) ends the start between two steps, or
interrupts the RPC server's connection attempt; stop() then undoes only the steps that ran.
A mutate reload's ``reset(conf)`` takes the new configuration: the options read at stop time
(``manager_shutdown_timeout``) take effect at once; the others at the next rolling reload.

The records backend (``db``) is a `Database`, or anything with the same record API and a
``prepare(cancel)``: a service without database access passes the conductor's RPC client.

Better than nova: within one host, only one worker (the leader, slot 0) heartbeats and, with
``periodic_workers = leader``, runs the periodic tasks; nova runs them in every worker.
"""

from __future__ import annotations

import importlib
import logging
import os
import random
import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol

from supervise.config import Config
from supervise.db import Database, ServiceBinaryExists, ServiceTopicExists
from supervise.hosted import Cancel
from supervise.manager import Manager
from supervise.periodic import DynamicLoopingCall
from supervise.progress import Progress
from supervise.rpc.dispatcher import BaseAPI, Target
from supervise.rpc.server import RPCServer, ServerOptions
from supervise.servicegroup import ServiceGroup

LOG = logging.getLogger(__name__)

LEADER_SLOT = 0


class RecordsBackend(Protocol):
    """Where a Service keeps its record: `Database`, or the conductor's RPC client."""

    def prepare(self, cancel: Cancel) -> None: ...
    def service_get_by_host_and_binary(self, host: str, binary: str) -> Any: ...
    def service_create(self, values: dict[str, Any]) -> Any: ...
    def service_update(self, service_id: int, values: dict[str, Any]) -> Any: ...
    def service_report(self, service_id: int) -> Any: ...
    def service_get_all(self, host: str | None = None, binary: str | None = None) -> Any: ...
    def service_destroy(self, service_id: int) -> None: ...
    def close(self) -> None: ...


def topic_of(binary: str) -> str:
    """nova's rule: ``nova-conductor`` serves topic ``conductor``."""
    return binary.rpartition("nova-")[2]


def _manager_class(manager: type[Manager] | str) -> type[Manager]:
    if isinstance(manager, str):
        module, _, name = manager.rpartition(".")
        return getattr(importlib.import_module(module), name)
    return manager


class Service:
    def __init__(
        self,
        host: str,
        binary: str,
        topic: str,
        manager: type[Manager] | str,
        report_interval: float,
        periodic_enable: bool,
        periodic_fuzzy_delay: float,
        periodic_interval_max: float,
        *,
        conf: Config,
        leader: bool = True,
        db: RecordsBackend | None = None,
        cancel: Cancel | None = None,
    ):
        self.host = host
        self.binary = binary
        self.topic = topic
        self.conf = conf
        self.leader = leader
        self.cancel = cancel or Cancel()
        self.periodic_enable = periodic_enable
        self.periodic_fuzzy_delay = periodic_fuzzy_delay
        self.periodic_interval_max = periodic_interval_max
        self.manager = _manager_class(manager)(host=host)
        self.db: RecordsBackend = Database(conf.database) if db is None else db
        self.servicegroup = ServiceGroup(self.db, report_interval, conf.service_down_time)
        self.manager.service = self
        self.service_ref: Any = None
        self.rpcserver: RPCServer | None = None
        self._periodic: DynamicLoopingCall | None = None
        self._host_initialised = False
        self._shutting_down = False
        self._paused = False

    @classmethod
    def create(
        cls,
        host: str | None = None,
        binary: str | None = None,
        topic: str | None = None,
        manager: type[Manager] | str | None = None,
        report_interval: float | None = None,
        periodic_enable: bool | None = None,
        periodic_fuzzy_delay: float | None = None,
        periodic_interval_max: float | None = None,
        *,
        conf: Config,
        worker_id: int | None = None,
        cancel: Cancel | None = None,
        db: RecordsBackend | None = None,
    ) -> Service:
        """A Service with nova's defaults; `worker_id` (the slot) picks the host's leader;
        `cancel` (the worker context's) lets a stop end a start early; `db`, the records
        backend, defaults to ``Database(conf.database)``."""
        if manager is None:
            raise ValueError("Service.create needs a manager class")
        binary = binary or os.path.basename(sys.argv[0])
        return cls(
            host=host or conf.host,
            binary=binary,
            topic=topic or topic_of(binary),
            manager=manager,
            report_interval=conf.report_interval if report_interval is None else report_interval,
            periodic_enable=conf.periodic_enable if periodic_enable is None else periodic_enable,
            periodic_fuzzy_delay=(
                conf.periodic_fuzzy_delay if periodic_fuzzy_delay is None else periodic_fuzzy_delay
            ),
            periodic_interval_max=(
                conf.periodic_interval_max
                if periodic_interval_max is None
                else periodic_interval_max
            ),
            conf=conf,
            leader=worker_id in (None, LEADER_SLOT),
            db=db,
            cancel=cancel,
        )

    # ----- start --------------------------------------------------------------------------

    def start(self) -> None:
        cancel = self.cancel
        self.db.prepare(cancel)
        cancel.raise_if_set()
        ref = self.db.service_get_by_host_and_binary(self.host, self.binary)
        cancel.raise_if_set()
        self.manager.init_host(ref)
        self._host_initialised = True
        cancel.raise_if_set()
        self.service_ref = self._register(ref)
        self.manager.pre_start_hook(self.service_ref)
        cancel.raise_if_set()
        endpoints = [self.manager, *self.manager.additional_endpoints, BaseAPI(self.binary)]
        self.rpcserver = RPCServer(
            self.conf.transport,
            Target(topic=self.topic, server=self.host),
            endpoints,
            ServerOptions.from_config(self.conf),
        )
        if self._paused:
            self.rpcserver.pause()
        with cancel.calls(self.rpcserver.stop):
            self.rpcserver.start()
        self.manager.post_start_hook()
        if self.leader:
            self.servicegroup.join(self.service_ref.id)
        if self.periodic_enable and (self.leader or self.conf.periodic_workers == "all"):
            self._start_periodic_tasks()
        LOG.info("%s serves topic %s on host %s", self.binary, self.topic, self.host)

    def _register(self, ref: Any) -> Any:
        """The service's record, created if missing, at the manager's version. When another
        process created it first (the workers of one host start together), re-read it
        instead of failing: the guard is the table's unique constraints, not a
        check-then-insert."""
        version = self.manager.service_version
        if ref is None:
            try:
                return self.db.service_create(
                    {
                        "host": self.host,
                        "binary": self.binary,
                        "topic": self.topic,
                        "version": version,
                    }
                )
            except (ServiceBinaryExists, ServiceTopicExists):
                ref = self.db.service_get_by_host_and_binary(self.host, self.binary)
                if ref is None:  # the topic is taken by another binary of this host
                    raise
        if ref.version != version:  # nova's _update_service_ref
            ref = self.db.service_update(ref.id, {"version": version})
        return ref

    def _start_periodic_tasks(self) -> None:
        delay = random.uniform(0, self.periodic_fuzzy_delay) if self.periodic_fuzzy_delay else None
        self._periodic = DynamicLoopingCall(self.periodic_tasks)
        self._periodic.start(
            initial_delay=delay,
            periodic_interval_max=self.periodic_interval_max,
            stop_on_exception=False,
        )

    def periodic_tasks(self, raise_on_error: bool = False) -> float:
        return self.manager.periodic_tasks({}, raise_on_error=raise_on_error)

    # ----- stop ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop what started, in nova's order; after a cancelled start, only that part."""
        self._stop_serving()
        self.db.close()

    def _stop_serving(self) -> None:
        self._shutting_down = True
        if self.rpcserver is not None:
            self.rpcserver.stop()
        if self._host_initialised:
            _bounded(
                lambda: self.manager.graceful_shutdown(self.conf.manager_shutdown_timeout),
                self.conf.manager_shutdown_timeout,
                "the manager's graceful_shutdown",
            )
        if self.rpcserver is not None:
            self.rpcserver.wait()
        if self._periodic is not None:
            self._periodic.stop()
        self.servicegroup.leave()
        if self._host_initialised:
            self.manager.cleanup_host()

    def progress(self) -> Progress | None:
        """The RPC server's progress (None before it exists), for the worker's heartbeat."""
        return None if self.rpcserver is None else self.rpcserver.progress()

    def pause(self) -> None:
        """Stop taking RPC messages (a drain that keeps the worker up); calls in flight
        finish. Before `start`, the server starts paused. Periodic tasks and the service's
        heartbeat go on."""
        self._paused = True
        if self.rpcserver is not None:
            self.rpcserver.pause()

    def resume(self) -> None:
        self._paused = False
        if self.rpcserver is not None:
            self.rpcserver.resume()

    def wait(self) -> None:
        if self._periodic is not None:
            self._periodic.wait()

    def reset(self, conf: Config | None = None) -> None:
        """A mutate reload: take the new configuration, then ``manager.reset()``."""
        if conf is not None:
            self.conf = conf
        self.manager.reset()

    def kill(self) -> None:
        """Stop, and delete the service's record (soft delete: it can register again)."""
        self._stop_serving()
        if self.service_ref is not None:
            self.db.service_destroy(self.service_ref.id)
        self.db.close()


def _bounded(work: Callable[[], None], timeout: float, what: str) -> None:
    """Run `work` for at most `timeout` seconds (0: no limit); errors propagate."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run, name="bounded", daemon=True)
    thread.start()
    thread.join(timeout or None)
    if thread.is_alive():
        LOG.warning("%s did not finish within %g s: stopping anyway", what, timeout)
    elif errors:
        raise errors[0]
