"""nova's versioned service notifications: service.create, service.update, service.delete.

Each is what nova's ``ServiceStatusNotification`` emits, in oslo.messaging's notification
format: ``message_id``, ``publisher_id`` (``<binary>:<host>`` of the service), ``event_type``,
``priority`` (INFO), ``payload`` (a ``ServiceStatusPayload`` 1.1 primitive: ``nova_object.name``,
``namespace``, ``version``, ``data``) and ``timestamp`` (oslo's ``str(utcnow())``), sent by the
drivers of ``[oslo_messaging_notifications] driver`` to each of its ``topics``.

`ServiceNotifier.from_config(conf)` builds the notifier (one that sends nothing unless a
driver is configured); `NotifyingRecords(records, notifier)` wraps a records backend (a
`supervise.db.Database`, the conductor client) and notifies after each successful create,
update and destroy. A notification that cannot be sent never fails nor delays the write.
"""

from __future__ import annotations

import datetime
import json
import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from supervise.config import Config
from supervise.db import utcnow

LOG = logging.getLogger(__name__)

CREATE = "service.create"
UPDATE = "service.update"
DELETE = "service.delete"
PRIORITY = "INFO"
# An update is notified when it changes one of these, never for a heartbeat (report_count,
# last_seen_up). nova leaves out version, which its Service object always writes; supervise
# writes it only when a new release starts, which an operator wants to hear of.
NOTIFIED_CHANGES = frozenset({"disabled", "disabled_reason", "forced_down", "version"})
PAYLOAD = {"nova_object.name": "ServiceStatusPayload", "nova_object.namespace": "nova"}
PAYLOAD_VERSION = "1.1"  # 1.1 added uuid
# Seconds a command waits, before it exits, for its notifications to reach the broker.
CLOSE_TIMEOUT = 10.0
# oslo's LogDriver logs on "oslo.messaging.notification.<event_type>", at the priority.
LOG_DRIVER_LOGGER = "oslo.messaging.notification"
MESSAGING_DRIVERS = {"messagingv2": True, "messaging": False}  # name: with the 2.0 envelope


def _isotime(value: datetime.datetime | None) -> str | None:
    """A naive UTC time as oslo.versionedobjects' DateTimeField sends it: whole seconds, Z."""
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def service_payload(record: Any) -> dict[str, Any]:
    """nova's ServiceStatusPayload of a service record, as its obj_to_primitive()."""
    data = {
        "host": record.host,
        "binary": record.binary,
        "topic": record.topic,
        "report_count": record.report_count,
        "disabled": bool(record.disabled),
        "disabled_reason": record.disabled_reason,
        "availability_zone": None,  # supervise has no availability zones
        "last_seen_up": _isotime(record.last_seen_up),
        "forced_down": bool(record.forced_down),
        "version": record.version or 0,
        "uuid": record.uuid,
    }
    return {**PAYLOAD, "nova_object.version": PAYLOAD_VERSION, "nova_object.data": data}


def service_notification(event_type: str, record: Any) -> dict[str, Any]:
    """The notification message, as oslo.messaging's Notifier builds it."""
    return {
        "message_id": str(uuid.uuid4()),
        "publisher_id": f"{record.binary}:{record.host}",
        "event_type": event_type,
        "priority": PRIORITY,
        "payload": service_payload(record),
        "timestamp": str(utcnow()),
    }


class ServiceNotifier:
    """Sends service notifications through the configured drivers; `notify` never raises."""

    def __init__(
        self, drivers: Iterable[str], topics: Iterable[str], publisher: Any = None
    ) -> None:
        self.drivers = tuple(dict.fromkeys(d for d in drivers if d != "noop"))
        self.topics = tuple(topics)
        self._publisher = publisher  # a NotificationPublisher when a messaging driver is on

    @classmethod
    def from_config(cls, conf: Config) -> ServiceNotifier:
        """The notifier of `[oslo_messaging_notifications]`: off unless a driver is set; the
        messaging drivers publish on `notification_transport` (default: the RPC one)."""
        publisher = None
        if any(driver in MESSAGING_DRIVERS for driver in conf.notification_driver):
            from supervise.rpc.notify import NotificationPublisher  # kombu, only when used

            publisher = NotificationPublisher(
                conf.notification_transport,
                conf.control_exchange,
                heartbeat=conf.heartbeat_timeout_threshold,
            )
        return cls(conf.notification_driver, conf.notification_topics, publisher)

    @property
    def enabled(self) -> bool:
        return bool(self.drivers)

    def notify(self, event_type: str, record: Any) -> None:
        if not self.drivers:
            return
        try:
            message = service_notification(event_type, record)
            for driver in self.drivers:
                if driver == "log":
                    logger = logging.getLogger(f"{LOG_DRIVER_LOGGER}.{event_type}")
                    logger.info(json.dumps(message))
                    continue
                for topic in self.topics:
                    self._publisher.publish(
                        f"{topic}.{PRIORITY.lower()}",
                        message,
                        envelope=MESSAGING_DRIVERS[driver],
                    )
        except Exception:  # a bug; the write it follows must stand all the same
            LOG.exception("could not send the notification %s", event_type)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Wait up to `timeout` for the notifications in flight, then let go of the broker."""
        if self._publisher is not None:
            self._publisher.close(timeout)


class NotifyingRecords:
    """A records backend that notifies after each successful create, update and destroy;
    everything else is the backend's own."""

    def __init__(self, records: Any, notifier: ServiceNotifier) -> None:
        self._records = records
        self._notifier = notifier

    def __getattr__(self, name: str) -> Any:
        return getattr(self._records, name)

    def service_create(self, values: Mapping[str, Any]) -> Any:
        record = self._records.service_create(values)
        self._notifier.notify(CREATE, record)
        return record

    def service_update(self, service_id: int, values: Mapping[str, Any]) -> Any:
        record = self._records.service_update(service_id, values)
        if NOTIFIED_CHANGES.intersection(values):
            self._notifier.notify(UPDATE, record)
        return record

    def close(self) -> None:
        """Send what is in flight (bounded), then close the backend."""
        self._notifier.close()
        self._records.close()

    def service_destroy(self, service_id: int) -> None:
        # The payload is the record as it was: read it first (the record API reads by
        # host and binary or all, not by id).
        before = None
        if self._notifier.enabled:
            before = next((r for r in self._records.service_get_all() if r.id == service_id), None)
        self._records.service_destroy(service_id)
        if before is not None:
            self._notifier.notify(DELETE, before)
