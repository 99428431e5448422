"""Periodic tasks and looping calls, with oslo.service's semantics on plain threads.

``@periodic_task`` marks a method of a :class:`PeriodicTasks` subclass; the service calls
:meth:`PeriodicTasks.run_periodic_tasks` in a :class:`DynamicLoopingCall`, which sleeps the
idle time it returns. Differences from oslo.service, all deliberate:

- A task's first run (without ``run_immediately``) is ``spacing`` after the
  :class:`PeriodicTasks` instance is built, not after the module defining it was imported.
- Jitter delays each due time only; it does not move the task's grid of boundaries, so it
  never accumulates and the mean period stays ``spacing``. It is not rounded to whole
  seconds, so short spacings get jitter too.
- Inherited tasks are resolved like attributes: an override decorated again replaces the
  parent's task, an override that is not a periodic task (even ``None``) removes it.
- The idle time is exact (the nearest due time after the round, capped by
  ``periodic_interval_max``) rather than the smallest spacing.
- A failing task or loop function is caught as ``Exception``; ``SystemExit`` and other
  ``BaseException`` propagate.
- A :class:`DynamicLoopingCall` that swallows exceptions sleeps ``periodic_interval_max``
  after a failure (oslo retries at once, a busy loop).
- :class:`RetryDecorator` counts retries per call (oslo's count survives across calls) and
  retries in the caller's thread, so thread-locals and tracebacks are the caller's.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, overload

LOG = logging.getLogger(__name__)

DEFAULT_INTERVAL = 60.0
JITTER_FRACTION = 0.05

F = TypeVar("F", bound=Callable[..., Any])


def _describe(error: BaseException) -> str:
    """The exception on one line, whatever its message holds (SQL errors span lines)."""
    return " ".join(f"{type(error).__name__}: {error}".split())


# ----- periodic tasks ------------------------------------------------------------------


@overload
def periodic_task(func: F, /) -> F: ...


@overload
def periodic_task(
    *,
    spacing: float = 0,
    run_immediately: bool = False,
    name: str | None = None,
    external_process_ok: bool = False,
    enabled: bool = True,
) -> Callable[[F], F]: ...


def periodic_task(
    func: F | None = None,
    /,
    *,
    spacing: float = 0,
    run_immediately: bool = False,
    name: str | None = None,
    external_process_ok: bool = False,
    enabled: bool = True,
) -> F | Callable[[F], F]:
    """Mark a method of a :class:`PeriodicTasks` subclass as a periodic task.

    ``spacing`` is the period in seconds: 0 means :data:`DEFAULT_INTERVAL`, a negative value
    disables the task, as does ``enabled=False``. Without ``run_immediately`` the first run
    is one spacing after the scheduler is built. ``external_process_ok`` tasks are skipped
    when the scheduler is told another process runs them. The attributes set are oslo's,
    so code that inspects them keeps working.
    """

    def decorate(f: F) -> F:
        f._periodic_task = True  # type: ignore[attr-defined]
        f._periodic_external_ok = external_process_ok  # type: ignore[attr-defined]
        f._periodic_enabled = enabled  # type: ignore[attr-defined]
        f._periodic_name = name or f.__name__  # type: ignore[attr-defined]
        f._periodic_spacing = spacing  # type: ignore[attr-defined]
        f._periodic_immediate = run_immediately  # type: ignore[attr-defined]
        return f

    return decorate if func is None else decorate(func)


def _is_periodic_task(value: object) -> bool:
    return getattr(value, "_periodic_task", False) is True


@dataclass
class _Schedule:
    """When one task of one instance runs next.

    ``boundary`` is the task's grid point: the last run's time rounded down to a multiple of
    the spacing from the first run, so a late run does not shift later ones. ``None`` until a
    ``run_immediately`` task has run once.
    """

    attribute: str
    name: str
    spacing: float
    external_ok: bool
    boundary: float | None
    due: float


class PeriodicTasks:
    """Base class whose ``@periodic_task`` methods, inherited ones included, run on schedule.

    Scheduling, per task: its boundaries are the instance's creation time plus multiples of
    its spacing (with ``run_immediately``: its first run, at the first call, plus multiples).
    After a run at time t, the task is next due at the first boundary after t plus a jitter
    drawn uniformly from [0, 5 %] of the spacing; boundaries missed by a late run are
    skipped, not caught up. The first due time (creation + spacing) is jittered too; a
    ``run_immediately`` task's first run is not.

    ``run_external_periodic_tasks=False`` skips the tasks marked ``external_process_ok``
    (another process runs them), as oslo's option of the same name. ``clock`` is a monotonic
    clock in seconds, replaceable for tests.
    """

    _not_rpc = True  # a manager inherits these methods; none of them is an RPC method

    # (attribute name, function) of every periodic task of the class, in definition order,
    # parents first; filled by __init_subclass__.
    _periodic_tasks: ClassVar[tuple[tuple[str, Callable[..., Any]], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        tasks: dict[str, Callable[..., Any]] = {}
        for klass in reversed(cls.__mro__):  # later (more derived) classes override earlier
            for attribute, value in vars(klass).items():
                if _is_periodic_task(value):
                    tasks[attribute] = value
                else:
                    tasks.pop(attribute, None)
        cls._periodic_tasks = tuple(tasks.items())

    def __init__(
        self,
        *,
        periodic_interval_max: float = DEFAULT_INTERVAL,
        run_external_periodic_tasks: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if periodic_interval_max <= 0:
            raise ValueError(f"periodic_interval_max must be positive: {periodic_interval_max}")
        self.periodic_interval_max = periodic_interval_max
        self.run_external_periodic_tasks = run_external_periodic_tasks
        self._clock = clock
        started = clock()
        self._periodic_schedules = [
            schedule
            for attribute, task in self._periodic_tasks
            if (schedule := _first_schedule(attribute, task, started)) is not None
        ]

    def run_periodic_tasks(
        self,
        context: Any,
        raise_on_error: bool = False,
        periodic_interval_max: float | None = None,
    ) -> float:
        """Run the tasks that are due, in order; return the seconds until the next one is.

        A failing task is logged and the others still run, unless ``raise_on_error``. The
        result is at most ``periodic_interval_max`` (the constructor's when not given).
        """
        cap = self.periodic_interval_max if periodic_interval_max is None else periodic_interval_max
        owner = type(self).__name__
        scheduled = [
            s
            for s in self._periodic_schedules
            if self.run_external_periodic_tasks or not s.external_ok
        ]
        for schedule in scheduled:
            now = self._clock()
            if now < schedule.due:
                continue
            _reschedule(schedule, now)
            full_name = f"{owner}.{schedule.name}"
            LOG.debug("Running periodic task %s", full_name)
            try:
                getattr(self, schedule.attribute)(context)
            except Exception as error:
                if raise_on_error:
                    raise
                LOG.error("Error during %s: %s", full_name, _describe(error))
                LOG.debug("Traceback of the error during %s", full_name, exc_info=True)
        now = self._clock()
        return min([cap, *(max(0.0, s.due - now) for s in scheduled)])


def _first_schedule(attribute: str, task: Callable[..., Any], now: float) -> _Schedule | None:
    """The task's schedule at the scheduler's creation; None (logged) if it is disabled."""
    name = task._periodic_name  # type: ignore[attr-defined]
    spacing = task._periodic_spacing  # type: ignore[attr-defined]
    if spacing < 0:
        LOG.info("Skipping periodic task %s because its interval is negative", name)
        return None
    if not task._periodic_enabled:  # type: ignore[attr-defined]
        LOG.info("Skipping periodic task %s because it is disabled", name)
        return None
    spacing = spacing or DEFAULT_INTERVAL
    immediate = task._periodic_immediate  # type: ignore[attr-defined]
    return _Schedule(
        attribute=attribute,
        name=name,
        spacing=spacing,
        external_ok=task._periodic_external_ok,  # type: ignore[attr-defined]
        boundary=None if immediate else now,
        due=now if immediate else now + spacing + _jitter(spacing),
    )


def _jitter(spacing: float) -> float:
    return random.uniform(0, spacing * JITTER_FRACTION)


def _reschedule(schedule: _Schedule, now: float) -> None:
    """Move the task's boundary to the last multiple of its spacing at or before `now`, and
    its due time to the next boundary plus 0-5 % of the spacing.

    The jitter only delays this due time: the next boundary is computed from the unjittered
    one, so the grid stays fixed and tasks with equal spacings do not fire together.
    """
    spacing = schedule.spacing
    if schedule.boundary is None:
        schedule.boundary = now
    else:
        schedule.boundary += math.floor((now - schedule.boundary) / spacing) * spacing
    schedule.due = schedule.boundary + spacing + _jitter(spacing)


# ----- looping calls -------------------------------------------------------------------


class LoopingCallDone(Exception):
    """Raised by a looping call's function to end the loop; ``wait()`` returns ``retvalue``."""

    def __init__(self, retvalue: Any = True) -> None:
        super().__init__(retvalue)
        self.retvalue = retvalue


class LoopingCallTimeOut(Exception):
    """A :class:`BackOffLoopingCall` would have gone past its timeout."""


class LoopingCallResult:
    """What ``start()`` returns: ``wait()`` gives the loop's outcome."""

    def __init__(self) -> None:
        self._finished = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def _set(self, value: Any) -> None:
        self._value = value
        self._finished.set()

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._finished.set()

    def done(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> Any:
        """Return the ``LoopingCallDone`` value (``True`` after ``stop()``), or raise the
        exception that ended the loop; ``TimeoutError`` if it is still running."""
        if not self._finished.wait(timeout):
            raise TimeoutError(f"the looping call is still running after {timeout} s")
        if self._error is not None:
            raise self._error
        return self._value


# What a run that raised returns when the loop swallows exceptions (stop_on_exception=False).
_FAILED = object()

IdleFor = Callable[[Any, float], float]


class LoopingCallBase:
    """Calls ``f(*args, **kwargs)`` in a thread of its own until stopped.

    Each subclass's ``start`` decides the sleep between runs from the run's result and
    duration. ``stop()`` sets an event the sleep waits on, so it takes effect at once; a run
    in progress finishes first. The function ends the loop by raising
    :class:`LoopingCallDone`; any other exception ends it too, unless
    ``stop_on_exception=False``, in which case it is logged and the loop goes on.
    """

    _KIND = "Looping call"

    def __init__(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._f = f
        self._args = args
        self._kwargs = kwargs
        self._func_name = getattr(f, "__qualname__", repr(f))
        self._lock = threading.Lock()
        self._abort = threading.Event()
        self._result: LoopingCallResult | None = None

    @property
    def running(self) -> bool:
        return self._result is not None and not self._result.done()

    def stop(self) -> None:
        self._abort.set()

    def wait(self, timeout: float | None = None) -> Any:
        if self._result is None:
            raise RuntimeError(f"{self._KIND} {self._func_name!r} was never started")
        return self._result.wait(timeout)

    def _start(
        self, idle_for: IdleFor, initial_delay: float | None, stop_on_exception: bool
    ) -> LoopingCallResult:
        with self._lock:
            if self.running:
                raise RuntimeError(f"{self._KIND} can only run one function at a time")
            self._abort = abort = threading.Event()
            self._result = result = LoopingCallResult()
        thread = threading.Thread(
            target=self._loop,
            args=(abort, result, idle_for, initial_delay, stop_on_exception),
            name=f"{self._KIND}: {self._func_name}",
            daemon=True,
        )
        thread.start()
        return result

    def _sleep(self, abort: threading.Event, seconds: float) -> None:
        """Sleep unless stopped; the tests replace it to record the sleeps."""
        abort.wait(seconds)

    def _loop(
        self,
        abort: threading.Event,
        result: LoopingCallResult,
        idle_for: IdleFor,
        initial_delay: float | None,
        stop_on_exception: bool,
    ) -> None:
        try:
            if initial_delay:
                self._sleep(abort, initial_delay)
            while not abort.is_set():
                started = time.monotonic()
                returned = self._call(stop_on_exception)
                if abort.is_set():
                    break
                idle = max(0.0, idle_for(returned, time.monotonic() - started))
                LOG.debug("%s %r sleeping for %.2f seconds", self._KIND, self._func_name, idle)
                self._sleep(abort, idle)
        except LoopingCallDone as done:
            result._set(done.retvalue)
        except BaseException as error:
            LOG.error("%s %r failed", self._KIND, self._func_name, exc_info=True)
            result._fail(error)
        else:
            result._set(True)

    def _call(self, stop_on_exception: bool) -> Any:
        try:
            return self._f(*self._args, **self._kwargs)
        except LoopingCallDone:
            raise
        except Exception as error:
            if stop_on_exception:
                raise
            LOG.error("%s %r failed: %s", self._KIND, self._func_name, _describe(error))
            LOG.debug("Traceback of %r", self._func_name, exc_info=True)
            return _FAILED


class FixedIntervalLoopingCall(LoopingCallBase):
    """Runs the function every ``interval`` seconds, measured from the start of each run."""

    _KIND = "Fixed interval looping call"

    def start(
        self,
        interval: float,
        initial_delay: float | None = None,
        stop_on_exception: bool = True,
    ) -> LoopingCallResult:
        def idle_for(_returned: Any, elapsed: float) -> float:
            overrun = round(elapsed - interval, 2)
            if overrun > 0:
                LOG.warning(
                    "Function %r run outlasted interval by %.2f sec", self._func_name, overrun
                )
            return interval - elapsed

        return self._start(idle_for, initial_delay, stop_on_exception)


class DynamicLoopingCall(LoopingCallBase):
    """Sleeps, after each run, the seconds the function returned, at most
    ``periodic_interval_max``; ``periodic_interval_max`` when it returned ``None``."""

    _KIND = "Dynamic interval looping call"

    def start(
        self,
        initial_delay: float | None = None,
        periodic_interval_max: float | None = None,
        stop_on_exception: bool = True,
    ) -> LoopingCallResult:
        if not stop_on_exception and periodic_interval_max is None:
            raise ValueError(
                "a dynamic looping call that survives exceptions needs periodic_interval_max:"
                " the sleep after a failed run"
            )

        def idle_for(returned: Any, _elapsed: float) -> float:
            if returned is None or returned is _FAILED:
                if periodic_interval_max is None:
                    raise RuntimeError(
                        "A dynamic interval looping call should supply either an interval"
                        " or periodic_interval_max"
                    )
                return periodic_interval_max
            if periodic_interval_max is None:
                return returned
            return min(returned, periodic_interval_max)

        return self._start(idle_for, initial_delay, stop_on_exception)


class BackOffLoopingCall(LoopingCallBase):
    """Runs the function until it raises :class:`LoopingCallDone`, backing off on failure.

    The function returns True (success: the next sleep is ``starting_interval``) or False
    (failure: the interval doubles, up to ``max_interval``). Each sleep is multiplied by a
    random factor drawn from a normal distribution of mean ``jitter`` and deviation 0.1,
    while the interval grows by ``2 * jitter`` (oslo's rule); ``jitter=None`` turns the
    randomness off (factor 1, growth 2). If the failures' sleeps would exceed ``timeout``
    (0: never), the loop ends with :class:`LoopingCallTimeOut` instead of sleeping.
    """

    _KIND = "Dynamic backoff interval looping call"
    _RNG = random.SystemRandom()

    def start(
        self,
        initial_delay: float | None = None,
        starting_interval: float = 1,
        timeout: float = 300,
        max_interval: float = 300,
        jitter: float | None = 0.75,
        min_interval: float = 0.001,
    ) -> LoopingCallResult:
        interval = starting_interval
        error_time = 0.0
        growth = 2 * (1.0 if jitter is None else jitter)

        def idle_for(success: Any, _elapsed: float) -> float:
            nonlocal interval, error_time
            factor = 1.0 if jitter is None else abs(self._RNG.gauss(jitter, 0.1))
            if success:
                interval = starting_interval
                error_time = 0.0
                return interval * factor
            idle = min(max(interval * 2 * factor, min_interval), max_interval)
            interval = max(interval * growth, min_interval)
            if timeout > 0 and error_time + idle > timeout:
                raise LoopingCallTimeOut(
                    f"Looping call timed out after {error_time + idle:.2f} seconds"
                )
            error_time += idle
            return idle

        return self._start(idle_for, initial_delay, stop_on_exception=True)


class RetryDecorator:
    """Retry the decorated function when it raises one of ``exceptions``.

    The n-th retry waits ``n * inc_sleep_time`` seconds, at most ``max_sleep_time``; after
    ``max_retry_count`` retries (-1: no limit) the exception propagates. Exceptions not
    listed propagate at once; with no ``exceptions`` nothing is retried.
    """

    # The sleep between attempts; a class attribute so that tests can record it.
    _sleep: Callable[[float], None] = staticmethod(time.sleep)

    def __init__(
        self,
        max_retry_count: int = -1,
        inc_sleep_time: float = 10,
        max_sleep_time: float = 60,
        exceptions: type[BaseException] | tuple[type[BaseException], ...] = (),
    ) -> None:
        self._max_retry_count = max_retry_count
        self._inc_sleep_time = inc_sleep_time
        self._max_sleep_time = max_sleep_time
        self._exceptions = exceptions

    def __call__(self, f: F) -> F:
        func_name = getattr(f, "__qualname__", repr(f))

        @functools.wraps(f)
        def retrying(*args: Any, **kwargs: Any) -> Any:
            retries = 0
            while True:
                try:
                    return f(*args, **kwargs)
                except self._exceptions:
                    if self._max_retry_count != -1 and retries >= self._max_retry_count:
                        LOG.debug(
                            "Cannot retry %s upon suggested exception since retry count (%d)"
                            " reached max retry count (%d).",
                            func_name,
                            retries,
                            self._max_retry_count,
                        )
                        raise
                    retries += 1
                    pause = min(retries * self._inc_sleep_time, self._max_sleep_time)
                    LOG.debug(
                        "Exception which is in the suggested list of exceptions occurred"
                        " while invoking function: %s; retry %d in %.2f seconds.",
                        func_name,
                        retries,
                        pause,
                    )
                    self._sleep(pause)

        return retrying  # type: ignore[return-value]
