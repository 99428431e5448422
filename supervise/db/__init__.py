"""The services database: nova's `services` and `compute_nodes` tables, their migrations and
their record API.

from supervise.db import Database, ServiceBinaryExists

database = Database(conf.database)
database.prepare()  # the embedded SQLite default syncs itself; a server is checked
try:
    ref = database.service_create({"host": host, "binary": binary, "topic": topic})
except ServiceExists:  # a sibling worker won the race
    ref = database.service_get_by_host_and_binary(host, binary)
"""

from supervise.db.api import Database
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
from supervise.db.records import ComputeNodeRecord, ServiceRecord

__all__ = [
    "BadDatabaseURL",
    "ComputeNodeRecord",
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
