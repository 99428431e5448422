"""echo's RPC methods, apart from its Service: the RPC tests serve them from a bare RPC
server, whose workers then start without importing the database layer (half a second each).
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from supervise.rpc.dispatcher import Target

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
