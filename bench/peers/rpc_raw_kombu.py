"""The ceiling for ``bench/rpc.py``: the least an oslo-compatible RPC server can do, in kombu.

    python bench/peers/rpc_raw_kombu.py --transport-url rabbit://u:p@host:5672/vhost \\
        --topic T [--workers 4]

Forks N processes; each is one kombu consumer on the shared queue ``T`` (bound to the topic
exchange ``openstack`` with routing key ``T``, as oslo.messaging declares it). A message is
acked on receipt, its oslo envelope decoded, and the reply sent in the oslo envelope through
the default exchange to its ``_reply_q``. No threads, no dispatcher, no validation: ``echo``
answers at once; ``sleep`` answers from a timer heap in the same loop (so 20 ms sleeps do not
serialise a process); ``pid`` returns the process id; anything else gets a failure reply.
Each process dies with its parent (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import heapq
import json
import os
import signal
import socket
import sys
import time
import uuid

import kombu
import kombu.message

PR_SET_PDEATHSIG = 1
PREFETCH = 64


def amqp_url(transport_url: str) -> str:
    """kombu's URL for a one-host oslo transport URL (``rabbit://`` becomes ``amqp://``)."""
    return "amqp://" + transport_url.split("://", 1)[1]


def envelope(message: dict) -> str:
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(message)})


def reply(msg_id: str, result: object = None, failure: str | None = None) -> str:
    return envelope(
        {
            "result": result,
            "failure": failure,
            "ending": True,
            "_msg_id": msg_id,
            "_unique_id": uuid.uuid4().hex,
        }
    )


def failure(text: str) -> str:
    return json.dumps(
        {"class": "NoSuchMethod", "module": "builtins", "message": text, "tb": [], "args": []}
    )


class Server:
    """One consumer process: a kombu connection, its consumer and a heap of due replies."""

    def __init__(self, transport_url: str, topic: str, exchange: str):
        self.connection = kombu.Connection(amqp_url(transport_url), heartbeat=0)
        self.channel = self.connection.channel()
        self.channel.basic_qos(0, PREFETCH, False)
        self.producer = kombu.Producer(self.channel, auto_declare=False)
        topic_exchange = kombu.Exchange(exchange, type="topic", durable=False)
        queue = kombu.Queue(topic, topic_exchange, routing_key=topic, durable=False)
        self.consumer = kombu.Consumer(
            self.channel, [queue], on_message=self.on_message, no_ack=False
        )
        self.due: list[tuple[float, str, str]] = []  # (when, reply queue, reply body)

    def run(self) -> None:
        self.consumer.consume()
        while True:
            timeout = max(0.0, self.due[0][0] - time.monotonic()) if self.due else 1.0
            with contextlib.suppress(socket.timeout):
                self.connection.drain_events(timeout=timeout)
            now = time.monotonic()
            while self.due and self.due[0][0] <= now:
                _, reply_queue, body = heapq.heappop(self.due)
                self.send(reply_queue, body)

    def send(self, reply_queue: str, body: str) -> None:
        self.producer.publish(
            body,
            exchange="",
            routing_key=reply_queue,
            content_type="application/json",
            content_encoding="utf-8",
        )

    def on_message(self, message: kombu.message.Message) -> None:
        message.ack()
        inner = json.loads(json.loads(message.body)["oslo.message"])
        reply_queue, msg_id = inner.get("_reply_q"), inner.get("_msg_id")
        method, args = inner.get("method"), inner.get("args") or {}
        if method == "sleep":
            due = time.monotonic() + args["ms"] / 1000
            if reply_queue:
                heapq.heappush(self.due, (due, reply_queue, reply(msg_id, args["ms"])))
            return
        if not reply_queue:  # a cast: nothing to answer
            return
        if method == "echo":
            body = reply(msg_id, args.get("payload"))
        elif method == "pid":
            body = reply(msg_id, os.getpid())
        else:
            body = reply(msg_id, failure=failure(f"no method {method!r}"))
        self.send(reply_queue, body)


def child(transport_url: str, topic: str, exchange: str) -> None:
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    Server(transport_url, topic, exchange).run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport-url", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--exchange", default="openstack")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    pids = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            try:
                child(args.transport_url, args.topic, args.exchange)
            finally:
                os._exit(1)
        pids.append(pid)

    def kill_children() -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)

    def on_signal(_signum: int, _frame: object) -> None:
        kill_children()
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    pid, status = os.wait()  # any child's death ends the peer: the bench notices
    print(f"rpc_raw_kombu: child {pid} exited with status {status}", file=sys.stderr)
    kill_children()
    return 1


if __name__ == "__main__":
    sys.exit(main())
