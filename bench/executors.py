"""The eventlet executor beside the threading one: the same service, the same load.

    python bench/executors.py [--transport-url URL] [--workers 1] [--callers 64]
                              [--seconds 5] [--sleep-ms 5] [--repeat 3]

Each executor serves ``supervise --workers W --executor E echo``; ``--callers`` threads of
this process call it for ``--seconds`` per method: ``echo`` (a handler that does nothing)
and ``sleep(ms)`` (``time.sleep``, which a worker monkey-patched by eventlet makes
``eventlet.sleep``). Figures: calls/s, and the p50 and p99 of a call's round trip, plus the
CPU the master and its workers used per 1000 calls. The default transport is the embedded
one (``local://``) in a fresh directory per run.

Rounds interleave the executors (threading first in odd rounds, eventlet first in even ones)
so that a machine that gets busier during the run weighs on both; with ``--repeat N`` each
figure is printed as the median [min-max] of the N rounds.

Every master runs in a session of its own and is killed with its whole group when its
measurement ends; every wait has a deadline.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from sessions import cpu_of_session, kill_session, start

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from supervise.rpc.client import Messenger, RPCClient  # noqa: E402
from supervise.rpc.dispatcher import Target  # noqa: E402
from supervise.rpc.transport_url import local_transport_url  # noqa: E402

EXECUTORS = ("threading", "eventlet")
READY_TIMEOUT = 60.0


@contextlib.contextmanager
def serve(executor: str, args: argparse.Namespace, workdir: Path) -> Iterator[tuple[str, str, int]]:
    """A master of echo workers with this executor; yields (URL, topic, its session)."""
    url = args.transport_url or local_transport_url(str(workdir))
    topic = f"bench_executors_{uuid.uuid4().hex[:8]}"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = f"bench-executors-{uuid.uuid4().hex}"
    notify.bind("\0" + address)
    notify.settimeout(READY_TIMEOUT)
    argv = [sys.executable, "-m", "supervise", "--workers", str(args.workers)]
    argv += ["--executor", executor, "--transport-url", url, "--state-dir", str(workdir)]
    argv += ["--executor-thread-pool-size", str(args.callers), "--topic", topic]
    argv += ["--runtime-dir", str(workdir / "run"), "echo"]  # not the shared default
    master = start(argv, workdir / "supervise.log", {"NOTIFY_SOCKET": "@" + address})
    try:
        while b"READY=1" not in notify.recv(4096):
            pass
        yield url, topic, master.pid
    finally:
        notify.close()
        kill_session(master.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            master.wait(10)


def load(client: RPCClient, method: str, kwargs: dict, callers: int, seconds: float) -> dict:
    """`callers` threads call `method` for `seconds`: calls/s, p50 and p99 in ms, failures."""
    times: list[float] = []
    failures = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def caller() -> None:
        nonlocal failures
        while time.monotonic() < stop:
            began = time.perf_counter()
            try:
                client.call({}, method, **kwargs)
            except Exception:
                with lock:
                    failures += 1
                continue
            with lock:
                times.append(time.perf_counter() - began)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    quantiles = statistics.quantiles(times, n=100) if len(times) > 1 else [0.0] * 99
    return {
        "calls/s": len(times) / elapsed,
        "p50 ms": quantiles[49] * 1000,
        "p99 ms": quantiles[98] * 1000,
        "failed": failures,
        "calls": len(times),
    }


def measure(executor: str, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    figures: dict[str, float] = {}
    with serve(executor, args, workdir) as (url, topic, session):
        messenger = Messenger(url)
        try:
            client = RPCClient(messenger, Target(topic=topic), timeout=30)
            for _ in range(100):  # warm up
                client.call({}, "echo", payload="x")
            methods = {"echo": ("echo", {"payload": "x" * 100})}
            methods[f"sleep {args.sleep_ms:g} ms"] = ("sleep", {"ms": args.sleep_ms})
            for name, (method, kwargs) in methods.items():
                cpu_before = cpu_of_session(session)
                result = load(client, method, kwargs, args.callers, args.seconds)
                cpu = cpu_of_session(session) - cpu_before
                result["CPU ms/1000 calls"] = cpu * 1e6 / max(result["calls"], 1)
                del result["calls"]
                print(
                    f"  {executor:<10}{name:<16}"
                    + "".join(f"{key} {value:,.2f}  " for key, value in result.items()),
                    flush=True,
                )
                figures.update({f"{executor} {name} {key}": v for key, v in result.items()})
        finally:
            messenger.close()
    return figures


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:,.2f}"
    return f"{statistics.median(values):,.2f} [{min(values):,.2f}-{max(values):,.2f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport-url", help="default: local:// in a fresh directory")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--callers", type=int, default=64, help="also the pool size")
    parser.add_argument("--seconds", type=float, default=5.0, help="per method and executor")
    parser.add_argument("--sleep-ms", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=1, help="rounds (default 1)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    workdir = Path(tempfile.mkdtemp(prefix="executors-bench-"))
    print(
        f"{args.workers} echo worker(s), {args.callers} callers, {args.seconds:g} s per method "
        f"(logs in {workdir})"
    )
    rounds = []
    for number in range(1, args.repeat + 1):
        print(f"== round {number} of {args.repeat}")
        order = EXECUTORS if number % 2 else EXECUTORS[::-1]
        figures: dict[str, float] = {}
        for executor in order:
            run_dir = workdir / f"round-{number}-{executor}"
            run_dir.mkdir()
            figures.update(measure(executor, args, run_dir))
        rounds.append(figures)
    if len(rounds) > 1:
        print(f"\n{len(rounds)} rounds: median [min-max]")
        for name in sorted(rounds[0]):
            print(f"  {name:<44}{_spread([r[name] for r in rounds if name in r])}")
    print(f"\neventlet / threading, each ratio within its round{_over(rounds)}")
    for name in sorted(rounds[0]):
        executor, _, figure = name.partition(" ")
        if executor != "eventlet" or figure.endswith("failed"):
            continue
        ratios = [
            r[name] / r[f"threading {figure}"] for r in rounds if r.get(f"threading {figure}")
        ]
        if ratios:
            print(f"  {figure:<44}{_spread(ratios)}")
    return 0


def _over(rounds: list[dict[str, float]]) -> str:
    return f": median [min-max] of {len(rounds)}" if len(rounds) > 1 else ""


if __name__ == "__main__":
    sys.exit(main())
