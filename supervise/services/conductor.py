"""nova-conductor's manager: the database front of the services that have no database access.

Topic ``conductor``, version 3.0, keyword arguments, JSON in and out; records travel as
``to_primitive()`` objects (every column, times as ISO 8601 text of naive UTC):

- ``service_get_all(host=None, binary=None)`` -> [record]
- ``service_get_by_host_and_binary(host, binary)`` -> record | null
- ``service_create(values)`` -> record; values: host, binary (required), topic, version.
  ServiceBinaryExists / ServiceTopicExists when a live record clashes (the caller re-reads);
  TooOldComputeService for a nova-compute older than OLDEST_SUPPORTED_COMPUTE_VERSION
- ``service_update(service_id, values)`` -> record; values: disabled, disabled_reason,
  forced_down, version (the same version check for a nova-compute)
- ``service_report(service_id)`` -> record: the heartbeat, on the caller's behalf
- ``service_destroy(service_id)`` -> null
- ``service_get_minimum_version(binary)`` -> int | null: of the live services of `binary`
- ``compute_node_update(host, values)`` -> node record, created if missing; values: vcpus,
  memory_mb, local_gb and their ``_used`` counterparts
- ``compute_node_get_all()`` -> [node record]

Arguments are checked before the database sees them: an unknown key, a value of the wrong
type or out of the columns' range is an ``InvalidArguments`` error reply of one line. A
database error (down, locked, ...) is an error reply named after its class
(``DatabaseUnavailable``, ...); the worker keeps serving.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from supervise.db import Database
from supervise.db.models import RESOURCES
from supervise.manager import Manager
from supervise.rpc.dispatcher import InvalidArguments, Target
from supervise.services.versions import check_compute_version

COMPUTE_BINARY = "nova-compute"
MAX_INTEGER = 2**31 - 1  # the columns are 32-bit integers on PostgreSQL
MAX_TEXT = 255  # the columns are String(255)

Check = Callable[[str, Any], None]


def _text(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidArguments(f"{name} must be a non-empty string, got {_show(value)}")
    if len(value) > MAX_TEXT:
        raise InvalidArguments(f"{name} must be at most {MAX_TEXT} characters")
    if "\0" in value or not _encodes(value):
        raise InvalidArguments(f"{name} must be UTF-8 text without NUL, got {_show(value)}")


def _encodes(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _optional_text(name: str, value: Any) -> None:
    if value is not None:
        _text(name, value)


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise InvalidArguments(f"{name} must be true or false, got {_show(value)}")


def _count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INTEGER:
        raise InvalidArguments(
            f"{name} must be an integer from 0 to {MAX_INTEGER}, got {_show(value)}"
        )


def _identifier(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INTEGER:
        raise InvalidArguments(
            f"{name} must be an integer from 1 to {MAX_INTEGER}, got {_show(value)}"
        )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


CREATE_VALUES: dict[str, Check] = {
    "host": _text,
    "binary": _text,
    "topic": _optional_text,
    "version": _count,
}
UPDATE_VALUES: dict[str, Check] = {
    "disabled": _flag,
    "disabled_reason": _optional_text,
    "forced_down": _flag,
    "version": _count,
}
RESOURCE_VALUES: dict[str, Check] = dict.fromkeys(RESOURCES, _count)


def _values(values: Any, checks: Mapping[str, Check], required: tuple[str, ...] = ()) -> dict:
    if not isinstance(values, dict):
        raise InvalidArguments(f"values must be an object, got {_show(values)}")
    unknown = sorted(set(values) - set(checks))
    if unknown:
        raise InvalidArguments(
            f"unknown values: {', '.join(_show(k) for k in unknown)} (expected {', '.join(checks)})"
        )
    missing = [name for name in required if name not in values]
    if missing:
        raise InvalidArguments(f"values lack {', '.join(missing)}")
    for name, value in values.items():
        checks[name](name, value)
    return values


class ConductorManager(Manager):
    target = Target(version="3.0")

    def __init__(self, host: str | None = None, **kwargs: Any):
        super().__init__(host=host, service_name="conductor", **kwargs)

    @property
    def _db(self) -> Database:
        return self.service.db

    def service_get_all(
        self, context: dict, host: str | None = None, binary: str | None = None
    ) -> list[dict]:
        _optional_text("host", host)
        _optional_text("binary", binary)
        return [r.to_primitive() for r in self._db.service_get_all(host=host, binary=binary)]

    def service_get_by_host_and_binary(self, context: dict, host: str, binary: str) -> dict | None:
        _text("host", host)
        _text("binary", binary)
        record = self._db.service_get_by_host_and_binary(host, binary)
        return None if record is None else record.to_primitive()

    def service_create(self, context: dict, values: dict) -> dict:
        values = _values(values, CREATE_VALUES, required=("host", "binary"))
        if values["binary"] == COMPUTE_BINARY:
            check_compute_version(values.get("version", 0))
        return self._db.service_create(values).to_primitive()

    def service_update(self, context: dict, service_id: int, values: dict) -> dict:
        _identifier("service_id", service_id)
        values = _values(values, UPDATE_VALUES)
        if "version" in values and self._db.service_get(service_id).binary == COMPUTE_BINARY:
            check_compute_version(values["version"])
        return self._db.service_update(service_id, values).to_primitive()

    def service_report(self, context: dict, service_id: int) -> dict:
        _identifier("service_id", service_id)
        return self._db.service_report(service_id).to_primitive()

    def service_destroy(self, context: dict, service_id: int) -> None:
        _identifier("service_id", service_id)
        self._db.service_destroy(service_id)

    def service_get_minimum_version(self, context: dict, binary: str) -> int | None:
        _text("binary", binary)
        return self._db.service_get_minimum_version(binary)

    def compute_node_update(self, context: dict, host: str, values: dict) -> dict:
        _text("host", host)
        values = _values(values, RESOURCE_VALUES)
        return self._db.compute_node_update(host, values).to_primitive()

    def compute_node_get_all(self, context: dict) -> list[dict]:
        return [node.to_primitive() for node in self._db.compute_node_get_all()]
