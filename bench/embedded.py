"""Figures of the embedded transport (``local://``) against kombu's server-less transports.

    python bench/embedded.py [--messages 10000] [--calls 2000] [--idle-seconds 10] [--repeat 3]

1. Throughput: one producer and two consumer processes, plain kombu, move ``--messages``
   messages through a direct exchange; consumers hold up to 50 unacked and ack each message
   after writing it down. End to end = messages / (last one received - first one published).
   For ``local://``, kombu's ``sqla+sqlite://`` and ``filesystem://`` in the same run, each in
   a fresh directory; lost, duplicated, crashed or timed out is reported as such. kombu's
   transports keep bindings in each process's memory, so every process here declares the
   queue and binding (ours would not need it), and they poll every 10 ms (their default: 1 s).
2. Call round trip: supervise's ``RPCClient`` calls ``echo`` (a 100-character payload) on
   ``supervise --workers 2 --transport-url local:///... echo``: sequential calls (p50, p99),
   then 16 threads (calls/s).
3. Idle: ``supervise --workers 4 --transport-url local:///... echo``, all ready (READY=1 on
   its notify socket): CPU of the master and workers over ``--idle-seconds``, from
   ``/proc/PID/task/*/schedstat`` (nanoseconds), and their wake-ups (context switches).

With ``--repeat N`` all three run N times in turn, and each figure is then printed as the
median and the range of the N rounds.

Every process it starts is in a session of its own and is killed with its whole group when
its measurement ends; every wait has a deadline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import kombu
import psutil
from sessions import kill_session, start

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from supervise.rpc.client import Messenger, RPCClient  # noqa: E402
from supervise.rpc.dispatcher import Target  # noqa: E402
from supervise.rpc.transport_url import local_transport_url  # noqa: E402

PREFETCH = 50
DEADLINE = 120.0  # seconds a throughput run may take
POLL = 0.01  # kombu's transports: seconds between polls of an empty queue


# ----- peer processes (run as `bench/embedded.py --peer ...`) -------------------------------


def _bench_queue() -> kombu.Queue:
    return kombu.Queue("bench", kombu.Exchange("bench", type="direct"), routing_key="bench")


def peer_consume(url: str, options: dict, out: str) -> None:
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def on_message(message: kombu.Message) -> None:
        os.write(fd, message.body + b"\n")
        message.ack()

    with kombu.Connection(url, transport_options=options) as conn:
        conn.transport.polling_interval = POLL  # kombu's virtual transports: 1 s by default
        consumer = kombu.Consumer(conn.channel(), [_bench_queue()], on_message=on_message)
        consumer.qos(prefetch_count=PREFETCH)
        consumer.consume()
        Path(out + ".ready").touch()
        while True:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=1)


def peer_publish(url: str, options: dict, count: int, out: str) -> None:
    with kombu.Connection(url, transport_options=options) as conn:
        channel = conn.channel()
        _bench_queue()(channel).declare()
        producer = kombu.Producer(channel, auto_declare=False)
        Path(out).write_text(repr(time.time()))
        for number in range(count):
            producer.publish(
                str(number).encode(),
                exchange="bench",
                routing_key="bench",
                content_type="text/plain",
                content_encoding="utf-8",
            )
        Path(out + ".done").write_text(repr(time.time()))


def run_peer(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    role, url, options = argv[0], argv[1], json.loads(argv[2])
    import supervise.rpc.transport_url  # noqa: F401  (registers local://)

    if role == "consume":
        peer_consume(url, options, argv[3])
    else:
        peer_publish(url, options, int(argv[3]), argv[4])
    return 0


# ----- process handling ---------------------------------------------------------------------


def kill_group(process: subprocess.Popen) -> None:
    """Kill the process and everything in its session (supervise's workers included)."""
    kill_session(process.pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout:g} s")
        time.sleep(0.01)


# ----- 1. throughput ------------------------------------------------------------------------


@dataclass
class Throughput:
    name: str
    published_per_s: float | None = None
    end_to_end_per_s: float | None = None
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    notes: list[str] = field(default_factory=list)


def transports(workdir: Path) -> dict[str, tuple[str, dict]]:
    folder = workdir / "filesystem"
    (folder / "processed").mkdir(parents=True)
    (workdir / "local").mkdir()
    return {
        "local:// (supervise)": (local_transport_url(str(workdir / "local")), {}),
        "sqla+sqlite:// (kombu)": (f"sqla+sqlite:///{workdir}/kombu-sqla.db", {}),
        "filesystem:// (kombu)": (
            "filesystem://",
            {
                "data_folder_in": str(folder),
                "data_folder_out": str(folder),
                "processed_folder": str(folder / "processed"),
                "control_folder": str(folder / "control"),  # else ./control in the cwd
            },
        ),
    }


def start_consumers(me, url, options, outs, workdir, result) -> list[subprocess.Popen]:
    """Both at once; if one dies starting (kombu's sqla transport: both create its tables),
    say so and start them one after the other."""
    for together in (True, False):
        processes = []
        for out in outs:
            for path in (out, Path(f"{out}.ready")):
                path.unlink(missing_ok=True)
            argv = [*me, "consume", url, json.dumps(options), str(out)]
            processes.append(start(argv, workdir / "peers.log"))
            if not together:
                wait_for(lambda o=out: Path(f"{o}.ready").exists(), 30, "a ready consumer")
        wait_for(
            lambda ps=processes: (
                all(Path(f"{o}.ready").exists() for o in outs)
                or any(p.poll() is not None for p in ps)
            ),
            30,
            "ready consumers",
        )
        if all(p.poll() is None for p in processes):
            return processes
        result.notes.append(f"2 consumers starting at once: one crashed ({last_error(workdir)})")
        for process in processes:
            kill_group(process)
    raise RuntimeError(f"{result.name}: consumers crash at start: {last_error(workdir)}")


def last_error(workdir: Path) -> str:
    log = (workdir / "peers.log").read_text(errors="replace").splitlines()
    errors = [line.strip() for line in log if "Error" in line and not line.startswith(" ")]
    return errors[-1][:100] if errors else "no error logged"


def measure_throughput(name: str, url: str, options: dict, messages: int, workdir: Path):
    result = Throughput(name)
    me = [sys.executable, str(Path(__file__).resolve()), "--peer"]
    outs = [workdir / f"consumer{i}.out" for i in range(2)]
    stamp = workdir / "producer.start"
    processes: list[subprocess.Popen] = []
    try:
        processes = start_consumers(me, url, options, outs, workdir, result)
        argv = [*me, "publish", url, json.dumps(options), str(messages), str(stamp)]
        processes.append(start(argv, workdir / "peers.log"))
        deadline = time.monotonic() + DEADLINE

        def lines() -> int:
            return sum(o.read_bytes().count(b"\n") for o in outs if o.exists())

        while lines() < messages and time.monotonic() < deadline:
            if all(p.poll() is not None for p in processes[:2]):
                break
            time.sleep(0.01)
        finished = time.time()
        received = [line for o in outs if o.exists() for line in o.read_bytes().splitlines()]
        counts = Counter(received)
        result.received = len(received)
        result.duplicated = sum(n - 1 for n in counts.values() if n > 1)
        result.lost = messages - len(counts)
        if stamp.exists() and result.received >= messages:
            result.end_to_end_per_s = messages / (finished - float(stamp.read_text()))
        done = Path(f"{stamp}.done")
        if done.exists():
            result.published_per_s = messages / (float(done.read_text()) - float(stamp.read_text()))
        if time.monotonic() >= deadline:
            result.notes.append(f"not done after {DEADLINE:g} s")
        for index, process in enumerate(processes[:2]):
            if process.poll() is not None:
                result.notes.append(f"consumer {index} crashed (exit {process.returncode})")
        if any(process.poll() is not None for process in processes[:2]):
            result.notes.append(f"last error: {last_error(workdir)}")
    finally:
        for process in processes:
            kill_group(process)
    return result


# ----- 2 and 3: supervise on the local transport --------------------------------------------


@contextlib.contextmanager
def supervise_echo(workers: int, workdir: Path, topic: str) -> Iterator[tuple[str, psutil.Process]]:
    """A master of `workers` echo workers on the local transport; yields its URL once READY."""
    url = local_transport_url(str(workdir))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = f"bench-embedded-{uuid.uuid4().hex}"
    notify.bind("\0" + address)
    notify.settimeout(30)
    argv = [sys.executable, "-m", "supervise", "--workers", str(workers)]
    argv += ["--transport-url", url, "--state-dir", str(workdir), "--topic", topic]
    argv += ["--runtime-dir", str(workdir / "run"), "echo"]  # not the shared default
    master = start(argv, workdir / "supervise.log", {"NOTIFY_SOCKET": "@" + address})
    try:
        while b"READY=1" not in notify.recv(4096):
            pass
        yield url, psutil.Process(master.pid)
    finally:
        notify.close()
        kill_group(master)


def measure_calls(calls: int, workdir: Path) -> dict[str, float]:
    topic = "bench_embedded"
    with supervise_echo(2, workdir, topic) as (url, _master):
        messenger = Messenger(url)
        try:
            client = RPCClient(messenger, Target(topic=topic), timeout=10)
            payload = "x" * 100
            for _ in range(200):  # warm up
                client.call({}, "echo", payload=payload)
            times = []
            for _ in range(calls):
                began = time.perf_counter()
                client.call({}, "echo", payload=payload)
                times.append(time.perf_counter() - began)
            quantiles = statistics.quantiles(times, n=100)
            done = 0
            stop = time.monotonic() + 5

            def caller() -> None:
                nonlocal done
                while time.monotonic() < stop:
                    client.call({}, "echo", payload=payload)
                    done += 1  # a race on += only undercounts, and by little

            threads = [threading.Thread(target=caller) for _ in range(16)]
            began = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return {
                "p50": quantiles[49],
                "p99": quantiles[98],
                "c16": done / (time.monotonic() - began),
            }
        finally:
            messenger.close()


def _cpu_ns(process: psutil.Process) -> int:
    total = 0
    for task in Path(f"/proc/{process.pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def _switches(process: psutil.Process) -> int:
    total = 0
    for task in Path(f"/proc/{process.pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


def measure_idle(seconds: float, workdir: Path) -> dict[str, float]:
    with supervise_echo(4, workdir, "bench_idle") as (_url, master):
        processes = [master, *master.children()]
        time.sleep(1.0)  # let start-up settle
        cpu = [_cpu_ns(p) for p in processes]
        switches = [_switches(p) for p in processes]
        time.sleep(seconds)
        cpu = [_cpu_ns(p) - before for p, before in zip(processes, cpu, strict=True)]
        switches = [_switches(p) - b for p, b in zip(processes, switches, strict=True)]
    return {
        "processes": len(processes),
        "master_pct": cpu[0] / 1e9 / seconds * 100,
        "workers_pct": sum(cpu[1:]) / 1e9 / seconds * 100,
        "wakeups_per_s": sum(switches) / seconds,
    }


# ----- report -------------------------------------------------------------------------------


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _spread(values: list[float], show: Callable[[float], str]) -> str:
    """Median [min-max] of one figure over the rounds."""
    if len(values) == 1:
        return show(values[0])
    return f"{show(statistics.median(values))} [{show(min(values))}-{show(max(values))}]"


def run_round(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    """One round of every measurement, printed as it goes; the figures, by name."""
    figures: dict[str, float] = {}
    print(f"1 producer + 2 consumer processes, {args.messages} messages (logs in {workdir})")
    print(f"{'transport':<24}{'publish/s':>11}{'end to end/s':>14}{'lost':>7}{'dup':>6}  notes")
    for name, (url, options) in transports(workdir).items():
        run_dir = workdir / f"run-{name.split(':')[0]}"
        run_dir.mkdir()
        result = measure_throughput(name, url, options, args.messages, run_dir)
        print(
            f"{name:<24}{_rate(result.published_per_s):>11}{_rate(result.end_to_end_per_s):>14}"
            f"{result.lost:>7}{result.duplicated:>6}  {'; '.join(result.notes)}",
            flush=True,
        )
        if result.end_to_end_per_s is not None:
            figures[f"{name} end to end/s"] = result.end_to_end_per_s
        figures[f"{name} lost"] = result.lost
        figures[f"{name} dup"] = result.duplicated
    calls_dir = workdir / "calls"
    calls_dir.mkdir()
    calls = measure_calls(args.calls, calls_dir)
    print(
        f"\nRPCClient -> 2 echo workers on local://: {args.calls} sequential calls "
        f"p50 {calls['p50'] * 1000:.2f} ms, p99 {calls['p99'] * 1000:.2f} ms; "
        f"16 threads: {calls['c16']:,.0f} calls/s"
    )
    figures["call p50 ms"] = calls["p50"] * 1000
    figures["call p99 ms"] = calls["p99"] * 1000
    figures["calls/s, 16 threads"] = calls["c16"]
    idle_dir = workdir / "idle"
    idle_dir.mkdir()
    idle = measure_idle(args.idle_seconds, idle_dir)
    print(
        f"idle supervise --workers 4 on local://, {args.idle_seconds:g} s: master "
        f"{idle['master_pct']:.3f} % of a core, 4 workers {idle['workers_pct']:.3f} %, "
        f"{idle['wakeups_per_s']:.1f} wake-ups/s over {idle['processes']:.0f} processes"
    )
    figures["idle master % of a core"] = idle["master_pct"]
    figures["idle workers % of a core"] = idle["workers_pct"]
    return figures


def _figure(value: float) -> str:
    if value == int(value):
        return f"{int(value):,}"
    if abs(value) < 1:
        return f"{value:.3f}"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:,.0f}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--peer"]:
        return run_peer(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=1, help="rounds (default 1)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    workdir = Path(tempfile.mkdtemp(prefix="embedded-bench-"))
    rounds = []
    for number in range(1, args.repeat + 1):
        if args.repeat > 1:
            print(f"\n== round {number} of {args.repeat}")
        round_dir = workdir / f"round-{number}"
        round_dir.mkdir()
        rounds.append(run_round(args, round_dir))
    if len(rounds) > 1:
        print(f"\n{len(rounds)} rounds: median [min-max]")
        for name in rounds[0]:
            values = [figures[name] for figures in rounds if name in figures]
            print(f"  {name:<36}{_spread(values, _figure)}  ({len(values)} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
