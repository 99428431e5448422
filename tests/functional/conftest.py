"""Fixtures that run a real `supervise` master as a subprocess and watch what it does.

Every master runs in a session of its own; its workers lead process groups of their own
inside it, so cleanup kills every process of that session, whatever state a failing test
left it in.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil
import pytest

from supervise import control_client
from supervise.rpc.client import Messenger, RPCClient
from supervise.rpc.dispatcher import Target
from supervise.rpc.transport_url import local_transport_url
from tests.functional.services import EVENTS_DIR_VARIABLE
from tests.netns import Host

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll `condition` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@dataclass(frozen=True)
class Event:
    kind: str
    slot: int
    generation: int
    pid: int
    time: float


class NotifyListener:
    """A real AF_UNIX datagram socket in the abstract namespace, as systemd's would be, or
    at `path` (an abstract name belongs to one network namespace, a path to none)."""

    def __init__(self, path: Path | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if path is None:
            self.address = f"@supervise-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + self.address[1:])
        else:
            self.address = str(path)
            self.sock.bind(self.address)
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def poll(self) -> list[tuple[float, dict[str, str]]]:
        with contextlib.suppress(BlockingIOError):
            while True:
                data = self.sock.recv(4096).decode()
                fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
                self.messages.append((time.time(), fields))
        return self.messages

    def with_key(self, key: str) -> list[tuple[float, dict[str, str]]]:
        return [(t, m) for t, m in self.poll() if key in m]

    def close(self) -> None:
        self.sock.close()
        if not self.address.startswith("@"):
            Path(self.address).unlink(missing_ok=True)


PYTHON_M_SUPERVISE = (sys.executable, "-m", "supervise")


class Supervisor:
    def __init__(
        self,
        workdir: Path,
        service: str,
        args: list[str],
        env: dict[str, str],
        program: tuple[str, ...] = PYTHON_M_SUPERVISE,
        host: Host | None = None,
    ):
        """`host`: run the master in that host's network namespace (tests/netns.py)."""
        self.workdir = workdir
        self.log_path = workdir / "supervise.log"
        # A runtime directory of its own (the default, /run/supervise for root, is shared),
        # short enough for a socket path whatever pytest's temporary directories are called.
        given = env.get("SUPERVISE_RUNTIME_DIR")
        self._own_runtime_dir = given is None
        self.runtime_dir = Path(given or tempfile.mkdtemp(prefix="supervise-run-"))
        if host is None:
            self.notify = NotifyListener()
        else:
            self.notify = NotifyListener(self.runtime_dir / f"notify-{uuid.uuid4().hex[:8]}")
            program = host.exec(*program)
        # Without pytest's own variable, which some libraries check (eventlet then skips its
        # warning about the locks its monkey-patching could not make green).
        environ = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SUPERVISE_") and k != "PYTEST_CURRENT_TEST"
        }
        environ.update(
            PYTHONPATH=str(ROOT),
            NOTIFY_SOCKET=self.notify.address,
            **{EVENTS_DIR_VARIABLE: str(workdir)},
            **{**env, "SUPERVISE_RUNTIME_DIR": str(self.runtime_dir)},
        )
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [*program, *args, service],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environ,
                cwd=workdir,
                start_new_session=True,
            )
        self.pid = self.process.pid

    def control(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a control verb (``status``, ``scale 8``, ...) against this master's runtime
        directory, as an operator would."""
        return subprocess.run(
            [*PYTHON_M_SUPERVISE, *args, "--runtime-dir", str(self.runtime_dir)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    def status(self) -> dict:
        """The master's status reply, asked on its control socket (the one in its runtime
        directory)."""
        (path,) = self.runtime_dir.glob("*.sock")
        return control_client.ask(str(path), {"command": "status"}, 10)

    def in_flight(self) -> int:
        """Calls in flight in its workers, as of their last heartbeats."""
        return sum(w["in_flight"] or 0 for w in self.status()["workers"])

    def behave(self, name: str, value: str = "") -> None:
        (self.workdir / name).write_text(value)

    def unbehave(self, name: str) -> None:
        (self.workdir / name).unlink()

    def log(self) -> str:
        return self.log_path.read_text()

    def events(self, kind: str | None = None) -> list[Event]:
        path = self.workdir / "events"
        if not path.exists():
            return []
        events = []
        for line in path.read_text().splitlines():
            name, slot, generation, pid, at = line.split()
            events.append(Event(name, int(slot), int(generation), int(pid), float(at)))
        return [e for e in events if kind is None or e.kind == kind]

    def worker_pids(self) -> set[int]:
        """Live worker processes, as the kernel sees them (not as the master says): the
        master's children that lead a process group in its session (the master, a child
        subreaper, also adopts what workers leave behind)."""
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return set()
        alive = set()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                leads_group = os.getpgid(child.pid) == child.pid
                in_session = os.getsid(child.pid) == self.pid
                if leads_group and in_session and child.status() != psutil.STATUS_ZOMBIE:
                    alive.add(child.pid)
        return alive

    def wait_ready(self, count: int, timeout: float = 15.0) -> set[int]:
        """Wait for READY=1 and `count` live workers; return their pids."""
        wait_until(lambda: self.notify.with_key("READY"), timeout, "READY=1")
        return wait_until(
            lambda: len(pids := self.worker_pids()) == count and pids,
            timeout,
            f"{count} live workers",
        )

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = 15.0) -> int:
        return self.process.wait(timeout)

    def group_processes(self) -> list[psutil.Process]:
        """Every live process left in the master's session: the master, its workers (each
        leads a process group of its own) and what they started, unless it left the session."""
        found = []
        for process in psutil.process_iter(["status"]):
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getsid(process.pid) == self.pid and process.status() != "zombie":
                    found.append(process)
        return found

    def cleanup(self) -> None:
        deadline = time.monotonic() + 10
        while (left := self.group_processes()) and time.monotonic() < deadline:
            for process in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
            time.sleep(0.01)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self.notify.close()
        if self._own_runtime_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)


def rabbitmqctl(*args: str) -> str:
    try:
        done = subprocess.run(
            ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60
        )
    except FileNotFoundError:
        pytest.fail("rabbitmqctl not found: run `bash scripts/start-rabbitmq` first")
    if done.returncode != 0:
        pytest.fail(
            f"rabbitmqctl {' '.join(args)} failed (is RabbitMQ running? "
            f"`bash scripts/start-rabbitmq`): {done.stderr.strip()}"
        )
    return done.stdout


@contextlib.contextmanager
def own_vhost(prefix: str) -> Iterator[str]:
    """The URL of a new RabbitMQ virtual host named `prefix`-<random>, deleted afterwards."""
    vhost = f"{prefix}-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"rabbit://guest:guest@localhost:5672/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def rabbit_url() -> Iterator[str]:
    """A RabbitMQ virtual host of this test session's own, deleted at its end."""
    with own_vhost("supervise-test") as url:
        yield url


TRANSPORTS = ("rabbit", "embedded")
# Runs a test once on RabbitMQ and once on the embedded transport (``local://``).
each_transport = pytest.mark.parametrize("transport_url", TRANSPORTS, indirect=True)
# Runs a test on a RabbitMQ node of the session's own, which it may stop (tests/rabbit_node.py).
private_rabbit = pytest.mark.parametrize("transport_url", ["private-rabbit"], indirect=True)


@pytest.fixture
def transport_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The RPC tests' broker: RabbitMQ (the session's vhost) unless a test is marked
    `each_transport`, which runs it also on the embedded transport, in a state directory
    of the test's own, or `private_rabbit`."""
    kind = getattr(request, "param", "rabbit")
    if kind == "rabbit":
        return request.getfixturevalue("rabbit_url")
    if kind == "private-rabbit":
        return request.getfixturevalue("rabbit_node").url()
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    return local_transport_url(str(state_dir))


@pytest.fixture
def topic() -> str:
    return f"test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def messenger(transport_url: str) -> Iterator[Messenger]:
    messenger = Messenger(transport_url)
    yield messenger
    messenger.close()


@pytest.fixture
def supervise(tmp_path: Path) -> Iterator[Callable[..., Supervisor]]:
    """Start a master: ``supervise("tests.functional.services:Recorder", "--workers", "4")``;
    `program` replaces ``python -m supervise`` (the console script, a wrapper)."""
    started: list[Supervisor] = []

    def start(
        service: str,
        *args: str,
        env: dict[str, str] | None = None,
        behaviours: dict[str, str] | None = None,
        program: tuple[str, ...] = PYTHON_M_SUPERVISE,
    ) -> Supervisor:
        workdir = tmp_path / f"run{len(started)}"
        workdir.mkdir()
        for name, value in (behaviours or {}).items():
            (workdir / name).write_text(value)
        supervisor = Supervisor(workdir, service, list(args), env or {}, program)
        started.append(supervisor)
        return supervisor

    yield start
    for supervisor in started:
        supervisor.cleanup()
    for supervisor in started:
        wait_until(lambda s=supervisor: not s.group_processes(), 10, "no process left behind")


RPC_SERVICE = "tests.functional.services:RPCTestService"


def start_rpc_workers(
    supervise, transport_url: str, topic: str, workers: int, *args: str, host: str, env=None
):
    """`workers` RPC test workers on `topic`, ready; returns the Supervisor."""
    sup = supervise(
        RPC_SERVICE,
        "--workers", str(workers),
        "--transport-url", transport_url,
        "--topic", topic,
        "--host", host,
        "--heartbeat-interval", "0.5",
        *args,
        env=env,
    )  # fmt: skip
    sup.wait_ready(workers)
    return sup


@pytest.fixture
def serve(supervise, transport_url, topic):
    """Start `workers` RPC test workers on the test's topic; returns the Supervisor."""

    def start(workers: int = 2, *args: str, host: str = "hosta"):
        return start_rpc_workers(supervise, transport_url, topic, workers, *args, host=host)

    return start


@pytest.fixture
def client(messenger, topic):
    return RPCClient(messenger, Target(topic=topic), timeout=10)
