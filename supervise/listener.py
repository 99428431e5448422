"""One-request connections served from the master's selector loop, which has no threads.

A `Listener` accepts on a non-blocking socket; each connection sends one request, ended by
a terminator (a newline for the control socket, a blank line for HTTP), gets the response its
handler returns, and is closed. Nothing blocks: a request is read and a response written as
the socket allows, a request larger than its limit is refused, and a connection idle for
longer than its timeout is closed, so no client can stall the master.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

LOG = logging.getLogger(__name__)

READ_SIZE = 1 << 16
MAX_CONNECTIONS = 64  # beyond this, the oldest is closed to make room for the new

# A handler turns a request (without its terminator) into the response bytes; `peer` is the
# accepted socket, to check its credentials. It returns None to close without an answer.
Handler = Callable[[bytes, socket.socket], bytes | None]


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    deadline: float
    received: bytearray = field(default_factory=bytearray)
    response: memoryview | None = None


class Listener:
    def __init__(
        self,
        sock: socket.socket,
        selector: selectors.BaseSelector,
        handle: Handler,
        *,
        terminator: bytes,
        max_request: int,
        timeout: float,
        too_large: bytes | None = None,
    ):
        self.sock = sock
        self._selector = selector
        self._handle = handle
        self._terminator = terminator
        self._max_request = max_request
        self._timeout = timeout
        self._too_large = too_large  # the answer to a request over max_request
        self._connections: list[_Connection] = []  # oldest first
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, self._accept)

    def deadline(self) -> float | None:
        return self._connections[0].deadline if self._connections else None

    def run_due(self, now: float) -> None:
        for connection in [c for c in self._connections if c.deadline <= now]:
            self._close(connection)

    def close(self) -> None:
        """Close every socket, leaving the selector alone: a forked worker closes what it
        inherited this way, after the selector itself."""
        for connection in self._connections:
            connection.sock.close()
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # e.g. out of descriptors: try again on the next event
                LOG.warning("cannot accept a connection: %s", error)
                return
            sock.setblocking(False)
            if len(self._connections) >= MAX_CONNECTIONS:
                self._close(self._connections[0])
            connection = _Connection(sock, time.monotonic() + self._timeout)
            self._connections.append(connection)
            self._selector.register(sock, selectors.EVENT_READ, lambda c=connection: self._read(c))

    def _read(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection)
            return
        if not data:
            self._close(connection)
            return
        connection.received += data
        end = connection.received.find(self._terminator)
        if end < 0 and len(connection.received) <= self._max_request:
            return
        if end < 0 or end > self._max_request:
            response = self._too_large
        else:
            response = self._answer(bytes(connection.received[:end]), connection.sock)
        if response is None:
            self._close(connection)
            return
        connection.response = memoryview(response)
        writable = selectors.EVENT_WRITE
        self._selector.modify(connection.sock, writable, lambda: self._write(connection))
        self._write(connection)

    def _answer(self, request: bytes, peer: socket.socket) -> bytes | None:
        try:
            return self._handle(request, peer)
        except Exception:  # a bug: the master must not die of one request
            LOG.exception("failed to answer a request")
            return None

    def _write(self, connection: _Connection) -> None:
        try:
            sent = connection.sock.send(connection.response)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection)
            return
        connection.response = connection.response[sent:]
        if not connection.response:
            self._close(connection)

    def _close(self, connection: _Connection) -> None:
        if connection in self._connections:
            self._connections.remove(connection)
            self._selector.unregister(connection.sock)
            connection.sock.close()
