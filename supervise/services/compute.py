"""nova-compute: reads its host with psutil and reports it, as Folsom-era nova did.

Every ``report_interval`` seconds (60 when heartbeats are off), starting at once,
`update_available_resource` measures the host (the CPUs this process may use, memory, the
disk of the state directory's file system, the load average), writes it to the host's
compute node through the conductor (``compute_node_update``) and fanout-casts it to every
scheduler (``update_service_capabilities``). A compute has no database access: its record,
heartbeat and compute node go through the conductor. A conductor outage costs one line and
the next run retries; nothing stops.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import psutil

from supervise import cgroup
from supervise.manager import Manager
from supervise.periodic import DEFAULT_INTERVAL, FixedIntervalLoopingCall
from supervise.rpc.client import BrokerUnreachable, MessagingTimeout, RPCClient
from supervise.rpc.dispatcher import Target
from supervise.rpc.io import describe

LOG = logging.getLogger(__name__)

MB = 1 << 20
GB = 1 << 30
SCHEDULER_TOPIC = "scheduler"
SCHEDULER_API_VERSION = "4.0"


@dataclasses.dataclass(frozen=True)
class HostResources:
    """What a host has and uses: vCPUs, memory in MB, disk in GB (the compute_nodes
    columns), and its load average over 1, 5 and 15 minutes. No instances run here, so no
    vCPU is used; memory used is what is not available to new processes."""

    vcpus: int
    memory_mb: int
    local_gb: int
    vcpus_used: int
    memory_mb_used: int
    local_gb_used: int
    load_average: tuple[float, float, float]

    def node_values(self) -> dict[str, int]:
        values = dataclasses.asdict(self)
        del values["load_average"]
        return values

    def capabilities(self) -> dict[str, Any]:
        return {**self.node_values(), "load_average": list(self.load_average)}


def read_host(path: str) -> HostResources:
    """The host as psutil sees it now; disk figures are those of `path`'s file system."""
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(path)
    return HostResources(
        vcpus=cgroup.available_cpus(),
        memory_mb=memory.total // MB,
        local_gb=disk.total // GB,
        vcpus_used=0,
        memory_mb_used=(memory.total - memory.available) // MB,
        local_gb_used=disk.used // GB,
        load_average=tuple(round(load, 2) for load in psutil.getloadavg()),
    )


class ComputeManager(Manager):
    target = Target(version="6.0")

    def __init__(self, host: str | None = None, **kwargs: Any):
        super().__init__(host=host, service_name="compute", **kwargs)
        self.started = time.monotonic()
        self._scheduler: RPCClient | None = None
        self._reporter: FixedIntervalLoopingCall | None = None
        self._failing = False

    def get_host_uptime(self, context: dict) -> float:
        return round(time.monotonic() - self.started, 3)

    def post_start_hook(self) -> None:
        conf = self.service.conf
        interval = conf.report_interval or DEFAULT_INTERVAL
        # a capability cast no scheduler took within an interval is stale: it expires
        self._scheduler = RPCClient(
            self.service.db.messenger,
            Target(topic=SCHEDULER_TOPIC, fanout=True, version=SCHEDULER_API_VERSION),
            timeout=min(interval / 2, conf.rpc_response_timeout),
            exchange=conf.control_exchange,
        )
        self._reporter = FixedIntervalLoopingCall(self.update_available_resource)
        self._reporter.start(interval=interval, initial_delay=0, stop_on_exception=False)

    def cleanup_host(self) -> None:
        if self._reporter is not None:
            self._reporter.stop()
            self._reporter.wait()

    def update_available_resource(self) -> None:
        """Report the host to the conductor and the schedulers. While the conductor does not
        answer, one INFO line (the heartbeat's warning already tells of the outage); an
        error reply, one WARNING; then one line when reports get through again."""
        resources = read_host(self.service.conf.state_dir)
        try:
            self.service.db.compute_node_update(self.host, resources.node_values())
            self._scheduler.cast(
                {},
                "update_service_capabilities",
                service_name="compute",
                host=self.host,
                capabilities=resources.capabilities(),
            )
        except Exception as error:
            if not self._failing:
                self._failing = True
                unreachable = isinstance(error, MessagingTimeout | BrokerUnreachable)
                LOG.log(
                    logging.INFO if unreachable else logging.WARNING,
                    "cannot report the resources of host %s (retrying at the next run): %s",
                    self.host,
                    describe(error),
                )
            return
        if self._failing:
            self._failing = False
            LOG.info("reporting the resources of host %s again", self.host)
        LOG.debug("reported host %s: %s", self.host, resources)
