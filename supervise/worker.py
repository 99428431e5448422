"""The child side: from fork() to the hosted service and back to exit.

A worker's main thread waits on its signals and its channel to the master; the service
runs in its own threads. It stops (drains) on SIGTERM, on the master's disappearance
(channel end of file or ``PR_SET_PDEATHSIG``) and never on SIGHUP or SIGINT from outside:
a terminal's Ctrl-C or ``pkill -HUP supervise`` reaches the master, which drives the
workers. SIGQUIT exits at once without draining.
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
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import setproctitle

from supervise import channel, exitcodes, hosted, logs
from supervise.config import Config, ConfigError
from supervise.wakeup import Wakeup

LOG = logging.getLogger(__name__)


PR_SET_PDEATHSIG = 1
IGNORED_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTTIN, signal.SIGTTOU)


class _StopWhileStarting(BaseException):
    """Raised by the TERM handler into a service's start(), which may wait for a long time
    (a broker that is down); a BaseException so that the service's handlers let it pass."""


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


def run(spec: WorkerSpec, link: socket.socket, inherited: list[Closable]) -> NoReturn:
    """Entry point right after fork(), with every signal the master handles still blocked."""
    code = exitcodes.FAILED
    try:
        code = Worker(spec, link, inherited).main()
    except BaseException:
        LOG.exception("worker failed")
    finally:
        logs.flush()
        os._exit(code)


def _set_parent_death_signal(signum: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        LOG.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))


def _log_thread_stacks(_signum: int, _frame: Any) -> None:
    """SIGUSR2: every thread's stack as one log record, so the dumps of workers that share a
    log file do not interleave (faulthandler writes line by line)."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        stack = "".join(traceback.format_stack(frame))
        parts.append(f"Thread {names.get(ident, ident)}:\n{stack}")
    LOG.warning("thread stacks:\n%s", "\n".join(parts))


class Worker:
    def __init__(self, spec: WorkerSpec, link: socket.socket, inherited: list[Closable]):
        self.spec = spec
        self.conf = spec.conf
        self.link = link
        self._signals: list[int] = []
        self._stop_reason: str | None = None
        self._starting = False
        self._crashed = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._reset_after_fork(inherited)

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
        signal.signal(signal.SIGTERM, self._record_signal)
        signal.signal(signal.SIGUSR1, self._record_signal)
        signal.signal(signal.SIGQUIT, self._quit_now)
        signal.signal(signal.SIGUSR2, _log_thread_stacks)
        faulthandler.enable()
        self._selector.register(self._wakeup.reader, selectors.EVENT_READ)
        self._selector.register(self.link, selectors.EVENT_READ)

        role = f"worker {self.spec.slot}/{self.spec.generation}"
        logs.set_role(role)
        setproctitle.setproctitle(f"supervise: worker {self.spec.slot} {self.spec.service.name}")
        random.seed()
        signal.pthread_sigmask(signal.SIG_SETMASK, set())

        _set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != self.spec.master_pid:
            self._request_stop("the master exited while this worker started")

    def _record_signal(self, signum: int, _frame: Any) -> None:
        self._signals.append(signum)
        if signum == signal.SIGTERM and self._starting:
            raise _StopWhileStarting

    def _quit_now(self, _signum: int, _frame: Any) -> None:
        LOG.info("fast stop: exiting without draining")
        logs.flush()
        os._exit(exitcodes.OK)

    def _request_stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason

    def _on_crash(self) -> None:
        self._crashed.set()
        self._wakeup.wake()

    def main(self) -> int:
        try:
            target = self.spec.preloaded or hosted.load(self.spec.service)
        except hosted.ServiceNotFound as error:
            LOG.error("%s", error)
            return exitcodes.WORKER_LOAD_FAILED
        context = hosted.WorkerContext(self.spec.slot, self.spec.generation, self.conf)
        self.service = hosted.host(target, context, on_crash=self._on_crash)
        self._starting = True
        try:
            self.service.start()
        except _StopWhileStarting:
            LOG.info("stopped (SIGTERM) before the service was ready")
            return exitcodes.OK
        except ConfigError as error:  # e.g. a broker or queue file it cannot use: no retry
            LOG.error("service %s cannot start: %s", self.spec.service.name, error)
            return exitcodes.WORKER_LOAD_FAILED
        except Exception:
            LOG.exception("service %s failed to start", self.spec.service.name)
            return exitcodes.FAILED
        finally:
            self._starting = False
        self._handle_signals()
        if self._stop_reason is None:
            self._tell_master("ready")
            LOG.info("ready: %s started", self.spec.service.name)
        self._serve()
        if self._crashed.is_set():
            return exitcodes.FAILED
        return self._drain()

    def _serve(self) -> None:
        next_heartbeat = time.monotonic() + self.spec.heartbeat_interval
        while self._stop_reason is None and not self._crashed.is_set():
            timeout = max(0.0, next_heartbeat - time.monotonic())
            for key, _ in self._selector.select(timeout):
                if key.fileobj is self._wakeup.reader:
                    self._wakeup.drain()
                else:
                    self._read_channel()
            self._handle_signals()
            if time.monotonic() >= next_heartbeat:
                self._tell_master("heartbeat")
                next_heartbeat = time.monotonic() + self.spec.heartbeat_interval

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGTERM:
                self._request_stop("SIGTERM")
            elif signum == signal.SIGUSR1:
                logs.reopen()

    def _read_channel(self) -> None:
        messages, master_gone = channel.receive(self.link)
        for message in messages:
            if message["type"] == "reset":
                self._reset(Config.from_json(message["config"]))
        if master_gone:
            self._request_stop("the master has gone")

    def _reset(self, conf: Config) -> None:
        self.conf = conf
        logging.getLogger().setLevel(conf.log_level)
        if self.service.reset():
            LOG.info("reset in place")
            self._tell_master("ready")
        else:
            self._request_stop("the service cannot reset in place; a new worker replaces it")

    def _tell_master(self, kind: str) -> None:
        try:
            channel.send(self.link, kind)
        except channel.PeerGone:
            self._request_stop("the master has gone")

    def _drain(self) -> int:
        LOG.info("stopping: %s", self._stop_reason)
        self._tell_master("stopping")
        if self.conf.graceful_shutdown_timeout:
            deadline = threading.Timer(self.conf.graceful_shutdown_timeout, self._drain_timed_out)
            deadline.daemon = True
            deadline.start()
        try:
            self.service.stop()
        except Exception:
            LOG.exception("service %s failed to stop cleanly", self.spec.service.name)
            return exitcodes.FAILED
        LOG.info("stopped")
        return exitcodes.OK

    def _drain_timed_out(self) -> None:
        LOG.error(
            "stop did not finish within graceful_shutdown_timeout (%.1f s); exiting",
            self.conf.graceful_shutdown_timeout,
        )
        logs.flush()
        os._exit(exitcodes.WORKER_DRAIN_TIMEOUT)
