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


def claim(name: str) -> bool:
    """Whether this process holds the claim file `name`: the first process to ask takes it."""
    # The pid is written first and the claim made by linking it into place, so no reader
    # (another thread of this process included) ever sees the claim file still empty.
    path = _events_dir() / name
    draft = path.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}")
    draft.write_text(str(os.getpid()))
    try:
        os.link(draft, path)
    except FileExistsError:
        return path.read_text() == str(os.getpid())
    finally:
        draft.unlink()
    return True


def take(id: str) -> None:
    """Note that this process took the message with this id: its `handle` may never end."""
    _append("taken", id)


def handle(id: str, ms: float) -> None:
    """Handle a message with a unique id, in `ms`: append it to the ``handled`` file."""
    time.sleep(ms / 1000)
    _append("handled", id)


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


_hoard: list[bytes] = []  # what `allocate` keeps


class TestEndpoint(EchoEndpoint):
    server: RPCServer | None = None  # set by its service: `stall_consumer` needs it

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

    def green_sleep(self, context: dict, ms: float) -> float:
        """Sleep in eventlet, as services written for green threads do (eventlet executor)."""
        import eventlet  # only in a worker that runs green: the others never import it

        eventlet.sleep(ms / 1000)
        return ms

    def record(self, context: dict, id: str, ms: float = 0) -> str:
        handle(id, ms)
        return id

    def hang(self, context: dict, id: str) -> str:
        """In the first worker to handle a call of it, block forever (every later call too);
        in any other, `record` the id."""
        if claim("hanging"):
            threading.Event().wait()
        return self.record(context, id)

    def allocate(self, context: dict, mb: int) -> int:
        """Keep `mb` MiB more (touched, so resident); return the MiB kept."""
        _hoard.append(b"\x01" * (mb << 20))
        return sum(len(chunk) for chunk in _hoard) >> 20

    def stall_consumer(self, context: dict) -> None:
        """In the first worker to handle a cast of it, block the RPC server's I/O thread
        (its consume loop) for good; the handler thread itself returns."""
        if claim("stalled"):
            self.server._io.call_soon(lambda _conn: threading.Event().wait())


class RPCTestService:
    """echo's methods plus some that die, fail and misbehave, for the RPC tests: an RPC
    server only, with no record and no database (the RPC tests are about the messages).

    Behaviour files: ``fail-start`` (start raises), ``stall-consumer`` (once started, its
    consume loop blocks for good)."""

    def __init__(self, context: WorkerContext):
        self.cancel = context.cancel
        conf = context.conf
        endpoint = TestEndpoint()
        self.server = RPCServer(
            conf.transport,
            Target(topic=conf.topic or TOPIC, server=conf.host),
            [endpoint, BaseAPI("echo")],
            ServerOptions.from_config(conf),
        )
        endpoint.server = self.server

    def start(self) -> None:
        if behaviour("fail-start") is not None:
            raise RuntimeError("told to fail by the test")
        with self.cancel.calls(self.server.stop):
            self.server.start()
        if behaviour("stall-consumer") is not None:  # every worker hangs at once
            self.server._io.call_soon(lambda _conn: threading.Event().wait())

    def stop(self) -> None:
        self.server.stop()

    def wait(self) -> None:
        self.server.wait()

    def progress(self) -> Progress:
        return self.server.progress()

    def pause(self) -> None:
        self.server.pause()

    def resume(self) -> None:
        self.server.resume()


try:
    import cotyledon
except ImportError:  # the cotyledon extra is not installed
    cotyledon = None

if cotyledon is not None:

    class RealCotyledonService(CotyledonRecorder, cotyledon.Service):
        """A subclass of cotyledon's own Service class, with cotyledon's default reload()."""

        name = "real-cotyledon"
