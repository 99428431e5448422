"""Logging set-up shared by the master and its workers.

Every line names the process it comes from: ``master pid N`` or
``worker SLOT/GENERATION pid N``, so one journal of a whole tree stays readable.
"""

from __future__ import annotations

import logging
import os
import sys

from supervise import private_files

FORMAT = "%(asctime)s %(levelname)s [%(role)s] %(name)s: %(message)s"
# The journal stamps every line it receives itself.
JOURNAL_FORMAT = "%(levelname)s [%(role)s] %(name)s: %(message)s"

_role = "master"


class _RoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = _role
        return True


def set_role(role: str) -> None:
    """Name this process in every later log line, e.g. ``worker 2/1``; the pid is added."""
    global _role
    _role = f"{role} pid {os.getpid()}"


class _PrivateFileHandler(logging.FileHandler):
    """Appends to a file never opened through a symlink, created 0600, owned by this user
    (`private_files`; an existing log keeps the read permissions its operator gave it)."""

    def _open(self):  # type: ignore[no-untyped-def]
        flags = os.O_WRONLY | os.O_APPEND
        fd = private_files.open_file(self.baseFilename, flags, tighten=False)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


def stderr_is_journal() -> bool:
    """systemd sets JOURNAL_STREAM to the device and inode numbers of the stream it connects
    to the journal; stderr is that stream if they match (a redirected stderr is not)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        info = os.fstat(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return stream == f"{info.st_dev}:{info.st_ino}"


def _make_handler(log_file: str | None) -> logging.Handler:
    if log_file:
        handler: logging.Handler = _PrivateFileHandler(log_file)
        handler.setFormatter(logging.Formatter(FORMAT))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(JOURNAL_FORMAT if stderr_is_journal() else FORMAT))
    handler.addFilter(_RoleFilter())
    return handler


def setup(level: str, log_file: str | None) -> None:
    """Send every log record of this process to stderr or to `log_file`."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(_make_handler(log_file))
    root.setLevel(level)


def reopen() -> None:
    """Reopen log files (after logrotate moved them away); stderr is left as it is."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
            root.addHandler(_make_handler(handler.baseFilename))


def flush() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
