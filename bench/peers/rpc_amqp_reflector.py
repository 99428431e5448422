"""The zero-work server of ``bench/rpc.py``: one py-amqp process answering oslo calls at once.

    python bench/peers/rpc_amqp_reflector.py --transport-url rabbit://u:p@host:5672/vhost \\
        --topic T

It consumes queue ``T`` (bound to the topic exchange ``openstack``) without acks and answers
every call with its ``args["payload"]`` (or ``args["ms"]``, without sleeping) in the oslo
envelope through the default exchange. A client's latency against it is the transport's
round trip (two broker hops, two process wake-ups) plus the client's own cost, and nothing
else: ``bench/rpc.py`` subtracts it from a server's latency to estimate the time spent inside
that server. It dies with its parent (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import signal
import sys
import uuid
from urllib.parse import unquote, urlsplit

import amqp

PR_SET_PDEATHSIG = 1


def connect(transport_url: str) -> amqp.Connection:
    """A py-amqp connection for a one-host oslo transport URL."""
    parts = urlsplit(transport_url)
    connection = amqp.Connection(
        host=f"{parts.hostname}:{parts.port or 5672}",
        userid=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        virtual_host=unquote(parts.path[1:]) or "/",
        connect_timeout=10,
    )
    connection.connect()
    return connection


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport-url", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--exchange", default="openstack")
    args = parser.parse_args()
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    connection = connect(args.transport_url)
    channel = connection.channel()
    channel.exchange_declare(args.exchange, "topic", durable=False, auto_delete=False)
    channel.queue_declare(args.topic, durable=False, auto_delete=False)
    channel.queue_bind(args.topic, args.exchange, routing_key=args.topic)

    def on_message(message: amqp.Message) -> None:
        inner = json.loads(json.loads(message.body)["oslo.message"])
        reply_queue = inner.get("_reply_q")
        if not reply_queue:
            return
        call_args = inner.get("args") or {}
        reply = {
            "result": call_args.get("payload", call_args.get("ms")),
            "failure": None,
            "ending": True,
            "_msg_id": inner.get("_msg_id"),
            "_unique_id": uuid.uuid4().hex,
        }
        body = json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(reply)})
        channel.basic_publish(
            amqp.Message(body, content_type="application/json", content_encoding="utf-8"),
            exchange="",
            routing_key=reply_queue,
        )

    channel.basic_consume(args.topic, callback=on_message, no_ack=True)
    while True:
        connection.drain_events()


if __name__ == "__main__":
    sys.exit(main())
