"""How the processes that share a local queue file wake each other and notice each other die.

Each connection binds a datagram socket named after its id in a directory beside the queue
file (``queue.db.wake``, 0700: no other user can reach, claim or flood it; the socket is
reached as ``/proc/self/fd/DIR/ID`` through a descriptor of that directory, so a long path
never exceeds the 108 bytes of a socket address); after its commit a publisher sends one
byte to a connection that consumes from a queue it filled. A datagram counts only if the
kernel says it comes from this user or root (``SCM_CREDENTIALS``), and a look at the socket
reads a bounded number of them. A connection that consumes also holds a pidfd for every
other process connected to the file: the kernel makes it readable when that process exits,
however it exits (``kill -9`` included), so the messages the dead process held go back to
their queues at once, with no lease or visibility timeout to wait out. The socket, the pidfds
and a timerfd (for acks written late) sit in one epoll set, and that set's descriptor is what
the caller selects on: it is readable exactly when there is something to do, so an idle
consumer sleeps in ``select``.

A publish wakes one consumer of each queue it filled, in turn, not all of them: a herd woken
for one message costs CPU the one that takes it needs. A consumer that leaves ready messages
behind (its prefetch is full, or it took its fair share) wakes the others of that queue.

A process is identified by its pid and its start time (field 22 of ``/proc/PID/stat``), so a
pid the kernel reuses for another process is never taken for the one that died.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import select
import socket
import struct
import sys
from collections.abc import Iterable
from typing import NamedTuple

from supervise import private_files

LOG = logging.getLogger(__name__)

_LIBC = ctypes.CDLL(None, use_errno=True)
CLOCK_MONOTONIC = 1
TFD_NONBLOCK_CLOEXEC = os.O_NONBLOCK | os.O_CLOEXEC  # TFD_NONBLOCK | TFD_CLOEXEC on Linux
WAKE_DIRECTORY_SUFFIX = ".wake"
MAX_DATAGRAMS = 64  # read per look at the socket: a flood costs bounded work per wake-up
_CREDENTIALS = struct.Struct("iII")  # struct ucred: pid, uid, gid


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class Identity(NamedTuple):
    pid: int
    started: int  # clock ticks after boot


def start_time(pid: int) -> int | None:
    """When process `pid` started, or None if it has exited (a zombie counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # the command name may hold spaces
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])  # field 22; the list starts at field 3


def own_identity() -> Identity:
    pid = os.getpid()
    started = start_time(pid)
    assert started is not None
    return Identity(pid, started)


def is_alive(identity: Identity) -> bool:
    return start_time(identity.pid) == identity.started


# Kinds of wake-up: messages may be ready for you; a consumer left messages it could not
# take (pass it on no further); this connection has a new consumer; its timer ran out.
READY, PASSED, SELF, TIMER = b"r", b"p", b"s", b"t"
SENT_KINDS = frozenset({READY, PASSED, SELF})


def _epoll() -> select.epoll:
    """A new epoll set. eventlet's monkey-patching removes `select.epoll` (a wait in it would
    stop every green thread); these sets are only ever polled without waiting, and waited on
    through their descriptor, so the original serves."""
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is not None and patcher.is_monkey_patched("select"):
        return patcher.original("select").epoll()
    return select.epoll()


def wake_directory(queue_file: str) -> str:
    return queue_file + WAKE_DIRECTORY_SUFFIX


class Events:
    """What a connection waits on: wake-ups from publishers, and the exits of its peers."""

    def __init__(self, directory: str, connection_id: int):
        self._trusted_uids = {0, os.getuid(), os.geteuid()}
        self._warned_uids: set[int] = set()
        self._directory = -1
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._epoll = _epoll()
        self._pidfds: dict[int, Identity] = {}
        self._watched: dict[Identity, int] = {}
        self._timer = -1
        try:
            private_files.make_directory(directory)
            self._directory = os.open(
                directory, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            )
            self.address = self.address_of(connection_id)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self._bind()
            self._sock.setblocking(False)
            self._epoll.register(self._sock.fileno(), select.EPOLLIN)
            self._timer = _LIBC.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK_CLOEXEC)
            if self._timer < 0:
                raise OSError(ctypes.get_errno(), "timerfd_create failed")
            self._epoll.register(self._timer, select.EPOLLIN)
        except BaseException:
            self.close()
            raise

    def address_of(self, connection_id: int) -> str:
        return f"/proc/self/fd/{self._directory}/{connection_id}"

    def _bind(self) -> None:
        """Connection ids are never reused within a queue file: a socket of this name was
        left by a killed process of an earlier file of the same name."""
        try:
            self._sock.bind(self.address)
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            os.unlink(self.address)
            self._sock.bind(self.address)
        os.chmod(self.address, private_files.PRIVATE_FILE)  # bind applies the umask only

    def fileno(self) -> int:
        return self._epoll.fileno()

    def wait(self, timeout: float | None) -> None:
        select.select([self], [], [], timeout)  # green under eventlet, as epoll.poll is not

    def collect(self) -> tuple[set[bytes], list[Identity]]:
        """Take what is pending: the kinds of wake-up received, and the peers that exited."""
        kinds: set[bytes] = set()
        exited = []
        for fd, _ in self._epoll.poll(0):
            if fd == self._sock.fileno():
                self._receive(kinds)
            elif fd == self._timer:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._timer, 8)
                kinds.add(TIMER)
            elif fd in self._pidfds:
                exited.append(self._pidfds[fd])
                self._unwatch(fd)
        return kinds, exited

    def _receive(self, kinds: set[bytes]) -> None:
        for _ in range(MAX_DATAGRAMS):
            try:
                data, ancillary, _, _ = self._sock.recvmsg(1, socket.CMSG_SPACE(_CREDENTIALS.size))
            except BlockingIOError:
                return
            if data in SENT_KINDS and self._from_trusted_user(ancillary):
                kinds.add(data)

    def _from_trusted_user(self, ancillary: list[tuple[int, int, bytes]]) -> bool:
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, uid, _ = _CREDENTIALS.unpack_from(data)
                if uid in self._trusted_uids:
                    return True
                if uid not in self._warned_uids:
                    self._warned_uids.add(uid)
                    LOG.warning("ignoring wake-ups from uid %d (pid %d)", uid, pid)
        return False

    def set_timer(self, seconds: float) -> None:
        """Become readable in `seconds` (once), unless set again before."""
        nanoseconds = max(1, int(seconds * 1e9))
        value = _Itimerspec(_Timespec(0, 0), _Timespec(*divmod(nanoseconds, 1_000_000_000)))
        if _LIBC.timerfd_settime(self._timer, 0, ctypes.byref(value), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def ring(self, connection_ids: Iterable[int], kind: bytes = READY) -> None:
        """Wake these connections (one byte: the kind of wake-up)."""
        for connection_id in connection_ids:
            self._send(connection_id, kind)

    def ring_one(self, candidates: list[int], first: int) -> None:
        """Wake one of these connections, trying them in turn from index `first`."""
        for step in range(len(candidates)):
            if self._send(candidates[(first + step) % len(candidates)], READY):
                return

    def _send(self, connection_id: int, kind: bytes) -> bool:
        """False if nobody listens there: a connection that is gone, and that the next
        sweep removes. A full socket is due to wake anyway."""
        try:
            self._sock.sendto(kind, self.address_of(connection_id))
        except BlockingIOError:
            return True
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        return True

    def ring_self(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._sock.sendto(SELF, self.address)

    def watch(self, peers: Iterable[Identity]) -> list[Identity]:
        """Watch exactly these processes; return those among them that are gone already."""
        wanted = set(peers)
        for identity in set(self._watched) - wanted:
            self._unwatch(self._watched[identity])
        gone = []
        for identity in wanted - set(self._watched):
            try:
                fd = os.pidfd_open(identity.pid)
            except ProcessLookupError:
                gone.append(identity)
                continue
            # The pid may have been reused before pidfd_open: the start time tells.
            if not is_alive(identity):
                os.close(fd)
                gone.append(identity)
                continue
            self._pidfds[fd] = identity
            self._watched[identity] = fd
            self._epoll.register(fd, select.EPOLLIN)
        return gone

    def _unwatch(self, fd: int) -> None:
        identity = self._pidfds.pop(fd)
        del self._watched[identity]
        self._epoll.unregister(fd)
        os.close(fd)

    def remove_stale_sockets(self, connections: set[int]) -> None:
        """Remove the sockets of connections that are gone (a killed process leaves its own)."""
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(f"/proc/self/fd/{self._directory}"):
                if name.isdigit() and int(name) not in connections:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.address_of(int(name)))

    def close(self) -> None:
        for fd in list(self._pidfds):
            self._unwatch(fd)
        if self._timer >= 0:
            os.close(self._timer)
        self._epoll.close()
        if self._directory >= 0:
            if self._sock.getsockname():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.address)
            os.close(self._directory)
        self._sock.close()
