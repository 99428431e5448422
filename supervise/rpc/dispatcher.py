"""Endpoint dispatch as oslo.messaging's RPCDispatcher does it, stricter about input.

A message names a method and optionally a namespace and a version (default "1.0"). The
endpoint is the first, in the order given, whose target has that namespace and a compatible
version and which exposes the method. It is called as ``method(context, **args)``.

What an endpoint exposes: functions defined in its class or a base class, whose name does
not start with ``_``. Instance attributes, static and class methods, properties and other
callable class attributes are not exposed, and looking a method up never runs endpoint
code (oslo's ``hasattr`` would evaluate a property or ``__getattr__``). A private name gets
the same NoSuchMethod as a missing one, so probing reveals nothing.

Where this differs from oslo, on purpose: a method missing from every endpoint is
NoSuchMethod even when no endpoint has the requested namespace or version (oslo says
UnsupportedVersion); UnsupportedVersion means the method exists in that namespace, only not
in a compatible version. A malformed method, namespace, version or args is InvalidMessage,
and arguments that do not fit the method's signature are InvalidArguments, where oslo would
fail with whatever exception the bad value caused.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from supervise.rpc.wire import unpack_context

DEFAULT_VERSION = "1.0"
_VERSION = re.compile(r"([0-9]+)\.([0-9]+)(?:\.([0-9]+))?")
_SHOWN_CHARS = 80


@dataclass(frozen=True)
class Target:
    """Where messages go (topic, server, exchange, fanout) and, on an endpoint, the
    namespace and version of the methods it exposes."""

    topic: str | None = None
    server: str | None = None
    exchange: str | None = None
    namespace: str | None = None
    version: str | None = None
    fanout: bool = False


DEFAULT_TARGET = Target(namespace=None, version=DEFAULT_VERSION)


def _parse_version(version: str) -> tuple[int, int, int]:
    match = _VERSION.fullmatch(version) if isinstance(version, str) else None
    if match is None:
        raise ValueError(f"not a version: {_show(version)} (expected major.minor[.patch])")
    major, minor, patch = match.groups(default="0")
    return int(major), int(minor), int(patch)


def version_is_compatible(available: str, requested: str) -> bool:
    """Whether an endpoint at version `available` can serve a message for `requested`.

    Same major, and the available minor at least the requested one; the patch level
    counts only when the minors are equal. Malformed versions raise ValueError.
    """
    have_major, have_minor, have_patch = _parse_version(available)
    want_major, want_minor, want_patch = _parse_version(requested)
    if have_major != want_major:
        return False
    return (have_minor, have_patch) >= (want_minor, want_patch)


def _show(value: object) -> str:
    """A short one-line repr of an untrusted value, for error messages."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


class DispatchError(Exception):
    """A message that cannot be dispatched; the message is one line."""


class NoSuchMethod(DispatchError):
    def __init__(self, method: str) -> None:
        super().__init__(f"Endpoint does not support RPC method {_show(method)}")
        self.method = method


class UnsupportedVersion(DispatchError):
    def __init__(self, version: str, method: str) -> None:
        super().__init__(
            f"Endpoint does not support RPC version {_show(version)}. "
            f"Attempted method: {_show(method)}"
        )
        self.version = version
        self.method = method


class InvalidArguments(DispatchError):
    pass


class InvalidMessage(DispatchError):
    pass


def _exposed(endpoint: object, name: str) -> Callable[..., Any] | None:
    """The bound method `name` of `endpoint` if it is exposed to RPC, else None. A name that
    a class declaring ``_not_rpc = True`` defines (a framework base class, such as the
    Manager's hooks) is never exposed, even where a subclass overrides it; the subclasses'
    other methods are."""
    if name.startswith("_"):
        return None
    mro = type(endpoint).__mro__
    if any(vars(cls).get("_not_rpc", False) and name in vars(cls) for cls in mro):
        return None
    for cls in mro:
        if name in vars(cls):
            attribute = vars(cls)[name]
            return attribute.__get__(endpoint) if inspect.isfunction(attribute) else None
    return None


def _namespace_and_version(endpoint: object) -> tuple[str | None, str]:
    target = getattr(endpoint, "target", None) or DEFAULT_TARGET
    if not isinstance(target, Target):
        raise TypeError(f"endpoint {endpoint!r}: 'target' must be a Target, not {target!r}")
    version = target.version or DEFAULT_VERSION
    _parse_version(version)
    return target.namespace, version


class Dispatcher:
    def __init__(self, endpoints: Sequence[object]) -> None:
        self._endpoints = [(ep, *_namespace_and_version(ep)) for ep in endpoints]

    def dispatch(self, message: Mapping[str, Any]) -> Any:
        """Call the endpoint method an inner message names and return its result.

        Raises a DispatchError for a message that cannot be dispatched; whatever the
        method itself raises propagates unchanged.
        """
        context, rest = unpack_context(message)
        method = rest.get("method")
        if not isinstance(method, str) or not method:
            raise InvalidMessage(f"'method' must be a non-empty string, got {_show(method)}")
        args = _args(rest)
        function = self._select(method, _namespace(rest), _version(rest))
        try:
            inspect.signature(function).bind(context, **args)
        except TypeError as error:
            raise InvalidArguments(f"RPC method {_show(method)}: {error}") from None
        return function(context, **args)

    def _select(self, method: str, namespace: str | None, version: str) -> Callable[..., Any]:
        wrong_version_only = False
        for endpoint, endpoint_namespace, endpoint_version in self._endpoints:
            if endpoint_namespace != namespace:
                continue
            function = _exposed(endpoint, method)
            if function is None:
                continue
            if version_is_compatible(endpoint_version, version):
                return function
            wrong_version_only = True
        if wrong_version_only:
            raise UnsupportedVersion(version, method)
        raise NoSuchMethod(method)


def _namespace(message: Mapping[str, Any]) -> str | None:
    namespace = message.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        raise InvalidMessage(f"'namespace' must be a string or null, got {_show(namespace)}")
    return namespace


def _version(message: Mapping[str, Any]) -> str:
    version = message.get("version", DEFAULT_VERSION)
    try:
        _parse_version(version)
    except ValueError as error:
        raise InvalidMessage(f"'version': {error}") from None
    return version


def _args(message: Mapping[str, Any]) -> dict[str, Any]:
    args = message.get("args", {})
    if not isinstance(args, dict) or not all(isinstance(key, str) for key in args):
        raise InvalidMessage(f"'args' must be an object, got {_show(args)}")
    return args


class BaseAPI:
    """The ``baseapi`` endpoint every nova service exposes, as nova's BaseRPCAPI."""

    target = Target(namespace="baseapi", version="1.1")

    def __init__(self, service_name: str) -> None:
        self.service_name = service_name

    def ping(self, context: Mapping[str, Any], arg: Any) -> dict[str, Any]:
        return {"service": self.service_name, "arg": arg}
