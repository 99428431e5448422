"""A steady RPC load for the reliability and chaos suites: callers that call in a loop and,
optionally, casters, counting what happens to each message. It imports only supervise and the
standard library, so the systemd tests run it inside their container too."""

from __future__ import annotations

import collections
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class Client(Protocol):
    """A supervise `RPCClient` or a stock oslo.messaging one: they call alike."""

    def call(self, ctxt: dict, method: str, **kwargs: Any) -> Any: ...

    def cast(self, ctxt: dict, method: str, **kwargs: Any) -> None: ...


@dataclass
class Load:
    """Callers that call `sleep(ms)` in a loop and count what happens. With ``recorded``,
    each call is ``record(id, ms)`` with an id of its own, which the test service writes to
    its ``handled`` file; `casters` threads cast such ids too. With ``call``, each call is
    ``call(client)``, which raises if the outcome is wrong."""

    client: Client
    callers: int = 8
    ms: int = 20
    recorded: bool = False
    casters: int = 0
    call: Callable[[Client], None] | None = None
    succeeded: int = 0
    failures: list[str] = field(default_factory=list)
    called_ids: list[str] = field(default_factory=list)
    cast_ids: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _call(self) -> None:
        if self.call is not None:
            self.call(self.client)
            return
        if not self.recorded:
            assert self.client.call({}, "sleep", ms=self.ms) == self.ms
            return
        unique = uuid.uuid4().hex
        with self._lock:
            self.called_ids.append(unique)
        assert self.client.call({}, "record", id=unique, ms=self.ms) == unique

    def _caller(self) -> None:
        while not self._stop.is_set():
            try:
                self._call()
            except Exception as error:
                with self._lock:
                    self.failures.append(f"{type(error).__name__}: {error}")
            else:
                with self._lock:
                    self.succeeded += 1

    def _caster(self) -> None:
        while not self._stop.wait(self.ms / 1000):
            unique = uuid.uuid4().hex
            try:
                self.client.cast({}, "record", id=unique, ms=self.ms)
            except Exception as error:
                with self._lock:
                    self.failures.append(f"cast: {type(error).__name__}: {error}")
            else:
                with self._lock:
                    self.cast_ids.append(unique)

    @contextmanager
    def running(self) -> Iterator[Load]:
        threads = [threading.Thread(target=self._caller) for _ in range(self.callers)]
        threads += [threading.Thread(target=self._caster) for _ in range(self.casters)]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(timeout=60)

    def wait_for_calls(self, count: int) -> None:
        from tests.functional.conftest import wait_until  # pytest's side only

        start = self.succeeded
        wait_until(lambda: self.succeeded >= start + count, what=f"{count} more calls")


def handled(workdir: Path) -> collections.Counter[str]:
    """How many times the test service handled each recorded id (every master's workers
    append to the ``handled`` file of its working directory)."""
    path = workdir / "handled"
    return collections.Counter(path.read_text().split() if path.exists() else [])
