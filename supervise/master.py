"""The master: one single-threaded loop that forks, watches, reloads and drains workers.

Everything that changes the tree happens in `Master.run`'s loop: signal handlers only
record the signal and wake the loop, worker messages arrive on their channels, children
are reaped with ``waitpid(-1, WNOHANG)``, and timers (respawn back-off, ready timeouts,
the drain deadline, the systemd watchdog) are computed from state, so an idle master
sleeps in ``select`` until something happens. The master never starts a thread and never
opens a broker or database connection, so forking from it is safe.

The master is a child subreaper and each worker leads a process group of its own, so what a
worker leaves behind is found and stopped (`supervise.leftovers`).
"""

from __future__ import annotations

import contextlib
import enum
import gc
import logging
import os
import random
import selectors
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import setproctitle

from supervise import (
    cgroup,
    channel,
    exitcodes,
    health,
    hosted,
    leftovers,
    logs,
    worker,
    worker_policy,
)
from supervise.config import MAX_WORKERS, Config, ConfigError
from supervise.control import CommandError, ControlSocket
from supervise.listener import Listener
from supervise.metrics import Metrics
from supervise.progress import Progress
from supervise.systemd import Notifier
from supervise.wakeup import Wakeup

if TYPE_CHECKING:
    import psutil

LOG = logging.getLogger(__name__)


FAST_STOP_GRACE = 2.0
NOTIFY_RETRY = 1.0
STALE_HEARTBEATS = 3
# A hung worker is sent SIGABRT (its stacks go to the log), then SIGKILL this long after.
HUNG_ABORT_GRACE = 5.0

# The fields of each worker's row in a control-socket status, as `_child_status` makes them.
WORKER_STATUS = (
    *("slot", "pid", "generation", "state", "uptime", "rss", "cpu_percent"),
    *("handled", "in_flight", "oldest_age", "oldest_method", "restarts", "last_exit"),
)

HANDLED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCHLD,
)


class ExitCause(enum.Enum):
    """Why a worker ended: the master's decision, or what the reaper found."""

    CRASH = "crash"  # exited with a status it was not asked to
    SIGNAL = "signal"
    OOM = "oom"  # SIGKILLed by the kernel's OOM killer
    MEMORY = "memory"  # recycled: max_memory_per_worker
    REQUESTS = "requests"  # recycled: max_requests_per_worker
    AGE = "age"  # recycled: max_worker_age
    HUNG = "hung"
    RELOAD = "reload"
    SCALE_DOWN = "scale-down"
    STOP = "stop"


class Phase(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"  # draining gracefully
    QUITTING = "quitting"  # fast stop


@dataclass(eq=False)
class Child:
    pid: int
    slot: int
    generation: int
    link: socket.socket
    started: float
    ready_deadline: float
    last_heartbeat: float
    ready: bool = False
    draining: bool = False  # told to stop: its exit is expected
    can_reset: bool = False  # said so when ready: a mutate reload resets it in place
    killed_by_master: str | None = None  # why the master sent SIGKILL, for the exit log line
    exit_cause: ExitCause | None = None  # set when the master ends it on purpose
    progress: Progress | None = None  # from its last heartbeat
    process: psutil.Process | None = None  # to sample it (never to wait for it); see _sample
    rss: int | None = None  # bytes, sampled at each heartbeat
    cpu_percent: float | None = None  # of one CPU, since the sample before
    limits: health.Limits = field(default_factory=health.Limits)  # drawn when it is forked
    abort_kill_at: float | None = None  # hung: sent SIGABRT, to be SIGKILLed at this time
    recycle_failures: int = 0  # its recycles whose replacement failed, in a row
    recycle_retry_at: float = 0.0
    cpu_seconds: float | None = None  # user and system, since it started


@dataclass(eq=False)
class Slot:
    index: int
    worker: Child | None = None
    replacement: Child | None = None  # the new generation starting in a rolling reload
    respawn_at: float | None = None
    crash_streak: int = 0
    crash_times: deque[float] = field(default_factory=deque)
    started_workers: int = 0
    last_exit: str | None = None  # the cause of its last worker's exit, as text
    hung_streak: int = 0  # workers in a row that hung without a long healthy run

    @property
    def restarts(self) -> int:
        """Workers started in this slot after its first, whatever the cause."""
        return max(0, self.started_workers - 1)


@dataclass(eq=False)
class Recycle:
    """A worker due to be recycled (memory, requests, age) whose replacement is starting."""

    old: Child
    replacement: Child
    cause: ExitCause


@dataclass(eq=False)
class RollingReload:
    conf: Config
    generation: int
    pending: deque[int]  # slots still to replace
    starting: set[int] = field(default_factory=set)  # slots whose replacement is not ready


class Master:
    def __init__(
        self,
        conf: Config,
        service: hosted.ServiceRef,
        reload_config: Callable[[], Config],
        notifier: Notifier,
        policy: worker_policy.WorkerPolicy = worker_policy.ANY_WORKERS,
    ):
        self.conf = conf
        self.policy = policy  # the service's own: SIGTTIN stops at its maximum
        self.service = service
        self.reload_config = reload_config
        self.notifier = notifier
        self.preloaded = hosted.load(service) if conf.preload else None
        self.phase = Phase.RUNNING
        self.exit_code = exitcodes.OK
        self.generation = 1
        self.last_generation = 1
        self.slots: list[Slot] = []
        self.children: dict[int, Child] = {}
        self.reload: RollingReload | None = None
        self.reload_again = False
        self.recycle: Recycle | None = None  # one at a time, across the master
        self.stop_began = 0.0
        self.stop_deadline: float | None = None
        self.ready_announced = False
        self.ever_ready = False
        self.status_text = ""
        self.notify_retry_at: float | None = None
        self.oom_kills = cgroup.oom_kill_count()
        self.signals: list[int] = []
        self.leftovers = leftovers.Leftovers()
        self.selector = selectors.DefaultSelector()
        self.listeners: list[Listener] = []  # the control socket, the metrics endpoint
        self.metrics = Metrics(cause.value for cause in ExitCause)
        if conf.metrics_port:  # bound once, at start: a reload does not move it
            self.listeners.append(self.metrics.listen(conf, self))
        self.wakeup = Wakeup()
        self.heartbeat_interval = conf.heartbeat_interval
        if notifier.watchdog_interval:
            self.heartbeat_interval = min(conf.heartbeat_interval, notifier.watchdog_interval / 2)
        self.next_watchdog = time.monotonic() if notifier.watchdog_interval else None
        self.drained = False  # told to drain: no worker takes work until a resume
        self.control = ControlSocket.open(conf, service.name, self.selector, self._control)
        self.listeners.append(self.control.listener)

    # ----- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        setproctitle.setproctitle(f"supervise: master {self.service.name}")
        logs.set_role("master")
        leftovers.become_subreaper()
        self._install_signal_handlers()
        LOG.info(
            "starting %d workers of %s (generation %d)",
            self.conf.workers,
            self.service.name,
            self.generation,
        )
        self._resize(self.conf.workers)
        while self.children or self.leftovers.pending or self.phase is Phase.RUNNING:
            self._wait_for_events()
            self._reap()
            self._handle_signals()
            self._run_due_timers()
            self._update_status()
        self.control.close()
        LOG.info("master exiting with status %d", self.exit_code)
        return self.exit_code

    def _install_signal_handlers(self) -> None:
        self.wakeup.catch_signals()
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._record_signal)
        self.selector.register(self.wakeup.reader, selectors.EVENT_READ, self.wakeup.drain)

    def _record_signal(self, signum: int, _frame: Any) -> None:
        self.signals.append(signum)

    def _wait_for_events(self) -> None:
        deadline = self._next_deadline()
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        for key, _ in self.selector.select(timeout):
            key.data()

    def _next_deadline(self) -> float | None:
        deadlines = [s.respawn_at for s in self.slots if s.respawn_at is not None]
        deadlines += [c.ready_deadline for c in self.children.values() if self._awaits_ready(c)]
        if self.stop_deadline is not None:
            deadlines.append(self.stop_deadline)
        if self.next_watchdog is not None:
            deadlines.append(self.next_watchdog)
        if self.notify_retry_at is not None:
            deadlines.append(self.notify_retry_at)
        if (leftover_deadline := self.leftovers.deadline()) is not None:
            deadlines.append(leftover_deadline)
        deadlines += [d for listener in self.listeners if (d := listener.deadline()) is not None]
        deadlines += self._health_deadlines(time.monotonic())
        return min(deadlines, default=None)

    @staticmethod
    def _awaits_ready(child: Child) -> bool:
        return not child.ready and not child.draining and child.killed_by_master is None

    # ----- signals ----------------------------------------------------------------------

    def _handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            if signum == signal.SIGCHLD:
                continue  # reaping happens on every turn of the loop
            LOG.info("received %s", signal.Signals(signum).name)
            if signum == signal.SIGTERM:
                self._begin_stop("SIGTERM")
            elif signum == signal.SIGINT:
                if self.phase is Phase.RUNNING:
                    self._begin_stop("SIGINT")
                else:
                    self._fast_stop()
            elif signum == signal.SIGQUIT:
                self._fast_stop()
            elif signum == signal.SIGHUP:
                self._reload()
            elif signum == signal.SIGTTIN and len(self.slots) >= self.policy.max_workers:
                LOG.warning(
                    "SIGTTIN ignored: %s runs at most %s", self.service.name, self.policy.most()
                )
            elif signum == signal.SIGTTIN:
                self._resize(len(self.slots) + 1)
            elif signum == signal.SIGTTOU:
                self._scale_down()
            elif signum == signal.SIGUSR1:
                logs.reopen()
                self._signal_children(signal.SIGUSR1)
            elif signum == signal.SIGUSR2:
                self._signal_children(signal.SIGUSR2)

    def _signal_children(self, signum: int) -> None:
        for pid in self.children:
            self._kill(pid, signum)

    @staticmethod
    def _kill(pid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # already exited; the loop reaps it
            os.kill(pid, signum)

    # ----- spawning and slots -----------------------------------------------------------

    def _fork(self, slot: int, generation: int, conf: Config) -> Child:
        master_end, worker_end = channel.pair()
        inherited = [
            self.selector,
            self.wakeup,
            self.notifier,
            *self.listeners,
            master_end,
            *(c.link for c in self.children.values()),
        ]
        spec = worker.WorkerSpec(
            slot=slot,
            generation=generation,
            conf=conf,
            service=self.service,
            preloaded=self.preloaded,
            master_pid=os.getpid(),
            heartbeat_interval=self.heartbeat_interval,
            paused=self.drained,
        )
        logs.flush()
        gc.freeze()  # keep the inherited heap's pages shared: the child's GC won't touch them
        # Signals stay blocked across fork so none lands between the child's reset of the
        # master's handlers and the installation of its own; the child unblocks them.
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        pid = os.fork()
        if pid == 0:
            worker.run(spec, worker_end, inherited)
        # The worker leads a group of its own; both sides set it, so whichever runs first wins.
        with contextlib.suppress(ProcessLookupError, PermissionError):  # it has exited already
            os.setpgid(pid, pid)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        gc.unfreeze()
        worker_end.close()
        now = time.monotonic()
        child = Child(
            pid=pid,
            slot=slot,
            generation=generation,
            link=master_end,
            started=now,
            ready_deadline=now + conf.worker_ready_timeout,
            last_heartbeat=now,
            limits=health.draw_limits(
                conf.max_requests_per_worker, conf.max_requests_jitter, conf.max_worker_age
            ),
        )
        self.children[pid] = child
        self.slots[slot].started_workers += 1
        self.selector.register(master_end, selectors.EVENT_READ, lambda: self._read(child))
        LOG.info("Started child %d (slot %d, generation %d)", pid, slot, generation)
        return child

    def _spawn(self, slot: Slot) -> None:
        slot.respawn_at = None
        slot.worker = self._fork(slot.index, self.generation, self.conf)

    def _resize(self, count: int) -> None:
        while len(self.slots) < count:
            slot = Slot(len(self.slots))
            self.slots.append(slot)
            self._spawn(slot)
        while len(self.slots) > count:
            slot = self.slots.pop()
            for child in (slot.worker, slot.replacement):
                if child is not None:
                    self._drain(child, ExitCause.SCALE_DOWN)
            if self.reload is not None:
                self.reload.starting.discard(slot.index)
        if self.reload is not None and not self.reload.starting and not self.reload.pending:
            self._finish_reload()

    def _scale_down(self) -> None:
        if len(self.slots) <= 1:
            LOG.warning("SIGTTOU ignored: one worker is the fewest")
            return
        self._resize(len(self.slots) - 1)

    def _drain(self, child: Child, cause: ExitCause) -> None:
        """Tell a worker to finish its work and exit; its exit is then expected."""
        if not child.draining:
            child.draining = True
            child.exit_cause = child.exit_cause or cause
            child.ready = False
            self._kill(child.pid, signal.SIGTERM)

    def _slot_of(self, child: Child) -> Slot | None:
        if child.slot < len(self.slots):
            slot = self.slots[child.slot]
            if child in (slot.worker, slot.replacement):
                return slot
        return None

    # ----- worker messages --------------------------------------------------------------

    def _read(self, child: Child) -> None:
        messages, gone = channel.receive(child.link)
        for message in messages:
            kind = message["type"]
            if kind == "ready":
                child.can_reset = message.get("can_reset") is True
                self._on_ready(child)
            elif kind == "heartbeat":
                self._on_heartbeat(child, message.get("progress"))
            elif kind == "stopping":
                child.ready = False
        if gone:
            self.selector.unregister(child.link)
            child.link.close()

    def _on_heartbeat(self, child: Child, progress: Any) -> None:
        child.last_heartbeat = time.monotonic()
        previous, previous_cpu = child.progress, child.cpu_seconds
        if progress is not None:
            try:
                child.progress = Progress.from_json(progress)
            except (ValueError, KeyError, TypeError) as error:
                LOG.debug("ignoring the malformed progress of child %d: %s", child.pid, error)
        self._sample(child)
        if child.progress is not None and child.progress.paused != self.drained:
            self._tell_drain_state(child)  # it missed the message, or started meanwhile
        self.metrics.add_progress(previous, child.progress)
        self.metrics.add_cpu(child.slot, previous_cpu, child.cpu_seconds)

    @staticmethod
    def _sample(child: Child) -> None:
        """Its memory and CPU use, read from /proc. psutil is imported at the first sample,
        after the first workers are forked: importing it costs the master's start 20 ms."""
        import psutil

        try:
            first = child.process is None
            if first:
                child.process = psutil.Process(child.pid)
            with child.process.oneshot():
                child.rss = child.process.memory_info().rss
                cpu_percent = child.process.cpu_percent(None)
                times = child.process.cpu_times()
                child.cpu_seconds = times.user + times.system
            child.cpu_percent = None if first else cpu_percent  # the first only starts it
        except psutil.Error:  # it has just exited (or become a zombie): the loop reaps it
            pass

    def _on_ready(self, child: Child) -> None:
        child.last_heartbeat = time.monotonic()
        if child.draining:
            return
        child.ready = True
        self.ever_ready = True
        slot = self._slot_of(child)
        if slot is not None and slot.replacement is child:
            old, slot.worker, slot.replacement = slot.worker, child, None
            cause = self._end_recycle(child) or ExitCause.RELOAD
            if old is not None:
                self._drain(old, cause)
            slot.respawn_at = None
            self._advance_reload(done=slot.index)

    # ----- reaping ----------------------------------------------------------------------

    def _reap(self) -> None:
        reaped = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reaped = True
            child = self.children.pop(pid, None)
            if child is None:
                self.leftovers.reaped(pid)  # not a worker: an orphan reparented to the master
                continue
            if child.link.fileno() >= 0:
                self._read_last_heartbeat(child)
                self.selector.unregister(child.link)
                child.link.close()
            code = os.waitstatus_to_exitcode(status)
            self._log_exit(child, code)
            self.leftovers.worker_exited(pid, self.children)
            self._on_exit(child, code)
        if reaped:
            self.leftovers.sweep(self.children)

    def _read_last_heartbeat(self, child: Child) -> None:
        """A worker's heartbeat sent as it exited, still unread: what it handled since the one
        before counts too."""
        child.process = None  # reaped: its pid may be another process's by now
        messages, _ = channel.receive(child.link)
        for message in messages:
            if message["type"] == "heartbeat":
                self._on_heartbeat(child, message.get("progress"))

    def _log_exit(self, child: Child, code: int) -> None:
        """One line per exit, in oslo's words, with its one cause."""
        cause = self._exit_cause(child, code)
        self.metrics.count_exit(cause.value)
        text = cause.value
        if cause is ExitCause.CRASH:
            text = f"crash (status {code})"
        elif cause is ExitCause.SIGNAL:
            text = f"signal {-code}"
        if child.killed_by_master:
            text += f": {child.killed_by_master}"
        if 0 <= code < 128 and child.draining and cause is not ExitCause.HUNG:
            level = logging.INFO if code == 0 else logging.WARNING
        else:
            level = logging.WARNING
        if code >= 0:
            LOG.log(level, "Child %d exited with status %d (%s)", child.pid, code, text)
        else:
            LOG.log(level, "Child %d killed by signal %d (%s)", child.pid, -code, text)
        if child.slot < len(self.slots):
            self.slots[child.slot].last_exit = text

    def _exit_cause(self, child: Child, code: int) -> ExitCause:
        if child.exit_cause is not None:
            return child.exit_cause
        if code == -signal.SIGKILL:
            oom_kills = cgroup.oom_kill_count()
            oom = (
                oom_kills is not None and self.oom_kills is not None and oom_kills > self.oom_kills
            )
            self.oom_kills = oom_kills
            if oom:
                return ExitCause.OOM
        return ExitCause.SIGNAL if code < 0 else ExitCause.CRASH

    def _on_exit(self, child: Child, code: int) -> None:
        recycle_failed = self._recycle_replacement_exited(child)
        slot = self._slot_of(child)
        if child.draining or slot is None:
            if self.phase is not Phase.RUNNING and code != 0 and self.exit_code == exitcodes.OK:
                self.exit_code = exitcodes.UNCLEAN_STOP
            return
        if slot.replacement is child:
            slot.replacement = None
            if not recycle_failed:
                self._abort_reload(f"worker {child.pid} of slot {slot.index} exited before ready")
            return
        slot.worker = None
        if self.phase is not Phase.RUNNING:
            return
        if code == exitcodes.WORKER_LOAD_FAILED and not self.ever_ready:
            LOG.error("service %s cannot be loaded: stopping", self.service.name)
            self._begin_stop("the service cannot be loaded", exitcodes.USAGE)
            return
        if child.exit_cause is ExitCause.HUNG and self._hung_loop(slot, child):
            return
        self._respawn_after_crash(slot, child)

    def _respawn_after_crash(self, slot: Slot, child: Child) -> None:
        now = time.monotonic()
        slot.crash_streak = (
            1 if now - child.started >= self.conf.healthy_uptime else (slot.crash_streak + 1)
        )
        slot.crash_times.append(now)
        while slot.crash_times and slot.crash_times[0] < now - self.conf.restart_window:
            slot.crash_times.popleft()
        if len(slot.crash_times) > self.conf.max_restarts:
            LOG.error(
                "slot %d: %d unexpected exits within %.0f s (max_restarts %d): giving up",
                slot.index,
                len(slot.crash_times),
                self.conf.restart_window,
                self.conf.max_restarts,
            )
            self._begin_stop("crash loop", exitcodes.CRASH_LOOP)
            return
        if slot.replacement is not None:
            return  # a reload is already starting this slot's next worker
        delay = self._backoff(slot.crash_streak)
        if delay:
            LOG.warning(
                "slot %d: exit %d in a row; respawning in %.2f s",
                slot.index,
                slot.crash_streak,
                delay,
            )
        slot.respawn_at = now + delay

    def _backoff(self, streak: int) -> float:
        """No delay after a healthy worker's first crash, then doubling, with up to 25 %
        jitter so a host's slots do not respawn in lock step."""
        if streak <= 1:
            return 0.0
        base = self.conf.restart_backoff * 2 ** min(streak - 2, 64)  # no float overflow
        return min(self.conf.restart_backoff_max, base * random.uniform(1.0, 1.25))

    # ----- timers -----------------------------------------------------------------------

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        if self.phase is Phase.RUNNING:
            for slot in self.slots:
                if slot.respawn_at is not None and slot.respawn_at <= now:
                    self._spawn(slot)
        for child in list(self.children.values()):
            if self._awaits_ready(child) and child.ready_deadline <= now:
                self._kill_child(
                    child,
                    f"not ready after {self.conf.worker_ready_timeout:g} s",
                    ExitCause.HUNG,
                )
        if self.stop_deadline is not None and self.stop_deadline <= now:
            self.stop_deadline = None
            self._kill_remaining()
        if self.notify_retry_at is not None and self.notify_retry_at <= now:
            self.notify_retry_at = None
        self.leftovers.run_due(self.children)
        self._run_health_timers(now)
        for listener in self.listeners:
            listener.run_due(now)
        if self.next_watchdog is not None and self.next_watchdog <= now:
            if self._workers_healthy(now):
                self.notifier.watchdog()
            self.next_watchdog = now + self.notifier.watchdog_interval

    def _kill_child(self, child: Child, reason: str, cause: ExitCause) -> None:
        LOG.error("Child %d (slot %d) %s: killing it", child.pid, child.slot, reason)
        child.killed_by_master = reason
        child.exit_cause = child.exit_cause or cause
        self._kill(child.pid, signal.SIGKILL)

    def _kill_remaining(self) -> None:
        if not self.children:
            return
        LOG.error(
            "%d workers still running %.1f s after the stop began: killing %s",
            len(self.children),
            time.monotonic() - self.stop_began,
            ", ".join(str(pid) for pid in self.children),
        )
        for child in self.children.values():
            child.killed_by_master = "stop deadline"
            child.exit_cause = child.exit_cause or ExitCause.STOP
            self._kill(child.pid, signal.SIGKILL)

    def _workers_healthy(self, now: float) -> bool:
        stale_after = STALE_HEARTBEATS * self.heartbeat_interval
        if self.conf.worker_timeout:
            # The master replaces a worker without heartbeats itself; the watchdog tells
            # systemd only when that did not happen in time.
            stale_after = self.conf.worker_timeout + HUNG_ABORT_GRACE + self.heartbeat_interval
        return all(now - c.last_heartbeat <= stale_after for c in self.children.values() if c.ready)

    # ----- hung workers and recycling ---------------------------------------------------

    def _judged(self, child: Child) -> bool:
        """Whether its heartbeats are judged: it serves, and the master does not end it."""
        return child.ready and not child.draining and child.killed_by_master is None

    def _health_deadlines(self, now: float) -> list[float]:
        """When a worker turns hung for want of heartbeats, is killed after its SIGABRT, or
        is old enough to recycle; only times to come (a due recycle that had to wait is
        tried again on the next event: a heartbeat, a replacement ready, a reload done)."""
        deadlines = []
        timeout = self.conf.worker_timeout
        for child in self.children.values():
            if child.abort_kill_at is not None:
                deadlines.append(child.abort_kill_at)
            elif self._judged(child):
                if timeout:
                    deadlines.append(child.last_heartbeat + timeout)
                if child.limits.max_age:
                    deadlines.append(
                        max(child.started + child.limits.max_age, child.recycle_retry_at)
                    )
        return [d for d in deadlines if d > now]

    def _run_health_timers(self, now: float) -> None:
        for child in list(self.children.values()):
            if child.abort_kill_at is not None and child.abort_kill_at <= now:
                child.abort_kill_at = None
                LOG.error(
                    "Child %d (slot %d) still runs %g s after SIGABRT: killing it",
                    child.pid,
                    child.slot,
                    HUNG_ABORT_GRACE,
                )
                self._kill(child.pid, signal.SIGKILL)
            elif self._judged(child):
                since = now - child.last_heartbeat
                reason = health.hung(child.progress, since, self.conf.worker_timeout)
                if reason is not None:
                    self._abort_hung(child, reason, now)
                else:
                    self._recycle_if_due(child, now)

    def _abort_hung(self, child: Child, reason: str, now: float) -> None:
        LOG.error(
            "Child %d (slot %d) is hung: %s (worker_timeout %g s): aborting it (SIGABRT: its "
            "threads' stacks follow in the log), SIGKILL in %g s",
            child.pid,
            child.slot,
            reason,
            self.conf.worker_timeout,
            HUNG_ABORT_GRACE,
        )
        child.killed_by_master = reason
        child.exit_cause = ExitCause.HUNG
        child.abort_kill_at = now + HUNG_ABORT_GRACE
        self._kill(child.pid, signal.SIGABRT)

    def _hung_loop(self, slot: Slot, child: Child) -> bool:
        """Count a hung exit in its slot's streak; give up (crash loop) past max_restarts in
        a row. Detecting a hang takes worker_timeout, so hung workers can loop slower than
        restart_window lets the crash budget see: the streak ends only with a worker that
        served for restart_window before it hung."""
        served = time.monotonic() - child.started - self.conf.worker_timeout
        slot.hung_streak = 1 if served >= self.conf.restart_window else slot.hung_streak + 1
        if slot.hung_streak <= self.conf.max_restarts:
            return False
        LOG.error(
            "slot %d: %d workers in a row hung (max_restarts %d): giving up",
            slot.index,
            slot.hung_streak,
            self.conf.max_restarts,
        )
        self._begin_stop("crash loop", exitcodes.CRASH_LOOP)
        return True

    def _recycle_if_due(self, child: Child, now: float) -> None:
        """Start the replacement of a worker past one of its limits, as a rolling reload
        does: the old one drains once the new one is ready. One at a time, and not while
        the master reloads, stops or is drained."""
        if self.phase is not Phase.RUNNING or self.reload is not None or self.drained:
            return
        if self.recycle is not None or now < child.recycle_retry_at:
            return
        slot = self._slot_of(child)
        if slot is None or slot.worker is not child or slot.replacement is not None:
            return
        due = health.recycle_due(
            child.progress,
            child.rss,
            now - child.started,
            child.limits,
            self.conf.max_memory_per_worker,
        )
        if due is None:
            return
        cause, evidence = due
        LOG.info(
            "Recycling child %d (slot %d): %s; its replacement starts",
            child.pid,
            slot.index,
            evidence,
        )
        slot.replacement = self._fork(slot.index, self.generation, self.conf)
        self.recycle = Recycle(child, slot.replacement, ExitCause(cause))

    def _end_recycle(self, ready: Child) -> ExitCause | None:
        """The cause to drain the old worker with, if `ready` is a recycle's replacement."""
        recycle = self.recycle
        if recycle is None or recycle.replacement is not ready:
            return None
        self.recycle = None
        LOG.info(
            "Recycling child %d (slot %d): child %d is ready; draining the old one",
            recycle.old.pid,
            ready.slot,
            ready.pid,
        )
        return recycle.cause

    def _recycle_replacement_exited(self, child: Child) -> bool:
        """Whether `child` was a recycle's replacement that exited before it was ready, on
        its own: the old worker keeps serving, and its recycle is tried again later."""
        recycle = self.recycle
        if recycle is None or recycle.replacement is not child:
            return False
        self.recycle = None
        if child.draining:  # a stop, a scale-down or a reload ended it
            return False
        old = recycle.old
        old.recycle_failures += 1
        delay = health.recycle_retry_delay(old.recycle_failures, self.conf.restart_backoff_max)
        old.recycle_retry_at = time.monotonic() + delay
        LOG.error(
            "Recycling child %d (slot %d, %s) failed: its replacement %d exited before it was "
            "ready; child %d keeps serving, and is recycled again in %.1f s",
            old.pid,
            child.slot,
            recycle.cause.value,
            child.pid,
            old.pid,
            delay,
        )
        return True

    def _abandon_recycle(self) -> None:
        """A reload replaces every worker: a recycle's replacement still starting is not
        needed (nor is there a slot for it)."""
        recycle = self.recycle
        if recycle is None:
            return
        LOG.info(
            "reload: the recycle of child %d is abandoned (the reload replaces it)",
            recycle.old.pid,
        )
        slot = self._slot_of(recycle.replacement)
        if slot is not None and slot.replacement is recycle.replacement:
            slot.replacement = None
        self._drain(recycle.replacement, ExitCause.RELOAD)

    # ----- stopping ---------------------------------------------------------------------

    def _begin_stop(self, reason: str, exit_code: int = exitcodes.OK) -> None:
        if self.exit_code == exitcodes.OK:
            self.exit_code = exit_code
        if self.phase is not Phase.RUNNING:
            return
        self.phase = Phase.STOPPING
        self.stop_began = time.monotonic()
        timeout = self.conf.graceful_shutdown_timeout
        self.stop_deadline = self.stop_began + timeout if timeout else None
        self.reload = None
        LOG.info(
            "stopping (%s): draining %d workers, %s",
            reason,
            len(self.children),
            f"at most {timeout:g} s" if timeout else "with no time limit",
        )
        self.notifier.stopping(f"stopping: {reason}")
        for slot in self.slots:
            slot.respawn_at = None
        for child in self.children.values():
            self._drain(child, ExitCause.STOP)

    def _fast_stop(self) -> None:
        if self.phase is Phase.QUITTING:
            return
        if self.phase is Phase.RUNNING:
            self.notifier.stopping("fast stop")
        self.phase = Phase.QUITTING
        self.stop_began = time.monotonic()
        self.stop_deadline = self.stop_began + FAST_STOP_GRACE
        self.reload = None
        LOG.info("fast stop: %d workers exit without draining", len(self.children))
        for child in self.children.values():
            child.draining = True
            child.exit_cause = child.exit_cause or ExitCause.STOP
            self._kill(child.pid, signal.SIGQUIT)

    # ----- reloading --------------------------------------------------------------------

    def _reload(self) -> None:
        if self.phase is not Phase.RUNNING:
            return
        if self.reload is not None:
            self.reload_again = True
            LOG.info("a reload is in progress; another one follows it")
            return
        self.notifier.reloading("reloading")
        self.ready_announced = False
        try:
            new_conf = self.reload_config()
        except ConfigError as error:
            LOG.error("reload failed, keeping the running configuration: %s", error)
            self.metrics.count_reload(completed=False)
            return
        logs.change(new_conf.log_level, new_conf.log_format)
        self._abandon_recycle()
        if new_conf.reload_method == "mutate":
            self._mutate(new_conf)
        else:
            self._start_rolling_reload(new_conf)

    def _mutate(self, new_conf: Config) -> None:
        """Reset in place each worker that said it can; replace the others as a rolling
        reload does, so that they are never all stopped at once. A new executor needs new
        processes (a worker monkey-patches for eventlet as it starts): every worker is replaced."""
        new_executor = new_conf.executor != self.conf.executor
        self.conf = new_conf
        now = time.monotonic()
        replace = []
        for slot in self.slots:
            child = slot.worker
            if child is None or child.draining:
                continue  # it is exiting; the loop reaps and respawns it with the new conf
            if new_executor or not child.can_reset:  # or still starting: it never said it can
                replace.append(slot.index)
                continue
            try:
                channel.send(child.link, "reset", config=new_conf.to_json())
            except channel.PeerGone:
                continue
            child.ready = False
            child.ready_deadline = now + new_conf.worker_ready_timeout
        LOG.info(
            "reload: %d workers reset their service in place%s",
            len(self.slots) - len(replace),
            f"; {len(replace)} cannot reset in place and are replaced" if replace else "",
        )
        if replace:
            self._start_rolling_reload(new_conf, replace)
        else:
            self.metrics.count_reload(completed=True)
        self._resize(new_conf.workers)

    def _start_rolling_reload(self, new_conf: Config, slots: list[int] | None = None) -> None:
        self.last_generation += 1
        if slots is None:
            slots = list(range(min(len(self.slots), new_conf.workers)))
        self.reload = RollingReload(new_conf, self.last_generation, deque(slots))
        LOG.info(
            "reload: replacing %d workers with generation %d, %d at a time",
            len(slots),
            self.last_generation,
            new_conf.reload_batch,
        )
        self._advance_reload()

    def _advance_reload(self, done: int | None = None) -> None:
        plan = self.reload
        if plan is None:
            return
        plan.starting.discard(done)
        while plan.pending and len(plan.starting) < plan.conf.reload_batch:
            index = plan.pending.popleft()
            if index >= len(self.slots):
                continue
            slot = self.slots[index]
            slot.replacement = self._fork(index, plan.generation, plan.conf)
            plan.starting.add(index)
        if not plan.starting and not plan.pending:
            self._finish_reload()

    def _finish_reload(self) -> None:
        plan, self.reload = self.reload, None
        self.conf, self.generation = plan.conf, plan.generation
        LOG.info("reload: generation %d serves", self.generation)
        self.metrics.count_reload(completed=True)
        self._resize(self.conf.workers)
        self._reload_queued()

    def _abort_reload(self, reason: str) -> None:
        plan, self.reload = self.reload, None
        LOG.error(
            "reload to generation %d failed (%s): the running workers keep serving",
            plan.generation,
            reason,
        )
        self.metrics.count_reload(completed=False)
        for index in plan.starting:
            slot = self.slots[index]
            if slot.replacement is not None:
                self._kill_child(slot.replacement, "its reload was abandoned", ExitCause.RELOAD)
                slot.replacement.draining = True
                slot.replacement = None
            if slot.worker is None and slot.respawn_at is None:
                slot.respawn_at = time.monotonic()
        self._reload_queued()

    def _reload_queued(self) -> None:
        if self.reload_again:
            self.reload_again = False
            self._reload()

    # ----- the control socket -----------------------------------------------------------

    def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run one control-socket command; the reply's fields, or CommandError."""
        command = request["command"]
        if command == "status":
            return self._control_status()
        if command not in ("scale", "reload", "drain", "resume", "stop"):
            raise CommandError(f"unknown command {command[:40]!r}")
        fast_stop = command == "stop" and request.get("fast") is True
        if self.phase is not Phase.RUNNING and not fast_stop:  # a fast stop may end a drain
            raise CommandError(f"the master is {self.phase.value}")
        LOG.info("control socket: %s%s", command, " --fast" if fast_stop else "")
        if command == "scale":
            return self._control_scale(request.get("workers"))
        if command == "reload":
            self._reload()
        elif command in ("drain", "resume"):
            self._set_drained(command == "drain")
        elif fast_stop:
            self._fast_stop()
        else:
            self._begin_stop("stop by the control socket")
        return {}

    def _control_scale(self, workers: Any) -> dict[str, Any]:
        most = min(MAX_WORKERS, self.policy.max_workers)
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise CommandError('scale needs "workers", a whole number from 1')
        if workers > most:
            raise CommandError(f"at most {most} workers: {workers} refused")
        self._resize(workers)
        return {"workers": workers}

    def _set_drained(self, drained: bool) -> None:
        """Every worker, and every one started meanwhile, stops taking work (its calls in
        flight finish), or takes it again."""
        self.drained = drained
        for child in self.children.values():
            self._tell_drain_state(child)

    def _tell_drain_state(self, child: Child) -> None:
        with contextlib.suppress(channel.PeerGone):  # it has gone: the loop reaps it
            channel.send(child.link, "pause" if self.drained else "resume")

    def _control_status(self) -> dict[str, Any]:
        now = time.monotonic()
        rows = []
        for slot in self.slots:
            if slot.worker is None:
                respawning = {"slot": slot.index, "state": "respawning"}
                rows.append({**dict.fromkeys(WORKER_STATUS), **respawning})
            for child in (slot.worker, slot.replacement):
                if child is not None:
                    rows.append(self._child_status(child, now))
        shown = {row["pid"] for row in rows}
        rows += [self._child_status(c, now) for c in self.children.values() if c.pid not in shown]
        for row in rows:
            slot = self.slots[row["slot"]] if row["slot"] < len(self.slots) else None
            row["restarts"] = slot.restarts if slot else None
            row["last_exit"] = slot.last_exit if slot else None
        return {
            "master_pid": os.getpid(),
            "service": self.service.name,
            "generation": self.generation,
            "phase": self.phase.value,
            "drained": self.drained,
            "reloading_to": None if self.reload is None else self.reload.generation,
            "workers": rows,
        }

    def _child_status(self, child: Child, now: float) -> dict[str, Any]:
        progress = child.progress
        if child.draining:
            state = "draining"
        elif not child.ready:
            state = "starting"
        else:
            state = "drained" if progress is not None and progress.paused else "ready"
        return {
            "slot": child.slot,
            "pid": child.pid,
            "generation": child.generation,
            "state": state,
            "uptime": round(now - child.started, 3),
            "rss": child.rss,
            "cpu_percent": child.cpu_percent,
            "handled": None if progress is None else progress.handled,
            "in_flight": None if progress is None else progress.in_flight,
            "oldest_age": None if progress is None else progress.oldest_age,
            "oldest_method": None if progress is None else progress.oldest_method,
        }

    # ----- systemd status ---------------------------------------------------------------

    def _update_status(self) -> None:
        """Send READY=1 once every slot is ready (again, after a reload) and STATUS on every
        change; a message the receiver dropped is sent again a little later."""
        if self.phase is not Phase.RUNNING or self.notify_retry_at is not None:
            return
        ready = sum(1 for s in self.slots if s.worker is not None and s.worker.ready)
        text = f"{ready}/{len(self.slots)} workers ready, generation {self.generation}"
        if self.reload is not None:
            text += f", reloading to generation {self.reload.generation}"
        if self.drained:
            text += ", drained"
        if ready == len(self.slots) and self.reload is None and not self.ready_announced:
            sent = self.notifier.ready(text)
            if sent:
                self.ready_announced = True
                LOG.info("all %d workers ready", ready)
        elif text != self.status_text:
            sent = self.notifier.status(text)
        else:
            return
        if sent:
            self.status_text = text
        else:
            self.notify_retry_at = time.monotonic() + NOTIFY_RETRY
