"""RPC figures: supervise's echo service against oslo.service + oslo.messaging and raw kombu.

    python bench/rpc.py [--seconds 5] [--workers 4] [--skip-peers] [--repeat 3]

In a RabbitMQ vhost of its own (made with ``rabbitmqctl`` and deleted at the end), it runs,
one after the other, three servers of N worker processes on topics ``bench_rpc_<server>``:

- ``raw-kombu``: ``bench/peers/rpc_raw_kombu.py``, N bare kombu consumers (the ceiling);
- ``oslo``: ``bench/peers/rpc_oslo_service.py``, oslo.service's ProcessLauncher with N workers
  each running an oslo.messaging RPC server (executor threading);
- ``supervise``: ``python -m supervise --workers N --transport-url URL --topic T echo``.

The same client drives all three: supervise's ``RPCClient``, in client processes that this
script starts (``--client SPEC``, below) so that high concurrency is not held back by one
process's GIL. For each server it measures ``echo`` calls at concurrency 1 and 16, ``sleep``
(20 ms) calls at concurrency 32 and casts at concurrency 4, counted as the servers process
them: from the start until the queue is empty and calls sent behind the casts are answered.

The time spent inside a server at concurrency 1 cannot be read without changing supervise,
so it is estimated: a server's p50 minus the p50 of the same client against
``bench/peers/rpc_amqp_reflector.py``, a py-amqp process that answers at once (the transport
and the client cost, without a server). The raw py-amqp round trip through that reflector is
printed too.

With ``--repeat N`` the whole sequence (baseline, then each server) runs N times, so the
servers take turns and a noisy moment of the machine falls on all of them; each figure and
each ratio (computed within a round) is then printed as the median and the range of the N.

Every process it starts is in a session of its own and is killed with its whole group when
its measurement ends, whatever happened (Ctrl-C included); every wait has a deadline.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import math
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import amqp
import psutil
from sessions import cpu_of_session, kill_session

BENCH_DIR = Path(__file__).resolve().parent
PEERS_DIR = BENCH_DIR / "peers"

DEFAULT_URL = "rabbit://guest:guest@localhost:5672/"
EXCHANGE = "openstack"
PAYLOAD = "x" * 100
SLEEP_MS = 20
CALL_TIMEOUT = 30.0  # of one call; a call that takes longer counts as an error
START_TIMEOUT = 60.0  # for a server's consumers, or a client's warm-up
STOP_GRACE = 10.0  # between SIGTERM and SIGKILL
DRAIN_TIMEOUT = 120.0  # for the servers to work off the casts
WARMUP_CALLS = 20
NOISY_OTHER_CPU = 25  # % of one core taken by processes outside the bench
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

Spec = dict[str, Any]


class BenchError(Exception):
    """A wait ran out or a process misbehaved; the message says which."""


def progress(text: str) -> None:
    print(f"[rpc bench] {text}", file=sys.stderr, flush=True)


# ----- what the clients do -------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    label: str
    mode: str  # "call", "cast", or "amqp" (raw py-amqp calls, no supervise client)
    method: str
    args: dict
    concurrency: int


ECHO_1 = Load("echo c=1", "call", "echo", {"payload": PAYLOAD}, 1)
ECHO_16 = Load("echo c=16", "call", "echo", {"payload": PAYLOAD}, 16)
SLEEP_32 = Load(f"sleep {SLEEP_MS}ms c=32", "call", "sleep", {"ms": SLEEP_MS}, 32)
CAST_4 = Load("cast c=4", "cast", "echo", {"payload": PAYLOAD}, 4)
SERVER_LOADS = [ECHO_1, ECHO_16, SLEEP_32, CAST_4]
AMQP_1 = Load("py-amqp c=1", "amqp", "echo", {"payload": PAYLOAD}, 1)


@dataclass
class Outcome:
    rate: float  # calls/s answered, or casts/s processed
    latencies: list[float]  # seconds, sorted (calls only)
    errors: int
    first_error: str | None
    client_cpu: float  # % of one core, all client processes
    busiest_client: float  # % of one core, the busiest client process
    server_cpu: float  # % of one core, every process of the server
    broker_cpu: float
    machine_cpu: float  # % of one core, everything on the machine
    sent: int  # calls answered or casts sent, by the clients
    drain: float | None = None  # casts: seconds from the clients' end until worked off

    def percentile(self, p: float) -> float | None:
        """Nearest rank."""
        if not self.latencies:
            return None
        return self.latencies[max(0, math.ceil(p / 100 * len(self.latencies)) - 1)]

    @property
    def other_cpu(self) -> float:
        """What the rest of the machine took meanwhile (the noise of a shared machine)."""
        return self.machine_cpu - self.client_cpu - self.server_cpu - self.broker_cpu

    def server_cpu_per_message(self) -> float | None:
        """Seconds of server CPU per call answered or cast processed."""
        return self.server_cpu / 100 / self.rate if self.rate else None

    def client_cpu_per_message(self) -> float | None:
        return self.client_cpu / 100 / self.rate if self.rate else None


# ----- a py-amqp connection: queue states, and calls without supervise's client -------------


def amqp_connect(transport_url: str) -> amqp.Connection:
    parts = urlsplit(transport_url)
    connection = amqp.Connection(
        host=f"{parts.hostname}:{parts.port or 5672}",
        userid=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        virtual_host=unquote(parts.path[1:]) or "/",
        connect_timeout=10,
        read_timeout=CALL_TIMEOUT,  # a deadline for every synchronous AMQP method
        write_timeout=CALL_TIMEOUT,
    )
    connection.connect()
    return connection


class AmqpProbe:
    """One py-amqp connection, one thread: reads queue states (passive declare) and makes oslo
    calls through a ``reply_<uuid>`` queue of its own."""

    def __init__(self, transport_url: str):
        self.connection = amqp_connect(transport_url)
        self.channel = self.connection.channel()
        self._state_channel = self.connection.channel()
        self.reply_queue = f"reply_{uuid.uuid4().hex}"
        self.channel.queue_declare(
            self.reply_queue, durable=False, auto_delete=True, arguments={"x-expires": 600_000}
        )
        self.channel.basic_consume(self.reply_queue, callback=self._on_reply, no_ack=True)
        self._answered: set[str] = set()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.close()

    def queue_state(self, queue: str) -> tuple[int, int] | None:
        """(ready messages, consumers) of a queue, or None if it does not exist yet."""
        try:
            _, messages, consumers = self._state_channel.queue_declare(queue, passive=True)
        except amqp.exceptions.NotFound:
            self._state_channel = self.connection.channel()  # the broker closed that one
            return None
        return messages, consumers

    def send_call(self, topic: str, method: str, args: dict) -> str:
        msg_id = uuid.uuid4().hex
        inner = {
            "method": method,
            "args": args,
            "_unique_id": uuid.uuid4().hex,
            "_msg_id": msg_id,
            "_reply_q": self.reply_queue,
            "_timeout": CALL_TIMEOUT,
        }
        body = json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(inner)})
        message = amqp.Message(
            body,
            content_type="application/json",
            content_encoding="utf-8",
            expiration=str(int(CALL_TIMEOUT * 1000)),
        )
        self.channel.basic_publish(message, exchange=EXCHANGE, routing_key=topic)
        return msg_id

    def wait_replies(self, msg_ids: set[str], deadline: float) -> None:
        while not msg_ids <= self._answered:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"{len(msg_ids - self._answered)} py-amqp calls not answered")
            with contextlib.suppress(socket.timeout):
                self.connection.drain_events(timeout=remaining)
        self._answered -= msg_ids

    def call(self, topic: str, method: str, args: dict) -> None:
        msg_id = self.send_call(topic, method, args)
        self.wait_replies({msg_id}, time.monotonic() + CALL_TIMEOUT)

    def _on_reply(self, message: amqp.Message) -> None:
        inner = json.loads(json.loads(message.body)["oslo.message"])
        self._answered.add(inner["_msg_id"])


# ----- the client process (``bench/rpc.py --client SPEC``) -----------------------------------


def client_main(spec: Spec) -> int:
    """Warm up, say "ready", wait for "go" on stdin, load the server for spec["seconds"],
    print one JSON line of results."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    do_one, warm_up, close = _client_actions(spec)
    try:
        for _ in range(WARMUP_CALLS):
            warm_up()
        print("ready", flush=True)
        readable, _, _ = select.select([sys.stdin], [], [], START_TIMEOUT)
        if not readable or sys.stdin.readline().strip() != "go":
            print("client: no 'go' from the bench", file=sys.stderr)
            return 1
        print(json.dumps(_run_threads(do_one, spec["threads"], spec["seconds"])), flush=True)
        return 0
    finally:
        close()


def _client_actions(spec: Spec) -> tuple[Callable[[], Any], Callable[[], Any], Callable[[], Any]]:
    """(one unit of load, one warm-up call, close) for the spec's mode."""
    topic, method, args = spec["topic"], spec["method"], spec["args"]
    if spec["mode"] == "amqp":
        if spec["threads"] != 1:
            raise ValueError("a py-amqp connection serves one thread")
        probe = AmqpProbe(spec["url"])
        call = functools.partial(probe.call, topic, method, args)
        return call, call, probe.close
    from supervise.rpc.client import Messenger, RPCClient
    from supervise.rpc.dispatcher import Target

    messenger = Messenger(spec["url"])
    client = RPCClient(messenger, Target(topic=topic), timeout=CALL_TIMEOUT, exchange=EXCHANGE)
    warm_up = functools.partial(client.call, {}, "echo", payload=PAYLOAD)
    if spec["mode"] == "cast":
        return functools.partial(client.cast, {}, method, **args), warm_up, messenger.close
    return functools.partial(client.call, {}, method, **args), warm_up, messenger.close


def _run_threads(do_one: Callable[[], Any], threads: int, seconds: float) -> dict:
    latencies: list[float] = []  # list.append is atomic under the GIL
    errors: list[str] = []
    cpu_before, started = _process_cpu(), time.monotonic()
    end = started + seconds

    def loop() -> None:
        while (began := time.monotonic()) < end:
            try:
                do_one()
            except Exception as error:
                errors.append(f"{type(error).__name__}: {error}")
                continue
            latencies.append(time.monotonic() - began)

    workers = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(max(0.0, end + CALL_TIMEOUT + 5 - time.monotonic()))
    wall = time.monotonic() - started
    stuck = sum(worker.is_alive() for worker in workers)
    if stuck:
        errors.append(f"{stuck} client threads still busy {CALL_TIMEOUT:g} s after the end")
    return {
        "count": len(latencies),
        "wall": wall,
        "cpu": _process_cpu() - cpu_before,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "latencies_us": [round(latency * 1e6) for latency in latencies],
    }


def _process_cpu() -> float:
    times = os.times()
    return times.user + times.system


# ----- processes the bench starts ------------------------------------------------------------


def _kill_group(popen: subprocess.Popen, grace: float) -> None:
    """SIGTERM the leader, give it `grace` seconds to stop its own children, then SIGKILL the
    whole session (workers a dead leader orphaned included) and reap the leader."""
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(grace)
    kill_session(popen.pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(5)
    _reap_orphans()


def _reap_orphans() -> None:
    """Reap processes re-parented to this script (it is their subreaper)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _broker_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name"]):
        if process.info["name"] in ("beam.smp", "beam"):
            found.append(process)
    return found


def _cpu_of(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def _machine_busy() -> float:
    """Busy CPU seconds of the machine so far, all cores."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class Server:
    """A server under test: a subprocess in a session of its own, its output in a log file."""

    def __init__(self, name: str, argv: list[str], topic: str, workers: int, logdir: Path):
        self.name = name
        self.topic = topic
        self.workers = workers
        self.log_path = logdir / f"server-{name}.log"
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_consuming(self, probe: AmqpProbe, timeout: float = START_TIMEOUT) -> float:
        """Wait until all workers consume the topic's queue; returns the seconds it took."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if self.popen.poll() is not None:
                raise BenchError(f"{self.name} exited with status {self.popen.returncode}")
            state = probe.queue_state(self.topic)
            if state is not None and state[1] >= self.workers:
                return time.monotonic() - started
            if time.monotonic() >= deadline:
                consumers = state[1] if state else 0
                raise BenchError(
                    f"{self.name}: {consumers} of {self.workers} consumers after {timeout:g} s"
                )
            time.sleep(0.05)

    def cpu(self) -> float:
        return cpu_of_session(self.popen.pid)

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        _kill_group(self.popen, STOP_GRACE)


class ClientProcess:
    """One client process: stdin for "go", stdout for "ready" and the results."""

    def __init__(self, spec: Spec, log_path: Path):
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--client", json.dumps(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                bufsize=0,
            )
        self.log_path = log_path
        self._buffer = b""

    def read_line(self, deadline: float, what: str) -> str:
        fd = self.popen.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(
                    f"client {self.popen.pid}: timed out waiting for {what} (log {self.log_path})"
                )
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    status = self.popen.wait(5)
                    raise BenchError(
                        f"client exited with status {status} before {what} (log {self.log_path})"
                    )
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def go(self) -> None:
        self.popen.stdin.write(b"go\n")

    def stop(self) -> None:
        _kill_group(self.popen, 5.0)


# ----- one load against one server ---------------------------------------------------------


class Bench:
    def __init__(self, url: str, seconds: float, client_processes: int, logdir: Path):
        self.url = url
        self.seconds = seconds
        self.client_processes = client_processes
        self.logdir = logdir
        self.probe = AmqpProbe(url)
        self.broker = _broker_processes()

    def close(self) -> None:
        self.probe.close()

    def specs(self, load: Load, topic: str) -> list[Spec]:
        """One spec per client process, the load's concurrency split among them."""
        count = 1 if load.mode == "amqp" else min(load.concurrency, self.client_processes)
        return [
            {
                "url": self.url,
                "topic": topic,
                "mode": load.mode,
                "method": load.method,
                "args": load.args,
                "threads": load.concurrency // count + (i < load.concurrency % count),
                "seconds": self.seconds,
            }
            for i in range(count)
        ]

    def run(self, load: Load, topic: str, server: Server | None) -> Outcome:
        log_path = self.logdir / f"clients-{topic}.log"
        clients: list[ClientProcess] = []
        try:
            for spec in self.specs(load, topic):
                clients.append(ClientProcess(spec, log_path))
            deadline = time.monotonic() + START_TIMEOUT
            for client in clients:
                if client.read_line(deadline, "its warm-up") != "ready":
                    raise BenchError("a client said something else than 'ready'")
            before = self._sample(server)
            began = time.monotonic()
            for client in clients:
                client.go()
            deadline = began + self.seconds + CALL_TIMEOUT + 30
            results = [json.loads(client.read_line(deadline, "results")) for client in clients]
            drain = None
            if load.mode == "cast":
                clients_done = time.monotonic()
                self._wait_processed(topic, server)
                done = time.monotonic()
                drain = done - clients_done
                rate = sum(result["count"] for result in results) / (done - began)
            else:
                rate = sum(result["count"] / result["wall"] for result in results)
            after = self._sample(server)
        finally:
            for client in clients:
                client.stop()
        return self._outcome(load, rate, results, before, after, drain)

    def _wait_processed(self, topic: str, server: Server | None) -> None:
        """Until the casts are worked off: the queue has no ready message left, then calls
        sent behind the casts (a queue is FIFO), two per worker so that the broker's
        round-robin hands some to every worker, are all answered. The error is at most what
        the workers had taken but not yet run (prefetch, handler pools): a small tail."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while True:
            state = self.probe.queue_state(topic)
            if state is not None and state[0] == 0:
                break
            if time.monotonic() >= deadline:
                raise BenchError(f"queue {topic} not drained {DRAIN_TIMEOUT:g} s after the casts")
            time.sleep(0.005)
        behind = 2 * (server.workers if server else 1)
        msg_ids = {self.probe.send_call(topic, "echo", {"payload": ""}) for _ in range(behind)}
        self.probe.wait_replies(msg_ids, deadline)

    def _sample(self, server: Server | None) -> dict[str, float]:
        return {
            "at": time.monotonic(),
            "server": server.cpu() if server else 0.0,
            "broker": _cpu_of(self.broker),
            "machine": _machine_busy(),
        }

    @staticmethod
    def _outcome(
        load: Load,
        rate: float,
        results: list[dict],
        before: dict,
        after: dict,
        drain: float | None,
    ) -> Outcome:
        wall = after["at"] - before["at"]
        latencies = sorted(us / 1e6 for result in results for us in result["latencies_us"])
        errors = [result["first_error"] for result in results if result["first_error"]]
        return Outcome(
            rate=rate,
            latencies=[] if load.mode == "cast" else latencies,
            errors=sum(result["errors"] for result in results),
            first_error=errors[0] if errors else None,
            client_cpu=100 * sum(result["cpu"] for result in results) / wall,
            busiest_client=100 * max(result["cpu"] / result["wall"] for result in results),
            server_cpu=100 * (after["server"] - before["server"]) / wall,
            broker_cpu=100 * (after["broker"] - before["broker"]) / wall,
            machine_cpu=100 * (after["machine"] - before["machine"]) / wall,
            sent=sum(result["count"] for result in results),
            drain=drain,
        )


# ----- the servers -------------------------------------------------------------------------


def server_commands(
    url: str, workers: int, oslo_backend: str, state_dir: Path
) -> dict[str, Callable[[str], list]]:
    """How each server starts; supervise's echo keeps its services record in `state_dir`."""
    python = sys.executable
    return {
        "raw-kombu": lambda topic: [
            python,
            str(PEERS_DIR / "rpc_raw_kombu.py"),
            *("--transport-url", url, "--topic", topic, "--workers", str(workers)),
        ],
        "oslo": lambda topic: [
            python,
            str(PEERS_DIR / "rpc_oslo_service.py"),
            *("--transport-url", url, "--topic", topic, "--workers", str(workers)),
            *("--backend", oslo_backend),
        ],
        "supervise": lambda topic: [
            python,
            "-m",
            "supervise",
            *("--workers", str(workers), "--transport-url", url, "--topic", topic),
            *("--state-dir", str(state_dir), "--runtime-dir", str(state_dir / f"run-{topic}")),
            *("--log-level", "WARNING", "echo"),
        ],
    }


def topic_of(name: str) -> str:
    return f"bench_rpc_{name.replace('-', '_')}"


@contextlib.contextmanager
def running(name: str, argv: list[str], workers: int, bench: Bench) -> Iterator[Server]:
    server = Server(name, argv, topic_of(name), workers, bench.logdir)
    try:
        took = server.wait_consuming(bench.probe)
        progress(f"{name}: {workers} consumers after {took:.1f} s")
        yield server
    except BenchError as error:
        raise BenchError(f"{error}\n  log {server.log_path}:\n{server.log_tail()}") from None
    finally:
        server.stop()


def measure_baseline(bench: Bench) -> dict[str, Outcome]:
    """py-amqp and supervise's client, each at concurrency 1, against the reflector."""
    argv = [sys.executable, str(PEERS_DIR / "rpc_amqp_reflector.py")]
    argv += ["--transport-url", bench.url, "--topic", topic_of("reflector")]
    with running("reflector", argv, 1, bench):
        return {
            "amqp": bench.run(AMQP_1, topic_of("reflector"), None),
            "client": bench.run(ECHO_1, topic_of("reflector"), None),
        }


def measure_server(bench: Bench, name: str, argv: list[str], workers: int) -> dict[str, Outcome]:
    outcomes = {}
    with running(name, argv, workers, bench) as server:
        for load in SERVER_LOADS:
            outcome = bench.run(load, server.topic, server)
            progress(f"{name}: {load.label}: {outcome.rate:.0f}/s, {outcome.errors} errors")
            outcomes[load.label] = outcome
            if server.popen.poll() is not None:
                raise BenchError(f"{name} exited with status {server.popen.returncode}")
    return outcomes


# ----- the report ----------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def _us(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:.0f}"


def _count(n: float | None) -> str:
    return "-" if n is None else f"{n:.0f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


@dataclass(frozen=True)
class Row:
    label: str
    value: Callable[[dict[str, Outcome]], float | None]  # from one server's outcomes
    show: Callable[[float | None], str]
    targets: tuple[str, ...] = ()  # "oslo2" (>= 2x oslo), "raw0.8" (>= 0.8x raw), "under1ms"


def rows(baseline: dict[str, Outcome]) -> list[Row]:
    client_p50 = baseline["client"].percentile(50)

    def rate(load: Load) -> Callable[[dict[str, Outcome]], float | None]:
        return lambda outcomes: outcomes[load.label].rate

    def pct(load: Load, p: float) -> Callable[[dict[str, Outcome]], float | None]:
        return lambda outcomes: outcomes[load.label].percentile(p)

    def cpu_per_message(load: Load) -> Callable[[dict[str, Outcome]], float | None]:
        return lambda outcomes: outcomes[load.label].server_cpu_per_message()

    def inside(outcomes: dict[str, Outcome]) -> float | None:
        p50 = outcomes[ECHO_1.label].percentile(50)
        return None if p50 is None or client_p50 is None else p50 - client_p50

    ideal = SLEEP_32.concurrency / (SLEEP_MS / 1000)
    return [
        Row("echo c=1   calls/s", rate(ECHO_1), _count, ("raw0.8",)),
        Row("echo c=1   p50 ms", pct(ECHO_1, 50), _ms),
        Row("echo c=1   p99 ms", pct(ECHO_1, 99), _ms),
        Row("echo c=1   server-side p50 ms (est.)", inside, _ms, ("under1ms",)),
        Row("echo c=16  calls/s", rate(ECHO_16), _count, ("oslo2", "raw0.8")),
        Row("echo c=16  p50 ms", pct(ECHO_16, 50), _ms),
        Row("echo c=16  p99 ms", pct(ECHO_16, 99), _ms),
        Row("echo c=16  server CPU us/call", cpu_per_message(ECHO_16), _us),
        Row(f"sleep c=32 calls/s (ideal {ideal:.0f})", rate(SLEEP_32), _count, ("raw0.8",)),
        Row("sleep c=32 p50 ms", pct(SLEEP_32, 50), _ms),
        Row("cast c=4   casts/s processed", rate(CAST_4), _count, ("raw0.8",)),
        Row("cast c=4   server CPU us/cast", cpu_per_message(CAST_4), _us),
    ]


def _target_text(row: Row, values: dict[str, float | None]) -> str:
    sup = values.get("supervise")
    parts = []
    for target in row.targets:
        if target == "oslo2":
            ratio = _ratio(sup, values.get("oslo"))
            parts.append(">=2x oslo " + ("n/a" if ratio is None else _verdict(ratio >= 2)))
        elif target == "raw0.8":
            ratio = _ratio(sup, values.get("raw-kombu"))
            parts.append(">=0.8x raw " + ("n/a" if ratio is None else _verdict(ratio >= 0.8)))
        elif target == "under1ms":
            parts.append("<1 ms " + ("n/a" if sup is None else _verdict(sup < 0.001)))
    return ", ".join(parts)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _spread(values: list[float | None], show: Callable[[float | None], str]) -> str:
    """Median [min-max] of one figure over the rounds that measured it."""
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    if len(known) == 1:
        return show(known[0])
    return f"{show(_median(known))} [{show(min(known))}-{show(max(known))}]"


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


Round = tuple[dict[str, dict[str, Outcome]], dict[str, Outcome]]


def report_rounds(rounds: list[Round]) -> None:
    """The median and range of every figure and ratio over the rounds, one row each."""
    names = [name for name in ("raw-kombu", "oslo", "supervise") if name in rounds[0][0]]
    print()
    print(
        f"RPC, {len(rounds)} rounds: median [min-max] of each figure and of each ratio "
        "(computed within a round)"
    )
    for row in rows(rounds[0][1]):
        per_round = []
        for results, baseline in rounds:
            this_row = next(r for r in rows(baseline) if r.label == row.label)
            per_round.append({name: this_row.value(results[name]) for name in names})
        print(f"{row.label}")
        for name in names:
            print(f"    {name:14}{_spread([values[name] for values in per_round], row.show)}")
        for peer in ("oslo", "raw-kombu"):
            if peer in names and "supervise" in names:
                ratios = [_ratio(v["supervise"], v[peer]) for v in per_round]
                print(f"    {'sup/' + peer:14}{_spread(ratios, _times)}")
    noisy = sum(
        1
        for results, _ in rounds
        for outcomes in results.values()
        for o in outcomes.values()
        if o.other_cpu > NOISY_OTHER_CPU
    )
    print(f"measurements marked noisy (other CPU > {NOISY_OTHER_CPU}%): {noisy}")


def report(
    results: dict[str, dict[str, Outcome]], baseline: dict[str, Outcome], args: argparse.Namespace
) -> None:
    names = [name for name in ("raw-kombu", "oslo", "supervise") if name in results]
    print()
    print(
        f"RPC: {args.workers} workers per server, {args.seconds:g} s per load, "
        f"{os.cpu_count()} CPUs, echo payload {len(PAYLOAD)} chars, "
        f"oslo.service backend {args.oslo_backend}"
    )
    header = f"{'':38}" + "".join(f"{name:>11}" for name in names)
    header += f"{'sup/oslo':>10}{'sup/raw':>9}  target (supervise)"
    print(header)
    print("-" * len(header))
    for row in rows(baseline):
        values = {name: row.value(results[name]) for name in names}
        line = f"{row.label:38}" + "".join(f"{row.show(values[name]):>11}" for name in names)
        for peer, width in (("oslo", 10), ("raw-kombu", 9)):
            ratio = _ratio(values.get("supervise"), values.get(peer))
            line += f"{'-' if ratio is None else f'{ratio:.2f}x':>{width}}"
        print(f"{line}  {_target_text(row, values)}".rstrip())

    print("Ratios are supervise / peer: above 1 is better for calls/s, below 1 for ms and CPU.")
    amqp_rt, client_rt = baseline["amqp"], baseline["client"]
    print()
    print("Against the py-amqp reflector (answers at once), concurrency 1:")
    for what, outcome in (("raw py-amqp client", amqp_rt), ("supervise RPCClient", client_rt)):
        print(
            f"  {what:20} p50 {_ms(outcome.percentile(50))} ms, p99 "
            f"{_ms(outcome.percentile(99))} ms, {outcome.rate:.0f} calls/s, "
            f"client CPU {_us(outcome.client_cpu_per_message())} us/call"
        )
    print("  server-side p50 (est.) = a server's echo c=1 p50 minus the RPCClient p50 above.")

    print()
    print(f"CPU while loaded, % of one core ({os.cpu_count()} cores: 100% each):")
    print(
        f"{'':18}{'server':>10}{'clients':>9}{'busiest':>9}{'servers':>9}{'broker':>8}"
        f"{'other':>7}{'machine':>9}{'errors':>8}"
    )
    for load in SERVER_LOADS:
        for name in names:
            o = results[name][load.label]
            print(
                f"{load.label:18}{name:>10}{o.client_cpu:>8.0f}%{o.busiest_client:>8.0f}%"
                f"{o.server_cpu:>8.0f}%{o.broker_cpu:>7.0f}%{o.other_cpu:>6.0f}%"
                f"{o.machine_cpu:>8.0f}%{o.errors:>8}"
                + ("  noisy" if o.other_cpu > NOISY_OTHER_CPU else "")
            )
    print(
        "'busiest' is the busiest client process (one GIL: near 100% would make the client "
        f"the bottleneck); 'other' is everything else on the machine: over {NOISY_OTHER_CPU}% "
        "('noisy') something else took CPU from that measurement."
    )
    for name in names:
        cast = results[name][CAST_4.label]
        print(
            f"{name} casts: {cast.sent} sent in {args.seconds:g} s "
            f"({cast.sent / args.seconds:.0f}/s), worked off {cast.drain:.2f} s after the "
            "clients stopped"
        )
    failed = [("baseline", o) for o in baseline.values()]
    failed += [(name, o) for name in names for o in results[name].values()]
    for source, outcome in failed:
        if outcome.first_error:
            print(f"first error ({source}): {outcome.first_error}")


# ----- the vhost -----------------------------------------------------------------------------


def rabbitmqctl(*args: str) -> None:
    try:
        done = subprocess.run(
            ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"rabbitmqctl {' '.join(args)}: no answer in 60 s") from None
    if done.returncode != 0:
        raise BenchError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip()}")


@contextlib.contextmanager
def own_vhost(base_url: str) -> Iterator[str]:
    """A fresh vhost for the base URL's user; yields the transport URL for it."""
    parts = urlsplit(base_url)
    vhost = f"bench-rpc-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, unquote(parts.username or "guest"), *[".*"] * 3)
        yield f"{parts.scheme}://{parts.netloc}/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


# ----- main ----------------------------------------------------------------------------------


def _raise_on_term(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per load (default 5)")
    parser.add_argument("--workers", type=int, default=4, help="per server (default 4)")
    parser.add_argument("--skip-peers", action="store_true", help="only supervise")
    parser.add_argument("--transport-url", default=DEFAULT_URL, help="broker; vhost ignored")
    parser.add_argument("--client-processes", type=int, default=4, help="at most (default 4)")
    parser.add_argument(
        "--oslo-backend",
        choices=("eventlet", "threading"),
        default="eventlet",
        help="oslo.service backend of the oslo peer (default: oslo.service's, eventlet)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every server (default 1)")
    parser.add_argument("--client", help=argparse.SUPPRESS)  # a client process's spec
    args = parser.parse_args(argv)
    if args.client:
        return client_main(json.loads(args.client))

    signal.signal(signal.SIGTERM, _raise_on_term)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    logdir = Path(tempfile.mkdtemp(prefix="rpc-bench-"))
    progress(f"logs in {logdir}")
    try:
        with own_vhost(args.transport_url) as url:
            bench = Bench(url, args.seconds, args.client_processes, logdir)
            try:
                commands = server_commands(url, args.workers, args.oslo_backend, logdir / "state")
                names = ["supervise"] if args.skip_peers else list(commands)
                rounds: list[Round] = []
                for number in range(1, args.repeat + 1):
                    progress(f"round {number} of {args.repeat}")
                    baseline = measure_baseline(bench)
                    results = {
                        name: measure_server(
                            bench, name, commands[name](topic_of(name)), args.workers
                        )
                        for name in names
                    }
                    rounds.append((results, baseline))
            finally:
                bench.close()
    except BenchError as error:
        print(f"rpc bench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rpc bench: interrupted; every process stopped, vhost deleted", file=sys.stderr)
        return 130
    for results, baseline in rounds:
        report(results, baseline, args)
    if len(rounds) > 1:
        report_rounds(rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
