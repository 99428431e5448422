"""NotifyingRecords over a real SQLite services database, seen through oslo's log driver."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from supervise import config
from supervise.db import Database, ServiceNotFound
from supervise.notifications import NotifyingRecords, ServiceNotifier

VALUES = {"host": "h1", "binary": "nova-compute", "topic": "compute", "version": 7}


@pytest.fixture
def db(tmp_path: Path):
    with Database(f"sqlite:///{tmp_path / 'supervise.db'}") as database:
        database.ensure_schema()
        yield database


def logged(caplog: pytest.LogCaptureFixture) -> list[dict]:
    """The notifications the log driver logged, oslo's way: on
    oslo.messaging.notification.<event_type>, at INFO, as JSON."""
    return [
        json.loads(r.getMessage())
        for r in caplog.records
        if r.name.startswith("oslo.messaging.notification.") and r.levelno == logging.INFO
    ]


def test_each_write_an_operator_cares_about_is_notified_and_a_heartbeat_is_not(db, caplog):
    caplog.set_level(logging.INFO)
    records = NotifyingRecords(db, ServiceNotifier(["log"], ["versioned_notifications"]))
    ref = records.service_create(VALUES)
    records.service_report(ref.id)
    records.service_update(ref.id, {"report_count": 5})
    records.service_update(ref.id, {"version": 8})
    records.service_update(ref.id, {"forced_down": True})
    records.service_destroy(ref.id)
    events = [(m["event_type"], m["payload"]["nova_object.data"]) for m in logged(caplog)]
    assert [event for event, _ in events] == [
        "service.create",
        "service.update",
        "service.update",
        "service.delete",
    ]
    assert [(d["version"], d["forced_down"], d["report_count"]) for _, d in events] == [
        (7, False, 0),
        (8, False, 5),
        (8, True, 5),
        (8, True, 5),  # the record as it was before the delete
    ]
    assert {m["publisher_id"] for m in logged(caplog)} == {"nova-compute:h1"}


def test_a_failed_write_is_not_notified(db, caplog):
    caplog.set_level(logging.INFO)
    records = NotifyingRecords(db, ServiceNotifier(["log"], ["versioned_notifications"]))
    with pytest.raises(ServiceNotFound):
        records.service_update(404, {"disabled": True})
    with pytest.raises(ServiceNotFound):
        records.service_destroy(404)
    assert logged(caplog) == []


def test_without_a_driver_nothing_is_sent_and_the_rest_is_the_backend_s(db, caplog):
    caplog.set_level(logging.DEBUG)
    notifier = ServiceNotifier.from_config(config.load({}, [], {}))
    assert not notifier.enabled
    records = NotifyingRecords(db, notifier)
    ref = records.service_create(VALUES)
    assert records.service_get_by_host_and_binary("h1", "nova-compute") == ref
    records.service_destroy(ref.id)
    notifier.close()
    assert logged(caplog) == []
    assert ServiceNotifier(["noop", "noop"], ["t"]).drivers == ()
