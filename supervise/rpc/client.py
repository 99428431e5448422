"""RPC client with oslo.messaging's interface: call, cast, fanout cast, prepare.

Every client of a process shares one `Messenger`: one connection owned by an I/O thread
and one ``reply_<uuid>`` queue, on which replies are matched to waiting calls by ``_msg_id``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import kombu
import kombu.message

from supervise.rpc import receive, wire
from supervise.rpc.dispatcher import Target
from supervise.rpc.io import ConnectionFailed, ConnectionLost, ConnectionThread, describe
from supervise.rpc.server import fanout_exchange, topic_exchange
from supervise.rpc.transport_url import mask

LOG = logging.getLogger(__name__)

REPLY_QUEUE_EXPIRES_MS = 1_800_000  # oslo's rabbit_transient_queues_ttl
MAX_REPLY_SIZE = 1 << 30


class MessagingTimeout(Exception):
    """No reply came within the call's timeout."""


class BrokerUnreachable(Exception):
    """The broker could not be reached within the call's timeout."""


@dataclasses.dataclass
class _PendingCall:
    future: Future = dataclasses.field(default_factory=Future)
    result: Any = None
    heard_at: float = dataclasses.field(default_factory=time.monotonic)


class Messenger:
    """The connection and reply queue that a process's clients share."""

    def __init__(
        self, transport_url: str, *, heartbeat: float = 60.0, publisher_confirms: bool = False
    ):
        self.transport_url = transport_url
        self.reply_queue = f"reply_{uuid.uuid4().hex}"
        self._waiting: dict[str, _PendingCall] = {}
        self._lock = threading.Lock()
        self._producer: kombu.Producer | None = None
        self._io = ConnectionThread(
            transport_url,
            name="rpc-client-io",
            heartbeat=heartbeat,
            on_connect=self._setup,
            publisher_confirms=publisher_confirms,
        )
        self._io.start()

    def close(self) -> None:
        self._io.stop()

    def _setup(self, conn: kombu.Connection) -> None:
        channel = conn.channel()
        self._producer = kombu.Producer(channel, auto_declare=False)
        queue = kombu.Queue(
            self.reply_queue,
            durable=False,
            auto_delete=False,
            queue_arguments={"x-expires": REPLY_QUEUE_EXPIRES_MS},
        )
        receive.consumer(
            channel, queue, self._on_reply, self._on_undecodable, no_ack=True
        ).consume()

    def _on_undecodable(self, _message: object, error: Exception) -> None:
        LOG.warning("dropped an unreadable reply: %s", describe(error))

    def _on_reply(self, message: kombu.message.Message) -> None:
        """Whatever a reply holds, it is dropped or ends its call: it never reaches the
        connection (reset, every other call's reply would be lost)."""
        try:
            self._take_reply(receive.decode(message, MAX_REPLY_SIZE))
        except wire.WireError as error:
            LOG.warning("dropped an unreadable reply: %s", error)
        except Exception as error:  # a bug; contained all the same
            LOG.error("dropped a reply: %s", describe(error))
            LOG.debug("traceback", exc_info=True)

    def _take_reply(self, reply: dict) -> None:
        msg_id = reply.get("_msg_id")
        with self._lock:
            pending = self._waiting.get(msg_id) if isinstance(msg_id, str) else None
        if pending is None:
            LOG.debug("dropped a reply nobody waits for: %.80r", msg_id)
            return
        pending.heard_at = time.monotonic()
        if reply.get("result") is not None:
            pending.result = reply["result"]
        # As oslo: a reply without `ending` is a call-monitor heartbeat (or the first half of
        # an old two-part reply); the call ends with a failure or with `ending`.
        if reply.get("failure") or reply.get("ending"):
            self.forget(msg_id)
            if not pending.future.done():
                pending.future.set_result((pending.result, reply.get("failure")))

    def publish(self, exchange: kombu.Exchange, routing_key: str, message: dict, timeout: float):
        """Publish from the I/O thread; raise BrokerUnreachable if it is not connected in time."""
        try:
            connected = self._io.wait_connected(timeout)
        except ConnectionFailed as error:
            raise BrokerUnreachable(str(error)) from None
        if not connected:
            raise BrokerUnreachable(
                f"cannot reach the broker at {mask(self.transport_url)}"
                + (f": {self._io.last_error}" if self._io.last_error else "")
            )
        body = wire.encode(message)

        def send(_conn: kombu.Connection) -> None:
            self._producer.publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                serializer="json",
                declare=[exchange],
                expiration=timeout,
            )

        try:
            self._io.submit(send).result(timeout)
        except (ConnectionLost, FutureTimeout) as error:
            raise BrokerUnreachable(f"could not publish: {error or 'timed out'}") from None

    def expect_reply(self, msg_id: str) -> _PendingCall:
        """The call with this ``_msg_id``; its future's result is (result, failure)."""
        pending = _PendingCall()
        with self._lock:
            self._waiting[msg_id] = pending
        return pending

    def forget(self, msg_id: str) -> None:
        with self._lock:
            self._waiting.pop(msg_id, None)


@dataclasses.dataclass(frozen=True)
class RPCClient:
    """``RPCClient(messenger, Target(topic=...)).prepare(server=...).call(ctx, "method", a=1)``"""

    messenger: Messenger
    target: Target
    timeout: float = 60.0
    exchange: str = "openstack"
    call_monitor_timeout: float | None = None

    def prepare(
        self,
        *,
        timeout: float | None = None,
        call_monitor_timeout: float | None = None,
        **target_fields: Any,
    ) -> RPCClient:
        """A client with some Target fields (server, fanout, version, namespace) replaced.
        With `call_monitor_timeout`, as in oslo, a call may run up to `timeout` as long as
        the server sends a heartbeat at least that often, and fails sooner when it stops."""
        return dataclasses.replace(
            self,
            target=dataclasses.replace(self.target, **target_fields),
            timeout=self.timeout if timeout is None else timeout,
            call_monitor_timeout=call_monitor_timeout or self.call_monitor_timeout,
        )

    def _message(self, context: Mapping[str, Any], method: str, args: dict) -> dict:
        message: dict[str, Any] = {"method": method, "args": args}
        if self.target.namespace is not None:
            message["namespace"] = self.target.namespace
        if self.target.version is not None:
            message["version"] = self.target.version
        message["_unique_id"] = wire.new_unique_id()
        message.update(wire.pack_context(context))
        return message

    def _destination(self) -> tuple[kombu.Exchange, str]:
        topic = self.target.topic
        if self.target.fanout:
            return fanout_exchange(topic), topic
        exchange = topic_exchange(self.target.exchange or self.exchange)
        return exchange, f"{topic}.{self.target.server}" if self.target.server else topic

    def cast(self, context: Mapping[str, Any], method: str, **kwargs: Any) -> None:
        exchange, routing_key = self._destination()
        message = self._message(context, method, kwargs)
        self.messenger.publish(exchange, routing_key, message, self.timeout)

    def call(self, context: Mapping[str, Any], method: str, **kwargs: Any) -> Any:
        if self.target.fanout:
            raise ValueError("a call cannot be a fanout: use cast")
        exchange, routing_key = self._destination()
        message = self._message(context, method, kwargs)
        msg_id = uuid.uuid4().hex
        # oslo's `_timeout` is the call-monitor timeout, not the call's.
        message.update(
            _msg_id=msg_id, _reply_q=self.messenger.reply_queue, _timeout=self.call_monitor_timeout
        )
        pending = self.messenger.expect_reply(msg_id)
        try:
            self.messenger.publish(exchange, routing_key, message, self.timeout)
            result, failure = self._wait(pending, method)
        finally:
            self.messenger.forget(msg_id)
        if failure:
            raise wire.deserialize_failure(failure)
        return result

    def _wait(self, pending: _PendingCall, method: str) -> tuple[Any, str | None]:
        deadline = time.monotonic() + self.timeout
        while True:
            now = time.monotonic()
            wait = deadline - now
            if self.call_monitor_timeout:
                wait = min(wait, pending.heard_at + self.call_monitor_timeout - now)
            try:
                return pending.future.result(max(0.0, wait))
            except FutureTimeout:
                now = time.monotonic()
                if now >= deadline:
                    what = f"within {self.timeout:g} s"
                elif now >= pending.heard_at + self.call_monitor_timeout:
                    what = f"nor heartbeat within {self.call_monitor_timeout:g} s"
                else:
                    continue  # a heartbeat came in while we waited
                raise MessagingTimeout(
                    f"no reply to {method!r} on topic {self.target.topic!r} {what}"
                ) from None
