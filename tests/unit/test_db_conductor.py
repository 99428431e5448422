"""What the conductor adds to supervise.db, on SQLite and on PostgreSQL (tests/db_backends.py):
compute nodes, the minimum service version, the records' JSON form, and the migration that
adds `compute_nodes` to a database at the first revision. The concurrent first updates of a
compute node are in tests/functional/test_db_race.py."""

from __future__ import annotations

import datetime
import json

import pytest
import sqlalchemy as sa
from alembic import command

from supervise.db import ComputeNodeRecord, Database, SchemaError, ServiceRecord, migration, utcnow
from supervise.db.models import RESOURCES

FIRST_REVISION = "5a7c0d1e2f34"
COMPUTE = {"host": "cmp1", "binary": "nova-compute", "topic": "compute"}


# ----- compute nodes -----------------------------------------------------------------------


def test_the_first_update_creates_the_node_with_zeros(database: Database) -> None:
    before = utcnow()
    node = database.compute_node_update("cmp1", {"vcpus": 4, "memory_mb": 2048})
    assert isinstance(node, ComputeNodeRecord)
    assert (node.host, node.vcpus, node.memory_mb, node.local_gb) == ("cmp1", 4, 2048, 0)
    assert (node.vcpus_used, node.memory_mb_used, node.local_gb_used) == (0, 0, 0)
    assert node.deleted == 0 and node.deleted_at is None and node.updated_at is None
    assert node.created_at is not None and before <= node.created_at <= utcnow()
    assert database.compute_node_get_by_host("cmp1") == node


def test_later_updates_change_only_what_they_name(database: Database) -> None:
    first = database.compute_node_update("cmp1", dict.fromkeys(RESOURCES, 7))
    second = database.compute_node_update("cmp1", {"vcpus_used": 3})
    assert second.id == first.id and second.created_at == first.created_at
    assert second.vcpus_used == 3
    assert all(getattr(second, name) == 7 for name in RESOURCES if name != "vcpus_used")
    assert second.updated_at is not None and second.updated_at >= first.created_at
    assert database.compute_node_update("cmp1", {}).updated_at >= second.updated_at


def test_nodes_by_host_and_all(database: Database) -> None:
    assert database.compute_node_get_all() == []
    assert database.compute_node_get_by_host("cmp1") is None
    a = database.compute_node_update("cmp1", {"vcpus": 1})
    b = database.compute_node_update("cmp2", {"vcpus": 2})
    assert database.compute_node_get_all() == [a, b]
    assert database.compute_node_get_by_host("cmp2") == b


def test_a_soft_deleted_node_does_not_hold_its_host(database: Database) -> None:
    old = database.compute_node_update("cmp1", {"vcpus": 1})
    with database.writing() as connection:
        connection.execute(sa.text("UPDATE compute_nodes SET deleted = id"))
    new = database.compute_node_update("cmp1", {"vcpus": 2})
    assert new.id != old.id and database.compute_node_get_all() == [new]


def test_an_update_of_an_unknown_resource_is_refused(database: Database) -> None:
    with pytest.raises(ValueError, match="not resources of compute_nodes: host, id"):
        database.compute_node_update("cmp1", {"id": 5, "host": "other"})
    assert database.compute_node_get_all() == []


# ----- minimum version ---------------------------------------------------------------------


def test_minimum_version_of_the_live_services(database: Database) -> None:
    assert database.service_get_minimum_version("nova-compute") is None
    old = database.service_create({**COMPUTE, "version": 3})
    database.service_create({**COMPUTE, "host": "cmp2", "topic": "compute", "version": 5})
    database.service_create({"host": "ctl", "binary": "nova-conductor", "version": 1})
    assert database.service_get_minimum_version("nova-compute") == 3
    database.service_update(old.id, {"forced_down": True})
    assert database.service_get_minimum_version("nova-compute") == 5
    database.service_update(old.id, {"forced_down": False})
    database.service_destroy(old.id)
    assert database.service_get_minimum_version("nova-compute") == 5
    assert database.service_get_minimum_version("nova-conductor") == 1


# ----- the records' JSON form --------------------------------------------------------------


def test_records_travel_as_json_and_come_back_equal(database: Database) -> None:
    service = database.service_report(database.service_create(COMPUTE).id)
    node = database.compute_node_update("cmp1", {"vcpus": 4})
    for record in (service, node):
        primitive = json.loads(json.dumps(record.to_primitive()))
        assert type(record).from_primitive(primitive) == record
    primitive = service.to_primitive()
    assert set(primitive) == {field for field in ServiceRecord.__dataclass_fields__}
    assert primitive["last_seen_up"] == service.last_seen_up.isoformat()
    assert "+" not in primitive["created_at"] and not primitive["created_at"].endswith("Z")


def test_from_primitive_takes_aware_times_as_utc_and_ignores_unknown_keys() -> None:
    primitive = {
        "id": 1, "host": "h", "vcpus": 1, "memory_mb": 2, "local_gb": 3, "vcpus_used": 0,
        "memory_mb_used": 0, "local_gb_used": 0, "created_at": "2025-01-01T12:00:00+02:00",
        "updated_at": None, "deleted_at": None, "deleted": 0, "a_newer_column": 1,
    }  # fmt: skip
    node = ComputeNodeRecord.from_primitive(primitive)
    assert node.created_at == datetime.datetime(2025, 1, 1, 10, 0)


@pytest.mark.parametrize(
    ("primitive", "message"),
    [
        ([1], "a ComputeNodeRecord must be an object, not list"),
        ({"id": 1}, "a ComputeNodeRecord lacks host, vcpus, "),
        (
            {**dict.fromkeys(ComputeNodeRecord.__dataclass_fields__), "created_at": "yesterday"},
            "created_at: not an ISO 8601 time: 'yesterday'",
        ),
        (
            {**dict.fromkeys(ComputeNodeRecord.__dataclass_fields__), "updated_at": 5},
            "updated_at: not an ISO 8601 time: '5'",
        ),
    ],
)
def test_from_primitive_refuses_what_is_not_a_record(primitive: object, message: str) -> None:
    with pytest.raises(ValueError) as error:
        ComputeNodeRecord.from_primitive(primitive)  # type: ignore[arg-type]
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


# ----- the migration -----------------------------------------------------------------------


def test_upgrade_from_the_first_revision_keeps_the_services(database_url: str) -> None:
    database = Database(database_url)
    with database.writing() as connection:
        migration.upgrade(connection, FIRST_REVISION)
    assert database.schema_revision() == FIRST_REVISION
    record = database.service_create(COMPUTE)
    with pytest.raises(SchemaError, match="compute_nodes"):
        database.compute_node_get_all()
    if not database.is_sqlite:  # a server is only checked at start: db sync upgrades it
        with pytest.raises(SchemaError, match=f"at schema revision {FIRST_REVISION}"):
            database.prepare()
    assert database.sync() == migration.head() != FIRST_REVISION
    database.prepare()
    assert database.service_get(record.id) == record
    assert database.compute_node_update("cmp1", {"vcpus": 2}).vcpus == 2
    with database.writing() as connection:  # and back down again, for an operator's downgrade
        command.downgrade(migration.alembic_config(connection), FIRST_REVISION)
    assert database.schema_revision() == FIRST_REVISION
    assert database.service_get(record.id) == record
    database.close()
