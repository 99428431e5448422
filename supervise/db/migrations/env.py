"""Alembic environment of supervise's database.

supervise runs migrations itself (`supervise db sync`, or automatically for the embedded
SQLite database), passing an open connection in ``config.attributes["connection"]``; no
alembic.ini is needed. Run by the alembic command instead, the URL comes from the
``sqlalchemy.url`` option and the engine is built as supervise builds it.
"""

from __future__ import annotations

from alembic import context

from supervise.db.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(**kwargs) -> None:
    context.configure(
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: later revisions use batch operations.
        render_as_batch=True,
        compare_type=True,
        **kwargs,
    )


def run_offline() -> None:
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        # The caller's transaction holds the whole upgrade; SQLite's DDL is transactional
        # once pysqlite no longer manages transactions (see supervise.db.api).
        _configure(connection=connection, transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    from supervise.db.api import Database

    database = Database(config.get_main_option("sqlalchemy.url"))
    try:
        with database.writer.begin() as connection:
            _configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        database.close()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
