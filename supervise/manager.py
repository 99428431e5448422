"""Manager: the object behind a Service, as in nova.

A manager is the service's RPC endpoint (its public methods are the RPC API, versioned by
its ``target``) and holds its periodic tasks. The Service calls its hooks in nova's order:
``init_host(service_ref)`` before the service record is written, ``pre_start_hook(ref)``
before the RPC server starts, ``post_start_hook()`` after, ``graceful_shutdown(timeout)``
and ``cleanup_host()`` on stop, ``reset()`` on a mutate reload. None of the hooks is an RPC
method, even when a subclass overrides it. ``service_version`` is what the Service writes
into its record (nova's SERVICE_VERSION).
"""

from __future__ import annotations

from typing import Any

from supervise.periodic import PeriodicTasks
from supervise.rpc.dispatcher import Target
from supervise.services.versions import SERVICE_VERSION


class Manager(PeriodicTasks):
    _not_rpc = True  # the methods defined here are hooks, never RPC methods

    target = Target(version="1.0")
    service_version: int = SERVICE_VERSION

    def __init__(
        self,
        host: str | None = None,
        service_name: str = "undefined",
        periodic_interval_max: float = 60.0,
    ):
        super().__init__(periodic_interval_max=periodic_interval_max)
        self.host = host
        self.service_name = service_name
        self.additional_endpoints: list[object] = []
        self.service: Any = None  # the Service that runs this manager, once it is built

    def periodic_tasks(self, context: dict[str, Any], raise_on_error: bool = False) -> float:
        """Run the tasks that are due; return the seconds until the next one is."""
        return self.run_periodic_tasks(context, raise_on_error=raise_on_error)

    def init_host(self, service_ref: Any) -> None:
        """Before the service record is created or updated; `service_ref` may be None."""

    def pre_start_hook(self, service_ref: Any) -> None:
        """After the service record exists, before the RPC server starts consuming."""

    def post_start_hook(self) -> None:
        """After the RPC server consumes."""

    def graceful_shutdown(self, timeout: float) -> None:
        """On stop, after the RPC server stopped consuming: finish what must not be cut
        short, within `timeout` seconds."""

    def cleanup_host(self) -> None:
        """Last thing on stop, after in-flight calls and timers are done."""

    def reset(self) -> None:
        """On a mutate reload (SIGHUP): re-read what the configuration changes."""
