"""One thread that owns one broker connection.

kombu and py-amqp are not thread-safe, so every AMQP operation of a connection happens on
its own I/O thread: other threads hand it work with `submit` and wake it through a socket
pair, while it waits in ``select`` on the broker socket and that pair. It reconnects with
back-off, logging one line when an outage begins and one when it ends, and keeps AMQP
heartbeats flowing whatever the handler threads are doing.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import kombu

from supervise.config import ConfigError
from supervise.rpc import local_scheme  # noqa: F401 (local:// URLs connect)
from supervise.rpc.transport_url import kombu_urls, mask
from supervise.wakeup import Wakeup

LOG = logging.getLogger(__name__)

RETRY_START = 1.0
RETRY_STEP = 2.0
RETRY_MAX = 30.0
# A connection lost sooner than this after it was made is retried after a back-off, too: a
# fault that breaks every new connection must not be retried in a tight loop.
HEALTHY_AFTER = 10.0
CONNECT_TIMEOUT = 5.0

Task = Callable[[kombu.Connection], Any]


class ConnectionLost(Exception):
    """The broker connection went away before the work could be done."""


class ConnectionFailed(ConfigError):
    """The first connection failed in a way a retry cannot mend (credentials refused, a queue
    file that cannot be opened): the operator must fix something. One line."""


class Cancelled(Exception):
    """`stop` was called before the first connection was made."""


class _Stopping(Exception):
    pass


class ConnectionThread:
    def __init__(
        self,
        transport_url: str,
        *,
        name: str,
        heartbeat: float,
        on_connect: Callable[[kombu.Connection], None],
        publisher_confirms: bool = False,
    ):
        self.transport_url = transport_url
        self.heartbeat = heartbeat
        self.publisher_confirms = publisher_confirms
        self.connected = threading.Event()
        self.last_error: str | None = None
        self.failure: ConnectionFailed | None = None
        # Set while connected, and for good once the thread has ended (a failure, a stop).
        self._settled = threading.Event()
        self.ever_connected = False
        self._retry_delay = RETRY_START
        self._on_connect = on_connect
        self._tasks: deque[tuple[Task, Future | None]] = deque()
        self._timers: list[tuple[float, Task]] = []  # few at a time: a list is enough
        self._wakeup = Wakeup()
        self._stopping = threading.Event()
        self._ended = threading.Event()
        self._flush_waiters: set[threading.Event] = set()
        self._outage_began: float | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Whether it connected within `timeout`; raises ConnectionFailed at once if the
        first connection failed for good, and Cancelled if `stop` came first."""
        self._settled.wait(timeout)
        if self.failure is not None:
            raise self.failure
        if self._stopping.is_set() and not self.ever_connected:
            raise Cancelled("stopped before the broker connection was made")
        return self.connected.is_set()

    def submit(self, task: Task) -> Future:
        """Run ``task(connection)`` on the I/O thread; its result or error lands in the Future."""
        future: Future = Future()
        self._tasks.append((task, future))
        self._wakeup.wake()
        return future

    def call_soon(self, task: Task) -> None:
        """Run ``task(connection)`` on the I/O thread; nobody waits for it, and it survives a
        reconnect (it then runs with the new connection)."""
        self._tasks.append((task, None))
        self._wakeup.wake()

    def call_later(self, delay: float, task: Task) -> None:
        """Run ``task(connection)`` on the I/O thread in `delay` seconds (or when it is next
        connected, if it is not then)."""
        self._timers.append((time.monotonic() + delay, task))
        self._wakeup.wake()

    def flush(self, timeout: float) -> bool:
        """Whether every task queued so far has run within `timeout` (reconnecting first if
        the connection is lost); False as soon as the thread ends, or has ended."""
        flushed, woken = threading.Event(), threading.Event()

        def mark(_conn: kombu.Connection) -> None:
            flushed.set()
            woken.set()

        self._flush_waiters.add(woken)  # before the check: `_run` wakes it when it ends
        try:
            if not self._ended.is_set():
                self.call_soon(mark)
                woken.wait(timeout)
        finally:
            self._flush_waiters.discard(woken)
        return flushed.is_set()

    def stop(self, timeout: float | None = None) -> None:
        self._stopping.set()
        self._wakeup.wake()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # ----- on the I/O thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    conn = self._connect()
                except _Stopping:
                    break
                except Exception as error:  # not one kombu retries
                    if not self.ever_connected:
                        self._give_up(error)
                        break
                    self._begin_outage(f"cannot connect: {describe(error)}")
                    self._stopping.wait(RETRY_MAX)  # it worked before: it may again
                    continue
                self._serve(conn)
        finally:
            self._fail_pending(ConnectionLost("the connection was closed"))
            self._ended.set()
            for waiter in list(self._flush_waiters):
                waiter.set()
            self._wakeup.close()
            self._settled.set()

    def _serve(self, conn: kombu.Connection) -> None:
        """Use `conn` until it is lost or the thread stops; back off before the next one if
        it did not last."""
        connected_at = time.monotonic()
        try:
            self._on_connect(conn)
            self._end_outage()
            self.ever_connected = True
            self.connected.set()
            self._settled.set()
            self._pump(conn)
        except (*conn.connection_errors, *conn.channel_errors, OSError) as error:
            self._begin_outage(f"lost the connection: {describe(error)}")
        except Exception as error:
            # A bug, not an outage; but dying here would leave the worker deaf for good.
            LOG.exception("unexpected error on the I/O thread: reconnecting")
            self._begin_outage(f"unexpected error: {describe(error)}")
        finally:
            self.connected.clear()
            self._settled.clear()
            with contextlib.suppress(Exception):
                conn.release()
        if time.monotonic() - connected_at >= HEALTHY_AFTER:
            self._retry_delay = RETRY_START
        elif not self._stopping.is_set():
            with contextlib.suppress(_Stopping):
                self._back_off()

    def _back_off(self) -> None:
        """Wait RETRY_START, then RETRY_STEP more each time up to RETRY_MAX; raise _Stopping
        at once on `stop`."""
        delay, self._retry_delay = self._retry_delay, min(self._retry_delay + RETRY_STEP, RETRY_MAX)
        if self._stopping.wait(delay):
            raise _Stopping

    def _connect(self) -> kombu.Connection:
        """A new connection, retried with back-off; raises _Stopping on `stop`."""
        conn = kombu.Connection(
            kombu_urls(self.transport_url),
            heartbeat=self.heartbeat,
            connect_timeout=CONNECT_TIMEOUT,
            failover_strategy="round-robin",
            transport_options={"confirm_publish": self.publisher_confirms},
        )
        try:
            # kombu sleeps between tries in one-second steps; the errback waits instead,
            # so that `stop` ends the wait at once.
            conn.ensure_connection(
                errback=self._on_connect_error,
                max_retries=None,
                interval_start=0,
                interval_step=0,
                interval_max=0,
                callback=self._raise_if_stopping,
            )
        except BaseException:
            conn.release()
            raise
        return conn

    def _give_up(self, error: Exception) -> None:
        """Whoever waits for the connection reports it (a worker's start, a client's call)."""
        self.failure = ConnectionFailed(
            f"cannot connect to {mask(self.transport_url)}: {describe(error)}"
        )
        self.last_error = str(self.failure)
        self._fail_pending(self.failure)

    def _raise_if_stopping(self) -> None:
        if self._stopping.is_set():
            raise _Stopping

    def _on_connect_error(self, error: Exception, _interval: float) -> None:
        self._raise_if_stopping()
        self._begin_outage(f"cannot connect: {describe(error)}; retrying with back-off")
        self._back_off()

    def _begin_outage(self, what: str) -> None:
        self.last_error = what
        if self._outage_began is None:
            self._outage_began = time.monotonic()
            LOG.warning("broker %s: %s", mask(self.transport_url), what)
        self._fail_pending(ConnectionLost(what))

    def _end_outage(self) -> None:
        if self._outage_began is not None:
            LOG.warning(
                "broker %s: connected again after %.1f s",
                mask(self.transport_url),
                time.monotonic() - self._outage_began,
            )
            self._outage_began = None
        self.last_error = None

    def _fail_pending(self, error: Exception) -> None:
        """Work someone waits for fails at once rather than after a reconnect, so a caller is
        told of an outage instead of hanging in it; work nobody waits for (acks, replies)
        stays queued for the next connection, where it decides what still applies."""
        kept = deque()
        while self._tasks:
            task, future = self._tasks.popleft()
            if future is None:
                kept.append((task, future))
            elif not future.done():
                future.set_exception(error)
        self._tasks.extendleft(reversed(kept))

    def _pump(self, conn: kombu.Connection) -> None:
        sock = conn.connection.sock
        while not self._stopping.is_set():
            self._move_due_timers()
            self._run_tasks(conn)
            readable, _, _ = select.select([sock, self._wakeup.reader], [], [], self._timeout())
            if self._wakeup.reader in readable:
                self._wakeup.drain()
            if sock in readable:
                self._drain_events(conn)
            if self.heartbeat:
                conn.heartbeat_check()
        self._run_tasks(conn)

    def _timeout(self) -> float | None:
        timeouts = [self.heartbeat / 4] if self.heartbeat else []
        if self._timers:
            now = time.monotonic()
            timeouts.append(max(0.0, min(at for at, _ in self._timers) - now))
        return min(timeouts, default=None)

    def _move_due_timers(self) -> None:
        now = time.monotonic()
        due = [timer for timer in self._timers if timer[0] <= now]
        for timer in due:
            self._timers.remove(timer)
            self._tasks.append((timer[1], None))

    @staticmethod
    def _drain_events(conn: kombu.Connection) -> None:
        with contextlib.suppress(socket.timeout):
            while True:
                conn.drain_events(timeout=0)

    def _run_tasks(self, conn: kombu.Connection) -> None:
        while self._tasks:
            task, future = self._tasks.popleft()
            try:
                result = task(conn)
            except (*conn.connection_errors, OSError) as error:
                if future is None:
                    self._tasks.appendleft((task, None))  # retried on the next connection
                else:
                    future.set_exception(error)
                raise
            except Exception as error:
                if future is None:
                    LOG.exception("I/O task failed")
                else:
                    future.set_exception(error)
            else:
                if future is not None:
                    future.set_result(result)


def describe(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
