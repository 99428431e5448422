"""Consumers that get a message's body as it came off the wire.

kombu decompresses a body while it builds the message object, before any consumer code runs:
with no bound on the output (a small zlib body can expand to gigabytes), and a `compression`
header naming a codec it lacks, or a body that is not what the header says, raises out of
``drain_events``, where it resets the connection. Here the body stays raw and the
`compression` header stays in ``headers``, for `wire.decode` to check the size first and
decompress within the limit. Anything else that fails while kombu builds the message goes
to ``on_undecodable``, never out of the consumer. (The embedded transport builds its
messages raw itself.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kombu
import kombu.message
from kombu.transport import pyamqp

from supervise.rpc import wire


class _RawAMQPMessage(pyamqp.Message):
    def __init__(self, msg: Any, channel: Any = None, **kwargs: Any):
        headers = msg.properties.pop("application_headers", None)
        try:
            super().__init__(msg, channel, **kwargs)
        finally:
            msg.properties["application_headers"] = headers  # self.properties is msg's
        self.headers = headers or {}


def consumer(
    channel: Any,
    queue: kombu.Queue,
    on_message: Callable[[kombu.message.Message], None],
    on_undecodable: Callable[[Any, Exception], None],
    *,
    no_ack: bool,
) -> kombu.Consumer:
    """A consumer of `queue` whose messages keep their raw body. `on_undecodable` gets
    (the message as far as it was built, the error) for what kombu could not build."""
    if isinstance(channel, pyamqp.Channel):
        channel.Message = _RawAMQPMessage
    return kombu.Consumer(
        channel, [queue], on_message=on_message, on_decode_error=on_undecodable, no_ack=no_ack
    )


def decode(message: kombu.message.Message, max_size: int) -> dict[str, Any]:
    """The inner message of a message such a consumer got, or WireError."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    return wire.decode(message.body, message.content_type, max_size, headers.get("compression"))
