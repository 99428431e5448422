"""Services the functional tests run under a real master.

They record what happens to them in an events file (one line per event, appended
atomically) and take their behaviour from files in the same directory, so a test can
change how the *next* generation behaves while the master runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from supervise.hosted import WorkerContext
from supervise.progress import Progress
from supervise.rpc.dispatcher import BaseAPI, Target
from supervise.rpc.server import RPCServer, ServerOptions
from supervise.services.echo_endpoint import TOPIC, EchoEndpoint

EVENTS_DIR_VARIABLE = "TEST_EVENTS_DIR"


def _events_dir() -> Path:
    return Path(os.environ[EVENTS_DIR_VARIABLE])


def _append(name: str, line: str) -> None:
    fd = os.open(_events_dir() / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def record(event: str, slot: int, generation: int) -> None:
    _append("events", f"{event} {slot} {generation} {os.getpid()} {time.time():.6f}")


def behaviour(name: str) -> str | None:
    path = _events_dir() / name
    return path.read_text().strip() if path.exists() else None


class Recorder:
    """nova-style life cycle: ``Recorder(context)`` then start/stop/wait/reset.

    Behaviour files: ``fail-start`` (start raises), ``start-delay`` (seconds start takes),
    ``start-until-cancelled`` (start waits until the worker cancels it), ``hang-stop`` (stop
    never returns)."""

    def __init__(self, context):
        self.context = context
        self.slot = context.worker_id
        self.generation = context.generation

    def start(self) -> None:
        record("starting", self.slot, self.generation)
        if any(name in os.environ for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")):
            record("inherited-notify-socket", self.slot, self.generation)
        delay = behaviour("start-delay")
        if delay:
            time.sleep(float(delay))
        if behaviour("start-until-cancelled") is not None:
            cancelled = threading.Event()
            with self.context.cancel.calls(cancelled.set):
                cancelled.wait()
        if behaviour("fail-start") is not None:
            record("failed", self.slot, self.generation)
            raise RuntimeError("told to fail by the test")
        record("started", self.slot, self.generation)

    def stop(self) -> None:
        record("stopping", self.slot, self.generation)
        if behaviour("hang-stop") is not None:
            threading.Event().wait()

    def wait(self) -> None:
        record("stopped", self.slot, self.generation)

    def reset(self) -> None:
        record("reset", self.slot, self.generation)


# Starts `sleep` in a session of its own and exits: the sleep is detached, like a daemon.
DAEMONIZE = (
    "import os, subprocess; os.setsid(); "
    "print(subprocess.Popen(['sleep', '1000'], stdout=subprocess.DEVNULL,"
    " stderr=subprocess.DEVNULL).pid)"
)


class ConfigRecorder(Recorder):
    """A Recorder whose reset takes the new configuration: it records ``reset-with:T:SAME``,
    T its graceful_shutdown_timeout, SAME whether the worker context holds it too."""

    def reset(self, conf) -> None:
        same = self.context.conf is conf
        record(f"reset-with:{conf.graceful_shutdown_timeout:g}:{same}", self.slot, self.generation)


class Spawner(Recorder):
    """A Recorder whose start leaves processes behind: a ``sleep`` child (in the worker's
    process group) and a ``sleep`` daemon (detached, in a session of its own). Their pids
    go to the ``descendants`` file, one ``WORKER_PID CHILD DAEMON`` line per worker."""

    def start(self) -> None:
        child = subprocess.Popen(["sleep", "1000"])
        daemon = subprocess.run(
            [sys.executable, "-c", DAEMONIZE], capture_output=True, text=True, check=True
        ).stdout.strip()
        _append("descendants", f"{os.getpid()} {child.pid} {daemon}")
        super().start()


class CotyledonRecorder:
    """A cotyledon-style service: ``cls(worker_id)``, run() in a thread, terminate()."""

    def __init__(self, worker_id: int):
        self.worker_id = worker_id
        self._stopped = threading.Event()
        record("started", worker_id, 0)

    def run(self) -> None:
        record("run", self.worker_id, 0)
        self._stopped.wait()

    def terminate(self) -> None:
        record("stopping", self.worker_id, 0)
        self._stopped.set()


class CotyledonWithoutReload:
    """cotyledon-style without reload(): a mutate reload replaces the worker."""

    def __init__(self, worker_id: int):
        self.worker_id = worker_id
        record("started", worker_id, 0)

    def run(self) -> None:
        pass  # returning from run() must not end the worker

    def terminate(self) -> None:
        record("stopping", self.worker_id, 0)


class TestEndpoint(EchoEndpoint):
    def die(self, context: dict) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def exit(self, context: dict, status: int) -> None:
        os._exit(status)

    def context(self, context: dict) -> dict:
        return context

    def fail(self, context: dict, message: str) -> None:
        raise ValueError(message)

    def unserializable(self, context: dict) -> object:
        return object()

    def _private(self, context: dict) -> str:
        return "never callable"

    def record(self, context: dict, id: str, ms: float = 0) -> str:
        """Handle a message with a unique id: append it to the ``handled`` file."""
        time.sleep(ms / 1000)
        _append("handled", id)
        return id


class RPCTestService:
    """echo's methods plus some that die, fail and misbehave, for the RPC tests: an RPC
    server only, with no record and no database (the RPC tests are about the messages)."""

    def __init__(self, context: WorkerContext):
        self.cancel = context.cancel
        conf = context.conf
        self.server = RPCServer(
            conf.transport,
            Target(topic=conf.topic or TOPIC, server=conf.host),
            [TestEndpoint(), BaseAPI("echo")],
            ServerOptions.from_config(conf),
        )

    def start(self) -> None:
        with self.cancel.calls(self.server.stop):
            self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def wait(self) -> None:
        self.server.wait()

    def progress(self) -> Progress:
        return self.server.progress()


try:
    import cotyledon
except ImportError:  # the cotyledon extra is not installed
    cotyledon = None

if cotyledon is not None:

    class RealCotyledonService(CotyledonRecorder, cotyledon.Service):
        """A subclass of cotyledon's own Service class, with cotyledon's default reload()."""

        name = "real-cotyledon"
