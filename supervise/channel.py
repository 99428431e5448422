"""The private channel between the master and one worker.

A ``SOCK_SEQPACKET`` socket pair keeps message boundaries, so each packet is one JSON
object with a ``type``: worker to master ``ready``, ``heartbeat``, ``stopping``; master to
worker ``reset``. End of file on either side means the other process is gone.
"""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

LOG = logging.getLogger(__name__)

MAX_PACKET = 1 << 16


class PeerGone(Exception):
    """The process at the other end has exited or closed its end."""


def pair() -> tuple[socket.socket, socket.socket]:
    """(master end, worker end); both non-blocking so neither side can hang on the other."""
    master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    master_end.setblocking(False)
    worker_end.setblocking(False)
    return master_end, worker_end


def send(sock: socket.socket, kind: str, **fields: Any) -> bool:
    """Send one message. False when it was dropped because the peer's queue is full;
    raises PeerGone when the peer has gone."""
    try:
        sock.send(json.dumps({"type": kind, **fields}).encode())
    except BlockingIOError:
        LOG.debug("channel full: dropped a %s message", kind)
        return False
    except (BrokenPipeError, ConnectionResetError, OSError) as error:
        raise PeerGone(str(error)) from None
    return True


def receive(sock: socket.socket) -> tuple[list[dict[str, Any]], bool]:
    """Every message waiting on the socket (possibly none), and whether the peer has gone."""
    messages = []
    while True:
        try:
            packet = sock.recv(MAX_PACKET)
        except BlockingIOError:
            return messages, False
        except OSError:
            return messages, True
        if not packet:
            return messages, True
        try:
            message = json.loads(packet)
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                raise ValueError("not an object with a type")
        except ValueError as error:
            LOG.warning("ignoring a malformed channel message: %s", error)
            continue
        messages.append(message)
