"""Waking a selector loop from signal handlers and other threads.

Signal handlers only record the signal; ``signal.set_wakeup_fd`` makes the kernel-level
handler write a byte to this socket pair, so the loop's ``select`` returns at once.
"""

from __future__ import annotations

import contextlib
import signal
import socket


class Wakeup:
    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)

    def catch_signals(self) -> None:
        """Make every handled signal wake the loop that selects on `reader`."""
        signal.set_wakeup_fd(self.writer.fileno(), warn_on_full_buffer=False)

    def wake(self) -> None:
        # Full: the loop is due to wake anyway. Closed: the loop has ended, nothing to wake.
        with contextlib.suppress(OSError):
            self.writer.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self.reader.recv(4096):
                pass

    def close(self) -> None:
        self.reader.close()
        self.writer.close()
