"""The master's control socket: one JSON request a line in, one JSON line out.

An AF_UNIX stream socket, by default ``<runtime_dir>/<service>.sock``, mode 0600 in a
directory private to the running user. Every connection's peer credentials (SO_PEERCRED) are
checked: the master's own user or root; anyone else gets an error reply and one line in the
log, at most once per REFUSAL_LOG_INTERVAL however often they try. A request is an object
with a ``command`` (``{"command": "scale", "workers": 8}``); the answer is ``{"ok": true,
...}`` or ``{"ok": false, "error": "one line"}``. The `Listener` bounds a request's size and
how long a client may take, so no client can stall the master; the master's `_control` runs
the command.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import selectors
import socket
import stat
import struct
import time
from collections.abc import Callable
from typing import Any

from supervise import private_files
from supervise.config import Config, ConfigError
from supervise.listener import Listener

LOG = logging.getLogger(__name__)

MAX_REQUEST = 64 << 10
CLIENT_TIMEOUT = 5.0  # a client sends its request within this, or is closed
REFUSAL_LOG_INTERVAL = 10.0
SOCKET_NAME_SUFFIX = ".sock"
# sockaddr_un's sun_path holds 108 bytes, the terminating NUL included.
MAX_SOCKET_PATH = 107
_PEERCRED = struct.Struct("3i")  # pid, uid, gid


class CommandError(Exception):
    """A request the master cannot carry out; the message is the reply's one-line error."""


def socket_path(conf: Config, service: str) -> str:
    return conf.control_socket or os.path.join(conf.runtime_dir, service + SOCKET_NAME_SUFFIX)


def reply(**fields: Any) -> bytes:
    return json.dumps({"ok": True, **fields}, allow_nan=False).encode() + b"\n"


def error_reply(message: str) -> bytes:
    return json.dumps({"ok": False, "error": message}).encode() + b"\n"


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected `sock`, as the kernel recorded them."""
    return _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))


class ControlSocket:
    """The listening socket, served from the master's selector loop."""

    def __init__(
        self,
        path: str,
        selector: selectors.BaseSelector,
        run: Callable[[dict[str, Any]], dict[str, Any]],
    ):
        self.path = path
        self._run = run
        self._refusals = 0  # not yet logged
        self._next_refusal_log = 0.0
        sock, self._inode = _bind(path)
        self.listener = Listener(
            sock,
            selector,
            self._answer,
            terminator=b"\n",
            max_request=MAX_REQUEST,
            timeout=CLIENT_TIMEOUT,
            too_large=error_reply(f"request larger than {MAX_REQUEST} bytes"),
        )

    @classmethod
    def open(
        cls,
        conf: Config,
        service: str,
        selector: selectors.BaseSelector,
        run: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> ControlSocket:
        """Raises ConfigError (one line) if the socket cannot be ours: its directory is
        unsafe, or another master serves on it."""
        path = socket_path(conf, service)
        if not conf.control_socket:
            make_runtime_directory(conf.runtime_dir)
        else:
            private_files.check_directory(os.path.dirname(os.path.abspath(path)))
        return cls(path, selector, run)

    def close(self) -> None:
        """Close the socket and remove its file, unless it is another master's by now."""
        self.listener.close()
        with contextlib.suppress(OSError):
            if os.lstat(self.path).st_ino == self._inode:
                os.unlink(self.path)

    def _answer(self, request: bytes, peer: socket.socket) -> bytes:
        pid, uid, _ = peer_credentials(peer)
        if uid not in (0, os.geteuid()):
            self._log_refusal(pid, uid)
            return error_reply("permission denied: only this master's user or root may ask")
        try:
            message = json.loads(request)
        except ValueError as error:  # UnicodeDecodeError included
            return error_reply(f"not a JSON object: {error}")
        if not isinstance(message, dict) or not isinstance(message.get("command"), str):
            return error_reply('expected a JSON object with a "command"')
        try:
            return reply(**self._run(message))
        except CommandError as error:
            return error_reply(str(error))

    def _log_refusal(self, pid: int, uid: int) -> None:
        self._refusals += 1
        now = time.monotonic()
        if now < self._next_refusal_log:
            return
        more = f" ({self._refusals - 1} more refused since the last such line)"
        LOG.warning(
            "refused a control connection from uid %d (pid %d): not this master's user or root%s",
            uid,
            pid,
            more if self._refusals > 1 else "",
        )
        self._refusals = 0
        self._next_refusal_log = now + REFUSAL_LOG_INTERVAL


def make_runtime_directory(path: str) -> None:
    """The runtime directory: created 0700 if missing; refused if it is a symlink, belongs
    to another user or can be written by group or others."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise private_files.UnsafePath(f"{path} is a symlink: refusing it")
    private_files.make_directory(path)
    info = os.stat(path)
    if info.st_uid != os.geteuid():
        raise private_files.UnsafePath(
            f"{path} belongs to uid {info.st_uid}, not this user: refusing it"
        )


def _bind(path: str) -> tuple[socket.socket, int]:
    """A listening socket at `path`, 0600 from the start, replacing a stale one (nobody
    listens on it); refused if a live master listens there. Returns it and its inode."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ConfigError(
            f"control socket path {path} is longer than {MAX_SOCKET_PATH} bytes: "
            "set a shorter --runtime-dir or --control-socket"
        )
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise ConfigError(f"another master serves on {path}") from None
        raise ConfigError(f"cannot bind the control socket {path}: {error.strerror}") from None
    finally:
        os.umask(previous)
    info = os.lstat(path)
    if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) != private_files.PRIVATE_FILE:
        sock.close()
        raise ConfigError(f"control socket {path} is not private after bind: refusing it")
    sock.listen(64)
    return sock, info.st_ino


def _remove_stale(path: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"{path} exists and is not a socket: refusing to replace it")
    if info.st_uid != os.geteuid():
        raise ConfigError(f"{path} belongs to uid {info.st_uid}: refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        LOG.info("replacing the stale control socket %s (its master has gone)", path)
        os.unlink(path)
        return
    except OSError as error:
        raise ConfigError(f"cannot check the control socket {path}: {error}") from None
    finally:
        probe.close()
    raise ConfigError(f"another master serves on {path}: stop it, or give another --control-socket")
