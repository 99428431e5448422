"""Call latency of the local transport while another local user floods its wake-up sockets.

    python bench/wake_flood.py [--calls 1000] [--user nobody]   # as root; about 20 s

Starts ``supervise --workers 2 --transport-url local:///... echo`` (as `bench/embedded.py`
does), times `--calls` sequential ``echo`` calls (p50, p99), then starts a flooder as `--user`
(``setpriv --reuid/--regid``): it reads the wake-up sockets' names from ``/proc/net/unix``,
as any user can, and sends them one-byte datagrams as fast as it can. The calls are timed
again while it runs, with the CPU the workers and the flooder used over that window
(``/proc/PID/task/*/schedstat``).
"""

from __future__ import annotations

import argparse
import os
import pwd
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from embedded import _cpu_ns, kill_group, supervise_echo

from supervise.rpc.client import Messenger, RPCClient
from supervise.rpc.dispatcher import Target

FLOODER = """
import os, signal, socket, sys, time
wake_directory, old_prefix = sys.argv[1:]
PREFIXES = (old_prefix, "/proc/self/fd/")  # this run's names before and after hardening
sent = failed = 0
signal.signal(signal.SIGTERM, lambda *_: (print(sent, failed), sys.exit(0)))
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.setblocking(False)
names, looked = [], 0.0
while True:
    if time.monotonic() - looked > 0.5:
        looked = time.monotonic()
        with open("/proc/net/unix") as table:
            bound = [row[7] for row in map(str.split, table) if len(row) > 7]
        names = [n.replace("@", "\\0", 1) for n in bound if n.startswith(PREFIXES)]
        names += [os.path.join(wake_directory, str(n)) for n in range(1, 9)]
    for name in names:
        try:
            sock.sendto(b"r", name)
            sent += 1
        except OSError:
            failed += 1
"""


def time_calls(client: RPCClient, calls: int) -> dict[str, float]:
    times = []
    for _ in range(calls):
        began = time.perf_counter()
        client.call({}, "echo", payload="x" * 100)
        times.append(time.perf_counter() - began)
    quantiles = statistics.quantiles(times, n=100)
    return {"p50_ms": quantiles[49] * 1000, "p99_ms": quantiles[98] * 1000}


def cpu_seconds(processes: list[psutil.Process]) -> float:
    return sum(_cpu_ns(process) for process in processes) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--user", default="nobody")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o700)
        topic = "bench_flood"
        with supervise_echo(2, workdir, topic) as (url, master):
            workers = master.children()
            messenger = Messenger(url)
            try:
                client = RPCClient(messenger, Target(topic=topic), timeout=10)
                time_calls(client, 200)  # warm up
                began = cpu_seconds(workers), time.monotonic()
                quiet = time_calls(client, options.calls)
                quiet_cpu = (cpu_seconds(workers) - began[0]) / (time.monotonic() - began[1])
                wake_directory = str(workdir / "queue.db.wake")
                queue_file = os.stat(workdir / "queue.db")  # abstract names, before hardening:
                old_prefix = f"@supervise-local-{queue_file.st_dev:x}-{queue_file.st_ino:x}-"
                user = pwd.getpwnam(options.user)
                setpriv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}"]
                flooder = subprocess.Popen(
                    [
                        *setpriv,
                        "--clear-groups",
                        sys.executable,
                        "-c",
                        FLOODER,
                        wake_directory,
                        old_prefix,
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
                try:
                    time.sleep(1)  # let it find the sockets
                    flooding = psutil.Process(flooder.pid)
                    before = cpu_seconds(workers), cpu_seconds([flooding]), time.monotonic()
                    flooded = time_calls(client, options.calls)
                    after = cpu_seconds(workers), cpu_seconds([flooding]), time.monotonic()
                    flooder.terminate()
                    sent, failed = flooder.communicate(timeout=10)[0].split()
                finally:
                    kill_group(flooder)
            finally:
                messenger.close()
    window = after[2] - before[2]
    print(
        f"without flood: p50 {quiet['p50_ms']:.2f} ms, p99 {quiet['p99_ms']:.2f} ms; "
        f"workers {quiet_cpu:.2f} CPU s/s"
    )
    print(
        f"with flood:    p50 {flooded['p50_ms']:.2f} ms, p99 {flooded['p99_ms']:.2f} ms; "
        f"workers {(after[0] - before[0]) / window:.2f} CPU s/s, "
        f"flooder {(after[1] - before[1]) / window:.2f} CPU s/s "
        f"({sent} datagrams sent, {failed} refused)"
    )


if __name__ == "__main__":
    main()
