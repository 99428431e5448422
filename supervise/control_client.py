"""The control verbs: ``supervise status|scale|reload|drain|resume|stop`` ask a running
master through its control socket (supervise.control) and print its answer.

A master is found by its service name (``<dir>/<SERVICE>.sock``, or
``<dir>/<SERVICE>/<SERVICE>.sock``, where systemd's unit puts it), by ``--socket``, or as the
only one in the runtime directory. The client talks only to a socket that belongs to this
user or root (root, which chose whom it asks, talks to any user's) and is 0600, and gives up
after ``--timeout`` seconds instead of hanging on a master that does not answer.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import stat
import sys
import time
from collections.abc import Iterator
from typing import Any

from supervise import config, exitcodes
from supervise.control import SOCKET_NAME_SUFFIX
from supervise.terminal import printable

# Where root's masters put their sockets, and systemd's unit its instances' directories:
# looked in too when no runtime directory is given, so that any user finds them.
SYSTEM_RUNTIME_DIR = "/run/supervise"
DEFAULT_TIMEOUT = 5.0
MAX_REPLY = 16 << 20
VERBS = ("status", "scale", "reload", "drain", "resume", "stop")


class ClientError(Exception):
    """One line for the operator, and the exit status it ends the command with."""

    def __init__(self, message: str, code: int = exitcodes.FAILED):
        super().__init__(message)
        self.code = code


def main(namespace: argparse.Namespace, conf: config.Config) -> int:
    try:
        return _main(namespace, conf)
    except ClientError as error:
        print(f"supervise: error: {printable(str(error))}", file=sys.stderr)
        return error.code


def _main(namespace: argparse.Namespace, conf: config.Config) -> int:
    request = _request(namespace)
    timeout = _timeout(namespace.timeout)
    paths = find_sockets(namespace.service, conf)
    if len(paths) > 1 and request["command"] != "status":
        names = ", ".join(_service_of(path) for path in paths)
        raise ClientError(
            f"several supervise masters are running ({names}): name one", exitcodes.USAGE
        )
    replies = [ask(path, request, timeout) for path in paths]
    for index, (path, answer) in enumerate(zip(paths, replies, strict=True)):
        if not answer.get("ok"):
            raise ClientError(f"{_service_of(path)}: {answer.get('error', 'failed')}")
        if namespace.command != "status":
            print(_done(namespace, answer, _service_of(path)))
        elif namespace.json:
            print(json.dumps(answer))
        else:
            print(("\n" if index else "") + format_status(answer), end="")
    return exitcodes.OK


def _request(namespace: argparse.Namespace) -> dict[str, Any]:
    if namespace.command == "scale":
        try:
            workers = int(namespace.count)
        except ValueError:
            raise ClientError(
                f"scale: expected a number of workers, got {namespace.count!r}", exitcodes.USAGE
            ) from None
        return {"command": "scale", "workers": workers}
    if namespace.command == "stop":
        return {"command": "stop", "fast": namespace.fast}
    return {"command": namespace.command}


def _timeout(text: str | None) -> float:
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        timeout = float(text)
    except ValueError:
        timeout = 0.0
    if not 0 < timeout <= config.MAX_SECONDS:
        raise ClientError(f"--timeout: expected seconds above 0, got {text!r}", exitcodes.USAGE)
    return timeout


def _done(namespace: argparse.Namespace, answer: dict[str, Any], service: str) -> str:
    what = {
        "scale": f"scaling to {answer.get('workers')} workers",
        "reload": "reloading",
        "drain": "drained: its workers finish their calls in flight and take no new ones",
        "resume": "resumed: its workers take calls again",
        "stop": "fast stop" if namespace.command == "stop" and namespace.fast else "stopping",
    }[namespace.command]
    return f"{printable(service)}: {what}"


# ----- finding masters -------------------------------------------------------------------


def search_dirs(conf: config.Config) -> list[str]:
    if conf.runtime_dir != config.default_runtime_dir():
        return [conf.runtime_dir]  # given: only there
    return list(dict.fromkeys([conf.runtime_dir, SYSTEM_RUNTIME_DIR]))


def find_sockets(service: str | None, conf: config.Config) -> list[str]:
    """The control sockets to ask: the one named, or every one found."""
    if conf.control_socket:
        return [conf.control_socket]
    directories = search_dirs(conf)
    where = " or ".join(directories)
    if service is not None:
        for path in _candidates(service, directories):
            if os.path.lexists(path):
                return [path]
        raise ClientError(
            f"no supervise master of {service} is running "
            f"(no control socket {service}{SOCKET_NAME_SUFFIX} in {where})",
            exitcodes.NOT_RUNNING,
        )
    found = sorted({path for directory in directories for path in _sockets_in(directory)})
    if not found:
        raise ClientError(
            f"no supervise master is running (no control socket in {where})",
            exitcodes.NOT_RUNNING,
        )
    return found


def _candidates(service: str, directories: list[str]) -> Iterator[str]:
    name = service + SOCKET_NAME_SUFFIX
    for directory in directories:
        yield os.path.join(directory, name)
        yield os.path.join(directory, service, name)


def _sockets_in(directory: str) -> Iterator[str]:
    try:
        entries = list(os.scandir(directory))
    except OSError:  # missing, or not ours to read
        return
    for entry in entries:
        if entry.name.endswith(SOCKET_NAME_SUFFIX) and _is_socket(entry.path):
            yield entry.path
        elif entry.is_dir(follow_symlinks=False):
            inner = os.path.join(entry.path, entry.name + SOCKET_NAME_SUFFIX)
            if _is_socket(inner):
                yield inner


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


def _service_of(path: str) -> str:
    name = os.path.basename(path)
    return name[: -len(SOCKET_NAME_SUFFIX)] if name.endswith(SOCKET_NAME_SUFFIX) else path


# ----- asking ------------------------------------------------------------------------------


def check_socket(path: str) -> None:
    """Talk only to a socket of this user or root (or of anyone, for root), mode 0600."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise ClientError(
            f"no supervise master is running at {path} (no such socket)", exitcodes.NOT_RUNNING
        ) from None
    except OSError as error:
        raise ClientError(f"cannot read {path}: {error.strerror}", exitcodes.USAGE) from None
    if not stat.S_ISSOCK(info.st_mode):
        raise ClientError(f"{path} is not a socket: refusing it", exitcodes.USAGE)
    me = os.geteuid()
    if me != 0 and info.st_uid not in (0, me):
        raise ClientError(
            f"{path} belongs to uid {info.st_uid}, not this user or root: refusing it",
            exitcodes.USAGE,
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode != 0o600:
        raise ClientError(f"{path} has mode {mode:04o}, not 0600: refusing it", exitcodes.USAGE)


def ask(path: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send one request, return the master's reply; within `timeout` seconds in all."""
    check_socket(path)
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = _read_line(sock, deadline)
        except TimeoutError:
            raise ClientError(f"the master at {path} did not answer within {timeout:g} s") from None
        except ConnectionRefusedError:
            raise ClientError(
                f"no supervise master is running at {path} (a stale socket: nobody listens)",
                exitcodes.NOT_RUNNING,
            ) from None
        except OSError as error:
            raise ClientError(f"cannot ask the master at {path}: {error}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ClientError(f"the master at {path} sent a reply that is not a JSON object")
    return answer


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    data = bytearray()
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REPLY:
            raise OSError(f"a reply larger than {MAX_REPLY} bytes")
    return bytes(data)


# ----- the table -------------------------------------------------------------------------

COLUMNS = (
    ("SLOT", "slot"),
    ("PID", "pid"),
    ("GEN", "generation"),
    ("STATE", "state"),
    ("UPTIME", "uptime"),
    ("RSS", "rss"),
    ("CPU%", "cpu_percent"),
    ("HANDLED", "handled"),
    ("IN FLIGHT", "in_flight"),
    ("OLDEST", "oldest_age"),
    ("RESTARTS", "restarts"),
    ("LAST EXIT", "last_exit"),
)


def format_status(status: dict[str, Any]) -> str:
    """A master's status as a header line and a table of its workers."""
    header = (
        f"{status.get('service')}: master {status.get('master_pid')}, "
        f"generation {status.get('generation')}, {status.get('phase')}"
    )
    if status.get("reloading_to") is not None:
        header += f", reloading to generation {status['reloading_to']}"
    if status.get("drained"):
        header += ", drained"
    rows = [[_cell(key, worker) for _, key in COLUMNS] for worker in status.get("workers", [])]
    header += f", {len(rows)} workers"
    table = [[title for title, _ in COLUMNS], *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in table
    ]
    return printable(header) + "\n" + "\n".join(line.rstrip() for line in lines) + "\n"


def _cell(key: str, worker: dict[str, Any]) -> str:
    return printable(_text(key, worker))


def _text(key: str, worker: dict[str, Any]) -> str:
    value = worker.get(key)
    if value is None:
        return "-"
    if key == "uptime":
        return _duration(value)
    if key == "rss":
        return _size(value)
    if key == "cpu_percent":
        return f"{value:.1f}"
    if key == "oldest_age":
        method = worker.get("oldest_method")
        return _duration(value) + (f" {method}" if method else "")
    return str(value)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours < 48 else f"{hours // 24}d{hours % 24:02d}h"


def _size(size: int) -> str:
    if size < 1024:
        return f"{size}B"
    value = size / 1024
    for unit in ("K", "M"):
        if value < 1024:
            return f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}G"
