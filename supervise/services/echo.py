"""``echo``: an RPC service for smoke tests and benchmarks.

``supervise --workers 4 --transport-url URL [--topic T] echo`` serves, on topic ``echo``:
``echo(payload)``, ``sleep(ms)``, ``burn(n)`` (n rounds of CPU work) and ``pid()`` (the
worker's process id), plus the ``baseapi`` namespace's ``ping(arg)``.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from supervise.hosted import WorkerContext
from supervise.rpc.dispatcher import BaseAPI, Target
from supervise.rpc.server import RPCServer, ServerOptions

TOPIC = "echo"


class EchoEndpoint:
    target = Target(version="1.0")

    def echo(self, context: dict, payload: Any) -> Any:
        return payload

    def sleep(self, context: dict, ms: float) -> float:
        time.sleep(ms / 1000)
        return ms

    def burn(self, context: dict, n: int) -> str:
        digest = b""
        for _ in range(n):
            digest = hashlib.sha256(digest).digest()
        return digest.hex()

    def pid(self, context: dict) -> int:
        return os.getpid()


class EchoService:
    endpoint_class: type = EchoEndpoint

    def __init__(self, context: WorkerContext):
        self.cancel = context.cancel
        conf = context.conf
        target = Target(topic=conf.topic or TOPIC, server=conf.host)
        self.server = RPCServer(
            conf.transport,
            target,
            [self.endpoint_class(), BaseAPI("echo")],
            ServerOptions.from_config(conf),
        )

    def start(self) -> None:
        with self.cancel.calls(self.server.stop):
            self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def wait(self) -> None:
        self.server.wait()
