"""A private RabbitMQ node (scripts/rabbitmq-node) for the tests that stop a broker: the shared
one on localhost:5672 serves every other test, and nothing may stop it.

Outside CI a machine without RabbitMQ skips these tests; under CI=true it fails them.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "rabbitmq-node"
DIST_PORT_OFFSET = 20000  # as the script sets it


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_pair() -> int:
    """A port P such that P (AMQP) and P + 20000 (Erlang distribution) are both free."""
    for _ in range(100):
        port = random.randrange(20000, 45000)
        if _free(port) and _free(port + DIST_PORT_OFFSET):
            return port
    raise RuntimeError("no free pair of ports")


class RabbitNode:
    def __init__(self) -> None:
        self.name = f"supervise-test-{uuid.uuid4().hex[:8]}"
        self.port = _free_port_pair()
        # Not under pytest's 0700 tmp_path: the node runs as user rabbitmq when we are root.
        self.dir = Path(tempfile.mkdtemp(prefix="supervise-rabbit-"))
        self.dir.chmod(0o755)

    def queue_info(self, queue: str, field: str) -> int:
        """A count of `queue` as ``rabbitmqctl list_queues`` names it (``consumers``,
        ``messages_ready``, ``messages_unacknowledged``); 0 if there is no such queue."""
        lines = self._run("ctl", "list_queues", "--no-table-headers", "name", field)
        counts = dict(line.split() for line in lines.splitlines() if line.strip())
        return int(counts.get(queue, 0))

    def _run(self, command: str, *args: str) -> str:
        done = subprocess.run(
            ["bash", str(SCRIPT), command, str(self.dir), self.name, *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"rabbitmq-node {command} failed ({done.returncode}): {done.stderr.strip()}"
            )
        return done.stdout

    def start(self) -> None:
        self._run("start", str(self.port))

    def stop_app(self) -> None:
        self._run("stop-app")

    def start_app(self) -> None:
        self._run("start-app")

    def begin_outage(self) -> None:
        """The broker as clients see it when it is unreachable: every connection closed,
        none accepted; but queues and the messages in them stay (queues are not durable)."""
        self._run("ctl", "suspend_listeners")
        self._run("ctl", "close_all_connections", "an outage made by a test")

    def end_outage(self) -> None:
        self._run("ctl", "resume_listeners")

    def close_connections(self) -> None:
        self._run("ctl", "close_all_connections", "closed by a test")

    def url(self) -> str:
        return f"rabbit://guest:guest@localhost:{self.port}/"

    def add_vhost(self, vhost: str, user: str, password: str) -> None:
        """A virtual host and a user with every right on it: guest may log in from loopback
        only, this user from any address the node listens on (all of them)."""
        self._run("ctl", "add_vhost", vhost)
        self._run("ctl", "add_user", user, password)
        self._run("ctl", "set_permissions", "-p", vhost, user, ".*", ".*", ".*")

    def delete_vhost(self, vhost: str, user: str) -> None:
        self._run("ctl", "delete_user", user)
        self._run("ctl", "delete_vhost", vhost)

    def destroy(self) -> None:
        try:
            self._run("stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def rabbit_node() -> Iterator[RabbitNode]:
    """A RabbitMQ node of this session's own, which a test may stop and start."""
    if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
        missing = pytest.fail if os.environ.get("CI") else pytest.skip
        missing("rabbitmq-server is not installed: bash scripts/start-rabbitmq")
    node = RabbitNode()
    try:
        node.start()
        yield node
    finally:
        node.destroy()
