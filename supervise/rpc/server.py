"""RPC server: consume a topic's queues, run endpoint methods in a pool, ack after.

Unlike oslo.messaging, which acks on receipt (a killed worker's calls vanish), a message is
acked only once its handler has returned and its reply is sent: at-least-once. Prefetch is
bounded by the pool size, so the broker never hands a worker more than it is running, and
`stop` cancels the consumers first so a draining worker is sent nothing new.

A message the broker redelivers (its consumer died or lost its connection holding it) is
not run at once: it is put back at the end of its queue with a count in a header, and once
that count passes ``max_redeliveries`` it goes to the dead-letter queue instead, so a
message that kills every worker that takes it stops killing them.
"""

from __future__ import annotations

import functools
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import kombu
import kombu.message

from supervise.config import Config
from supervise.progress import UNKNOWN_METHOD, Progress, Tracker
from supervise.rpc import executors, receive, wire
from supervise.rpc.dispatcher import (
    Dispatcher,
    DispatchError,
    InvalidMessage,
    NoSuchMethod,
    Target,
)
from supervise.rpc.io import ConnectionThread, describe

LOG = logging.getLogger(__name__)

REDELIVERIES_HEADER = "x-supervise-redeliveries"
DEAD_LETTER_QUEUE = "supervise_dead_letter"
FANOUT_QUEUE_EXPIRES_MS = 1_800_000  # oslo's rabbit_transient_queues_ttl
RECENT_REPLIES = 256
# Scan a refused body this large at most for a reply address, to tell its caller why.
MAX_SCANNED_SIZE = 256 << 20
DELETE_TIMEOUT = 10.0
FLUSH_TIMEOUT = 30.0  # as long as the longest back-off between two connection attempts


class DeadLettered(Exception):
    """Sent to the caller of a message that was moved to the dead-letter queue."""


@dataclass(frozen=True)
class ServerOptions:
    exchange: str = "openstack"
    pool_size: int = 64
    max_message_size: int = 16 << 20
    max_redeliveries: int = 3
    heartbeat: float = 60.0
    publisher_confirms: bool = False
    handler_timeout: float = 60.0  # a handler running longer is logged; 0: never
    executor: str = executors.THREADING

    @classmethod
    def from_config(cls, conf: Config) -> ServerOptions:
        return cls(
            exchange=conf.control_exchange,
            pool_size=conf.executor_thread_pool_size,
            max_message_size=conf.max_message_size,
            max_redeliveries=conf.max_redeliveries,
            heartbeat=conf.heartbeat_timeout_threshold,
            publisher_confirms=conf.publisher_confirms,
            handler_timeout=conf.rpc_handler_timeout,
            executor=conf.executor,
        )


def topic_exchange(name: str) -> kombu.Exchange:
    return kombu.Exchange(name, type="topic", durable=False, auto_delete=False)


def fanout_exchange(topic: str) -> kombu.Exchange:
    return kombu.Exchange(f"{topic}_fanout", type="fanout", durable=False, auto_delete=True)


class RecentReplies:
    """Replies to the last messages handled, by ``_unique_id``: a duplicate delivery is
    answered again from here instead of running twice."""

    def __init__(self, size: int = RECENT_REPLIES):
        self._size = size
        self._items: OrderedDict[str, tuple[str, dict] | None] = OrderedDict()

    def __contains__(self, unique_id: str) -> bool:
        return unique_id in self._items

    def get(self, unique_id: str) -> tuple[str, dict] | None:
        return self._items[unique_id]

    def add(self, unique_id: str, reply: tuple[str, dict] | None) -> None:
        self._items[unique_id] = reply
        while len(self._items) > self._size:
            self._items.popitem(last=False)


class RPCServer:
    def __init__(
        self,
        transport_url: str,
        target: Target,
        endpoints: Sequence[object],
        options: ServerOptions = ServerOptions(),
    ):
        if not target.topic or not target.server:
            raise ValueError("an RPC server needs a target with a topic and a server")
        self.target = target
        self.options = options
        self._dispatcher = Dispatcher(endpoints)
        self._pool = executors.handler_pool(options.executor, options.pool_size)
        self._io = ConnectionThread(
            transport_url,
            name="rpc-server-io",
            heartbeat=options.heartbeat,
            on_connect=self._consume,
            publisher_confirms=options.publisher_confirms,
        )
        self._fanout_queue = f"{target.topic}_fanout_{uuid.uuid4().hex}"
        self._recent = RecentReplies()
        self._monitored: set[str] = set()  # calls whose callers want heartbeats
        self._tracker = Tracker(options.pool_size)
        self._reported_long: set[int] = set()  # in-flight tokens logged as running long
        self._in_flight = 0
        self._idle = threading.Condition()
        self._stopping = False
        self._paused = False
        self._channel: Any = None
        self._connection_errors: tuple[type[BaseException], ...] = (OSError,)
        self._producer: kombu.Producer | None = None
        self._consumers: list[kombu.Consumer] = []

    # ----- life cycle (any thread) --------------------------------------------------------

    def start(self) -> None:
        """Connect and consume; return once the consumers are registered with the broker.
        Raises ConnectionFailed if the first connection fails for good, and Cancelled if
        `stop` is called (from another thread) before the first connection is made: then
        nothing is left running."""
        self._io.start()
        self._io.wait_connected()

    def stop(self) -> None:
        """Stop consuming: the broker sends this server nothing more. Then call `wait`.
        Before the first connection is made, this cancels `start` instead."""
        self._stopping = True
        if not self._io.ever_connected:
            self._io.stop()
        elif self._io.connected.is_set():
            try:
                self._io.submit(self._cancel).result()
            except Exception as error:
                LOG.warning("could not cancel the consumers: %s", error)

    def pause(self) -> None:
        """Stop consuming, as `stop` does, but keep the connection: in-flight handlers finish
        and are acked, and new messages wait in their queues until `resume`. Any thread; it
        does not wait for the broker."""
        self._paused = self._tracker.paused = True
        self._tracker.forget_probe()
        self._io.call_soon(self._follow_pause)

    def resume(self) -> None:
        """Consume again after `pause` (on a connection made meanwhile too)."""
        self._paused = self._tracker.paused = False
        self._io.call_soon(self._follow_pause)

    def wait(self) -> None:
        """Let in-flight handlers finish, send their replies and acks, delete this server's
        fanout queue, and close. Handlers end whatever the connection does; their replies
        and acks wait FLUSH_TIMEOUT at most for a connection lost meanwhile to come back,
        and what is not acked then the broker gives to another consumer."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0)
        # A start cancelled before the first connection left nothing to send.
        if self._io.ever_connected and not self._io.flush(FLUSH_TIMEOUT):
            LOG.warning(
                "replies and acks not sent within %g s (no broker connection): the broker "
                "gives those messages to another consumer",
                FLUSH_TIMEOUT,
            )
        self._delete_fanout_queue()
        self._io.stop()
        self._pool.shutdown(wait=True)

    def progress(self) -> Progress:
        """The counters and in-flight messages, and how long ago the consume loop last ran a
        probe; sends the next probe. Logs each handler that passed `handler_timeout`, once.
        Called from the worker's loop at each heartbeat to the master."""
        consuming = self._io.connected.is_set() and not self._stopping and not self._paused
        snapshot = self._tracker.snapshot(consuming)
        if consuming:
            self._io.call_soon(lambda _conn: self._tracker.probe_done())
        self._log_long_handlers()
        return snapshot

    def _log_long_handlers(self) -> None:
        limit = self.options.handler_timeout
        if not limit:
            return
        running = self._tracker.long_running(limit)
        self._reported_long &= {token for token, _, _ in running}
        for token, method, age in running:
            if token not in self._reported_long:
                self._reported_long.add(token)
                LOG.warning(
                    "a call to %s has been running for %.0f s (rpc_handler_timeout %g s)",
                    method,
                    age,
                    limit,
                )

    def _delete_fanout_queue(self) -> None:
        """As oslo does; a queue left behind (no connection now) expires on its own."""
        if not self._io.connected.is_set():
            return
        try:
            self._io.submit(
                lambda _conn: self._channel.queue_delete(queue=self._fanout_queue)
            ).result(DELETE_TIMEOUT)
        except Exception as error:
            LOG.warning("could not delete queue %s: %s", self._fanout_queue, error)

    # ----- on the I/O thread --------------------------------------------------------------

    def _queues(self) -> list[kombu.Queue]:
        topic, server = self.target.topic, self.target.server
        exchange = topic_exchange(self.target.exchange or self.options.exchange)
        return [
            kombu.Queue(topic, exchange, routing_key=topic, durable=False, auto_delete=False),
            kombu.Queue(
                f"{topic}.{server}",
                exchange,
                routing_key=f"{topic}.{server}",
                durable=False,
                auto_delete=False,
            ),
            kombu.Queue(
                self._fanout_queue,
                fanout_exchange(topic),
                routing_key=topic,
                durable=False,
                auto_delete=False,
                queue_arguments={"x-expires": FANOUT_QUEUE_EXPIRES_MS},
            ),
        ]

    def _consume(self, conn: kombu.Connection) -> None:
        """On every connection, a channel for replies and acks; and consumers, unless
        stopping or paused: a drain that outlives a reconnect still sends its replies."""
        self._connection_errors = (*conn.connection_errors, *conn.channel_errors, OSError)
        self._channel = conn.channel()
        self._producer = kombu.Producer(self._channel, auto_declare=False)
        self._consumers = []  # those of the lost connection are gone with it
        self._tracker.probe_done()  # a new connection: the consume loop turns from here
        if self._stopping:
            return
        # Declared here, not as a message is dead-lettered: a declare waits for the broker's
        # answer, and a wait inside a delivery callback can take another wait's answer.
        _dead_letter_queue(self._channel).declare()
        self._channel.basic_qos(0, self.options.pool_size, False)
        if not self._paused:
            self._start_consumers()

    def _start_consumers(self) -> None:
        self._consumers = [
            receive.consumer(
                self._channel,
                queue,
                functools.partial(self._on_message, queue.name),
                functools.partial(self._on_undecodable, queue.name),
                no_ack=False,
            )
            for queue in self._queues()
        ]
        for consumer in self._consumers:
            consumer.consume()

    def _follow_pause(self, conn: kombu.Connection) -> None:
        """Consume, or not, as the last `pause` or `resume` says; safe to run again."""
        if self._paused or self._stopping:
            self._cancel(conn)
        elif not self._consumers and self._channel is not None:
            self._start_consumers()

    def _cancel(self, _conn: kombu.Connection) -> None:
        for consumer in self._consumers:
            consumer.cancel()
        self._consumers = []

    def _on_message(self, queue: str, message: kombu.message.Message) -> None:
        """Whatever one message holds, it ends with that message: it is answered when it
        can be, and acked, queued again or dead-lettered. Only an error of the connection
        itself escapes (and the I/O thread reconnects)."""
        try:
            if message.delivery_info.get("redelivered"):
                self._requeue_counted(queue, message)  # undecoded: poison is counted too
            else:
                self._receive(queue, message)
        except self._connection_errors:
            raise
        except Exception as error:  # a bug; contained all the same
            LOG.error("dropped a message from queue %s: %s", queue, describe(error))
            LOG.debug("traceback", exc_info=True)
            if not message.acknowledged:
                message.ack()

    def _on_undecodable(self, queue: str, message: Any, error: Exception) -> None:
        """What kombu could not make a message of (`message` may be the transport's own)."""
        LOG.warning("refused a message from queue %s: %s", queue, describe(error))
        message.channel.basic_ack(message.delivery_tag)

    def _receive(self, queue: str, message: kombu.message.Message) -> None:
        try:
            inner = receive.decode(message, self.options.max_message_size)
            envelope = wire.envelope(inner)
        except wire.WireError as error:
            self._refuse(queue, message, "a message", error, _scan(message))
            return
        method = _loggable(inner.get("method"))
        if envelope.problem:
            self._refuse(queue, message, method, InvalidMessage(envelope.problem), envelope)
            return
        if envelope.unique_id in self._recent:
            LOG.info(
                "message %s was handled already: answering it again",
                _loggable(envelope.unique_id),
            )
            self._answer(self._recent.get(envelope.unique_id))
            message.ack()
            return
        self._in_flight_change(+1)
        token = self._tracker.begin(_method_name(inner))
        try:
            self._monitor(envelope)
            self._pool.submit(self._handle, message, inner, envelope, self._channel, token)
        except BaseException:
            self._tracker.end(token, _method_name(inner), failed=True)
            self._settle(message, self._channel, envelope, None)
            raise

    def _refuse(
        self,
        queue: str,
        message: kombu.message.Message,
        what: str,
        error: Exception,
        envelope: wire.Envelope | None,
    ) -> None:
        LOG.warning("refused %s from queue %s: %s", what, queue, error)
        if envelope is not None:
            self._answer(_reply_to(envelope, None, wire.serialize_failure(error)))
        message.ack()

    def _monitor(self, envelope: wire.Envelope) -> None:
        """oslo's call monitor: a caller that sent ``_timeout`` N wants an ``ending: false``
        reply every N/2 seconds while its call runs, or it gives up after N seconds."""
        msg_id, timeout = envelope.msg_id, envelope.timeout
        if not envelope.is_call or timeout is None or timeout < 2:
            return
        interval = int(timeout) / 2
        heartbeat = (envelope.reply_queue, wire.encode(wire.heartbeat(msg_id)))
        self._monitored.add(msg_id)

        def beat(_conn: kombu.Connection) -> None:
            if msg_id in self._monitored:
                self._answer(heartbeat)
                self._io.call_later(interval, beat)

        self._io.call_later(interval, beat)

    def _requeue_counted(self, queue: str, message: kombu.message.Message) -> None:
        count = _redeliveries(message) + 1
        if count > self.options.max_redeliveries:
            LOG.error(
                "a message was held by %d consumers that died or lost their connection: "
                "moving it to queue %s",
                count,
                DEAD_LETTER_QUEUE,
            )
            self._dead_letter(message, count)
            self._tracker.dead_lettered()
        else:
            LOG.warning(
                "a message of queue %s was redelivered (%d of %d): queued again",
                queue,
                count,
                self.options.max_redeliveries,
            )
            self._republish(message, queue, count)
            self._tracker.redelivered()
        message.ack()

    def _copy(self, message: kombu.message.Message, queue: str, count: int, **properties):
        """Publish `message` again, as it came, straight into `queue`, with its redelivery
        count."""
        self._producer.publish(
            message.body,
            exchange="",
            routing_key=queue,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            headers={**(message.headers or {}), REDELIVERIES_HEADER: count},
            **properties,
        )

    def _republish(self, message: kombu.message.Message, queue: str, count: int) -> None:
        self._copy(message, queue, count, expiration=_expiration_seconds(message))

    def _dead_letter(self, message: kombu.message.Message, count: int) -> None:
        self._copy(message, DEAD_LETTER_QUEUE, count, delivery_mode=2)
        try:
            envelope = wire.envelope(receive.decode(message, self.options.max_message_size))
        except wire.WireError:
            envelope = _scan(message)
        if envelope is not None:
            error = DeadLettered(f"moved to {DEAD_LETTER_QUEUE} after {count} deliveries")
            self._answer(_reply_to(envelope, None, wire.serialize_failure(error)))

    def _answer(self, reply: tuple[str, dict] | None) -> None:
        if reply is not None:
            reply_queue, body = reply
            self._producer.publish(body, exchange="", routing_key=reply_queue, serializer="json")

    def _remember(self, envelope: wire.Envelope, reply) -> None:
        self._monitored.discard(envelope.msg_id)
        if envelope.unique_id is not None:
            self._recent.add(envelope.unique_id, reply)

    def _ack(self, message: kombu.message.Message, channel: Any) -> None:
        if channel is self._channel and not message.acknowledged:
            message.ack()
        # else: its channel died with a connection; the broker redelivers the message.

    # ----- on any thread ------------------------------------------------------------------

    def _in_flight_change(self, change: int) -> None:
        with self._idle:
            self._in_flight += change
            self._idle.notify_all()

    def _settle(self, message, channel: Any, envelope: wire.Envelope, reply) -> None:
        """The one way a message taken into flight leaves it. The reply and the ack are I/O
        tasks of their own: the I/O thread runs again on the next connection a task that a
        lost connection interrupted, so each must be safe to run again."""
        self._io.call_soon(lambda _conn: self._remember(envelope, reply))
        if reply is not None:
            self._io.call_soon(lambda _conn: self._answer(reply))
        self._io.call_soon(lambda _conn: self._ack(message, channel))
        self._in_flight_change(-1)

    # ----- on a pool thread ---------------------------------------------------------------

    def _handle(
        self, message, inner: dict, envelope: wire.Envelope, channel: Any, token: int
    ) -> None:
        reply, counted_as, failed = None, _method_name(inner), True
        try:
            reply, counted_as, failed = self._run(inner, envelope)
        finally:
            self._tracker.end(token, counted_as, failed)
            self._settle(message, channel, envelope, reply)

    def _run(self, inner: dict, envelope: wire.Envelope) -> tuple[Any, str, bool]:
        """(the reply or None, the method name it counts under, whether it failed)."""
        method = _loggable(inner.get("method"))
        counted_as = _method_name(inner)
        result, failure = None, None
        try:
            result = self._dispatcher.dispatch(inner)
        except DispatchError as error:
            LOG.warning("rejected a call to %s: %s", method, error)  # one line, bounded
            failure = wire.serialize_failure(error)
            if isinstance(error, NoSuchMethod):  # the name is the caller's, not ours
                counted_as = UNKNOWN_METHOD
        except Exception as error:
            LOG.warning("%s raised %s: %s", method, type(error).__name__, _one_line(str(error)))
            LOG.debug("traceback of %s", method, exc_info=True)
            failure = wire.serialize_failure(error)
        try:
            return _reply_to(envelope, result, failure), counted_as, failure is not None
        except Exception as error:
            LOG.warning("the result of %s cannot be sent as JSON: %s", method, error)
            return _reply_to(envelope, None, wire.serialize_failure(error)), counted_as, True


def _method_name(inner: dict) -> str:
    """The name a message's method is counted and shown under: only an identifier is, as it
    came from the network; anything else is UNKNOWN_METHOD."""
    method = inner.get("method")
    if isinstance(method, str) and method.isidentifier() and len(method) <= 100:
        return method
    return UNKNOWN_METHOD


def _reply_to(envelope: wire.Envelope, result: Any, failure: str | None):
    """(reply queue, encoded reply) for a call, None for a cast. Encoding happens here, on
    the handler's thread, so a result that is not JSON becomes an error reply."""
    if not envelope.is_call:
        return None
    return envelope.reply_queue, wire.encode(wire.reply(envelope.msg_id, result, failure))


def _scan(message: kombu.message.Message) -> wire.Envelope | None:
    """The reply address of a message that cannot be decoded, if it can still be read."""
    if len(message.body) > MAX_SCANNED_SIZE:
        return None
    address = wire.reply_address(message.body)
    if address is None:
        return None
    try:
        envelope = wire.envelope({"_msg_id": address[0], "_reply_q": address[1]})
    except wire.WireError:
        return None
    return envelope if envelope.is_call else None


def _dead_letter_queue(channel: Any) -> kombu.Queue:
    return kombu.Queue(DEAD_LETTER_QUEUE, durable=True, auto_delete=False)(channel)


def _redeliveries(message: kombu.message.Message) -> int:
    count = (message.headers or {}).get(REDELIVERIES_HEADER, 0)
    return count if isinstance(count, int) and count >= 0 else 0


def _expiration_seconds(message: kombu.message.Message) -> float | None:
    """The AMQP expiration property (milliseconds, as text) in kombu's unit, seconds."""
    try:
        return int(message.properties["expiration"]) / 1000
    except (KeyError, TypeError, ValueError):
        return None


def _loggable(value: Any, limit: int = 120) -> str:
    """A value from the network fit for a log line: repr escapes line breaks (no forged log
    records), and the length is bounded."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _one_line(text: str, limit: int = 300) -> str:
    """Free text from a handler fit for a log line: line breaks and other control characters
    escaped, the length bounded."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "..."
