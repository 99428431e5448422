"""Rows as plain frozen records, and their JSON form for the conductor's RPC API.

`to_primitive()` gives every column as a JSON-safe value, times as ISO 8601 text of naive
UTC; `from_primitive(d)` takes that back (keys it does not know are ignored, so that a newer
conductor can add columns; a missing column or a bad time is a ValueError of one line).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any, Self

import sqlalchemy as sa

from supervise.db.models import COLUMNS, COMPUTE_NODE_COLUMNS, ComputeNode, Service


class Record:
    """The JSON pair shared by the record classes; `_TIMES` names their datetime columns."""

    __slots__ = ()
    _TIMES: frozenset[str] = frozenset()

    @classmethod
    def from_row(cls, row: sa.Row) -> Self:
        return cls(**row._mapping)

    def to_primitive(self) -> dict[str, Any]:
        primitive = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if isinstance(value, datetime.datetime):
                value = value.isoformat()
            primitive[field.name] = value
        return primitive

    @classmethod
    def from_primitive(cls, primitive: Mapping[str, Any]) -> Self:
        if not isinstance(primitive, Mapping):
            raise ValueError(f"a {cls.__name__} must be an object, not {type(primitive).__name__}")
        names = [field.name for field in dataclasses.fields(cls)]  # type: ignore[arg-type]
        missing = [name for name in names if name not in primitive]
        if missing:
            raise ValueError(f"a {cls.__name__} lacks {', '.join(missing)}")
        values = {name: primitive[name] for name in names}
        for name in cls._TIMES:
            values[name] = _parse_time(name, values[name])
        return cls(**values)


def _parse_time(name: str, value: Any) -> datetime.datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: not an ISO 8601 time: {str(value)[:40]!r}") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(datetime.UTC).replace(tzinfo=None)
    return parsed


def _times(table: sa.Table) -> frozenset[str]:
    return frozenset(c.name for c in table.columns if isinstance(c.type, sa.DateTime))


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceRecord(Record):
    """A row of `services`, detached from any session. Times are naive UTC."""

    id: int
    uuid: str | None
    host: str | None
    binary: str | None
    topic: str | None
    report_count: int
    disabled: bool | None
    disabled_reason: str | None
    last_seen_up: datetime.datetime | None
    forced_down: bool | None
    version: int | None
    created_at: datetime.datetime | None
    updated_at: datetime.datetime | None
    deleted_at: datetime.datetime | None
    deleted: int | None

    _TIMES = _times(Service.__table__)


@dataclasses.dataclass(frozen=True, slots=True)
class ComputeNodeRecord(Record):
    """A row of `compute_nodes`: a host's vCPUs, memory (MB) and disk (GB), and how much of
    each is used. Times are naive UTC."""

    id: int
    host: str
    vcpus: int
    memory_mb: int
    local_gb: int
    vcpus_used: int
    memory_mb_used: int
    local_gb_used: int
    created_at: datetime.datetime | None
    updated_at: datetime.datetime | None
    deleted_at: datetime.datetime | None
    deleted: int | None

    _TIMES = _times(ComputeNode.__table__)


assert {f.name for f in dataclasses.fields(ServiceRecord)} == set(COLUMNS)
assert {f.name for f in dataclasses.fields(ComputeNodeRecord)} == set(COMPUTE_NODE_COLUMNS)
