"""Hosting an oslo.service service unchanged: ``supervise --workers 4 pkg.module:MyService``
where ``MyService`` subclasses ``oslo_service.service.ServiceBase`` (or ``Service``).

oslo.service picks its backend (eventlet or threading) the first time anything asks for one,
and ``import oslo_service.service`` asks: by the time the service's class can be looked at,
the choice is made. So before a service is imported, `prefer_supervise_backend` arranges for
oslo's backend default hook to be registered the moment ``oslo_service.backend`` is imported,
by whoever imports it, without importing anything of oslo.service itself (a service that does
not use it pays nothing). The default is threading, or eventlet in a worker that supervise
monkey-patched (``executor = eventlet``); a service that calls ``init_backend`` itself keeps
its own choice.

The service is driven as oslo's ProcessLauncher drives it in a child: built with no
arguments, then ``start()``; on the way out ``stop()`` then ``wait()``; on a mutate reload the
global ``cfg.CONF`` re-reads its files (``mutate_config_files``), then ``reset()``. As
oslo's launcher was handed a parsed configuration, the global ``cfg.CONF`` is parsed from
supervise's config files before the service is built, unless it was parsed already.
"""

from __future__ import annotations

import importlib.abc
import inspect
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import TYPE_CHECKING, Any

from supervise.config import ConfigError
from supervise.rpc import executors

if TYPE_CHECKING:
    from supervise.config import Config
    from supervise.hosted import WorkerContext
    from supervise.progress import Progress

BACKEND_MODULE = "oslo_service.backend"
SERVICE_BASE_MODULE = "oslo_service.backend.base"


def _default_backend() -> Any:
    """oslo's backend default hook: the backend that matches this process's threads."""
    types = sys.modules[BACKEND_MODULE].BackendType
    return types.EVENTLET if executors.is_green() else types.THREADING


class _RegisteringLoader(importlib.abc.Loader):
    """Runs ``oslo_service.backend`` with its own loader, then registers the default hook."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        module.register_backend_default_hook(_default_backend)


class _BackendHookFinder(importlib.abc.MetaPathFinder):
    """First on `sys.meta_path`: finds ``oslo_service.backend`` through the finders after it,
    and hands it a loader that registers the hook; it leaves every other module alone."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if name != BACKEND_MODULE:
            return None
        sys.meta_path.remove(self)  # imported once: not needed afterwards
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(name, path, target) if find_spec else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


def prefer_supervise_backend() -> None:
    """Make oslo.service default to this process's kind of threads (see the module's
    docstring). Idempotent; costs nothing unless oslo.service is imported afterwards."""
    backend = sys.modules.get(BACKEND_MODULE)
    if backend is not None:
        backend.register_backend_default_hook(_default_backend)
    elif not any(isinstance(finder, _BackendHookFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _BackendHookFinder())


def is_oslo_service(target: Any) -> bool:
    """Whether `target` is a subclass of oslo.service's ``ServiceBase`` (which only a
    service whose module imported oslo.service can be: nothing is imported to tell)."""
    base = sys.modules.get(SERVICE_BASE_MODULE)
    return base is not None and inspect.isclass(target) and issubclass(target, base.ServiceBase)


def _global_oslo_config() -> Any:
    """oslo.config's global ``cfg.CONF`` when the service's code imported oslo.config."""
    cfg = sys.modules.get("oslo_config.cfg")
    return None if cfg is None else cfg.CONF


def _parse_global_config(files: tuple[str, ...]) -> None:
    conf = _global_oslo_config()
    if conf is None or "config_file" in conf:  # not used, or parsed by the service already
        return
    try:
        conf(args=[], project=None, default_config_files=list(files))
    except Exception as error:  # oslo.config's errors name the file and the line
        raise ConfigError(f"oslo.config cannot parse {', '.join(files)}: {error}") from None


def _mutate_global_config() -> None:
    conf = _global_oslo_config()
    if conf is not None and "config_file" in conf:
        conf.mutate_config_files()


class OsloStyle:
    """Hosts an oslo.service ``ServiceBase`` subclass: ``cls()``, start; stop, wait; reset."""

    can_reset = True  # reset() is one of ServiceBase's abstract methods

    def __init__(self, cls: type, context: WorkerContext):
        self._cls = cls
        self._context = context
        self._service: Any = None

    def start(self) -> None:
        self._context.cancel.raise_if_set()
        _parse_global_config(self._context.conf.config_file)
        self._service = self._cls()
        self._context.cancel.raise_if_set()
        self._service.start()

    def stop(self) -> None:
        if self._service is None:  # never built: nothing started
            return
        self._service.stop()
        self._service.wait()

    def reset(self, conf: Config) -> None:
        self._context.conf = conf
        _mutate_global_config()
        self._service.reset()

    def progress(self) -> Progress | None:
        return None  # its RPC server is its own: only its worker's heartbeat shows it alive

    def pause(self) -> bool:
        return False  # oslo's services have no such call

    def resume(self) -> bool:
        return False
