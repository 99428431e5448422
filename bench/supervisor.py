"""Figures for the supervisor itself: start, respawn, reload, stop and idle cost of real masters.

    python bench/supervisor.py [--workers 4] [--repeat 5] [--peers]

Starts real ``supervise`` masters (and, with ``--peers``, a cotyledon ServiceManager running
``bench/peers/cotyledon_app.py``) as subprocesses, each in a session of its own with its output
in a log file, and times what systemd and an operator see: the sd_notify datagrams a master sends
to an AF_UNIX socket this script binds, and its exit. Every wait has a deadline; every master's
whole process group is killed when its measurement ends, whatever happened. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from sessions import kill_session, live_in_session

BENCH_DIR = Path(__file__).resolve().parent
COTYLEDON_APP = BENCH_DIR / "peers" / "cotyledon_app.py"

WAIT_TIMEOUT = 30.0  # the longest any single wait may take before the run fails
PR_SET_CHILD_SUBREAPER = 36
STATUS = re.compile(r"(\d+)/(\d+) workers ready, generation (\d+)")

Fields = dict[str, str]


class BenchError(Exception):
    """A wait ran out or a master misbehaved; the message says which."""


# ----- the masters under test -------------------------------------------------------------


class Master:
    """One master: a subprocess in its own session (so its process group is its whole tree),
    its output in a log file, and a notify socket of its own."""

    kind = "master"

    def __init__(self, argv: list[str], workers: int, log_path: Path):
        self.workers = workers
        self.log_path = log_path
        self.address = f"@bench-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.received: list[tuple[float, Fields]] = []
        self.process: subprocess.Popen[bytes] | None = None
        self.pidfd = -1
        environ = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("SUPERVISE_", "NOTIFY_", "WATCHDOG_", "BENCH_"))
        }
        environ.update(NOTIFY_SOCKET=self.address, BENCH_SOCKET=self.address)
        self._argv = argv
        self._environ = environ

    # -- life cycle

    def start(self) -> float:
        """Start the master; returns the time just before Popen."""
        with open(self.log_path, "wb") as log:
            started = time.monotonic()
            self.process = subprocess.Popen(
                self._argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._environ,
                cwd=self.log_path.parent,
                start_new_session=True,
            )
        self.pidfd = os.pidfd_open(self.process.pid)
        return started

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def close(self) -> None:
        """Kill the whole session, reap the master and the workers it orphaned (this script
        is their subreaper), close the sockets. Idempotent."""
        if self.process is not None:
            if not kill_session(self.pid):
                _progress(f"processes of session {self.pid} still alive 10 s after SIGKILL")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
            _reap_orphans()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        self.sock.close()

    # -- what the kernel says

    def worker_pids(self) -> list[int]:
        """Live children of the master (its workers), as psutil sees them."""
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        alive = []
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.status() != psutil.STATUS_ZOMBIE:
                    alive.append(child.pid)
        return sorted(alive)

    # -- waiting, always with a deadline

    def drain(self) -> None:
        """Take in every datagram already queued, so later waits see only new ones."""
        while True:
            try:
                data = self.sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            self._note(time.monotonic(), _fields(data))

    def wait_for(self, condition: Callable[[Fields], bool], timeout: float, what: str) -> float:
        """Receive datagrams until one satisfies `condition`; returns when it arrived. Fails
        at the deadline or if the master exits first."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"{self.kind}: timed out after {timeout:g} s waiting for {what}")
            readable, _, _ = select.select([self.sock, self.pidfd], [], [], remaining)
            if self.sock in readable:
                data = self.sock.recv(65536)
                at = time.monotonic()
                fields = _fields(data)
                self._note(at, fields)
                if condition(fields):
                    return at
            elif readable:
                code = self.process.wait() if self.process else None
                raise BenchError(f"{self.kind}: exited with status {code} while waiting for {what}")

    def listen(self, seconds: float) -> None:
        """Take in datagrams for `seconds` (a measurement window, not a synchronisation);
        fails if the master exits meanwhile."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.sock, self.pidfd], [], [], remaining)
            if self.sock in readable:
                self._note(time.monotonic(), _fields(self.sock.recv(65536)))
            elif readable:
                code = self.process.wait() if self.process else None
                raise BenchError(f"{self.kind}: exited with status {code} while idle")

    def wait_exit(self, timeout: float, what: str) -> float:
        """Wait for the master to exit (its pidfd becomes readable); returns when it did."""
        readable, _, _ = select.select([self.pidfd], [], [], timeout)
        if not readable:
            raise BenchError(f"{self.kind}: still running {timeout:g} s after {what}")
        at = time.monotonic()
        assert self.process is not None
        self.process.wait()
        return at

    def _note(self, at: float, fields: Fields) -> None:
        self.received.append((at, fields))

    # -- the measurements; each returns seconds

    def wait_ready(self, timeout: float) -> float:
        raise NotImplementedError

    def respawn(self, timeout: float) -> float:
        raise NotImplementedError

    def reload(self, timeout: float) -> float:
        raise NotImplementedError

    def stop(self, timeout: float) -> float:
        self.drain()
        sent = time.monotonic()
        os.kill(self.pid, signal.SIGTERM)
        return self.wait_exit(timeout, "SIGTERM") - sent

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class Supervise(Master):
    """`supervise --workers N [--preload] idle`; ready means READY=1 from the master."""

    def __init__(self, workers: int, log_path: Path, preload: bool):
        argv = [sys.executable, "-m", "supervise", "--workers", str(workers)]
        argv += ["--runtime-dir", str(log_path.with_suffix(".run"))]  # not the shared default
        if preload:
            argv.append("--preload")
        super().__init__([*argv, "idle"], workers, log_path)
        self.kind = "supervise --preload" if preload else "supervise"
        self.killed: list[int] = []

    def wait_ready(self, timeout: float) -> float:
        return self.wait_for(lambda f: "READY" in f, timeout, "READY=1")

    def respawn(self, timeout: float) -> float:
        self.drain()
        victim = self._one_worker()
        self.killed.append(victim)
        sent = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        self.wait_for(
            lambda f: _status(f) is not None and not _all_ready(f),
            timeout,
            f"a STATUS with fewer than {self.workers} workers ready after kill -9 {victim}",
        )
        ready = self.wait_for(
            _all_ready, timeout, f"a STATUS with all {self.workers} workers ready again"
        )
        return ready - sent

    def reload(self, timeout: float) -> float:
        self.drain()
        sent = time.monotonic()
        os.kill(self.pid, signal.SIGHUP)
        self.wait_for(lambda f: "RELOADING" in f, timeout, "RELOADING=1 after SIGHUP")
        return self.wait_for(lambda f: "READY" in f, timeout, "READY=1 after RELOADING=1") - sent

    def _one_worker(self) -> int:
        pids = self.worker_pids()
        if not pids:
            raise BenchError(f"{self.kind}: no live worker to kill")
        return pids[0]


class Cotyledon(Master):
    """cotyledon's ServiceManager running bench/peers/cotyledon_app.py; ready means every one
    of the N workers has sent RUN=<pid> from its run()."""

    kind = "cotyledon"

    def __init__(self, workers: int, log_path: Path):
        argv = [sys.executable, str(COTYLEDON_APP), "--workers", str(workers)]
        super().__init__(argv, workers, log_path)
        self.ran: set[int] = set()
        self.notify_ready_at: float | None = None

    def _note(self, at: float, fields: Fields) -> None:
        super()._note(at, fields)
        if "RUN" in fields:
            self.ran.add(int(fields["RUN"]))
        if "READY" in fields and self.notify_ready_at is None:
            self.notify_ready_at = at

    def wait_ready(self, timeout: float) -> float:
        return self.wait_for(
            lambda _: len(self.ran) >= self.workers,
            timeout,
            f"{self.workers} workers to run (got {len(self.ran)})",
        )

    def respawn(self, timeout: float) -> float:
        self.drain()
        before = set(self.worker_pids())
        if not before:
            raise BenchError("cotyledon: no live worker to kill")
        victim = min(before)
        sent = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        return (
            self.wait_for(
                lambda f: "RUN" in f and int(f["RUN"]) not in before,
                timeout,
                f"a new worker to run after kill -9 {victim}",
            )
            - sent
        )

    def reload(self, timeout: float) -> float:
        self.drain()
        before = set(self.worker_pids())
        fresh: set[int] = set()

        def all_replaced(f: Fields) -> bool:
            if "RUN" in f and int(f["RUN"]) not in before:
                fresh.add(int(f["RUN"]))
            return len(fresh) >= self.workers

        sent = time.monotonic()
        os.kill(self.pid, signal.SIGHUP)
        return self.wait_for(all_replaced, timeout, f"{self.workers} new workers to run") - sent


def _become_subreaper() -> None:
    """Workers orphaned by a killed master are re-parented to this script, which reaps them
    (rather than to an init that may never reap them)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        _progress(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")


def _reap_orphans() -> None:
    """Reap the processes that were re-parented to this script (their subreaper)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _fields(data: bytes) -> Fields:
    text = data.decode("utf-8", "replace")
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _status(fields: Fields) -> tuple[int, int] | None:
    match = STATUS.search(fields.get("STATUS", ""))
    return (int(match[1]), int(match[2])) if match else None


def _all_ready(fields: Fields) -> bool:
    status = _status(fields)
    return status is not None and status[0] == status[1]


# ----- running the measurements --------------------------------------------------------------


@dataclass
class Results:
    samples: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    observations: list[str] = field(default_factory=list)
    log_lines: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, row: str, column: str, seconds: float) -> None:
        self.samples[row, column].append(seconds)

    def observe(self, text: str) -> None:
        if text not in self.observations:
            self.observations.append(text)


@dataclass(frozen=True)
class Column:
    key: str  # also the column header
    make: Callable[[int, Path], Master]


class Bench:
    def __init__(self, logdir: Path, results: Results, idle_window: float):
        self.idle_window = idle_window
        self.logdir = logdir
        self.results = results
        self.started = 0

    @contextlib.contextmanager
    def master(self, column: Column, workers: int, purpose: str) -> Iterator[Master]:
        self.started += 1
        slug = column.key.replace(" ", "").replace("-", "")
        log_path = self.logdir / f"{self.started:03d}-{slug}-{purpose}-{workers}.log"
        master = column.make(workers, log_path)
        try:
            yield master
        except BenchError as error:
            tail = "\n".join(master.log_text().splitlines()[-15:])
            raise BenchError(f"{error}\n  log {log_path}, last lines:\n{tail}") from None
        finally:
            master.close()
            self._read_log(column, master)

    def start_ready(self, master: Master, timeout: float, row: str | None = None) -> None:
        """Start `master` and wait until all its workers are ready; with `row`, record how long
        that took (and, for cotyledon, how much earlier its READY=1 came)."""
        started = master.start()
        elapsed = master.wait_ready(timeout) - started
        live = master.worker_pids()
        if len(live) != master.workers:
            self.results.observe(
                f"{master.kind}: {len(live)} live workers right after it was ready, "
                f"not {master.workers}"
            )
        if row is None:
            return
        self.results.add(row, master.kind, elapsed)
        if isinstance(master, Cotyledon) and master.notify_ready_at is not None:
            early = started + elapsed - master.notify_ready_at
            self.results.add(f"{row}_notify_early", master.kind, early)

    def stop(self, master: Master, row: str, timeout: float) -> None:
        self.results.add(row, master.kind, master.stop(timeout))
        code = master.process.returncode if master.process else None
        if code != 0:
            self.results.observe(f"{master.kind}: exited with status {code} after an idle SIGTERM")
        left = [p.pid for p in live_in_session(master.pid)]
        if left:
            self.results.observe(
                f"{master.kind}: {len(left)} processes of its group still alive after the "
                f"master exited on SIGTERM"
            )

    def start_and_stop(self, column: Column, workers: int, ready_row: str, stop_row: str) -> None:
        timeout = WAIT_TIMEOUT * max(1, workers // 16)
        with self.master(column, workers, "stop") as master:
            self.start_ready(master, timeout, ready_row)
            self.stop(master, stop_row, timeout)

    def respawn_and_reload(self, column: Column, workers: int) -> None:
        with self.master(column, workers, "respawn") as master:
            self.start_ready(master, WAIT_TIMEOUT)
            self.results.add("respawn", column.key, master.respawn(WAIT_TIMEOUT))
            self.results.add("reload", column.key, master.reload(WAIT_TIMEOUT))

    def idle_cpu(self, column: Column, workers: int) -> None:
        with self.master(column, workers, "cpu") as master:
            try:
                self._idle_cpu(column, master)
            except psutil.NoSuchProcess as gone:
                raise BenchError(f"{master.kind}: process {gone.pid} exited while idle") from None

    def _idle_cpu(self, column: Column, master: Master) -> None:
        self.start_ready(master, WAIT_TIMEOUT)
        process = psutil.Process(master.pid)
        workers_before = {pid: psutil.Process(pid) for pid in master.worker_pids()}
        master_cpu, master_ns = _cpu(process), _schedstat_seconds(master.pid)
        wakeups = process.num_ctx_switches().voluntary
        worker_cpu = {pid: _cpu(p) for pid, p in workers_before.items()}
        worker_ns = {pid: _schedstat_seconds(pid) for pid in workers_before}
        master.drain()
        began = time.monotonic()
        messages = len(master.received)
        master.listen(self.idle_window)  # the measurement window; the master should say nothing
        wall = time.monotonic() - began
        master_used = _cpu(process) - master_cpu
        master_used_ns = _schedstat_seconds(master.pid) - master_ns
        wakeups = process.num_ctx_switches().voluntary - wakeups
        workers_used = sum(_cpu(p) - worker_cpu[pid] for pid, p in workers_before.items())
        workers_used_ns = sum(_schedstat_seconds(pid) - worker_ns[pid] for pid in worker_ns)
        if set(master.worker_pids()) != set(workers_before):
            self.results.observe(f"{master.kind}: its workers changed during the idle window")
        said = master.received[messages:]
        if said:
            self.results.observe(
                f"{master.kind}: sent {len(said)} notify datagrams while idle: "
                + "; ".join(sorted({_one_line(f) for _, f in said}))
            )
        self.results.add("cpu_master", column.key, master_used / wall)
        self.results.add("cpu_workers", column.key, workers_used / wall)
        self.results.add("cpu_master_ns", column.key, master_used_ns / wall)
        self.results.add("cpu_workers_ns", column.key, workers_used_ns / wall)
        self.results.add("wakeups", column.key, wakeups / wall)

    def _read_log(self, column: Column, master: Master) -> None:
        """Count warnings and errors, minus the exits this script caused with kill -9."""
        expected = {f"Child {pid} killed by signal 9" for pid in getattr(master, "killed", [])}
        for line in master.log_text().splitlines():
            unusual = any(level in line for level in (" WARNING ", " ERROR ", " CRITICAL "))
            unusual = unusual or "Traceback" in line or "Forking too fast" in line
            if unusual and not any(text in line for text in expected):
                message = re.sub(r"^\S+ \S+ ", "", line)  # drop the time stamp
                self.results.log_lines[column.key][re.sub(r"\d+", "N", message)] += 1


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _schedstat_seconds(pid: int) -> float:
    """CPU seconds of every thread of `pid`, from /proc/PID/task/*/schedstat, which counts
    nanoseconds (psutil's cpu_times() counts clock ticks, 10 ms: too coarse to tell ~0 from 0)."""
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def _one_line(fields: Fields) -> str:
    return " ".join(f"{key}={value}" for key, value in fields.items())


def run(args: argparse.Namespace, logdir: Path) -> Results:
    columns = [
        Column("supervise", lambda n, log: Supervise(n, log, preload=False)),
        Column("supervise --preload", lambda n, log: Supervise(n, log, preload=True)),
    ]
    if args.peers:
        columns.append(Column("cotyledon", Cotyledon))
    results = Results()
    bench = Bench(logdir, results, args.idle_seconds)
    for repeat in range(1, args.repeat + 1):
        _progress(f"repeat {repeat}/{args.repeat}: {args.workers} workers")
        for column in columns:  # interleaved, so drift in the machine's load hits all alike
            bench.start_and_stop(column, args.workers, "ready", "stop")
            bench.respawn_and_reload(column, args.workers)
    for column in columns:
        _progress(f"{column.key}: {args.idle_seconds:g} s idle window")
        bench.idle_cpu(column, args.workers)
    for repeat in range(1, args.repeat + 1):
        _progress(f"repeat {repeat}/{args.repeat}: {args.many} workers")
        for column in columns:
            bench.start_and_stop(column, args.many, "ready_many", "stop_many")
    return results


def _progress(text: str) -> None:
    print(f"... {text}", file=sys.stderr, flush=True)


# ----- the report --------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str  # "s" (times), "cpu" (fraction of one core), "rate" (per second)
    target: float | None = None
    target_text: str = ""
    target_columns: tuple[str, ...] = ("supervise", "supervise --preload")


def rows(args: argparse.Namespace) -> list[Row]:
    workers, many, idle = args.workers, args.many, args.idle_seconds
    return [
        Row("ready", f"exec -> all {workers} ready", "s", 0.3, "<= 300 ms"),
        Row("ready_notify_early", "  its READY=1 came earlier by", "s"),
        Row(
            "respawn",
            "kill -9 a worker -> replacement ready",
            "s",
            0.05,
            "<= 50 ms with --preload",
            ("supervise --preload",),
        ),
        Row("reload", "SIGHUP -> reload done", "s"),
        Row("stop", "idle SIGTERM -> master exit", "s", 0.3, "<= 300 ms"),
        Row(
            "cpu_master",
            f"master CPU, {idle:g} s idle (psutil)",
            "cpu",
            0.005,
            "~0 (< 0.5 % of a core)",
        ),
        Row("cpu_master_ns", "  same, from /proc/PID/task/*/schedstat", "cpu"),
        Row("cpu_workers", f"workers' CPU, {idle:g} s idle (psutil)", "cpu"),
        Row("cpu_workers_ns", "  same, from /proc/PID/task/*/schedstat", "cpu"),
        Row("wakeups", "  master wake-ups per second, idle", "rate"),
        Row("ready_many", f"exec -> all {many} ready", "s", 3.0, "<= 3 s"),
        Row("ready_many_notify_early", "  its READY=1 came earlier by", "s"),
        Row("stop_many", f"idle SIGTERM -> exit, {many} workers", "s"),
    ]


def _seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _cell(row: Row, samples: list[float], window: float) -> str:
    if not samples:
        return "-"
    if row.unit == "cpu":  # one window: CPU seconds over it and the share of one core
        share = samples[0]
        return f"{share * window * 1000:.2f} ms = {share * 100:.3f} %"
    if row.unit == "rate":
        return f"{samples[0]:.1f}/s"
    low, high = _seconds(min(samples)), _seconds(max(samples))
    return f"{_seconds(statistics.median(samples))} [{low}-{high}]"


def _verdict(row: Row, samples: list[float]) -> str:
    assert row.target is not None
    median, worst = statistics.median(samples), max(samples)
    if worst <= row.target:
        return "met"
    if median <= row.target:
        return "median met, max over"
    return "MISSED"


def report(args: argparse.Namespace, results: Results, columns: list[str]) -> str:
    lines = [
        f"supervise bench: {args.workers} workers, {args.repeat} repeats, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        "times are median [min-max] over the repeats (a fresh master each time); CPU is one "
        f"{args.idle_seconds:g} s window",
        "",
    ]
    table = [["figure", *columns]]
    if "cotyledon" in columns:
        table[0].append("cotyledon / supervise")
    table[0].append("target")
    for row in rows(args):
        if not any(results.samples.get((row.key, c)) for c in columns):
            continue
        samples = [results.samples.get((row.key, c), []) for c in columns]
        cells = [row.label, *(_cell(row, found, args.idle_seconds) for found in samples)]
        if "cotyledon" in columns:
            cells.append(_ratio(results, row))
        cells.append(row.target_text)
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for index, cells in enumerate(table):
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += ["", "targets (2-core machine):"]
    for row in rows(args):
        if row.target is None:
            continue
        for column in row.target_columns:
            samples = results.samples.get((row.key, column))
            if samples:
                lines.append(
                    f"  {row.label.strip():<40} {column:<20} {row.target_text:<24} "
                    f"{_verdict(row, samples)}"
                )
    if "cotyledon" in columns:
        lines += [
            "",
            "cotyledon has no readiness protocol: it is 'ready' when each of its N workers has",
            "sent RUN=<pid> from run(); its one READY=1 is sent at start, before any worker ran.",
        ]
    lines += ["", "observations:"]
    observations = list(results.observations)
    for column, counter in results.log_lines.items():
        for message, count in counter.most_common():
            observations.append(f"{column}: log line x{count}: {message}")
    lines += [f"  - {text}" for text in observations] or ["  (none)"]
    return "\n".join(lines)


def _ratio(results: Results, row: Row) -> str:
    theirs = results.samples.get((row.key, "cotyledon"))
    ours = results.samples.get((row.key, "supervise"))
    if not theirs or not ours or row.unit != "s" or row.key.endswith("notify_early"):
        return ""
    ours_median = statistics.median(ours)
    if ours_median <= 0:
        return ""
    return f"x{statistics.median(theirs) / ours_median:.1f}"


# ----- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4, help="workers for most figures")
    parser.add_argument("--many", type=int, default=64, help="workers for the large start")
    parser.add_argument("--repeat", type=int, default=5, help="measurements per figure")
    parser.add_argument("--peers", action="store_true", help="also measure cotyledon")
    parser.add_argument(
        "--idle-seconds", type=float, default=10.0, help="window of the idle CPU figures"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the masters' logs")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.many < 1 or args.repeat < 1 or not args.idle_seconds > 0:
        parser.error("--workers, --many, --repeat and --idle-seconds must be positive")
    if args.peers and importlib.util.find_spec("cotyledon") is None:
        parser.error("--peers needs cotyledon: pip install cotyledon")
    return args


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # clean up as on Ctrl-C
    _become_subreaper()
    logdir = Path(tempfile.mkdtemp(prefix="supervise-bench-"))
    keep = args.keep_logs
    try:
        results = run(args, logdir)
        columns = ["supervise", "supervise --preload"] + (["cotyledon"] if args.peers else [])
        print(report(args, results, columns))
        return 0
    except BenchError as error:
        keep = True
        print(f"bench failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if keep:
            print(f"logs kept in {logdir}", file=sys.stderr)
        else:
            shutil.rmtree(logdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
