"""Alembic, run programmatically: no alembic.ini, the scripts ship inside the package.

A new revision, for a developer changing models.py::

    python -c "from supervise.db import migration; migration.make_revision('add a column')"

autogenerates it in supervise/db/migrations/versions/ against a scratch SQLite database
upgraded to the current head; review it before committing.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile

import sqlalchemy as sa
from sqlalchemy.engine import Connection

# Importing alembic announces each of its plugins at INFO, which would be noise in the log
# of every worker; unless the operator configured that logger, keep it to warnings.
_PLUGINS_LOG = logging.getLogger("alembic.runtime.plugins")
if _PLUGINS_LOG.level == logging.NOTSET:
    _PLUGINS_LOG.setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config as AlembicConfig  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402

VERSION_TABLE = "alembic_version"
MIGRATIONS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", MIGRATIONS_DIR)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def head() -> str:
    """The revision the code expects."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"supervise's migrations have {len(heads)} heads: {heads}")
    return heads[0]


def known(revision: str) -> bool:
    script = ScriptDirectory.from_config(alembic_config())
    return any(item.revision == revision for item in script.walk_revisions())


def current(connection: Connection) -> str | None:
    """The revision of the database; None when it was never migrated.

    Read with plain SQL: an Alembic context would log two lines at each worker's start."""
    if not sa.inspect(connection).has_table(VERSION_TABLE):
        return None
    revisions = connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars()
    found = list(revisions)
    if len(found) > 1:
        raise RuntimeError(f"the database has {len(found)} schema revisions: {found}")
    return found[0] if found else None


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Upgrade within the connection's transaction; the caller commits."""
    command.upgrade(alembic_config(connection), revision)


def make_revision(message: str) -> None:
    """Autogenerate a revision from the difference between models.py and the head."""
    from supervise.db.api import Database

    with tempfile.TemporaryDirectory() as scratch:
        database = Database(f"sqlite:///{os.path.join(scratch, 'scratch.db')}")
        try:
            database.sync()
            with database.writer.begin() as connection:
                command.revision(alembic_config(connection), message=message, autogenerate=True)
        finally:
            database.close()
