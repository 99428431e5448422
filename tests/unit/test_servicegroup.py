import datetime
import logging
from types import SimpleNamespace

import pytest

from supervise.servicegroup import ServiceGroup

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0)


def record(last_seen_up=None, created_at=NOW, forced_down=False):
    return SimpleNamespace(
        last_seen_up=last_seen_up, created_at=created_at, forced_down=forced_down
    )


@pytest.mark.parametrize(
    ("age", "up"),
    [(0, True), (59.999, True), (60, True), (60.001, False), (3600, False), (-60, True)],
)
def test_is_up_until_service_down_time_has_passed(age, up):
    group = ServiceGroup(None, report_interval=10, service_down_time=60)
    seen = NOW - datetime.timedelta(seconds=age)
    assert group.is_up(record(last_seen_up=seen), now=NOW) is up


def test_is_up_falls_back_to_created_at_and_forced_down_wins():
    group = ServiceGroup(None, report_interval=10, service_down_time=60)
    assert group.is_up(record(created_at=NOW - datetime.timedelta(seconds=30)), now=NOW)
    assert not group.is_up(record(created_at=NOW - datetime.timedelta(seconds=61)), now=NOW)
    assert not group.is_up(record(last_seen_up=NOW, forced_down=True), now=NOW)
    assert not group.is_up(record(created_at=None), now=NOW)


def test_a_down_time_below_two_and_a_half_intervals_is_raised_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        group = ServiceGroup(None, report_interval=10, service_down_time=20)
    assert group.service_down_time == 25
    assert "raising it to 25 s" in caplog.text


class FlakyDatabase:
    def __init__(self):
        self.failing = False
        self.reports = 0

    def service_report(self, service_id):
        if self.failing:
            raise ConnectionError("the database is down")
        self.reports += 1


def test_an_outage_logs_one_warning_and_the_recovery(caplog):
    db = FlakyDatabase()
    group = ServiceGroup(db, report_interval=10, service_down_time=60)
    with caplog.at_level(logging.WARNING):
        group.report_state(1)
        db.failing = True
        for _ in range(5):
            group.report_state(1)
        db.failing = False
        group.report_state(1)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "cannot report service state" in messages[0] and "the database is down" in messages[0]
    assert messages[1] == "reporting service state to the database again"
    assert db.reports == 2
