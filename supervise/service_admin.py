"""``supervise service list|enable|disable|force-down|delete``: the services table by hand."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from supervise import exitcodes
from supervise.config import Config
from supervise.db import BadDatabaseURL, Database, DatabaseError
from supervise.servicegroup import ServiceGroup
from supervise.terminal import printable

COLUMNS = (
    "id", "binary", "host", "topic", "status", "state", "updated_at", "forced_down", "version",
)  # fmt: skip


def _row(record: Any, servicegroup: ServiceGroup) -> dict[str, Any]:
    updated = record.updated_at or record.created_at
    return {
        "id": record.id,
        "binary": record.binary,
        "host": record.host,
        "topic": record.topic,
        "status": "disabled" if record.disabled else "enabled",
        "state": "up" if servicegroup.is_up(record) else "down",
        "updated_at": updated.isoformat(sep=" ", timespec="seconds") if updated else None,
        "forced_down": bool(record.forced_down),
        "version": record.version,
        "disabled_reason": record.disabled_reason,
    }


def _print(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    # A cell is text from the database, which anyone who registers a service writes to.
    table = [COLUMNS] + [tuple(printable(str(row[c])) for c in COLUMNS) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


def _change(db: Database, namespace: argparse.Namespace) -> Any:
    if db.schema_revision() is None:
        return None  # no services table yet: no such service
    ref = db.service_get_by_host_and_binary(namespace.service_host, namespace.service_binary)
    if ref is None:
        return None
    if namespace.action == "enable":
        return db.service_update(ref.id, {"disabled": False, "disabled_reason": None})
    if namespace.action == "disable":
        return db.service_update(ref.id, {"disabled": True, "disabled_reason": namespace.reason})
    if namespace.action == "force-down":
        return db.service_update(ref.id, {"forced_down": not namespace.unset})
    db.service_destroy(ref.id)
    return ref


def main(namespace: argparse.Namespace, conf: Config) -> int:
    try:
        db = Database(conf.database)
    except BadDatabaseURL as error:
        print(f"supervise: error: {printable(str(error))}", file=sys.stderr)
        return exitcodes.USAGE
    servicegroup = ServiceGroup(db, conf.report_interval, conf.service_down_time)
    try:
        if namespace.action == "list":
            records = (
                db.service_get_all(host=namespace.service_host, binary=namespace.service_binary)
                if db.schema_revision() is not None
                else []  # no service has started on it yet
            )
        else:
            record = _change(db, namespace)
            if record is None:
                host, binary = namespace.service_host, namespace.service_binary
                print(
                    f"supervise: no service {printable(binary)} on host {printable(host)}",
                    file=sys.stderr,
                )
                return exitcodes.FAILED
            records = [] if namespace.action == "delete" else [record]
    except DatabaseError as error:
        print(f"supervise: database error: {printable(str(error))}", file=sys.stderr)
        return exitcodes.FAILED
    if namespace.action != "delete":
        _print([_row(r, servicegroup) for r in records], namespace.json)
    return exitcodes.OK
