"""``supervise db sync``: upgrade the services database to the schema of this supervise."""

from __future__ import annotations

import logging
import sys

from supervise import exitcodes
from supervise.config import Config
from supervise.db.api import Database
from supervise.db.errors import BadDatabaseURL, DatabaseError
from supervise.terminal import printable


def main(conf: Config) -> int:
    """Sync the database of `conf` (``conf.database``: --database-url, else SQLite in
    --state-dir) to the head revision. Prints one line; errors go to stderr as one line,
    ``supervise: error: ...``: 2 for a bad URL, 1 when the database cannot be synced."""
    # Alembic says "Running upgrade ..." at INFO: worth showing only when debugging.
    level = logging.DEBUG if conf.log_level == "DEBUG" else logging.WARNING
    logging.basicConfig(level=level, format="supervise: %(levelname)s %(message)s")
    try:
        database = Database(conf.database)
    except BadDatabaseURL as error:
        print(f"supervise: error: {printable(str(error))}", file=sys.stderr)
        return exitcodes.USAGE
    try:
        before = database.schema_revision()
        after = database.sync()
    except DatabaseError as error:
        print(f"supervise: error: {printable(str(error))}", file=sys.stderr)
        return exitcodes.FAILED
    finally:
        database.close()
    if before == after:
        print(f"database {database.safe_url} is at schema revision {after}, already current")
    else:
        print(
            f"database {database.safe_url} upgraded from schema revision "
            f"{before or '(empty)'} to {after}"
        )
    return exitcodes.OK
