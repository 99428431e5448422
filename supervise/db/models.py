"""The `services` table, as nova's (nova/db/main/models.py, class Service).

Times are naive datetimes in UTC, as nova stores them (`DateTime` without a time zone):
use `utcnow()` to compare with them.
"""

from __future__ import annotations

import datetime

from sqlalchemy import Boolean, DateTime, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from supervise.db.errors import UNIQUE_HOST_BINARY, UNIQUE_HOST_TOPIC


def utcnow() -> datetime.datetime:
    """Now, as a naive datetime in UTC (nova's timeutils.utcnow())."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Service(Base):
    """A running service on a host: one row per (host, binary) while `deleted` is 0."""

    __tablename__ = "services"
    __table_args__ = (
        UniqueConstraint("host", "topic", "deleted", name=UNIQUE_HOST_TOPIC),
        UniqueConstraint("host", "binary", "deleted", name=UNIQUE_HOST_BINARY),
        Index("services_uuid_idx", "uuid", unique=True),
    )

    # nova's TimestampMixin
    created_at: Mapped[datetime.datetime | None] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime.datetime | None] = mapped_column(DateTime, onupdate=utcnow)
    # nova's SoftDeleteMixin: deleted is 0 while live, the row's id once soft-deleted
    deleted_at: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    deleted: Mapped[int | None] = mapped_column(Integer, default=0)

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


COLUMNS: tuple[str, ...] = tuple(column.name for column in Service.__table__.columns)
