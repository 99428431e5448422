"""Publishing notifications as oslo.messaging's ``messaging`` and ``messagingv2`` drivers do.

A notification goes to the topic exchange (control_exchange), routing key
``<topic>.<priority>``. Once per connection, before its first notification to a routing key,
the publisher declares a queue of that name bound to the exchange with that key, not
durable, not auto-deleted, without arguments (oslo's defaults): a notification sent before any
listener exists waits there for the first one. The body is the 2.0 envelope (``messagingv2``)
or the bare message (``messaging``, 1.0), JSON either way, with a ``_unique_id`` added as
oslo's AMQP driver adds one.

Unlike oslo, which blocks the notifying thread until the broker took the message (by default
retrying for ever), a publish never waits: it is handed to the connection's I/O thread, and
one that fails (the broker is down) is dropped with one warning per outage.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import threading
from concurrent.futures import Future
from typing import Any

import kombu

from supervise.rpc import wire
from supervise.rpc.io import ConnectionThread, describe
from supervise.rpc.server import topic_exchange

LOG = logging.getLogger(__name__)


class NotificationPublisher:
    """One broker connection of its own for a process's notifications."""

    def __init__(self, transport_url: str, exchange: str, *, heartbeat: float = 60.0):
        self._exchange = topic_exchange(exchange)
        self._producer: kombu.Producer | None = None
        self._declared: set[str] = set()  # routing keys whose queue this connection declared
        self._lock = threading.Lock()
        self._pending: set[Future] = set()
        self._dropping = False  # a warning was logged, none since a notification went out
        self._io = ConnectionThread(
            transport_url, name="notifications-io", heartbeat=heartbeat, on_connect=self._setup
        )
        self._io.start()

    def publish(self, routing_key: str, message: dict[str, Any], *, envelope: bool) -> None:
        """Send `message` in the background; never blocks, never raises."""
        message = {**message, "_unique_id": wire.new_unique_id()}
        body = wire.encode(message) if envelope else message
        what = f"{message.get('event_type')} to {routing_key}"
        if self._io.failure is not None:  # its thread gave up: nothing would run the send
            self._dropped(what, str(self._io.failure))
            return
        future = self._io.submit(functools.partial(self._send, routing_key, body))
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(functools.partial(self._sent, what))

    def close(self, timeout: float) -> None:
        """Wait up to `timeout` for what is being sent, then close the connection; what is
        still unsent is dropped with a warning (unless this outage has had one)."""
        with self._lock:
            pending = set(self._pending)
        _, unsent = concurrent.futures.wait(pending, timeout)
        if unsent:
            self._dropped(f"{len(unsent)} notification(s)", f"not sent within {timeout:g} s")
        self._io.stop(timeout=1.0)

    # ----- on the I/O thread --------------------------------------------------------------

    def _setup(self, conn: kombu.Connection) -> None:
        self._producer = kombu.Producer(conn.channel(), auto_declare=False)
        self._declared.clear()

    def _send(self, routing_key: str, body: dict[str, Any], _conn: kombu.Connection) -> None:
        if routing_key not in self._declared:
            queue = kombu.Queue(
                routing_key,
                exchange=self._exchange,
                routing_key=routing_key,
                durable=False,
                auto_delete=False,
            )
            queue(self._producer.channel).declare()  # the exchange, the queue, the binding
            self._declared.add(routing_key)
        self._producer.publish(
            body, exchange=self._exchange, routing_key=routing_key, serializer="json"
        )

    def _sent(self, what: str, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)
        error = future.exception()
        if error is not None:
            self._dropped(what, describe(error))
            return
        with self._lock:
            resumed, self._dropping = self._dropping, False
        if resumed:
            LOG.warning("notifications: sent again")

    def _dropped(self, what: str, why: str) -> None:
        with self._lock:
            first, self._dropping = not self._dropping, True
        if first:
            LOG.warning("notification %s not sent, dropped: %s", what, why)
        else:
            LOG.debug("notification %s not sent, dropped: %s", what, why)
