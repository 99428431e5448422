"""``local://``: a kombu transport for one host, with no broker, correct across processes.

``kombu.Connection("local:///var/lib/supervise/queue.db")`` (the ``local`` alias is
registered by `supervise.rpc.local_scheme`) gives what the RPC layer uses of RabbitMQ:
topic, direct and fanout exchanges with bindings stored in the file, the default exchange,
per-message expiration, queue ``x-expires``, ``basic_qos`` prefetch, acks, rejects, and
redelivery with ``redelivered`` set when the process holding a message dies.

The file is `embedded_store`; wake-ups and the watch on peer processes are
`embedded_wake`. ``conn.connection.sock`` is a descriptor that becomes readable when
there is work, ``drain_events(timeout=0)`` delivers what is ready or raises
``socket.timeout``, and ``heartbeat_check`` does nothing: what `supervise.rpc.io` expects
of a broker connection. Acks are written with the next transaction this connection makes,
or ACK_DELAY later at the latest: as with AMQP, an ack has not reached the broker when
``ack()`` returns, and a process killed in between has the message redelivered.

Not supported: headers exchanges, exchange-to-exchange bindings, priorities, queue arguments
other than ``x-expires``; ``durable``, ``exclusive`` and ``auto_delete`` are accepted and
ignored (everything lives in the file until deleted or expired). Linux only (pidfd,
``/proc``), and every process must see the others' pids (one pid namespace).
"""

from __future__ import annotations

import itertools
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from amqp import exceptions as amqp_errors
from amqp.exceptions import ChannelError, PreconditionFailed
from amqp.protocol import queue_declare_ok_t
from kombu.message import Message
from kombu.transport import base

from supervise.rpc.embedded_store import (
    Claim,
    Outgoing,
    QueueFileError,
    QueueFileUnusable,
    Store,
    Stored,
)
from supervise.rpc.embedded_wake import (
    PASSED,
    READY,
    Events,
    Identity,
    own_identity,
    wake_directory,
)
from supervise.rpc.transport_url import BadTransportURL, local_path

LOG = logging.getLogger(__name__)

EXCHANGE_TYPES = frozenset({"direct", "topic", "fanout"})
UNLIMITED_BATCH = 256  # messages claimed at once by a channel without a prefetch limit
ACK_DELAY = 0.01  # seconds an ack may wait for this connection's next transaction


class Consumer:
    def __init__(self, tag: str, queue: str, no_ack: bool, callback: Callable[[Message], Any]):
        self.tag = tag
        self.queue = queue
        self.no_ack = no_ack
        self.callback = callback


class Channel(base.StdChannel):
    """An AMQP channel over the queue file; see the module's docstring for what it supports."""

    def __init__(self, connection: LocalConnection, channel_id: int):
        self.connection = connection
        self.channel_id = channel_id
        self.no_ack_consumers: set[str] = set()
        self.consumers: dict[str, Consumer] = {}
        self.prefetch_count = 0
        self.closed = False
        self._unacked: dict[int, int] = {}  # delivery tag -> message id
        self._delivery_tags = itertools.count(1)
        self._consumer_tags = itertools.count(1)

    @property
    def _store(self) -> Store:
        return self.connection.store

    # ----- entities -----------------------------------------------------------------------

    def exchange_declare(
        self, exchange="", type="direct", durable=False, auto_delete=False, arguments=None,
        nowait=False, passive=False,
    ):  # fmt: skip
        if not exchange:
            return  # the default exchange always exists
        if type not in EXCHANGE_TYPES:
            raise amqp_errors.NotImplemented(
                f"NOT_IMPLEMENTED - the local transport has no {type!r} exchanges",
                method_sig=(40, 10),
            )
        self._store.declare_exchange(exchange, type, passive)

    def exchange_delete(self, exchange, if_unused=False, nowait=False):
        self._store.delete_exchange(exchange)

    def queue_declare(
        self, queue="", passive=False, durable=False, exclusive=False, auto_delete=False,
        arguments=None, nowait=False,
    ):  # fmt: skip
        queue = queue or f"amq.gen-{self.connection.id}.{next(self._consumer_tags)}"
        arguments = dict(arguments or {})
        expires = arguments.pop("x-expires", None)
        if arguments:
            raise amqp_errors.NotImplemented(
                f"NOT_IMPLEMENTED - the local transport has no queue arguments but x-expires, "
                f"got {sorted(arguments)}",
                method_sig=(50, 10),
            )
        ready, consumers = self._store.declare_queue(
            queue, None if expires is None else int(expires), passive
        )
        return queue_declare_ok_t(queue, ready, consumers)

    def prepare_queue_arguments(self, arguments, **kwargs):
        return base.to_rabbitmq_queue_arguments(arguments, **kwargs)

    def queue_bind(self, queue, exchange="", routing_key="", arguments=None, nowait=False):
        if exchange:
            self._store.bind(queue, exchange, routing_key)

    def queue_unbind(self, queue, exchange="", routing_key="", arguments=None, nowait=False):
        self._store.unbind(queue, exchange, routing_key)

    def queue_delete(self, queue, if_unused=False, if_empty=False, nowait=False):
        return self._store.delete_queue(queue, if_unused, if_empty)

    def queue_purge(self, queue, nowait=False):
        return self._store.purge_queue(queue)

    # ----- publishing ---------------------------------------------------------------------

    def prepare_message(
        self, body, priority=None, content_type=None, content_encoding=None, headers=None,
        properties=None,
    ):  # fmt: skip
        properties = dict(properties or {})
        properties.setdefault("priority", priority or 0)
        return {
            "body": body,
            "content_type": content_type,
            "content_encoding": content_encoding,
            "headers": headers or {},
            "properties": properties,
        }

    def basic_publish(self, message, exchange="", routing_key="", mandatory=False, **kwargs):
        body = message["body"]
        if isinstance(body, str):
            body = body.encode(message["content_encoding"] or "utf-8")
        properties = {k: v for k, v in message["properties"].items() if k != "delivery_info"}
        expiration = properties.get("expiration")
        outgoing = Outgoing(
            body=bytes(body),
            content_type=message["content_type"],
            content_encoding=message["content_encoding"],
            headers=json.dumps(message["headers"]),
            properties=json.dumps(properties),
            expires_at=None if expiration is None else time.time() + int(expiration) / 1000,
        )
        self.connection.ring_consumers(
            self._store.publish(exchange or "", routing_key or "", outgoing)
        )

    # ----- consuming ----------------------------------------------------------------------

    def basic_qos(self, prefetch_size=0, prefetch_count=0, a_global=False):
        self.prefetch_count = prefetch_count or 0

    def basic_consume(
        self, queue, no_ack=False, callback=None, consumer_tag="", nowait=False, arguments=None,
        on_cancel=None,
    ):  # fmt: skip
        tag = consumer_tag or f"ctag{self.channel_id}.{next(self._consumer_tags)}"
        if tag in self.consumers:
            raise PreconditionFailed(f"NOT_ALLOWED - consumer tag {tag!r} in use", (60, 20))
        self._store.add_consumer(queue, self.channel_id, tag)
        self.consumers[tag] = Consumer(tag, queue, no_ack, callback)
        if no_ack:
            self.no_ack_consumers.add(tag)
        self.connection.events.ring_self()  # what waits already is delivered by the next drain
        return tag

    def basic_cancel(self, consumer_tag, nowait=False):
        if self.consumers.pop(consumer_tag, None) is not None:
            self.no_ack_consumers.discard(consumer_tag)
            self._store.remove_consumer(self.channel_id, consumer_tag)

    def no_ack_queues(self) -> frozenset[str]:
        return frozenset(c.queue for c in self.consumers.values() if c.no_ack)

    def capacity(self) -> int:
        if not self.prefetch_count:
            return UNLIMITED_BATCH
        return max(0, self.prefetch_count - len(self._unacked))

    def deliver(self, stored: list[Stored]) -> None:
        """Hand claimed messages to their consumers; what no consumer takes any more (one
        was cancelled by an earlier callback, or a callback raised) goes back unflagged."""
        leftover: list[int] = []
        rows = iter(stored)
        try:
            for row in rows:
                consumer = next((c for c in self.consumers.values() if c.queue == row.queue), None)
                if consumer is None or self.closed:
                    leftover.append(row.id)
                else:
                    consumer.callback(self._message(row, consumer))
        finally:
            leftover += [row.id for row in rows]  # those after a callback that raised
            if leftover and not self.closed:
                self.connection.ring(
                    self._store.release(self.channel_id, leftover, redelivered=False)
                )

    def _message(self, row: Stored, consumer: Consumer) -> Message:
        tag = next(self._delivery_tags)
        if not consumer.no_ack:  # a no-ack message was deleted as it was taken
            self._unacked[tag] = row.id
        message = Message(
            body=row.body,
            delivery_tag=tag,
            content_type=row.content_type,
            content_encoding=row.content_encoding,
            properties=json.loads(row.properties),
            delivery_info={
                "exchange": row.exchange,
                "routing_key": row.routing_key,
                "redelivered": bool(row.redelivered),
                "consumer_tag": consumer.tag,
                "delivery_tag": tag,
            },
            channel=self,
        )
        # Set after: kombu would decompress the body as it builds the message, unbounded
        # (see supervise.rpc.receive); the consumer decodes the raw body.
        message.headers = json.loads(row.headers)
        return message

    def basic_get(self, queue, no_ack=False, **kwargs):
        no_ack_queues = frozenset([queue] if no_ack else [])
        claimed, _, _ = self._store.claim([Claim(self.channel_id, [queue], 1, no_ack_queues)])
        rows = claimed.get(self.channel_id, [])
        if not rows:
            return None
        return self._message(rows[0], Consumer("", queue, no_ack, lambda message: None))

    def message_to_python(self, raw_message):
        return raw_message

    def basic_ack(self, delivery_tag, multiple=False):
        was_full = not self.capacity()
        for tag in self._tags(delivery_tag, multiple):
            self.connection.ack_soon(self._unacked.pop(tag), was_full)

    def basic_reject(self, delivery_tag, requeue=False):
        was_full = not self.capacity()
        message_id = self._unacked.pop(self._tags(delivery_tag, False)[0])
        if requeue:
            self.connection.ring(
                self._store.release(self.channel_id, [message_id], redelivered=True)
            )
        else:
            self.connection.ack_soon(message_id, was_full)

    def basic_recover(self, requeue=True):
        ids, self._unacked = list(self._unacked.values()), {}
        self.connection.ring(self._store.release(self.channel_id, ids, redelivered=True))

    def _tags(self, delivery_tag: int, multiple: bool) -> list[int]:
        if multiple:
            return [tag for tag in self._unacked if tag <= delivery_tag]
        if delivery_tag not in self._unacked:
            raise PreconditionFailed(
                f"PRECONDITION_FAILED - unknown delivery tag {delivery_tag}", (60, 80)
            )
        return [delivery_tag]

    def close(self) -> None:
        """As AMQP: consumers end, and what the channel holds unacked is redelivered."""
        if self.closed:
            return
        self.closed = True
        self.consumers.clear()
        self._unacked.clear()
        self.connection.forget(self)
        if not self.connection.closed:
            self.connection.ring(self._store.close_channel(self.channel_id))

    def flow(self, active):
        raise amqp_errors.NotImplemented("NOT_IMPLEMENTED - no flow control", (20, 20))


class LocalConnection:
    """What kombu calls the transport's connection: a session with the queue file, its
    channels, and `sock`, which is readable when there is work."""

    def __init__(self, client: Any, path: str):
        self.client = client
        self.closed = False
        self.channels: list[Channel] = []
        self.store = Store(path)
        self.identity: Identity = own_identity()
        try:
            consumers = self.store.register(self.identity)
            self.id = self.store.connection_id
            try:
                self.events = Events(wake_directory(path), self.id)
            except BaseException:
                self.store.unregister()
                raise
        except BaseException:
            self.store.close()
            raise
        self.events.ring(consumers)
        self.sock = self.events
        self._channel_ids = itertools.count(1)
        self._members_seen: int | None = None
        self._turn = 0
        self._settled = False
        self._next_sweep = 0.0
        self.sweep_if_due()

    def channel(self) -> Channel:
        channel = Channel(self, next(self._channel_ids))
        self.channels.append(channel)
        return channel

    def forget(self, channel: Channel) -> None:
        if channel in self.channels:
            self.channels.remove(channel)

    def ring(self, connection_ids: list[int]) -> None:
        self.events.ring(connection_ids)

    def ring_consumers(self, consumers: dict[str, list[int]]) -> None:
        """After a publish: wake one consumer of each queue, taking turns."""
        self._turn += 1
        for candidates in consumers.values():
            self.events.ring_one(candidates, self._turn)

    def ack_soon(self, message_id: int, was_full: bool) -> None:
        """Queue the ack for this connection's next transaction, or ACK_DELAY from now at
        the latest (``sock`` turns readable, so the I/O loop calls drain_events). Written at
        once, the ack of a call took the write lock just as its caller claimed the reply,
        and SQLite makes the loser sleep a millisecond: the call's p50 went up by half."""
        if was_full:  # room again for what may wait: look now (and write the ack then)
            self._settled = False
            self.events.ring_self()
        elif not self.store.pending_acks:
            self.events.set_timer(ACK_DELAY)
        self.store.pending_acks.append(message_id)

    def sweep_if_due(self) -> None:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + 1.0  # ask the file at most once a second
            self.ring(self.store.sweep())

    def drain(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._deliver_ready():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("no message")  # socket.timeout
            self.events.wait(remaining)

    def _deliver_ready(self) -> bool:
        """Deliver what is ready for this connection's consumers; False if nothing was."""
        kinds, exited = self.events.collect()
        if self._settled and not kinds and not exited:
            # Nothing was ready at the last look, and whatever changed since would have
            # woken this connection: no need to ask the file again.
            if self.store.pending_acks:
                self.store.flush_acks()
            return False
        consuming = [channel for channel in self.channels if channel.consumers]
        if consuming:
            exited += self._watch_peers()
        if exited:
            wake, released = self.store.reap(exited)
            if released:
                LOG.warning(
                    "process %s died holding %d unacknowledged messages: redelivering them",
                    ", ".join(str(identity.pid) for identity in exited),
                    released,
                )
            self.ring(wake)
            self.events.remove_stale_sockets(self.store.connection_ids())
        self.sweep_if_due()
        queues = {c.queue: channel for channel in consuming for c in channel.consumers.values()}
        ready = self.store.ready_queues(queues) if queues else set()
        claims = [
            Claim(channel.channel_id, sorted(channel_queues), room, channel.no_ack_queues())
            for channel in consuming
            if (room := channel.capacity())
            and (channel_queues := {c.queue for c in channel.consumers.values()} & ready)
        ]
        claimed: dict[int, list[Stored]] = {}
        left = {queue for queue in ready if not queues[queue].capacity()}
        while claims:
            claimed, dropped_expired, unclaimed = self.store.claim(claims)
            left |= unclaimed
            if claimed or not dropped_expired:
                break
        if left and READY in kinds:  # a publish woke this one only: pass it on, once
            self.events.ring(self.store.other_consumers(left), PASSED)
        self._settled = not claimed
        if not claimed:
            if self.store.pending_acks:
                self.store.flush_acks()
            return False
        by_id = {channel.channel_id: channel for channel in consuming}
        for channel_id, rows in claimed.items():
            by_id[channel_id].deliver(rows)
        return True

    def _watch_peers(self) -> list[Identity]:
        """Keep a pidfd on every other process of the file, so a consumer learns at once of
        a death; re-read the list when a process came or went."""
        version = self.store.members_version()
        if version == self._members_seen:
            return []
        self._members_seen = version
        return self.events.watch(self.store.peers())

    def close(self) -> None:
        if self.closed:
            return
        for channel in list(self.channels):
            channel.closed = True
        self.channels.clear()
        try:
            self.ring(self.store.unregister())
        finally:
            self.closed = True
            self.events.close()
            self.store.close()


class Transport(base.Transport):
    """kombu's entry point for ``local://`` URLs."""

    Channel = Channel
    can_parse_url = True
    driver_type = "sqlite"
    driver_name = "sqlite3"
    connection_errors = (QueueFileError,)
    channel_errors = (ChannelError,)
    # A file that cannot be opened will not open on a retry: the error goes to the caller.
    recoverable_connection_errors = ()
    recoverable_channel_errors = ()
    implements = base.Transport.implements.extend(exchange_type=EXCHANGE_TYPES)

    def establish_connection(self) -> LocalConnection:
        try:
            path = local_path(self.client.hostname)
        except BadTransportURL as error:
            raise QueueFileUnusable(str(error)) from None
        return LocalConnection(self.client, path)

    def close_connection(self, connection: LocalConnection) -> None:
        connection.close()

    def create_channel(self, connection: LocalConnection) -> Channel:
        return connection.channel()

    def close_channel(self, channel: Channel) -> None:
        channel.close()

    def drain_events(self, connection: LocalConnection, timeout: float | None = None, **kw):
        connection.drain(timeout)

    def verify_connection(self, connection: LocalConnection) -> bool:
        return not connection.closed

    def driver_version(self) -> str:
        return sqlite3.sqlite_version

    def as_uri(self, uri: str, include_password: bool = False, mask: str = "**") -> str:
        return uri
