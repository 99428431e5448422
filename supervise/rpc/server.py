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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import kombu
import kombu.message

from supervise.config import Config
from supervise.rpc import wire
from supervise.rpc.dispatcher import Dispatcher, DispatchError, Target
from supervise.rpc.io import ConnectionThread

LOG = logging.getLogger(__name__)

REDELIVERIES_HEADER = "x-supervise-redeliveries"
DEAD_LETTER_QUEUE = "supervise_dead_letter"
FANOUT_QUEUE_EXPIRES_MS = 1_800_000  # oslo's rabbit_transient_queues_ttl
RECENT_REPLIES = 256
# Read this much at most, even past max_message_size, to tell a caller its call was too large.
MAX_READABLE_SIZE = 256 << 20


class DeadLettered(Exception):
    """Sent to the caller of a message that was moved to the dead-letter queue."""


class MessageTooLarge(Exception):
    """Sent to the caller of a message over ``max_message_size``."""


@dataclass(frozen=True)
class ServerOptions:
    exchange: str = "openstack"
    pool_size: int = 64
    max_message_size: int = 16 << 20
    max_redeliveries: int = 3
    heartbeat: float = 60.0
    publisher_confirms: bool = False

    @classmethod
    def from_config(cls, conf: Config) -> ServerOptions:
        return cls(
            exchange=conf.control_exchange,
            pool_size=conf.executor_thread_pool_size,
            max_message_size=conf.max_message_size,
            max_redeliveries=conf.max_redeliveries,
            heartbeat=conf.heartbeat_timeout_threshold,
            publisher_confirms=conf.publisher_confirms,
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
        self._pool = ThreadPoolExecutor(options.pool_size, thread_name_prefix="rpc-handler")
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
        self._in_flight = 0
        self._idle = threading.Condition()
        self._stopping = False
        self._channel: Any = None
        self._producer: kombu.Producer | None = None
        self._consumers: list[kombu.Consumer] = []

    # ----- life cycle (any thread) --------------------------------------------------------

    def start(self) -> None:
        """Connect and consume; return once the consumers are registered with the broker.
        Raises ConnectionFailed if the first connection fails for good."""
        self._io.start()
        self._io.wait_connected()

    def stop(self) -> None:
        """Stop consuming: the broker sends this server nothing more. Then call `wait`."""
        self._stopping = True
        if self._io.connected.is_set():
            try:
                self._io.submit(self._cancel).result()
            except Exception as error:
                LOG.warning("could not cancel the consumers: %s", error)

    def wait(self) -> None:
        """Let in-flight handlers finish and ack them, then close. Anything delivered but not
        acked when the connection closes goes back to its queue."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0 or not self._io.connected.is_set())
        self._io.stop()
        self._pool.shutdown(wait=True)

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
        if self._stopping:
            return
        self._channel = conn.channel()
        self._channel.basic_qos(0, self.options.pool_size, False)
        self._producer = kombu.Producer(self._channel, auto_declare=False)
        self._consumers = [
            kombu.Consumer(
                self._channel,
                [queue],
                on_message=functools.partial(self._on_message, queue.name),
                no_ack=False,
            )
            for queue in self._queues()
        ]
        for consumer in self._consumers:
            consumer.consume()

    def _cancel(self, _conn: kombu.Connection) -> None:
        for consumer in self._consumers:
            consumer.cancel()
        self._consumers = []

    def _on_message(self, queue: str, message: kombu.message.Message) -> None:
        try:
            inner = wire.decode(message.body, message.content_type, MAX_READABLE_SIZE)
        except wire.WireError as error:
            LOG.warning("dropped an unreadable message from queue %s: %s", queue, error)
            message.ack()
            return
        if not _valid_reply_queue(inner.get("_reply_q")):
            LOG.warning(
                "dropped %s from queue %s: its reply queue %s is not a queue name",
                _loggable(inner.get("method")),
                queue,
                _loggable(inner.get("_reply_q")),
            )
            message.ack()
            return
        if len(message.body) > self.options.max_message_size:
            error = MessageTooLarge(
                f"a message of {len(message.body)} bytes is over max_message_size "
                f"({self.options.max_message_size})"
            )
            LOG.warning(
                "rejected %s from queue %s: %s", _loggable(inner.get("method")), queue, error
            )
            self._answer(_reply_to(inner, None, wire.serialize_failure(error)))
            message.ack()
            return
        if message.delivery_info.get("redelivered"):
            self._requeue_counted(message, inner, queue)
            return
        unique_id = inner.get("_unique_id")
        if isinstance(unique_id, str) and unique_id in self._recent:
            LOG.info("message %s was handled already: answering it again", _loggable(unique_id))
            self._answer(self._recent.get(unique_id))
            message.ack()
            return
        self._in_flight += 1
        self._monitor(inner)
        self._pool.submit(self._handle, message, inner, self._channel)

    def _monitor(self, inner: dict) -> None:
        """oslo's call monitor: a caller that sent ``_timeout`` N wants an ``ending: false``
        reply every N/2 seconds while its call runs, or it gives up after N seconds."""
        msg_id, reply_queue, timeout = (
            inner.get("_msg_id"),
            inner.get("_reply_q"),
            inner.get("_timeout"),
        )
        if not isinstance(msg_id, str) or not isinstance(reply_queue, str):
            return
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout < 2:
            return
        interval = int(timeout) / 2
        self._monitored.add(msg_id)

        def beat(_conn: kombu.Connection) -> None:
            if msg_id in self._monitored:
                self._answer((reply_queue, wire.encode(wire.heartbeat(msg_id))))
                self._io.call_later(interval, beat)

        self._io.call_later(interval, beat)

    def _requeue_counted(self, message: kombu.message.Message, inner: dict, queue: str) -> None:
        count = _redeliveries(message) + 1
        if count > self.options.max_redeliveries:
            LOG.error(
                "message %s (method %s) was held by %d consumers that died or lost their "
                "connection: moving it to queue %s",
                _loggable(inner.get("_unique_id")),
                _loggable(inner.get("method")),
                count,
                DEAD_LETTER_QUEUE,
            )
            self._dead_letter(message, inner, count)
        else:
            LOG.warning(
                "message %s (method %s) redelivered (%d of %d): queued again",
                _loggable(inner.get("_unique_id")),
                _loggable(inner.get("method")),
                count,
                self.options.max_redeliveries,
            )
            self._republish(message, queue, count)
        message.ack()

    def _copy(self, message: kombu.message.Message, queue: str, count: int, **properties):
        """Publish `message` again, straight into `queue`, with its redelivery count."""
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

    def _dead_letter(self, message: kombu.message.Message, inner: dict, count: int) -> None:
        kombu.Queue(DEAD_LETTER_QUEUE, durable=True, auto_delete=False)(self._channel).declare()
        self._copy(message, DEAD_LETTER_QUEUE, count, delivery_mode=2)
        error = DeadLettered(f"the message was moved to {DEAD_LETTER_QUEUE} after {count} tries")
        self._answer(_reply_to(inner, None, wire.serialize_failure(error)))

    def _answer(self, reply: tuple[str, dict] | None) -> None:
        if reply is not None:
            reply_queue, body = reply
            self._producer.publish(body, exchange="", routing_key=reply_queue, serializer="json")

    def _finish(self, message: kombu.message.Message, channel: Any, inner: dict, reply):
        """Queue the reply, then the ack, as tasks of their own: the I/O thread retries a
        task that a lost connection interrupted, so each must be safe to run again."""
        self._monitored.discard(inner.get("_msg_id"))
        unique_id = inner.get("_unique_id")
        if isinstance(unique_id, str):
            self._recent.add(unique_id, reply)
        if reply is not None:
            self._io.call_soon(lambda _conn: self._answer(reply))
        self._io.call_soon(lambda _conn: self._ack(message, channel))
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def _ack(self, message: kombu.message.Message, channel: Any) -> None:
        if channel is self._channel and not message.acknowledged:
            message.ack()
        # else: its channel died with a connection; the broker redelivers the message.

    # ----- on a pool thread ---------------------------------------------------------------

    def _handle(self, message: kombu.message.Message, inner: dict, channel: Any) -> None:
        reply = None
        try:
            reply = self._run(inner)
        finally:  # whatever happened, the I/O thread acks and counts the message done
            self._io.call_soon(lambda _conn: self._finish(message, channel, inner, reply))

    def _run(self, inner: dict) -> tuple[str, dict] | None:
        method = _loggable(inner.get("method"))
        result, failure = None, None
        try:
            result = self._dispatcher.dispatch(inner)
        except DispatchError as error:
            LOG.warning("rejected a call to %s: %s", method, error)  # one line, bounded
            failure = wire.serialize_failure(error)
        except Exception as error:
            LOG.warning("%s raised %s: %s", method, type(error).__name__, _one_line(str(error)))
            LOG.debug("traceback of %s", method, exc_info=True)
            failure = wire.serialize_failure(error)
        try:
            return _reply_to(inner, result, failure)
        except Exception as error:
            LOG.warning("the result of %s cannot be sent as JSON: %s", method, error)
            return _reply_to(inner, None, wire.serialize_failure(error))


def _reply_to(inner: dict, result: Any, failure: str | None) -> tuple[str, dict] | None:
    """(reply queue, encoded reply) for a call, None for a cast. Encoding happens here, on
    the handler's thread, so a result that is not JSON becomes an error reply."""
    msg_id, reply_queue = inner.get("_msg_id"), inner.get("_reply_q")
    if not isinstance(msg_id, str) or not isinstance(reply_queue, str):
        return None
    return reply_queue, wire.encode(wire.reply(msg_id, result, failure))


def _redeliveries(message: kombu.message.Message) -> int:
    count = (message.headers or {}).get(REDELIVERIES_HEADER, 0)
    return count if isinstance(count, int) and count >= 0 else 0


def _expiration_seconds(message: kombu.message.Message) -> float | None:
    """The AMQP expiration property (milliseconds, as text) in kombu's unit, seconds."""
    try:
        return int(message.properties["expiration"]) / 1000
    except (KeyError, TypeError, ValueError):
        return None


def _valid_reply_queue(name: Any) -> bool:
    """AMQP queue names are at most 255 bytes; a call's reply queue must fit (or be absent)."""
    return name is None or (isinstance(name, str) and 0 < len(name.encode()) <= 255)


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
