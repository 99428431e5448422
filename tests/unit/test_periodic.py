"""Periodic tasks (on a fake clock) and looping calls (real threads, sleeps recorded)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from supervise import periodic
from supervise.periodic import (
    BackOffLoopingCall,
    DynamicLoopingCall,
    FixedIntervalLoopingCall,
    LoopingCallBase,
    LoopingCallDone,
    LoopingCallTimeOut,
    PeriodicTasks,
    RetryDecorator,
    periodic_task,
)

LOGGER = "supervise.periodic"
DEADLINE = 5.0  # seconds any wait in these tests may take before it is a failure
PROMPT = 0.05  # seconds within which stop() must end a sleeping loop


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def no_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(periodic, "_jitter", lambda spacing: 0.0)


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == level]


# ----- the decorator -------------------------------------------------------------------


def test_decorator_sets_oslo_attributes_with_and_without_arguments() -> None:
    def bare(self: object, context: object) -> None: ...

    def custom(self: object, context: object) -> None: ...

    def empty(self: object, context: object) -> None: ...

    assert periodic_task(bare) is bare
    assert (
        periodic_task(
            spacing=5, run_immediately=True, name="renamed", external_process_ok=True, enabled=False
        )(custom)
        is custom
    )
    assert periodic_task()(empty) is empty

    assert (
        bare._periodic_task,
        bare._periodic_spacing,
        bare._periodic_immediate,
        bare._periodic_name,
        bare._periodic_external_ok,
        bare._periodic_enabled,
    ) == (True, 0, False, "bare", False, True)
    assert (
        custom._periodic_spacing,
        custom._periodic_immediate,
        custom._periodic_name,
        custom._periodic_external_ok,
        custom._periodic_enabled,
    ) == (5, True, "renamed", True, False)
    assert empty._periodic_spacing == 0


def test_decorator_rejects_unknown_arguments() -> None:
    with pytest.raises(TypeError):
        periodic_task(ticks_between_runs=3)  # type: ignore[call-overload]


# ----- scheduling ----------------------------------------------------------------------


class Recorder(PeriodicTasks):
    """Records (task, clock time, context) for each run."""

    def __init__(self, clock: FakeClock, **kwargs: Any) -> None:
        super().__init__(clock=clock, **kwargs)
        self.clock = clock
        self.runs: list[tuple[str, float, object]] = []

    def ran(self, task: str, context: object) -> None:
        self.runs.append((task, self.clock.now, context))

    def tick(self, at: float, **kwargs: Any) -> tuple[list[str], float]:
        """Run the due tasks at time `at`: the tasks that ran and the idle time."""
        self.clock.now = at
        before = len(self.runs)
        idle = self.run_periodic_tasks("ctx", **kwargs)
        return [name for name, _, _ in self.runs[before:]], idle


class Every10(Recorder):
    @periodic_task(spacing=10)
    def task(self, context: object) -> None:
        self.ran("task", context)


class Every10Immediately(Recorder):
    @periodic_task(spacing=10, run_immediately=True)
    def task(self, context: object) -> None:
        self.ran("task", context)


class DefaultSpacing(Recorder):
    @periodic_task
    def task(self, context: object) -> None:
        self.ran("task", context)


# (clock time of the call, whether the task ran, idle time returned)
SPACING_10_TABLE = [
    (0.0, False, 10.0),
    (9.9, False, 0.1),
    (10.0, True, 10.0),
    (15.0, False, 5.0),
    (20.0, True, 10.0),
    (37.0, True, 3.0),  # late: aligned on the boundary 30, next due at 40, not 47
    (40.0, True, 10.0),
    (41.0, False, 9.0),
    (75.0, True, 5.0),  # boundaries 50 and 60 missed: skipped, not caught up
    (80.0, True, 10.0),
]

SPACING_10_IMMEDIATE_TABLE = [
    (0.0, True, 10.0),
    (5.0, False, 5.0),
    (10.0, True, 10.0),
    (23.0, True, 7.0),
    (30.0, True, 10.0),
]

DEFAULT_SPACING_TABLE = [
    (0.0, False, 60.0),
    (59.5, False, 0.5),
    (60.0, True, 60.0),
    (130.0, True, 50.0),
]


@pytest.mark.usefixtures("no_jitter")
@pytest.mark.parametrize(
    ("cls", "table"),
    [
        (Every10, SPACING_10_TABLE),
        (Every10Immediately, SPACING_10_IMMEDIATE_TABLE),
        (DefaultSpacing, DEFAULT_SPACING_TABLE),
    ],
    ids=["spacing-10", "run-immediately", "spacing-0-is-60"],
)
def test_scheduling_table(
    clock: FakeClock, cls: type[Recorder], table: list[tuple[float, bool, float]]
) -> None:
    tasks = cls(clock)
    for at, expect_run, expect_idle in table:
        ran, idle = tasks.tick(at)
        assert ran == (["task"] if expect_run else []), f"at {at}"
        assert idle == pytest.approx(expect_idle), f"at {at}"


@pytest.mark.usefixtures("no_jitter")
def test_first_run_is_one_spacing_after_the_instance_is_built(clock: FakeClock) -> None:
    clock.now = 1000.0  # long after the class was defined
    tasks = Every10(clock)
    assert tasks.tick(1009.0) == ([], pytest.approx(1.0))
    assert tasks.tick(1010.0) == (["task"], 10.0)


@pytest.mark.parametrize("spacing", [1.0, 100.0])
def test_jitter_is_within_5_percent_and_does_not_move_the_grid(
    clock: FakeClock, spacing: float
) -> None:
    class Tasks(Recorder):
        @periodic_task(spacing=spacing)
        def task(self, context: object) -> None:
            self.ran("task", context)

    tasks = Tasks(clock, periodic_interval_max=1000)
    _, idle = tasks.tick(0.0)
    jitters = [idle - spacing]
    # Each jitter is measured from the first run's grid: a jitter that moved the grid would
    # accumulate and leave the bounds within a few runs.
    for boundary in (spacing * k for k in range(1, 201)):
        ran, idle = tasks.tick(clock.now + idle + 1e-9)  # when due: boundary + jitter
        assert ran == ["task"]
        jitters.append(clock.now + idle - (boundary + spacing))
    assert all(-1e-9 <= j <= 0.05 * spacing + 1e-9 for j in jitters)
    assert max(jitters) - min(jitters) > 0.02 * spacing  # really random, not constant


def test_jitter_delays_each_due_time_only(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(periodic, "_jitter", lambda spacing: 0.05 * spacing)
    tasks = Every10(clock)
    assert tasks.tick(10.0) == ([], pytest.approx(0.5))
    assert tasks.tick(10.5) == (["task"], pytest.approx(10.0))
    # Due at 20.5, 30.5, 40.5: on the grid plus 0.5 each time, not 21.0, 31.5 (accumulated).
    for due in (20.5, 30.5, 40.5):
        assert tasks.tick(due - 0.1) == ([], pytest.approx(0.1))
        assert tasks.tick(due) == (["task"], pytest.approx(10.0))


def test_run_immediately_first_run_has_no_jitter(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(periodic, "_jitter", lambda spacing: 0.05 * spacing)
    tasks = Every10Immediately(clock)
    assert tasks.tick(0.0) == (["task"], pytest.approx(10.5))


@pytest.mark.usefixtures("no_jitter")
def test_disabled_tasks_never_run_nor_count_in_the_idle_time(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Tasks(Recorder):
        @periodic_task(spacing=-1)
        def negative(self, context: object) -> None:
            self.ran("negative", context)

        @periodic_task(spacing=1, enabled=False)
        def disabled(self, context: object) -> None:
            self.ran("disabled", context)

    caplog.set_level(logging.INFO, logger=LOGGER)
    tasks = Tasks(clock, periodic_interval_max=45)
    for at in (0.0, 1.0, 100.0, 10_000.0):
        assert tasks.tick(at) == ([], 45)
    assert [r.getMessage() for r in records(caplog, logging.INFO)] == [
        "Skipping periodic task negative because its interval is negative",
        "Skipping periodic task disabled because it is disabled",
    ]


@pytest.mark.usefixtures("no_jitter")
def test_idle_time_is_capped_by_periodic_interval_max(clock: FakeClock) -> None:
    class Slow(Recorder):
        @periodic_task(spacing=600, run_immediately=True)
        def task(self, context: object) -> None:
            self.ran("task", context)

    assert Slow(clock).tick(0.0) == (["task"], 60.0)  # the default cap
    assert Slow(clock, periodic_interval_max=30).tick(0.0) == (["task"], 30.0)
    assert Slow(clock, periodic_interval_max=30).tick(0.0, periodic_interval_max=5) == (
        ["task"],
        5.0,
    )
    with pytest.raises(ValueError, match="periodic_interval_max"):
        Slow(clock, periodic_interval_max=0)


@pytest.mark.usefixtures("no_jitter")
def test_idle_time_is_measured_after_the_round(clock: FakeClock) -> None:
    class Busy(Recorder):
        @periodic_task(spacing=10, run_immediately=True)
        def task(self, context: object) -> None:
            self.clock.now += 3  # the task takes 3 s
            self.ran("task", context)

    assert Busy(clock).tick(0.0) == (["task"], 7.0)


@pytest.mark.usefixtures("no_jitter")
def test_tasks_run_in_definition_order_with_the_context_and_their_name(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Tasks(Recorder):
        @periodic_task(run_immediately=True)
        def second(self, context: object) -> None:
            self.ran("second", context)

        @periodic_task(run_immediately=True, name="renamed")
        def first(self, context: object) -> None:
            self.ran("first", context)

    caplog.set_level(logging.DEBUG, logger=LOGGER)
    tasks = Tasks(clock)
    tasks.tick(0.0)
    assert [(name, context) for name, _, context in tasks.runs] == [
        ("second", "ctx"),
        ("first", "ctx"),
    ]
    assert [r.getMessage() for r in records(caplog, logging.DEBUG)] == [
        "Running periodic task Tasks.second",
        "Running periodic task Tasks.renamed",
    ]


@pytest.mark.usefixtures("no_jitter")
def test_external_process_ok_tasks_are_skipped_when_another_process_runs_them(
    clock: FakeClock,
) -> None:
    class Tasks(Recorder):
        @periodic_task(spacing=10, run_immediately=True, external_process_ok=True)
        def external(self, context: object) -> None:
            self.ran("external", context)

    assert Tasks(clock).tick(0.0) == (["external"], 10.0)
    assert Tasks(clock, run_external_periodic_tasks=False).tick(0.0) == ([], 60.0)


# ----- inheritance ---------------------------------------------------------------------


class Base(Recorder):
    @periodic_task(spacing=10, run_immediately=True)
    def a(self, context: object) -> None:
        self.ran("Base.a", context)

    @periodic_task(spacing=20, run_immediately=True)
    def b(self, context: object) -> None:
        self.ran("Base.b", context)


class Child(Base):
    @periodic_task(spacing=5, run_immediately=True)
    def a(self, context: object) -> None:  # overridden, with its own spacing
        self.ran("Child.a", context)

    @periodic_task(spacing=30, run_immediately=True)
    def c(self, context: object) -> None:
        self.ran("Child.c", context)


class GrandChild(Child):
    b = None  # removes the inherited task

    def c(self, context: object) -> None:  # an undecorated override is no task
        self.ran("GrandChild.c", context)


class Mixin:
    @periodic_task(spacing=7, run_immediately=True)
    def m(self, context: object) -> None:
        self.ran("Mixin.m", context)  # type: ignore[attr-defined]


class WithMixin(Child, Mixin):
    pass


def run_names(tasks: Recorder) -> list[str]:
    return [name for name, _, _ in tasks.runs]


@pytest.mark.usefixtures("no_jitter")
@pytest.mark.parametrize(
    ("cls", "first_round", "idle"),
    [
        (Base, ["Base.a", "Base.b"], 10.0),
        (Child, ["Child.a", "Base.b", "Child.c"], 5.0),
        (GrandChild, ["Child.a"], 5.0),
        (WithMixin, ["Mixin.m", "Child.a", "Base.b", "Child.c"], 5.0),  # Mixin is last in MRO
    ],
)
def test_inheritance_and_override(
    clock: FakeClock, cls: type[Recorder], first_round: list[str], idle: float
) -> None:
    tasks = cls(clock)
    assert tasks.tick(0.0) == (first_round, idle)


@pytest.mark.usefixtures("no_jitter")
def test_overriding_task_keeps_its_own_spacing_and_parent_is_untouched(clock: FakeClock) -> None:
    child, base = Child(clock), Base(clock)
    child.tick(0.0)
    base.tick(0.0)
    assert child.tick(5.0)[0] == ["Child.a"]
    assert base.tick(5.0)[0] == []
    assert base.tick(10.0)[0] == ["Base.a"]


# ----- failures ------------------------------------------------------------------------


class Failing(Recorder):
    @periodic_task(spacing=10, run_immediately=True)
    def broken(self, context: object) -> None:
        self.ran("broken", context)
        raise ValueError("boom\n  on a second line")

    @periodic_task(spacing=10, run_immediately=True)
    def healthy(self, context: object) -> None:
        self.ran("healthy", context)


@pytest.mark.usefixtures("no_jitter")
def test_failing_task_is_logged_on_one_line_and_isolated(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    tasks = Failing(clock)
    assert tasks.tick(0.0) == (["broken", "healthy"], 10.0)
    assert tasks.tick(10.0) == (["broken", "healthy"], 10.0)  # still scheduled

    errors = records(caplog, logging.ERROR)
    assert [r.getMessage() for r in errors] == [
        "Error during Failing.broken: ValueError: boom on a second line"
    ] * 2
    assert all(r.exc_info is None for r in errors)
    tracebacks = [r for r in records(caplog, logging.DEBUG) if r.exc_info]
    assert len(tracebacks) == 2
    assert tracebacks[0].exc_info[0] is ValueError


@pytest.mark.usefixtures("no_jitter")
def test_failing_task_raises_with_raise_on_error(clock: FakeClock) -> None:
    tasks = Failing(clock)
    with pytest.raises(ValueError, match="boom"):
        tasks.tick(0.0, raise_on_error=True)
    assert run_names(tasks) == ["broken"]


@pytest.mark.usefixtures("no_jitter")
def test_base_exceptions_are_not_swallowed(clock: FakeClock) -> None:
    class Exiting(Recorder):
        @periodic_task(run_immediately=True)
        def task(self, context: object) -> None:
            raise SystemExit(3)

    with pytest.raises(SystemExit):
        Exiting(clock).tick(0.0)


# ----- looping calls -------------------------------------------------------------------


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The loops' sleeps, recorded instead of slept."""
    recorded: list[float] = []

    def record(self: LoopingCallBase, abort: threading.Event, seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(LoopingCallBase, "_sleep", record)
    return recorded


def returning(*values: Any, done: Any = "done") -> Callable[[], Any]:
    """A function returning `values` one per call, then raising LoopingCallDone(done)."""
    remaining: Iterator[Any] = iter(values)

    def f() -> Any:
        for value in remaining:
            if isinstance(value, BaseException):
                raise value
            return value
        raise LoopingCallDone(done)

    return f


@pytest.mark.usefixtures("sleeps")
def test_loopingcalldone_value_is_what_wait_returns() -> None:
    call = FixedIntervalLoopingCall(returning(None, None, done={"answer": 42}))
    handle = call.start(interval=1)
    assert handle.wait(DEADLINE) == {"answer": 42}
    assert call.wait(DEADLINE) == {"answer": 42}
    assert LoopingCallDone().retvalue is True


def test_arguments_are_passed_to_the_function() -> None:
    def f(a: int, b: int) -> None:
        raise LoopingCallDone(a + b)

    assert FixedIntervalLoopingCall(f, 1, b=2).start(interval=10).wait(DEADLINE) == 3


def test_exception_propagates_to_wait(caplog: pytest.LogCaptureFixture) -> None:
    error = ValueError("broken")
    call = FixedIntervalLoopingCall(returning(error))
    call.start(interval=10)
    with pytest.raises(ValueError) as raised:
        call.wait(DEADLINE)
    assert raised.value is error
    assert any(r.exc_info for r in records(caplog, logging.ERROR))


def test_stop_on_exception_false_logs_and_goes_on(
    sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    call = FixedIntervalLoopingCall(returning(ValueError("one"), KeyError("two"), done=7))
    assert call.start(interval=10, stop_on_exception=False).wait(DEADLINE) == 7
    assert [r.getMessage().split(": ", 1)[1] for r in records(caplog, logging.ERROR)] == [
        "ValueError: one",
        "KeyError: 'two'",
    ]
    assert len(sleeps) == 2


def test_starting_a_running_call_raises() -> None:
    call = FixedIntervalLoopingCall(lambda: None)
    call.start(interval=10)
    with pytest.raises(RuntimeError, match="one function at a time"):
        call.start(interval=10)
    call.stop()
    assert call.wait(DEADLINE) is True
    call.start(interval=10)  # a finished call can start again
    call.stop()
    call.wait(DEADLINE)


def test_wait_before_start_and_wait_with_timeout() -> None:
    call = FixedIntervalLoopingCall(lambda: None)
    with pytest.raises(RuntimeError, match="never started"):
        call.wait()
    call.start(interval=10)
    with pytest.raises(TimeoutError):
        call.wait(timeout=0.01)
    call.stop()
    call.wait(DEADLINE)


@pytest.mark.parametrize("initial_delay", [None, 10.0], ids=["interval", "initial-delay"])
def test_stop_interrupts_the_sleep_at_once(initial_delay: float | None) -> None:
    ran = threading.Event()
    call = FixedIntervalLoopingCall(ran.set)
    handle = call.start(interval=10, initial_delay=initial_delay)
    if initial_delay is None:
        assert ran.wait(DEADLINE)  # now in its 10 s sleep
    started = time.monotonic()
    call.stop()
    stopped = time.monotonic()
    assert handle.wait(DEADLINE) is True
    finished = time.monotonic()
    assert stopped - started < PROMPT
    assert finished - started < PROMPT
    assert ran.is_set() == (initial_delay is None)


def test_stop_during_a_run_ends_the_loop_after_it(sleeps: list[float]) -> None:
    calls = []

    def f() -> None:
        calls.append(1)
        call.stop()

    call = FixedIntervalLoopingCall(f)
    assert call.start(interval=10).wait(DEADLINE) is True
    assert (calls, sleeps) == ([1], [])


def slow(f: Callable[[], Any], duration: float) -> Callable[[], Any]:
    """`f`, taking `duration` seconds of real time per run (the work, not a synchronisation)."""

    def run() -> Any:
        time.sleep(duration)
        return f()

    return run


def test_fixed_interval_is_measured_from_the_start_of_each_run(sleeps: list[float]) -> None:
    call = FixedIntervalLoopingCall(slow(returning(None, None), 0.05))
    call.start(interval=10).wait(DEADLINE)
    assert len(sleeps) == 2
    assert all(9.0 < s <= 9.95 for s in sleeps)


def test_fixed_interval_overrun_warns_and_runs_again_at_once(
    sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    call = FixedIntervalLoopingCall(slow(returning(None), 0.05))
    call.start(interval=0.01).wait(DEADLINE)
    assert sleeps == [0.0]
    [warning] = records(caplog, logging.WARNING)
    assert "run outlasted interval by" in warning.getMessage()


def test_dynamic_sleeps_what_the_function_returns_capped(sleeps: list[float]) -> None:
    call = DynamicLoopingCall(returning(5, None, 100, 0.5))
    assert call.start(periodic_interval_max=30).wait(DEADLINE) == "done"
    assert sleeps == [5, 30, 30, 0.5]


def test_dynamic_without_maximum(sleeps: list[float]) -> None:
    assert DynamicLoopingCall(returning(100)).start().wait(DEADLINE) == "done"
    assert sleeps == [100]
    with pytest.raises(RuntimeError, match="periodic_interval_max"):
        DynamicLoopingCall(returning(None)).start().wait(DEADLINE)


def test_dynamic_failure_sleeps_the_maximum(sleeps: list[float]) -> None:
    call = DynamicLoopingCall(returning(ValueError("x"), 2))
    assert call.start(periodic_interval_max=30, stop_on_exception=False).wait(DEADLINE) == "done"
    assert sleeps == [30, 2]
    with pytest.raises(ValueError, match="periodic_interval_max"):
        DynamicLoopingCall(lambda: 1).start(stop_on_exception=False)


def test_dynamic_initial_delay(sleeps: list[float]) -> None:
    DynamicLoopingCall(returning(3)).start(initial_delay=12).wait(DEADLINE)
    assert sleeps == [12, 3]


# ----- back-off --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("results", "kwargs", "expected"),
    [
        ([False] * 5, {}, [2, 4, 8, 16, 32]),
        ([False, False, True, False], {}, [2, 4, 1, 2]),
        ([False] * 5, {"max_interval": 10}, [2, 4, 8, 10, 10]),
        ([False] * 3, {"starting_interval": 0, "min_interval": 0.5}, [0.5, 1, 2]),
    ],
    ids=["doubling", "success-resets", "max-interval", "min-interval"],
)
def test_backoff_sequence_without_jitter(
    sleeps: list[float], results: list[bool], kwargs: dict[str, float], expected: list[float]
) -> None:
    call = BackOffLoopingCall(returning(*results))
    assert call.start(jitter=None, **kwargs).wait(DEADLINE) == "done"
    assert sleeps == expected


def test_backoff_times_out_before_sleeping_past_the_timeout(sleeps: list[float]) -> None:
    call = BackOffLoopingCall(returning(*[False] * 10))
    with pytest.raises(LoopingCallTimeOut, match=r"14\.00"):
        call.start(jitter=None, timeout=10).wait(DEADLINE)
    assert sleeps == [2, 4]  # 2 + 4 + 8 would pass 10


def test_backoff_jitter_multiplies_the_sleep_and_sets_the_growth(
    sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Gauss:
        def gauss(self, mu: float, sigma: float) -> float:
            return mu + sigma  # always one deviation above the mean

    monkeypatch.setattr(BackOffLoopingCall, "_RNG", Gauss())
    BackOffLoopingCall(returning(False, False, False, True)).start().wait(DEADLINE)
    # interval 1, 1.5, 2.25 (growth 2 * 0.75); each sleep interval * 2 * 0.85; success 1 * 0.85
    assert sleeps == pytest.approx([1.7, 2.55, 3.825, 0.85])


def test_backoff_random_jitter_stays_near_its_mean(sleeps: list[float]) -> None:
    BackOffLoopingCall(returning(*[True] * 200)).start(timeout=0).wait(DEADLINE)
    assert all(0 <= s < 1.5 for s in sleeps)  # 0.75 +- 7.5 sigma
    assert 0.7 < sum(sleeps) / len(sleeps) < 0.8


# ----- retry -----------------------------------------------------------------------------


@pytest.fixture
def retry_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    recorded: list[float] = []
    monkeypatch.setattr(RetryDecorator, "_sleep", staticmethod(recorded.append))
    return recorded


def failing_then(failures: int, error: type[Exception] = OSError) -> Callable[[], str]:
    calls = []

    def f() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise error(f"failure {len(calls)}")
        return f"ok after {len(calls)} calls"

    return f


@pytest.mark.parametrize(
    ("failures", "max_retry_count", "outcome", "expected_sleeps"),
    [
        (0, 3, "ok after 1 calls", []),
        (3, 5, "ok after 4 calls", [10, 20, 25]),
        (3, 3, "ok after 4 calls", [10, 20, 25]),
        (3, 2, OSError, [10, 20]),
        (8, -1, "ok after 9 calls", [10, 20, 25, 25, 25, 25, 25, 25]),
    ],
)
def test_retry_counts_and_sleeps(
    retry_sleeps: list[float],
    failures: int,
    max_retry_count: int,
    outcome: str | type[Exception],
    expected_sleeps: list[float],
) -> None:
    retry = RetryDecorator(
        max_retry_count=max_retry_count, inc_sleep_time=10, max_sleep_time=25, exceptions=OSError
    )
    f = retry(failing_then(failures))
    if isinstance(outcome, str):
        assert f() == outcome
    else:
        with pytest.raises(outcome, match=f"failure {max_retry_count + 1}"):
            f()
    assert retry_sleeps == expected_sleeps


def test_retry_only_the_listed_exceptions(retry_sleeps: list[float]) -> None:
    with pytest.raises(KeyError):
        RetryDecorator(exceptions=(OSError,))(failing_then(1, KeyError))()
    with pytest.raises(OSError):
        RetryDecorator()(failing_then(1))()  # no exceptions listed: nothing is retried
    assert retry_sleeps == []


def test_retry_count_is_per_call(retry_sleeps: list[float]) -> None:
    attempts: list[int] = []

    @RetryDecorator(max_retry_count=2, inc_sleep_time=1, exceptions=OSError)
    def always_failing(n: int) -> None:
        """Documented."""
        attempts.append(n)
        raise OSError(n)

    for n in (1, 2):
        with pytest.raises(OSError):
            always_failing(n)
    assert attempts == [1, 1, 1, 2, 2, 2]
    assert retry_sleeps == [1, 2, 1, 2]
    assert (always_failing.__name__, always_failing.__doc__) == ("always_failing", "Documented.")
