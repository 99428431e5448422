"""The child side: from fork() to the hosted service and back to exit.

A worker's main thread is a loop in the master's shape: one selector over its signals, its
channel to the master and the completion of the service's life-cycle steps (start, reset,
stop), which run one at a time on a thread of their own. Signal handlers only record the
signal; nothing is ever raised into the service's code.

It stops (drains) on SIGTERM, on the master's disappearance (channel end of file or
``PR_SET_PDEATHSIG``) and never on SIGHUP or SIGINT from outside: a terminal's Ctrl-C or
``pkill -HUP supervise`` reaches the master, which drives the workers. A stop while the
service starts cancels the start (`hosted.Cancel`), then stops what did start. SIGQUIT
exits at once without draining.
"""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import os
import random
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import setproctitle

from supervise import channel, exitcodes, hosted, logs
from supervise.config import Config, ConfigError
from supervise.rpc import executors
from supervise.wakeup import Wakeup

LOG = logging.getLogger(__name__)


PR_SET_PDEATHSIG = 1
IGNORED_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTTIN, signal.SIGTTOU)
RECORDED_SIGNALS = (signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


class Closable(Protocol):
    def close(self) -> None: ...


@dataclass(frozen=True)
class WorkerSpec:
    """What the master hands a child at fork time."""

    slot: int
    generation: int
    conf: Config
    service: hosted.ServiceRef
    preloaded: Any  # the service's class or factory when the master preloaded it
    master_pid: int
    heartbeat_interval: float
    paused: bool = False  # the master is drained: the service starts without taking work


def run(spec: WorkerSpec, link: socket.socket, inherited: list[Closable]) -> NoReturn:
    """Entry point right after fork(), with every signal the master handles still blocked."""
    code = exitcodes.FAILED
    try:
        os.setpgid(0, 0)  # lead a group of its own (the master sets it too: no race)
        if spec.conf.executor == executors.EVENTLET:
            executors.monkey_patch()  # before the worker builds a lock, a socket or a thread
        code = Worker(spec, link, inherited).main()
    except ConfigError as error:  # eventlet cannot be imported
        LOG.error("%s", error)
        code = exitcodes.WORKER_LOAD_FAILED
    except BaseException:
        LOG.exception("worker failed")
    finally:
        logs.flush()
        os._exit(code)


def _start_failed(name: str, error: BaseException) -> int:
    """Log a failed start and return the worker's exit status. A database error's message is
    one line meant for an operator: it is logged as such, without a traceback. A schema the
    operator must sync first ends the service (no restart fixes it); an unreachable database
    may come back, so the master restarts the worker with back-off."""
    # Only a service that imported the database layer can raise its errors; importing it here
    # for the others would delay every failed start's exit (and so its respawn) by its import.
    db_errors = sys.modules.get("supervise.db.errors")
    if db_errors is not None and isinstance(error, db_errors.SchemaError):
        LOG.error("service %s cannot start: %s", name, error)
        return exitcodes.WORKER_LOAD_FAILED
    if db_errors is not None and isinstance(error, db_errors.DatabaseError):
        LOG.error("service %s failed to start: %s", name, error)
        return exitcodes.FAILED
    LOG.error("service %s failed to start", name, exc_info=error)
    return exitcodes.FAILED


def _set_parent_death_signal(signum: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        LOG.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))


def _log_thread_stacks() -> None:
    """SIGUSR2: every thread's (and green thread's) stack as one log record, so the dumps of
    workers that share a log file do not interleave (faulthandler writes line by line)."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    frames = {**sys._current_frames(), **executors.green_frames()}
    parts = []
    for ident, frame in frames.items():
        stack = "".join(traceback.format_stack(frame))
        parts.append(f"Thread {names.get(ident, ident)}:\n{stack}")
    LOG.warning("thread stacks:\n%s", "\n".join(parts))


class FaultLog:
    """Points faulthandler, which dumps every thread's stack on a fatal signal (the master's
    SIGABRT of a hung worker), at the log file when there is one, else at stderr.

    faulthandler writes to a file descriptor from its signal handler, and keeps it: it gets
    a duplicate of the log file's own, so that closing the log's stream never leaves it a
    number another file may take. A reopen (SIGUSR1) points it at the new file before the
    old duplicate is closed."""

    def __init__(self) -> None:
        self._fd: int | None = None

    def point(self) -> None:
        stream = next(
            (
                h.stream
                for h in logging.getLogger().handlers
                if isinstance(h, logging.FileHandler) and h.stream is not None
            ),
            None,
        )
        old, self._fd = self._fd, None if stream is None else os.dup(stream.fileno())
        faulthandler.enable(sys.stderr if self._fd is None else self._fd, all_threads=True)
        if old is not None:
            os.close(old)


class Lifecycle:
    """Runs one step of the service's life cycle at a time on a thread of its own, and wakes
    the worker's loop when it is done."""

    def __init__(self, wakeup: Wakeup):
        self._wakeup = wakeup
        self.step: str | None = None  # the step running, or done but not yet collected
        self._done = False
        self._error: BaseException | None = None

    @property
    def busy(self) -> bool:
        return self.step is not None

    def begin(self, step: str, work: Callable[[], None]) -> None:
        assert self.step is None, f"{step} while {self.step} runs"
        self.step, self._done, self._error = step, False, None
        threading.Thread(
            target=self._run, args=(work,), name=f"lifecycle-{step}", daemon=True
        ).start()

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as error:
            self._error = error
        self._done = True
        self._wakeup.wake()

    def collect(self) -> tuple[str, BaseException | None] | None:
        """(step, its error or None) once the running step is done; None until then."""
        if self.step is None or not self._done:
            return None
        step, self.step = self.step, None
        return step, self._error


class Worker:
    def __init__(self, spec: WorkerSpec, link: socket.socket, inherited: list[Closable]):
        self.spec = spec
        self.conf = spec.conf
        self.link = link
        self.context = hosted.WorkerContext(spec.slot, spec.generation, spec.conf)
        self.service: hosted.Hosted | None = None
        self._signals: list[int] = []
        self._stop_reason: str | None = None
        self._stop_deadline: float | None = None
        self._serving = False
        self._pending_reset: Config | None = None
        self._exit_code: int | None = None
        self._failed = False  # a reset failed: exit 1 once drained
        self._crashed = threading.Event()
        self._progress_failed = False  # warned once that the service's progress() fails
        self._paused = spec.paused  # what the master last asked: drained or not
        self._pause_applied = spec.paused  # what the service was last told
        self._selector = selectors.DefaultSelector()
        self._fault_log = FaultLog()
        self._reset_after_fork(inherited)
        self._lifecycle = Lifecycle(self._wakeup)

    def _reset_after_fork(self, inherited: list[Closable]) -> None:
        """Undo what the master's state means in a child, then unblock signals."""
        for signum in signal.valid_signals():
            if signal.getsignal(signum) not in (None, signal.SIG_DFL, signal.SIG_IGN):
                signal.signal(signum, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        for resource in inherited:
            resource.close()

        self._wakeup = Wakeup()
        self._wakeup.catch_signals()
        for signum in IGNORED_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        for signum in RECORDED_SIGNALS:
            signal.signal(signum, self._record_signal)
        self._fault_log.point()
        self._selector.register(self._wakeup.reader, selectors.EVENT_READ)
        self._selector.register(self.link, selectors.EVENT_READ)

        role = f"worker {self.spec.slot}/{self.spec.generation}"
        logs.set_role(role)
        setproctitle.setproctitle(f"supervise: worker {self.spec.slot} {self.spec.service.name}")
        random.seed()
        signal.pthread_sigmask(signal.SIG_SETMASK, set())

        _set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != self.spec.master_pid:
            self._stop_reason = "the master exited while this worker started"

    def _record_signal(self, signum: int, _frame: Any) -> None:
        self._signals.append(signum)

    def _on_crash(self) -> None:
        self._crashed.set()
        self._wakeup.wake()

    # ----- the loop -----------------------------------------------------------------------

    def main(self) -> int:
        if self._stop_reason is not None:
            LOG.info("stopping before the service started: %s", self._stop_reason)
            return exitcodes.OK
        self._lifecycle.begin("start", self._start_service)
        return self._loop()

    def _loop(self) -> int:
        next_heartbeat = time.monotonic() + self.spec.heartbeat_interval
        while self._exit_code is None:
            deadlines = [next_heartbeat]
            if self._stop_deadline is not None:
                deadlines.append(self._stop_deadline)
            timeout = max(0.0, min(deadlines) - time.monotonic())
            for key, _ in self._selector.select(timeout):
                if key.fileobj is self._wakeup.reader:
                    self._wakeup.drain()
                else:
                    self._read_channel()
            self._handle_signals()
            self._collect_lifecycle()
            if self._crashed.is_set() and self._exit_code is None:
                self._exit_code = exitcodes.FAILED
            now = time.monotonic()
            if now >= next_heartbeat:
                self._send_heartbeat()
                next_heartbeat = now + self.spec.heartbeat_interval
            if self._stop_deadline is not None and now >= self._stop_deadline:
                self._stop_timed_out()
        self._send_heartbeat(final=True)  # what it handled since the last one counts too
        return self._exit_code

    def _handle_signals(self) -> None:
        while self._signals and self._exit_code is None:
            signum = self._signals.pop(0)
            if signum == signal.SIGTERM:
                self._request_stop("SIGTERM")
            elif signum == signal.SIGQUIT:
                LOG.info("fast stop: exiting without draining")
                self._exit_code = exitcodes.OK
            elif signum == signal.SIGUSR1:
                logs.reopen()
                self._fault_log.point()
            elif signum == signal.SIGUSR2:
                _log_thread_stacks()

    def _read_channel(self) -> None:
        messages, master_gone = channel.receive(self.link)
        for message in messages:
            if message["type"] == "reset":
                self._on_reset(Config.from_json(message["config"]))
            elif message["type"] in ("pause", "resume"):
                self._paused = message["type"] == "pause"
                self._apply_pause()
        if master_gone:
            self._selector.unregister(self.link)
            self.link.close()
            self._request_stop("the master has gone")

    def _send_heartbeat(self, final: bool = False) -> None:
        """The heartbeat carries the service's progress while it serves, so the master sees
        whether the threads doing the work move on, not only this loop; the `final` one, as
        the worker exits, carries its last counters."""
        progress = None
        if (self._serving or final) and self.service is not None:
            try:
                progress = self.service.progress()
            except Exception as error:  # a hosted service's own progress() failed
                level = logging.DEBUG if self._progress_failed else logging.WARNING
                LOG.log(level, "cannot read the service's progress: %s", error)
                self._progress_failed = True
        self._tell_master("heartbeat", progress=None if progress is None else progress.to_json())

    def _tell_master(self, kind: str, **fields: Any) -> None:
        if self.link.fileno() < 0:
            return
        try:
            channel.send(self.link, kind, **fields)
        except channel.PeerGone:
            if self._exit_code is None:  # else it is exiting already
                self._request_stop("the master has gone")

    # ----- life-cycle steps ---------------------------------------------------------------

    def _start_service(self) -> None:
        target = self.spec.preloaded or hosted.load(self.spec.service)
        self.service = hosted.host(target, self.context, on_crash=self._on_crash)
        if self._pause_applied:
            self.service.pause()
        self.service.start()

    def _apply_pause(self) -> None:
        """Tell the service what the master last asked, once it serves (the start applied
        the state at fork time)."""
        if not self._serving or self._paused == self._pause_applied:
            return
        self._pause_applied = self._paused
        try:
            done = self.service.pause() if self._paused else self.service.resume()
        except Exception as error:  # a hosted service's own pause() or resume() failed
            LOG.error(
                "service %s failed to %s: %s",
                self.spec.service.name,
                "pause" if self._paused else "resume",
                error,
            )
            return
        if not done:
            LOG.warning("service %s cannot pause: it goes on taking work", self.spec.service.name)

    def _stop_service(self) -> None:
        if self.service is not None:
            self.service.stop()

    def _collect_lifecycle(self) -> None:
        outcome = self._lifecycle.collect()
        if outcome is None:
            return
        step, error = outcome
        if step == "start":
            self._started(error)
        elif step == "reset":
            self._was_reset(error)
        else:
            self._stopped(error)
        if self._exit_code is not None or self._lifecycle.busy:
            return
        if self._stop_reason is not None:
            self._begin_stop()
        elif self._pending_reset is not None:
            self._begin_reset()

    def _started(self, error: BaseException | None) -> None:
        name = self.spec.service.name
        if error is None and self._stop_reason is None:
            self._serving = True
            self._tell_master("ready", can_reset=self.service.can_reset)
            self._apply_pause()  # asked while it started
            LOG.info("ready: %s started", name)
        elif self._stop_reason is not None:
            ended = "finished" if error is None else f"ended ({type(error).__name__}: {error})"
            LOG.info(
                "start %s after the stop (%s): stopping what started", ended, self._stop_reason
            )
        elif isinstance(error, hosted.ServiceNotFound):
            LOG.error("%s", error)
            self._exit_code = exitcodes.WORKER_LOAD_FAILED
        elif isinstance(error, ConfigError):  # e.g. a broker or queue file it cannot use
            LOG.error("service %s cannot start: %s", name, error)
            self._exit_code = exitcodes.WORKER_LOAD_FAILED
        else:
            self._exit_code = _start_failed(name, error)

    def _on_reset(self, conf: Config) -> None:
        if self._stop_reason is not None:
            return
        self._pending_reset = conf
        if self._serving and not self._lifecycle.busy:
            self._begin_reset()
        # else: it runs once the service has started, or once the reset before it is done

    def _begin_reset(self) -> None:
        conf, self._pending_reset = self._pending_reset, None
        if not self.service.can_reset:
            LOG.warning("ignored a reset: the service cannot reset in place")
            return
        self.conf = conf
        logs.change(conf.log_level, conf.log_format)
        self._lifecycle.begin("reset", lambda: self.service.reset(conf))

    def _was_reset(self, error: BaseException | None) -> None:
        if error is not None:
            LOG.error("service %s failed to reset", self.spec.service.name, exc_info=error)
            self._failed = True
            self._request_stop("its reset failed")
            return
        LOG.info("reset in place")
        if self._stop_reason is None and self._pending_reset is None:
            self._tell_master("ready", can_reset=True)

    def _request_stop(self, reason: str) -> None:
        if self._stop_reason is not None:
            return
        self._stop_reason = reason
        timeout = self.conf.graceful_shutdown_timeout
        if timeout:
            self._stop_deadline = time.monotonic() + timeout
        self._tell_master("stopping")
        if self._lifecycle.step == "start":
            LOG.info("stopping (%s) while the service starts: cancelling its start", reason)
            self.context.cancel.set()
        elif not self._lifecycle.busy:
            self._begin_stop()
        # else: a reset runs; the stop begins once it is done

    def _begin_stop(self) -> None:
        LOG.info("stopping: %s", self._stop_reason)
        self._serving = False
        self._lifecycle.begin("stop", self._stop_service)

    def _stopped(self, error: BaseException | None) -> None:
        if error is not None:
            LOG.error("service %s failed to stop cleanly", self.spec.service.name, exc_info=error)
            self._exit_code = exitcodes.FAILED
            return
        LOG.info("stopped")
        self._exit_code = exitcodes.FAILED if self._failed else exitcodes.OK

    def _stop_timed_out(self) -> None:
        LOG.error(
            "stop did not finish within graceful_shutdown_timeout (%.1f s); exiting",
            self.conf.graceful_shutdown_timeout,
        )
        self._exit_code = exitcodes.WORKER_DRAIN_TIMEOUT
