"""Service liveness as nova's database servicegroup driver: a heartbeat and `is_up`.

`join` starts ``report_state``: every ``report_interval`` seconds one atomic
``report_count = report_count + 1, last_seen_up = now`` on the service's row. A service is
up when it is not forced down and its last heartbeat (or its creation) is at most
``service_down_time`` old. A database outage logs one warning, the timer keeps running, and
the first heartbeat that gets through logs the recovery.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

from supervise.periodic import FixedIntervalLoopingCall

LOG = logging.getLogger(__name__)

INITIAL_REPORTING_DELAY = 5.0
DOWN_TIME_FACTOR = 2.5


def utcnow() -> datetime.datetime:
    """Naive UTC, as the services table stores its times (as nova does)."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class ServiceGroup:
    def __init__(self, db: Any, report_interval: float, service_down_time: float):
        self.db = db
        self.report_interval = report_interval
        self.service_down_time = service_down_time
        floor = DOWN_TIME_FACTOR * report_interval
        if report_interval and service_down_time < floor:
            LOG.warning(
                "service_down_time (%g s) is less than %g times report_interval (%g s): "
                "raising it to %g s, or services would flap between up and down",
                service_down_time,
                DOWN_TIME_FACTOR,
                report_interval,
                floor,
            )
            self.service_down_time = floor
        self._timer: FixedIntervalLoopingCall | None = None
        self._failing = False

    def join(self, service_id: int) -> None:
        """Start heartbeating for the service record `service_id` (no-op if interval is 0)."""
        if not self.report_interval or self._timer is not None:
            return
        self._timer = FixedIntervalLoopingCall(self.report_state, service_id)
        self._timer.start(
            interval=self.report_interval,
            initial_delay=min(INITIAL_REPORTING_DELAY, self.report_interval),
            stop_on_exception=False,
        )

    def leave(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer.wait()
            self._timer = None

    def report_state(self, service_id: int) -> None:
        try:
            self.db.service_report(service_id)
        except Exception as error:
            if not self._failing:
                self._failing = True
                LOG.warning(
                    "cannot report service state to the database (retrying every %g s): %s",
                    self.report_interval,
                    error,
                )
            return
        if self._failing:
            self._failing = False
            LOG.warning("reporting service state to the database again")

    def is_up(self, service: Any, now: datetime.datetime | None = None) -> bool:
        """Whether `service` (a services record) is alive."""
        if service.forced_down:
            return False
        last_heartbeat = service.last_seen_up or service.created_at
        if last_heartbeat is None:
            return False
        elapsed = (now or utcnow()) - last_heartbeat
        return abs(elapsed.total_seconds()) <= self.service_down_time
