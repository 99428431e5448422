"""nova-scheduler: a host manager fed by the computes' capability casts, filters and weighers.

The host manager keeps one `HostState` per compute host, from the computes'
``update_service_capabilities`` fanout casts and, at start and after a reset, from the
conductor's compute nodes; a state older than ``service_down_time`` is dropped.
`select_destinations(spec)` keeps the hosts whose compute service is up and enabled (read
through the conductor at each selection, so that ``supervise service disable`` takes effect
at once) and that have the vCPUs, memory and disk asked for, then takes the one with the most
free memory; for ``count`` > 1 it consumes what it chose in a copy of the host states and
chooses again, which spreads the request across hosts. The scheduler has no database access.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from supervise.db.models import RESOURCES
from supervise.manager import Manager
from supervise.rpc.dispatcher import InvalidArguments, Target
from supervise.servicegroup import utcnow

LOG = logging.getLogger(__name__)

COMPUTE_BINARY = "nova-compute"
MAX_COUNT = 1000  # instances one request may place
MAX_AMOUNT = 1 << 40  # of vCPUs, MB or GB asked for or reported: far above any host
SPEC_FIELDS = ("vcpus", "memory_mb", "disk_gb", "count")


class NoValidHost(Exception):
    """No host fits the request."""


def _amount(name: str, value: Any, minimum: int = 0, maximum: int = MAX_AMOUNT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArguments(f"{name} must be a whole number, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise InvalidArguments(f"{name} must be from {minimum} to {maximum}, got {value}")
    return value


@dataclasses.dataclass(frozen=True)
class RequestSpec:
    vcpus: int
    memory_mb: int
    disk_gb: int
    count: int = 1

    @classmethod
    def from_primitive(cls, spec: Any) -> RequestSpec:
        if not isinstance(spec, Mapping):
            raise InvalidArguments(f"spec must be an object, got {type(spec).__name__}")
        unknown = sorted(str(key)[:40] for key in spec if key not in SPEC_FIELDS)
        if unknown:
            raise InvalidArguments(f"spec has unknown fields: {', '.join(unknown)}")
        missing = [name for name in SPEC_FIELDS[:3] if name not in spec]
        if missing:
            raise InvalidArguments(f"spec lacks {', '.join(missing)}")
        return cls(
            vcpus=_amount("vcpus", spec["vcpus"]),
            memory_mb=_amount("memory_mb", spec["memory_mb"]),
            disk_gb=_amount("disk_gb", spec["disk_gb"]),
            count=_amount("count", spec.get("count", 1), 1, MAX_COUNT),
        )


@dataclasses.dataclass(frozen=True)
class HostState:
    """A compute host's resources as last reported; `updated` is a monotonic time."""

    host: str
    vcpus: int
    memory_mb: int
    local_gb: int
    vcpus_used: int
    memory_mb_used: int
    local_gb_used: int
    updated: float

    @classmethod
    def from_resources(cls, host: Any, resources: Any, updated: float) -> HostState:
        if not isinstance(host, str) or not host:
            raise InvalidArguments(f"host must be a non-empty string, not {type(host).__name__}")
        if not isinstance(resources, Mapping):
            raise InvalidArguments(
                f"capabilities must be an object, got {type(resources).__name__}"
            )
        values = {}
        for name in RESOURCES:
            if name not in resources:
                raise InvalidArguments(f"capabilities of {host[:80]!r} lack {name}")
            values[name] = _amount(name, resources[name])
        return cls(host=host, updated=updated, **values)

    @property
    def free_ram_mb(self) -> int:
        return self.memory_mb - self.memory_mb_used

    def fits(self, spec: RequestSpec) -> bool:
        return (
            self.vcpus - self.vcpus_used >= spec.vcpus
            and self.free_ram_mb >= spec.memory_mb
            and self.local_gb - self.local_gb_used >= spec.disk_gb
        )

    def consumed(self, spec: RequestSpec) -> HostState:
        return dataclasses.replace(
            self,
            vcpus_used=self.vcpus_used + spec.vcpus,
            memory_mb_used=self.memory_mb_used + spec.memory_mb,
            local_gb_used=self.local_gb_used + spec.disk_gb,
        )


class HostManager:
    """Host states by host name, shared by the scheduler's RPC threads."""

    def __init__(self, max_age: float, clock=time.monotonic):
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, HostState] = {}

    def update(self, host: Any, resources: Any) -> None:
        """Record a host's resources, as reported now. Raises InvalidArguments."""
        state = HostState.from_resources(host, resources, self._clock())
        with self._lock:
            self._states[state.host] = state

    def load(self, nodes: list[Any], now: datetime.datetime, replace: bool = False) -> None:
        """Host states from the conductor's compute nodes (their updated_at, naive UTC);
        with `replace`, these become the only states, in one step (a reset: calls being
        served never see an empty host manager)."""
        states = {}
        for node in nodes:
            reported = node.updated_at or node.created_at
            age = (now - reported).total_seconds() if reported else self.max_age + 1
            if age <= self.max_age:
                state = HostState.from_resources(
                    node.host, dataclasses.asdict(node), self._clock() - max(0.0, age)
                )
                states[state.host] = state
        with self._lock:
            if replace:
                self._states = states
                return
            for state in states.values():
                known = self._states.get(state.host)
                if known is None or known.updated <= state.updated:
                    self._states[state.host] = state

    def current(self) -> dict[str, HostState]:
        """The states not older than `max_age`; older ones are dropped."""
        oldest = self._clock() - self.max_age
        with self._lock:
            for host in [h for h, s in self._states.items() if s.updated < oldest]:
                LOG.info("host %s has not reported for %g s: forgetting it", host, self.max_age)
                del self._states[host]
            return dict(self._states)


def select(states: dict[str, HostState], spec: RequestSpec) -> list[str]:
    """Hosts for `spec.count` instances: each time the fitting host with the most free
    memory (ties: by name), its state then reduced by what it was given."""
    chosen = []
    for _ in range(spec.count):
        fitting = [s for s in states.values() if s.fits(spec)]
        if not fitting:
            raise NoValidHost(
                f"no host fits {spec.vcpus} vCPUs, {spec.memory_mb} MB, {spec.disk_gb} GB"
                + (f" for instance {len(chosen) + 1} of {spec.count}" if spec.count > 1 else "")
            )
        best = min(fitting, key=lambda s: (-s.free_ram_mb, s.host))
        states[best.host] = best.consumed(spec)
        chosen.append(best.host)
    return chosen


class SchedulerManager(Manager):
    target = Target(version="4.0")

    def __init__(self, host: str | None = None, **kwargs: Any):
        super().__init__(host=host, service_name="scheduler", **kwargs)
        self.host_manager: HostManager | None = None

    def pre_start_hook(self, service_ref: Any) -> None:
        self.host_manager = HostManager(self.service.servicegroup.service_down_time)
        self.host_manager.load(self.service.db.compute_node_get_all(), utcnow())

    def reset(self) -> None:
        """A mutate reload: the host states are replaced by the conductor's."""
        nodes = self.service.db.compute_node_get_all()
        self.host_manager.load(nodes, utcnow(), replace=True)
        LOG.info("host states reset: %d compute nodes known", len(nodes))

    def update_service_capabilities(
        self, context: dict, service_name: str, host: str, capabilities: dict
    ) -> None:
        """A compute's report (a fanout cast, as Folsom's)."""
        if service_name != "compute":
            raise InvalidArguments(f"capabilities of {str(service_name)[:40]!r} are not used")
        self.host_manager.update(host, capabilities)

    def select_destinations(self, context: dict, spec: dict) -> list[str]:
        """Host names for `spec` ({vcpus, memory_mb, disk_gb, count}); NoValidHost when too
        few hosts fit."""
        request = RequestSpec.from_primitive(spec)
        servicegroup = self.service.servicegroup
        usable = {
            service.host
            for service in self.service.db.service_get_all(binary=COMPUTE_BINARY)
            if not service.disabled and servicegroup.is_up(service)
        }
        states = {h: s for h, s in self.host_manager.current().items() if h in usable}
        return select(states, request)
