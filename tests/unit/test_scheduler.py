"""The scheduler's request specs, host states, filters and weighers (no processes needed)."""

from __future__ import annotations

import datetime

import pytest

from supervise.db.records import ComputeNodeRecord
from supervise.rpc.dispatcher import InvalidArguments
from supervise.services.scheduler import HostManager, NoValidHost, RequestSpec, select

GB_HOST = {"vcpus": 4, "local_gb": 100, "vcpus_used": 0, "local_gb_used": 0}


def resources(memory_mb: int, used: int = 0, **overrides: int) -> dict[str, int]:
    return {**GB_HOST, "memory_mb": memory_mb, "memory_mb_used": used, **overrides}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def manager(**hosts: dict[str, int]) -> tuple[HostManager, Clock]:
    clock = Clock()
    hosts_manager = HostManager(max_age=10, clock=clock)
    for host, values in hosts.items():
        hosts_manager.update(host, values)
    return hosts_manager, clock


def spec(vcpus: int = 1, memory_mb: int = 512, disk_gb: int = 1, count: int = 1) -> RequestSpec:
    return RequestSpec.from_primitive(
        {"vcpus": vcpus, "memory_mb": memory_mb, "disk_gb": disk_gb, "count": count}
    )


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ([1, 2], "spec must be an object"),
        ({"vcpus": 1, "memory_mb": 1}, "spec lacks disk_gb"),
        ({"vcpus": 1, "memory_mb": 1, "disk_gb": 1, "colour": "red"}, "unknown fields: colour"),
        ({"vcpus": "1", "memory_mb": 1, "disk_gb": 1}, "vcpus must be a whole number, got str"),
        ({"vcpus": True, "memory_mb": 1, "disk_gb": 1}, "got bool"),
        ({"vcpus": 1.5, "memory_mb": 1, "disk_gb": 1}, "got float"),
        ({"vcpus": -1, "memory_mb": 1, "disk_gb": 1}, "vcpus must be from 0 to"),
        ({"vcpus": 1, "memory_mb": 10**30, "disk_gb": 1}, "memory_mb must be from 0 to"),
        ({"vcpus": 1, "memory_mb": 1, "disk_gb": 1, "count": 0}, "count must be from 1 to 1000"),
        ({"vcpus": 1, "memory_mb": 1, "disk_gb": 1, "count": 10**6}, "count must be from 1"),
    ],
)
def test_a_bad_spec_is_one_line(given, fragment) -> None:
    with pytest.raises(InvalidArguments, match=fragment) as error:
        RequestSpec.from_primitive(given)
    assert "\n" not in str(error.value)


def test_the_host_with_the_most_free_memory_comes_first() -> None:
    hosts, _ = manager(small=resources(4096), big=resources(16384, used=8192), mid=resources(6000))
    assert select(hosts.current(), spec()) == ["big"]  # 8192 MB free


def test_a_request_for_several_spreads_by_consuming_what_it_chose() -> None:
    hosts, _ = manager(a=resources(4096), b=resources(3584))
    # a (4096 free) -> a has 3072, b 3584 -> b -> b has 2560, a 3072 -> a
    assert select(hosts.current(), spec(memory_mb=1024, count=3)) == ["a", "b", "a"]
    # within one request only: the host manager's own states are unchanged
    assert select(hosts.current(), spec(memory_mb=1024)) == ["a"]


@pytest.mark.parametrize(
    ("request_spec", "fits"),
    [
        (spec(vcpus=4, memory_mb=1024, disk_gb=100), True),
        (spec(vcpus=5), False),
        (spec(memory_mb=1025), False),
        (spec(disk_gb=101), False),
    ],
)
def test_filters_keep_hosts_with_enough_cores_memory_and_disk(request_spec, fits) -> None:
    hosts, _ = manager(only=resources(2048, used=1024))
    if fits:
        assert select(hosts.current(), request_spec) == ["only"]
    else:
        with pytest.raises(NoValidHost):
            select(hosts.current(), request_spec)


def test_no_valid_host_when_the_last_of_several_does_not_fit() -> None:
    hosts, _ = manager(a=resources(2048))
    with pytest.raises(NoValidHost, match="instance 3 of 3"):
        select(hosts.current(), spec(memory_mb=1024, count=3))


def test_a_state_older_than_the_maximum_age_is_dropped() -> None:
    hosts, clock = manager(old=resources(4096))
    clock.now += 5
    hosts.update("new", resources(1024))
    clock.now += 6  # old: 11 s, new: 6 s
    assert sorted(hosts.current()) == ["new"]


def test_bad_capabilities_are_refused() -> None:
    hosts, _ = manager()
    with pytest.raises(InvalidArguments, match="lack memory_mb_used"):
        hosts.update("h", {**GB_HOST, "memory_mb": 1})
    with pytest.raises(InvalidArguments, match="host must be a non-empty string"):
        hosts.update(7, resources(1))
    assert hosts.current() == {}


def node(host: str, memory_mb: int, updated_at: datetime.datetime) -> ComputeNodeRecord:
    return ComputeNodeRecord(
        id=1, host=host, **resources(memory_mb), created_at=updated_at, updated_at=updated_at,
        deleted_at=None, deleted=0,
    )  # fmt: skip


def test_conductor_nodes_keep_their_age_and_a_reset_replaces_every_state() -> None:
    hosts, clock = manager(cast=resources(1024))
    now = datetime.datetime(2024, 1, 1, 12, 0, 0)
    hosts.load([node("fresh", 2048, now - datetime.timedelta(seconds=8)),
                node("stale", 2048, now - datetime.timedelta(seconds=30))], now)  # fmt: skip
    assert sorted(hosts.current()) == ["cast", "fresh"]
    clock.now += 3  # fresh was reported 11 s ago
    assert sorted(hosts.current()) == ["cast"]
    hosts.load([node("fresh", 2048, now)], now, replace=True)
    assert sorted(hosts.current()) == ["fresh"]
