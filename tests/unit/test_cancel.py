"""The worker context's Cancel: how a service's start learns that its worker must stop."""

from __future__ import annotations

import threading

import pytest

from supervise.hosted import Cancel, Cancelled
from tests.functional.conftest import wait_until


def test_a_cancel_interrupts_the_waiting_step_and_ends_it_in_cancelled():
    cancel = Cancel()
    interrupted = threading.Event()
    entered = threading.Event()
    outcome: list[BaseException] = []

    def start() -> None:
        try:
            with cancel.calls(interrupted.set):
                entered.set()
                assert interrupted.wait(10)
        except BaseException as error:
            outcome.append(error)

    starter = threading.Thread(target=start)
    starter.start()
    assert entered.wait(10)
    cancel.set()
    starter.join(10)
    assert not starter.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], Cancelled)


def test_a_step_that_fails_because_of_the_cancel_ends_in_cancelled():
    cancel = Cancel()
    failed = pytest.raises(Cancelled, match=r"told to stop while starting \(ConnectionError\)")
    with failed, cancel.calls(lambda: None):
        cancel.set()
        raise ConnectionError("closed under it")


def test_a_failure_without_a_cancel_is_the_failure():
    with pytest.raises(ConnectionError), Cancel().calls(lambda: None):
        raise ConnectionError("a real one")


def test_after_a_cancel_no_step_starts_and_the_callback_is_not_kept():
    cancel = Cancel()
    called = []
    with cancel.calls(lambda: called.append(1)):
        pass
    cancel.set()
    cancel.set()  # once is enough; twice changes nothing
    assert cancel.is_set() and called == []
    with pytest.raises(Cancelled):
        cancel.raise_if_set()
    with pytest.raises(Cancelled), cancel.calls(lambda: called.append(2)):
        pytest.fail("the block ran after the cancel")
    assert called == []


def test_a_failing_callback_is_one_warning(caplog):
    cancel = Cancel()
    done = threading.Event()

    def callback() -> None:
        done.set()
        raise OSError("socket already closed")

    with pytest.raises(Cancelled), cancel.calls(callback):
        cancel.set()
        assert done.wait(10)
    # the warning is logged on the callback's thread right after it raised
    wait_until(lambda: "socket already closed" in caplog.text, what="the warning")
    assert "Traceback" not in caplog.text
