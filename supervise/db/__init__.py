"""The services database: nova's `services` table, its migrations and its record API.

from supervise.db import Database, ServiceBinaryExists

database = Database(conf.database)
database.ensure_schema()  # the embedded SQLite default syncs itself
try:
    ref = database.service_create({"host": host, "binary": binary, "topic": topic})
except ServiceExists:  # a sibling worker won the race
    ref = database.service_get_by_host_and_binary(host, binary)
"""

from supervise.db.api import Database, ServiceRecord
from supervise.db.errors import (
    BadDatabaseURL,
    DatabaseCorrupt,
    DatabaseError,
    DatabaseFileError,
    DatabaseLocked,
    DatabaseReadOnly,
    DatabaseUnavailable,
    SchemaError,
    ServiceBinaryExists,
    ServiceExists,
    ServiceNotFound,
    ServiceTopicExists,
)
from supervise.db.models import utcnow

__all__ = [
    "BadDatabaseURL",
    "Database",
    "DatabaseCorrupt",
    "DatabaseError",
    "DatabaseFileError",
    "DatabaseLocked",
    "DatabaseReadOnly",
    "DatabaseUnavailable",
    "SchemaError",
    "ServiceBinaryExists",
    "ServiceExists",
    "ServiceNotFound",
    "ServiceRecord",
    "ServiceTopicExists",
    "utcnow",
]
