"""What runs an RPC server's handlers: a pool of threads (``executor = threading``, the
default) or of eventlet's green threads (``executor = eventlet``).

Green threads work only in a process whose blocking calls eventlet has patched, and only for
what is built after the patch: a worker whose configuration asks for eventlet calls
`monkey_patch` right after fork, before it builds anything, so that every lock, event,
socket and thread it makes is green. The master never imports eventlet.
"""

from __future__ import annotations

import gc
import logging
import sys
import warnings
from collections import deque
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

from supervise.config import ConfigError

LOG = logging.getLogger(__name__)

THREADING = "threading"
EVENTLET = "eventlet"


class Executor(Protocol):
    def submit(self, fn: Callable[..., Any], /, *args: Any) -> object: ...

    def shutdown(self, wait: bool = True) -> None: ...


def handler_pool(kind: str, size: int) -> Executor:
    """`size` threads, or green threads, that run what is submitted, in turn."""
    if kind == EVENTLET:
        return GreenExecutor(size)
    # Imported here: a module the master imports makes real locks, which eventlet's
    # monkey-patching in a worker would leave as they are.
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(size, thread_name_prefix="rpc-handler")


def _import_eventlet() -> Any:
    """eventlet, without the deprecation warning its import prints: the README tells the
    operator who picks this executor, once, instead of every worker's start."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
            import eventlet
    except ImportError as error:
        raise ConfigError(
            f"executor eventlet needs the eventlet package (the extra supervise[eventlet]): {error}"
        ) from None
    return eventlet


def monkey_patch() -> None:
    """Make this process's threads, locks, sockets, selects and sleeps green. Call it first
    thing in a new process (a worker right after fork); raises ConfigError if eventlet
    cannot be imported."""
    eventlet = _import_eventlet()
    eventlet.monkey_patch()


def is_green() -> bool:
    """Whether this process has been monkey-patched (without importing eventlet)."""
    patcher = sys.modules.get("eventlet.patcher")
    return patcher is not None and patcher.is_monkey_patched("thread")


def green_frames() -> dict[int, FrameType]:
    """The stack of every waiting green thread, by id (their `threading` ident), when this
    process runs green; {} otherwise. `sys._current_frames` knows only the one OS thread."""
    if not is_green():
        return {}
    import greenlet

    return {
        id(green): green.gr_frame
        for green in gc.get_objects()
        if isinstance(green, greenlet.greenlet) and green.gr_frame is not None
    }


class GreenExecutor:
    """`size` green threads at most. Work submitted while all are busy waits its turn, as in a
    ThreadPoolExecutor, so `submit` never blocks its caller (the I/O thread: a GreenPool's
    own spawn would stop it consuming, and heartbeating, until a handler ends)."""

    def __init__(self, size: int):
        if not is_green():
            raise ConfigError("executor eventlet needs a process monkey-patched by eventlet")
        self._pool = _import_eventlet().GreenPool(size)
        self._waiting: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> None:
        if self._pool.free():
            self._pool.spawn_n(self._run, fn, args)
        else:
            self._waiting.append((fn, args))

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        # Green threads switch only where they wait: nothing is appended between the check
        # of `_waiting` and this green thread's end.
        while True:
            try:
                fn(*args)
            except Exception:  # a ThreadPoolExecutor keeps it in a Future nobody reads
                LOG.exception("an RPC handler failed")
            if not self._waiting:
                return
            fn, args = self._waiting.popleft()

    def shutdown(self, wait: bool = True) -> None:
        if wait:
            self._pool.waitall()
