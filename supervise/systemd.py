"""sd_notify client: tell systemd about readiness, reloads, shutdown and liveness.

Standard library only. The protocol is one datagram per message, made of newline-separated
``KEY=value`` lines, sent to the AF_UNIX socket named by ``$NOTIFY_SOCKET``.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import MutableMapping

LOG = logging.getLogger(__name__)

_DIGITS = re.compile(r"[0-9]+")


class Notifier:
    """Sends notify messages for the master; every method is a no-op when disabled.

    Sending never blocks and never raises: systemd (or whatever listens) being slow or gone
    must not stall or crash the master's loop.
    """

    def __init__(self, address: bytes | None = None, watchdog_interval: float | None = None):
        self._address = address
        self.enabled: bool = address is not None
        self.watchdog_interval: float | None = watchdog_interval if self.enabled else None
        self._socket: socket.socket | None = None
        self._logged_errors: set[tuple[type[OSError], int | None]] = set()

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] = os.environ) -> Notifier:
        """Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID and removes them from `environ`
        so forked/exec'd workers do not inherit them. A no-op notifier when NOTIFY_SOCKET is
        unset or unusable."""
        notify_socket = environ.pop("NOTIFY_SOCKET", None)
        watchdog_usec = environ.pop("WATCHDOG_USEC", None)
        watchdog_pid = environ.pop("WATCHDOG_PID", None)
        if not notify_socket:
            return cls()
        address = _parse_address(notify_socket)
        if address is None:
            LOG.warning(
                "NOTIFY_SOCKET=%r is neither a path nor an abstract socket name; "
                "systemd notifications disabled",
                notify_socket,
            )
            return cls()
        return cls(address, _watchdog_interval(watchdog_usec, watchdog_pid))

    def ready(self, status: str | None = None) -> bool:
        return self._send({"READY": "1"}, status)

    def reloading(self, status: str | None = None) -> bool:
        """RELOADING=1 with the time the reload started: systemd 253+ uses MONOTONIC_USEC to
        synchronize reload cycles; older versions ignore it."""
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self._send({"RELOADING": "1", "MONOTONIC_USEC": str(now_usec)}, status)

    def stopping(self, status: str | None = None) -> bool:
        return self._send({"STOPPING": "1"}, status)

    def status(self, text: str) -> bool:
        return self._send({}, text)

    def watchdog(self) -> bool:
        return self._send({"WATCHDOG": "1"}, None)

    def close(self) -> None:
        """Closes the socket, e.g. in a freshly forked worker; a later send reopens it."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _send(self, fields: dict[str, str], status: str | None) -> bool:
        """False when the message could not be sent (e.g. the receiver's queue is full)."""
        if not self.enabled:
            return True
        if status is not None:
            fields = {**fields, "STATUS": _one_line(status)}
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            if self._socket is None:
                # Python creates sockets non-inheritable, i.e. close-on-exec.
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.sendto(
                message.encode("utf-8", "replace"), socket.MSG_DONTWAIT, self._address
            )
        except OSError as error:
            self._log_once(error)
            return False
        return True

    def _log_once(self, error: OSError) -> None:
        """Logs the first error of each kind: a notifier that fails once usually keeps
        failing, and the master may ping every few seconds."""
        kind = (type(error), error.errno)
        if kind in self._logged_errors:
            return
        self._logged_errors.add(kind)
        LOG.warning(
            "Cannot send systemd notification to %r (further errors of this kind are not "
            "logged): %s",
            self._address,
            error,
        )


def _parse_address(notify_socket: str) -> bytes | None:
    """Absolute path, or ``@name`` for the abstract namespace; other forms (``vsock:``,
    relative paths) are not supported."""
    if notify_socket.startswith("/"):
        return os.fsencode(notify_socket)
    if notify_socket.startswith("@"):
        return b"\0" + os.fsencode(notify_socket[1:])
    return None


def _watchdog_interval(watchdog_usec: str | None, watchdog_pid: str | None) -> float | None:
    """Half the watchdog timeout, in seconds, as sd_watchdog_enabled(3) recommends; None when
    the watchdog is off, malformed, or meant for another process."""
    if watchdog_usec is None or not _DIGITS.fullmatch(watchdog_usec):
        return None
    usec = int(watchdog_usec)
    if usec == 0:
        return None
    if watchdog_pid is not None and (
        not _DIGITS.fullmatch(watchdog_pid) or int(watchdog_pid) != os.getpid()
    ):
        return None
    return usec / 2 / 1_000_000


def _one_line(text: str) -> str:
    """A newline would start a new KEY=value field; systemd drops a message with a NUL."""
    return text.replace("\n", " ").replace("\0", " ")
