"""What a worker runs: find the service an operator named, and host it behind one interface.

Three kinds of service are hosted:

* a subclass of oslo.service's ``ServiceBase``, built with no arguments and driven as oslo's
  ProcessLauncher drives it (supervise/oslo_hosting.py);
* a cotyledon-style class, ``cls(worker_id)`` with ``run()`` (called in a thread; when it
  returns the worker keeps serving until told to stop) and optional ``terminate()`` and
  ``reload()``. Subclasses of ``cotyledon.Service`` are of this kind;
* any other callable, called as ``factory(context)`` with a `WorkerContext`, returning an
  object with ``start()`` (returns once it serves), ``stop()``, optional ``wait()`` and
  ``reset()`` or ``reset(conf)``: the nova ``Service`` life cycle.

The worker runs start, reset and stop on a thread of their own, one at a time. When it is
told to stop while its service starts, it sets the context's `Cancel`: a start that honours
it gives up early (raising `Cancelled`), and the worker then stops what did start.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import inspect
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.machinery import ModuleSpec
from typing import Any, Protocol

from supervise import oslo_hosting
from supervise.config import Config
from supervise.progress import Progress

ENTRY_POINT_GROUP = "supervise.services"

LOG = logging.getLogger(__name__)


class ServiceNotFound(Exception):
    """The named service cannot be found or loaded; the message is one line."""


@dataclass(frozen=True)
class ServiceRef:
    """Where a service lives: ``name`` as the operator wrote it, ``module:attribute``."""

    name: str
    module: str
    attribute: str


class Cancelled(Exception):
    """A service's start gave up because its worker was told to stop."""


class Cancel:
    """Set once, by the worker's loop, when the worker is told to stop while its service
    starts. A start checks it between steps (`raise_if_set`) and interrupts a step that waits
    with `calls`; a start that ignores it simply finishes, and is then stopped."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def is_set(self) -> bool:
        return self._event.is_set()

    def raise_if_set(self) -> None:
        if self._event.is_set():
            raise Cancelled("told to stop while starting")

    @contextlib.contextmanager
    def calls(self, callback: Callable[[], None]) -> Iterator[None]:
        """Run the block; a cancel while it runs calls `callback` (e.g. ``server.stop``) on a
        thread of its own to interrupt it. The block ends in `Cancelled` if cancelled."""
        with self._lock:
            self.raise_if_set()
            self._callbacks.append(callback)
        try:
            yield
        except Exception as error:
            if self._event.is_set():
                raise Cancelled(f"told to stop while starting ({type(error).__name__})") from None
            raise
        finally:
            with self._lock, contextlib.suppress(ValueError):  # taken by set() already
                self._callbacks.remove(callback)
        self.raise_if_set()

    def set(self) -> None:
        """Cancel; never blocks (the callbacks run on threads of their own)."""
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            threading.Thread(
                target=_call_quietly, args=(callback,), name="cancel", daemon=True
            ).start()


def _call_quietly(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception as error:
        LOG.warning("cancelling the start: %s failed: %s", callback, error)


@dataclass
class WorkerContext:
    """What a hosted service knows of the worker that runs it. `conf` is the configuration in
    force: a mutate reload replaces it before it calls the service's reset."""

    worker_id: int
    generation: int
    conf: Config
    cancel: Cancel = field(default_factory=Cancel)


def registered_services() -> dict[str, str]:
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


@functools.cache
def _own_entry_points() -> tuple[importlib.metadata.EntryPoint, ...]:
    """The entry points supervise itself declares: reading one distribution's costs far less
    at start than reading every installed one's."""
    try:
        return tuple(importlib.metadata.distribution("supervise").entry_points)
    except importlib.metadata.PackageNotFoundError:
        return ()


def _own_services() -> dict[str, str]:
    return {ep.name: ep.value for ep in _own_entry_points() if ep.group == ENTRY_POINT_GROUP}


def find_entry_point(group: str, name: str) -> importlib.metadata.EntryPoint | None:
    """The entry point `name` of `group`: supervise's own first, then other packages'
    (read only for a name supervise does not register as a service)."""
    for entry_point in _own_entry_points():
        if entry_point.group == group and entry_point.name == name:
            return entry_point
    if ":" in name or name in _own_services():
        return None
    return next(iter(importlib.metadata.entry_points(group=group, name=name)), None)


def resolve(name: str) -> ServiceRef:
    """Turn a registered name or ``module:Class`` into a ServiceRef, checking that the module
    exists without importing it (the master does not import services unless preloading).
    supervise's own names come first; other packages' are looked up only when needed."""
    registered = {} if ":" in name else _own_services()
    if ":" not in name and name not in registered:
        registered = registered_services()
    target = registered.get(name, name)
    module, _, attribute = target.partition(":")
    if not module or not attribute:
        known = ", ".join(sorted(registered)) or "none"
        raise ServiceNotFound(
            f"unknown service {name!r}: give a registered name ({known}) or module:Class"
        )
    if not _module_exists(module):
        raise ServiceNotFound(f"cannot find module {module!r} of service {name!r}")
    return ServiceRef(name, module, attribute)


def _module_exists(dotted: str) -> bool:
    """Whether `dotted` can be imported, asking the import system's finders part by part so
    that no package's ``__init__`` runs (importlib.util.find_spec would import the parents)."""
    parts = dotted.split(".")
    search_path = None
    for index, part in enumerate(parts):
        if not part.isidentifier():
            return False
        name = ".".join(parts[: index + 1])
        if name in sys.modules:
            search_path = getattr(sys.modules[name], "__path__", None)
            continue
        spec = _find_spec(name, search_path)
        if spec is None:
            return False
        search_path = spec.submodule_search_locations
        if search_path is None and index < len(parts) - 1:
            return False  # a plain module has no submodules
    return True


def _find_spec(name: str, search_path: list[str] | None) -> ModuleSpec | None:
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        spec = find_spec(name, search_path) if find_spec else None
        if spec is not None:
            return spec
    return None


def load(ref: ServiceRef) -> Any:
    """Import the service. Any failure becomes one ServiceNotFound line."""
    oslo_hosting.prefer_supervise_backend()  # before the service's imports choose oslo's
    try:
        target: Any = importlib.import_module(ref.module)
    except Exception as error:
        raise ServiceNotFound(
            f"cannot import {ref.module!r} for service {ref.name!r}: "
            f"{type(error).__name__}: {error}"
        ) from None
    try:
        for part in ref.attribute.split("."):
            target = getattr(target, part)
    except AttributeError:
        raise ServiceNotFound(
            f"module {ref.module!r} has no {ref.attribute!r} (service {ref.name!r})"
        ) from None
    if not callable(target):
        raise ServiceNotFound(f"service {ref.name!r} is not a class or factory")
    return target


class Hosted(Protocol):
    can_reset: bool  # whether `reset` works in place; if not, a mutate reload replaces it

    def start(self) -> None:
        """Build and start the service; return once it serves."""

    def stop(self) -> None:
        """Stop what started; return when the service is done. Safe after a failed start."""

    def reset(self, conf: Config) -> None:
        """Reload in place with the new configuration (only when `can_reset`)."""

    def progress(self) -> Progress | None:
        """Its RPC server's progress, for the heartbeat to the master; None without one."""

    def pause(self) -> bool:
        """Stop taking new work, finishing what runs (a drain that keeps the worker); called
        before `start`, the service starts paused. False: the service cannot pause."""

    def resume(self) -> bool:
        """Take work again after `pause`. False: the service cannot pause."""


class CotyledonStyle:
    """Hosts ``cls(worker_id)`` with ``run()`` in a thread, as cotyledon does."""

    def __init__(self, cls: type, context: WorkerContext, on_crash: Callable[[], None]):
        self._cls = cls
        self._context = context
        self._on_crash = on_crash
        self._service: Any = None
        reload = getattr(cls, "reload", None)
        # cotyledon's own default reload() means "restart me": never call it.
        self.can_reset = reload is not None and not reload.__module__.startswith("cotyledon.")

    def start(self) -> None:
        self._context.cancel.raise_if_set()
        self._service = self._cls(self._context.worker_id)
        threading.Thread(target=self._run, name="service-run", daemon=True).start()

    def _run(self) -> None:
        try:
            self._service.run()
        except BaseException:
            LOG.exception("%s.run() failed", self._cls.__name__)
            self._on_crash()

    def stop(self) -> None:
        terminate = getattr(self._service, "terminate", None)
        if terminate is not None:
            terminate()

    def reset(self, conf: Config) -> None:
        self._context.conf = conf
        self._service.reload()

    def progress(self) -> Progress | None:
        return None  # its run() is opaque: only its worker's heartbeat shows it alive

    def pause(self) -> bool:
        return False  # cotyledon's services have no such call

    def resume(self) -> bool:
        return False


class LifecycleStyle:
    """Hosts ``factory(context)`` returning an object with start/stop[/wait][/reset]."""

    def __init__(self, factory: Callable[[WorkerContext], Any], context: WorkerContext):
        self._factory = factory
        self._context = context
        self._service: Any = None
        self.can_reset = False
        self._paused = False

    def start(self) -> None:
        self._context.cancel.raise_if_set()
        self._service = self._factory(self._context)
        self.can_reset = callable(getattr(self._service, "reset", None))
        if self._paused:
            self._forward("pause")
        self._context.cancel.raise_if_set()
        self._service.start()

    def stop(self) -> None:
        if self._service is None:  # the factory failed or was cancelled: nothing started
            return
        self._service.stop()
        wait = getattr(self._service, "wait", None)
        if wait is not None:
            wait()

    def reset(self, conf: Config) -> None:
        self._context.conf = conf
        reset = self._service.reset
        if _accepts_one_argument(reset):
            reset(conf)
        else:
            reset()

    def progress(self) -> Progress | None:
        """What the service's `progress()` returns (a nova Service: its RPC server's)."""
        progress = getattr(self._service, "progress", None)
        if not callable(progress):
            return None
        snapshot = progress()
        return snapshot if isinstance(snapshot, Progress) else None

    def pause(self) -> bool:
        """The service's optional `pause()`; before `start`, it is called once the factory
        has made the service, before its start."""
        self._paused = True
        return self._forward("pause")

    def resume(self) -> bool:
        self._paused = False
        return self._forward("resume")

    def _forward(self, name: str) -> bool:
        if self._service is None:
            return True  # not made yet: `start` applies the pause
        method = getattr(self._service, name, None)
        if not callable(method):
            return False
        method()
        return True


def _accepts_one_argument(function: Callable[..., Any]) -> bool:
    try:
        inspect.signature(function).bind(None)
    except (TypeError, ValueError):  # takes no argument, or cannot be inspected
        return False
    return True


def host(target: Any, context: WorkerContext, on_crash: Callable[[], None]) -> Hosted:
    if oslo_hosting.is_oslo_service(target):
        return oslo_hosting.OsloStyle(target, context)
    if inspect.isclass(target) and callable(getattr(target, "run", None)):
        return CotyledonStyle(target, context, on_crash)
    return LifecycleStyle(target, context)
