"""The `services` and `compute_nodes` tables, as nova's (nova/db/main/models.py), the latter
reduced to what supervise's compute reports.

Times are naive datetimes in UTC, as nova stores them (`DateTime` without a time zone):
use `utcnow()` to compare with them.
"""

from __future__ import annotations

import datetime

from sqlalchemy import Boolean, DateTime, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from supervise.db.errors import UNIQUE_COMPUTE_HOST, UNIQUE_HOST_BINARY, UNIQUE_HOST_TOPIC


def utcnow() -> datetime.datetime:
    """Now, as a naive datetime in UTC (nova's timeutils.utcnow())."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class SoftDeleted(Base):
    """nova's TimestampMixin and SoftDeleteMixin: `deleted` is 0 while the row is live, the
    row's id once soft-deleted, so that unique constraints including it bind live rows only."""

    __abstract__ = True

    created_at: Mapped[datetime.datetime | None] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime.datetime | None] = mapped_column(DateTime, onupdate=utcnow)
    deleted_at: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    deleted: Mapped[int | None] = mapped_column(Integer, default=0)


class Service(SoftDeleted):
    """A running service on a host: one row per (host, binary) while `deleted` is 0."""

    __tablename__ = "services"
    __table_args__ = (
        UniqueConstraint("host", "topic", "deleted", name=UNIQUE_HOST_TOPIC),
        UniqueConstraint("host", "binary", "deleted", name=UNIQUE_HOST_BINARY),
        Index("services_uuid_idx", "uuid", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str | None] = mapped_column(String(36), nullable=True)
    host: Mapped[str | None] = mapped_column(String(255))
    binary: Mapped[str | None] = mapped_column(String(255))
    topic: Mapped[str | None] = mapped_column(String(255))
    report_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    disabled: Mapped[bool | None] = mapped_column(Boolean, default=False)
    disabled_reason: Mapped[str | None] = mapped_column(String(255))
    last_seen_up: Mapped[datetime.datetime | None] = mapped_column(DateTime, nullable=True)
    forced_down: Mapped[bool | None] = mapped_column(Boolean, default=False)
    version: Mapped[int | None] = mapped_column(Integer, default=0)


class ComputeNode(SoftDeleted):
    """What a compute host has and uses: one live row per host."""

    __tablename__ = "compute_nodes"
    __table_args__ = (UniqueConstraint("host", "deleted", name=UNIQUE_COMPUTE_HOST),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host: Mapped[str] = mapped_column(String(255), nullable=False)
    vcpus: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    memory_mb: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    local_gb: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    vcpus_used: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    memory_mb_used: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    local_gb_used: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


COLUMNS: tuple[str, ...] = tuple(column.name for column in Service.__table__.columns)
COMPUTE_NODE_COLUMNS: tuple[str, ...] = tuple(c.name for c in ComputeNode.__table__.columns)
RESOURCES: tuple[str, ...] = (
    "vcpus", "memory_mb", "local_gb", "vcpus_used", "memory_mb_used", "local_gb_used",
)  # fmt: skip
"""The columns a compute reports (`compute_node_update`'s values)."""
