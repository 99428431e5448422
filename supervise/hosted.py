"""What a worker runs: find the service an operator named, and host it behind one interface.

Two kinds of service are hosted:

* a cotyledon-style class, ``cls(worker_id)`` with ``run()`` (called in a thread; when it
  returns the worker keeps serving until told to stop) and optional ``terminate()`` and
  ``reload()``. Subclasses of ``cotyledon.Service`` are of this kind;
* any other callable, called as ``factory(context)`` with a `WorkerContext`, returning an
  object with ``start()`` (returns once it serves), ``stop()``, optional ``wait()`` and
  ``reset()``: the nova ``Service`` life cycle.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from typing import Any, Protocol

from supervise.config import Config

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


@dataclass(frozen=True)
class WorkerContext:
    """What a hosted service knows of the worker that runs it."""

    worker_id: int
    generation: int
    conf: Config


def registered_services() -> dict[str, str]:
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def resolve(name: str) -> ServiceRef:
    """Turn a registered name or ``module:Class`` into a ServiceRef, checking that the module
    exists without importing it (the master does not import services unless preloading)."""
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
    def start(self) -> None:
        """Build and start the service; return once it serves."""

    def stop(self) -> None:
        """Stop gracefully; return when the service is done."""

    def reset(self) -> bool:
        """Reload in place; False when the service cannot, and the worker must be replaced."""


class CotyledonStyle:
    """Hosts ``cls(worker_id)`` with ``run()`` in a thread, as cotyledon does."""

    def __init__(self, cls: type, context: WorkerContext, on_crash: Callable[[], None]):
        self._cls = cls
        self._context = context
        self._on_crash = on_crash
        self._service: Any = None

    def start(self) -> None:
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

    def reset(self) -> bool:
        reload = getattr(type(self._service), "reload", None)
        # cotyledon's own default reload() means "restart me": say so instead of calling it.
        if reload is None or reload.__module__.startswith("cotyledon."):
            return False
        self._service.reload()
        return True


class LifecycleStyle:
    """Hosts ``factory(context)`` returning an object with start/stop[/wait][/reset]."""

    def __init__(self, factory: Callable[[WorkerContext], Any], context: WorkerContext):
        self._factory = factory
        self._context = context
        self._service: Any = None

    def start(self) -> None:
        self._service = self._factory(self._context)
        self._service.start()

    def stop(self) -> None:
        self._service.stop()
        wait = getattr(self._service, "wait", None)
        if wait is not None:
            wait()

    def reset(self) -> bool:
        reset = getattr(self._service, "reset", None)
        if reset is None:
            return False
        reset()
        return True


def host(target: Any, context: WorkerContext, on_crash: Callable[[], None]) -> Hosted:
    if inspect.isclass(target) and callable(getattr(target, "run", None)):
        return CotyledonStyle(target, context, on_crash)
    return LifecycleStyle(target, context)
