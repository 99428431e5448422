"""The conductor client: the records API of a service without database access, over RPC.

nova's indirection API: nova-compute and nova-scheduler never open the database; they read
and write the `services` and `compute_nodes` tables through nova-conductor (topic
``conductor``, version 3.0, keyword arguments, records as JSON objects). `ConductorAPI` has
the record API a `Service` expects of its backend, so ``Service(db=ConductorAPI(conf))``
registers, heartbeats and deregisters through the conductor.

A remote error whose type is one of supervise.db's exceptions or `TooOldComputeService` is
raised as that local class (``except ServiceBinaryExists`` works as with a database); any
other stays a `wire.RemoteError`. A heartbeat (and a compute's resource report) waits half a
``report_interval`` at most: while the conductor is down the servicegroup logs one warning
and retries, and the heartbeats no conductor took expire in the queue instead of piling up
for its return.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from supervise.config import Config
from supervise.db import errors as db_errors
from supervise.db.records import ComputeNodeRecord, ServiceRecord
from supervise.hosted import Cancel
from supervise.periodic import DEFAULT_INTERVAL
from supervise.rpc import wire
from supervise.rpc.client import BrokerUnreachable, MessagingTimeout, Messenger, RPCClient
from supervise.rpc.dispatcher import Target
from supervise.services.versions import TooOldComputeService

LOG = logging.getLogger(__name__)

TOPIC = "conductor"
API_VERSION = "3.0"
PING_TIMEOUT = 1.0  # each attempt of `prepare`: as long as a cancel may take to end it
RETRY_PAUSE = 0.5


def _remote_exceptions() -> dict[str, type[Exception]]:
    """The contract's remote error types: supervise.db's exceptions and TooOldComputeService."""
    found: dict[str, type[Exception]] = {
        name: value
        for name, value in vars(db_errors).items()
        if isinstance(value, type) and issubclass(value, db_errors.DatabaseError)
    }
    found[TooOldComputeService.__name__] = TooOldComputeService
    return found


REMOTE_EXCEPTIONS = _remote_exceptions()


def local_error(error: wire.RemoteError) -> Exception:
    """The local exception a remote error stands for, with the remote message; the remote
    error itself when its type is not one of the contract's."""
    cls = REMOTE_EXCEPTIONS.get(error.exc_type or "")
    if cls is None:
        return error
    local = cls.__new__(cls)  # their constructors take fields the wire does not carry
    Exception.__init__(local, error.value)
    return local


class ConductorAPI:
    """Records through the conductor. Shares its `messenger` with the process's other
    clients (the compute's casts to the scheduler)."""

    def __init__(self, conf: Config, messenger: Messenger | None = None):
        self.messenger = messenger or Messenger(
            conf.transport,
            heartbeat=conf.heartbeat_timeout_threshold,
            publisher_confirms=conf.publisher_confirms,
        )
        self._client = RPCClient(
            self.messenger,
            Target(topic=TOPIC, version=API_VERSION),
            timeout=conf.rpc_response_timeout,
            exchange=conf.control_exchange,
        )
        # A periodic report waits half an interval at most, so that it never delays the
        # next one; one the conductor did not take in time is stale, and expires in the
        # queue rather than pile up while the conductor is down.
        interval = conf.report_interval or DEFAULT_INTERVAL
        self._report_client = self._client.prepare(
            timeout=min(interval / 2, conf.rpc_response_timeout)
        )

    def close(self) -> None:
        self.messenger.close()

    def _call(self, method: str, client: RPCClient | None = None, **kwargs: Any) -> Any:
        try:
            return (client or self._client).call({}, method, **kwargs)
        except wire.RemoteError as error:
            raise local_error(error) from None

    # ----- readiness --------------------------------------------------------------------

    def prepare(self, cancel: Cancel) -> None:
        """Return once a conductor answers (a ``baseapi`` ping); log one line while waiting
        and one when it answers. A cancel ends the wait (`Cancelled`) within PING_TIMEOUT."""
        ping = self._client.prepare(namespace="baseapi", version="1.1", timeout=PING_TIMEOUT)
        began = time.monotonic()
        waiting = False
        cancelled = threading.Event()
        with cancel.calls(cancelled.set):
            while True:
                try:
                    ping.call({}, "ping", arg=None)
                    break
                except (MessagingTimeout, BrokerUnreachable) as error:
                    if not waiting:
                        waiting = True
                        LOG.warning("waiting for a conductor on topic %s: %s", TOPIC, error)
                if cancelled.wait(RETRY_PAUSE):
                    break
        if waiting:
            LOG.info("a conductor answered after %.1f s", time.monotonic() - began)

    # ----- services -----------------------------------------------------------------------

    def service_get_all(
        self, host: str | None = None, binary: str | None = None
    ) -> list[ServiceRecord]:
        rows = self._call("service_get_all", host=host, binary=binary)
        return [ServiceRecord.from_primitive(row) for row in rows]

    def service_get_by_host_and_binary(self, host: str, binary: str) -> ServiceRecord | None:
        row = self._call("service_get_by_host_and_binary", host=host, binary=binary)
        return None if row is None else ServiceRecord.from_primitive(row)

    def service_create(self, values: Mapping[str, Any]) -> ServiceRecord:
        return ServiceRecord.from_primitive(self._call("service_create", values=dict(values)))

    def service_update(self, service_id: int, values: Mapping[str, Any]) -> ServiceRecord:
        row = self._call("service_update", service_id=service_id, values=dict(values))
        return ServiceRecord.from_primitive(row)

    def service_report(self, service_id: int) -> ServiceRecord:
        row = self._call("service_report", self._report_client, service_id=service_id)
        return ServiceRecord.from_primitive(row)

    def service_destroy(self, service_id: int) -> None:
        self._call("service_destroy", service_id=service_id)

    def service_get_minimum_version(self, binary: str) -> int | None:
        return self._call("service_get_minimum_version", binary=binary)

    # ----- compute nodes ------------------------------------------------------------------

    def compute_node_update(self, host: str, values: Mapping[str, Any]) -> ComputeNodeRecord:
        row = self._call("compute_node_update", self._report_client, host=host, values=dict(values))
        return ComputeNodeRecord.from_primitive(row)

    def compute_node_get_all(self) -> list[ComputeNodeRecord]:
        return [ComputeNodeRecord.from_primitive(row) for row in self._call("compute_node_get_all")]
