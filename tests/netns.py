"""Hosts in network namespaces for the tests of several hosts (iproute2's `ip netns`).

`Network(["hosta", "hostb"])` makes one namespace per host, each with one veth pair: its
end in the namespace (``eth0``) has the host's address; the other end is on a bridge in the
root namespace, whose own address (`gateway`) is where the servers the hosts share listen
(PostgreSQL, RabbitMQ). The subnet is a /24 of 10.0.0.0/8 that no route of the machine
overlaps; every name carries an id of its own run, and `destroy()` removes what `create()`
made, whatever state a failing test left. ``Host.exec(*command)`` is the command run in the
host's namespace (``ip netns exec NS ...``, which execs it: the process keeps its pid).

Use from a module with ``pytest_plugins = ["tests.netns"]`` and ask for `netns_hosts`
(module-scoped: one set of namespaces per module). Where namespaces cannot be made (no
`ip`, no CAP_NET_ADMIN) the tests are skipped with the reason; under CI=true they fail.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest

HOST_NAMES = ("hosta", "hostb")


class NetnsError(Exception):
    """An `ip` command failed; the message is its command and what it printed."""


def ip(*args: str) -> str:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError as error:
        raise NetnsError("ip (iproute2) is not installed: apt-get install iproute2") from error
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Host:
    name: str  # the name it registers under: supervise --host
    namespace: str
    address: str

    def exec(self, *command: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.namespace, *command)


def _routed_networks() -> list[ipaddress.IPv4Network]:
    routes = json.loads(ip("-j", "-4", "route", "show", "table", "all") or "[]")
    networks = []
    for route in routes:
        destination = route.get("dst", "")
        if destination in ("default", "") or route.get("type") in ("broadcast", "local"):
            continue
        networks.append(ipaddress.ip_network(destination, strict=False))
    return networks


def _free_subnet() -> ipaddress.IPv4Network:
    taken = _routed_networks()
    for _ in range(100):
        second, third = random.randrange(200, 255), random.randrange(256)
        subnet = ipaddress.ip_network(f"10.{second}.{third}.0/24")
        if not any(subnet.overlaps(network) for network in taken):
            return subnet
    raise NetnsError("no free /24 in 10.200.0.0/13")


class Network:
    def __init__(self, host_names: Sequence[str] = HOST_NAMES):
        self.id = uuid.uuid4().hex[:6]
        self.bridge = f"svb{self.id}"
        self.subnet = _free_subnet()
        addresses = self.subnet.hosts()
        self.gateway = str(next(addresses))
        self.hosts = [
            Host(name, f"supervise-{self.id}-{name}", str(next(addresses))) for name in host_names
        ]

    def _veth(self, index: int) -> str:
        return f"sv{self.id}{index}"  # interface names have 15 bytes at most

    def create(self) -> None:
        prefix = self.subnet.prefixlen
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/{prefix}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for index, host in enumerate(self.hosts):
            ip("netns", "add", host.namespace)
            veth = self._veth(index)
            ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", host.namespace)
            ip("link", "set", veth, "master", self.bridge, "up")
            ip("-n", host.namespace, "addr", "add", f"{host.address}/{prefix}", "dev", "eth0")
            ip("-n", host.namespace, "link", "set", "eth0", "up")
            ip("-n", host.namespace, "link", "set", "lo", "up")

    def destroy(self) -> None:
        """Remove every link and namespace of this run that exists; the first error, if any,
        after trying them all."""
        errors = []
        existing = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
        # A veth pair goes with its root end at once (with its namespace, only later).
        links = {link["ifname"] for link in json.loads(ip("-j", "link", "show") or "[]")}
        steps = [("link", "del", self._veth(i)) for i in range(len(self.hosts))]
        steps = [step for step in steps if step[2] in links]
        steps += [("netns", "del", h.namespace) for h in self.hosts if h.namespace in existing]
        if self.bridge in links:
            steps.append(("link", "del", self.bridge))
        for step in steps:
            try:
                ip(*step)
            except NetnsError as error:
                errors.append(error)
        if errors:
            raise errors[0]


@pytest.fixture(scope="module")
def netns_hosts() -> Iterator[Network]:
    """Two hosts in namespaces of their own (HOST_NAMES), on one bridge with the root
    namespace, removed at the end of the module."""
    missing = pytest.fail if os.environ.get("CI") else pytest.skip
    if shutil.which("ip") is None:
        missing("ip (iproute2) is not installed: apt-get install iproute2")
    network = Network()
    try:
        try:
            network.create()
        except NetnsError as error:
            missing(f"cannot make network namespaces (CAP_NET_ADMIN is needed): {error}")
        yield network
    finally:
        network.destroy()
