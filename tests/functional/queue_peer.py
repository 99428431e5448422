"""Processes for the embedded transport's tests: plain kombu, nothing of supervise but the URL.

    python -m tests.functional.queue_peer consume URL EXCHANGE TYPE KEY QUEUE OUT [--prefetch N]
        [--hold]
    python -m tests.functional.queue_peer publish URL EXCHANGE KEY COUNT

A consumer declares its exchange, queue and binding, creates ``OUT.ready`` once it consumes,
and appends ``<body> <redelivered 0|1>`` to OUT for every message, then acks it (``--hold``:
never). It closes its connection on SIGTERM. A publisher declares nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import kombu

import supervise.rpc.local_scheme  # noqa: F401  (registers the local:// scheme)


def consume(args: argparse.Namespace) -> None:
    out = os.open(args.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def on_message(message: kombu.Message) -> None:
        redelivered = int(message.delivery_info["redelivered"])
        os.write(out, f"{message.body.decode()} {redelivered}\n".encode())
        if not args.hold:
            message.ack()

    with kombu.Connection(args.url) as conn:
        exchange = kombu.Exchange(args.exchange, type=args.type, durable=False)
        queue = kombu.Queue(args.queue, exchange, routing_key=args.key, durable=False)
        consumer = kombu.Consumer(conn.channel(), [queue], on_message=on_message)
        consumer.qos(prefetch_count=args.prefetch)
        consumer.consume()
        Path(args.out + ".ready").touch()
        while True:
            conn.drain_events()


def publish(args: argparse.Namespace) -> None:
    with kombu.Connection(args.url) as conn:
        producer = kombu.Producer(conn.channel(), auto_declare=False)
        for number in range(args.count):
            producer.publish(
                str(number).encode(),
                exchange=args.exchange,
                routing_key=args.key,
                content_type="text/plain",
                content_encoding="utf-8",
            )


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leaves the `with`: a clean close
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    consumer = commands.add_parser("consume")
    for name in ("url", "exchange", "type", "key", "queue", "out"):
        consumer.add_argument(name)
    consumer.add_argument("--prefetch", type=int, default=0)
    consumer.add_argument("--hold", action="store_true")
    publisher = commands.add_parser("publish")
    for name in ("url", "exchange", "key"):
        publisher.add_argument(name)
    publisher.add_argument("count", type=int)
    args = parser.parse_args()
    {"consume": consume, "publish": publish}[args.command](args)


if __name__ == "__main__":
    main()
