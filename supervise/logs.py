"""Logging set-up shared by the master and its workers.

Every line names the process it comes from: ``master pid N`` or
``worker SLOT/GENERATION pid N``, so one journal of a whole tree stays readable.
Two formats: ``text`` for people, ``json`` (one object a line) for machines. When stderr is
the journal, every line starts with the record's priority (``<4>``) and text lines carry no
time stamp: the journal stamps them.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import sys
import threading
from typing import Any

from supervise import private_files

FORMAT = "%(asctime)s %(levelname)s [%(role)s] %(name)s: %(message)s"
# The journal stamps every line it receives itself.
JOURNAL_FORMAT = "%(levelname)s [%(role)s] %(name)s: %(message)s"

# sd-daemon.h priorities by the lowest logging level they cover; below INFO: debug (7).
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
DEBUG_PRIORITY = 7
# journald cuts a stream line longer than LineMax (48K by default) into several entries, and
# splits at NUL as well as at newlines: a piece without a prefix gets the unit's priority.
JOURNAL_LINE_MAX = 48 * 1024 - 1
# Pieces this long fit within LineMax even at 6 bytes a character (UTF-8 takes up to 4, the
# backslash escape of a lone surrogate 6).
JOURNAL_TEXT_PIECE = 4 * 1024
_JOURNAL_BREAKS = re.compile("[\n\0]")
CONTINUATION = "  "
CUT = "... [cut to fit the journal's line limit]"

_role_name = "master"
_role = "master"
_log_format = "text"


class _RoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = _role
        return True


def set_role(role: str) -> None:
    """Name this process in every later log line, e.g. ``worker 2/1``; the pid is added."""
    global _role_name, _role
    _role_name = role
    _role = f"{role} pid {os.getpid()}"


def journal_priority(levelno: int) -> int:
    for lowest, priority in _PRIORITIES:
        if levelno >= lowest:
            return priority
    return DEBUG_PRIORITY


def _printable_json(text: str) -> str:
    """Lone surrogates (undecodable bytes of a file name, text from the network) become
    backslash escapes: json.dumps would write them as \\udXXX, which strict parsers refuse."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _message(record: logging.LogRecord) -> str:
    """The record's message; a call whose arguments do not fit its format string still gives
    one (logging would print its own traceback to stderr instead)."""
    try:
        return record.getMessage()
    except Exception as error:
        return f"{record.msg!r} % {record.args!r} (cannot format: {type(error).__name__})"


class JsonFormatter(logging.Formatter):
    """One JSON object a line, ASCII only: every control character, newline and non-ASCII
    character escaped, so any text from the network or a handler stays one line."""

    LONG_FIELDS = ("message", "traceback", "stack")

    def __init__(self, line_max: int | None = None):
        super().__init__()
        self.line_max = line_max

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="microseconds"
            ),
            "level": record.levelname,
            "role": _role_name,
            "pid": record.process,
            "logger": record.name,
            "message": _message(record),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["traceback"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        for key, value in entry.items():
            if isinstance(value, str):
                entry[key] = _printable_json(value)
        line = json.dumps(entry)
        if self.line_max is not None and len(line) > self.line_max:
            line = self._shorten(entry, line, self.line_max)
        return line

    def _shorten(self, entry: dict[str, Any], line: str, line_max: int) -> str:
        """Cut the longest of the message, traceback and stack until the line fits."""
        whole = {name: entry[name] for name in self.LONG_FIELDS if name in entry}
        keep = {name: len(text) for name, text in whole.items()}
        while len(line) > line_max:
            longest = max(keep, key=lambda name: len(entry[name]))
            if keep[longest] == 0:
                break  # only the short fields are left: nothing more to cut
            share = int(keep[longest] * line_max / len(line) * 0.9)
            keep[longest] = min(keep[longest] - 1, share)
            entry[longest] = whole[longest][: keep[longest]] + CUT
            line = json.dumps(entry)
        return line


class JournalFormatter(logging.Formatter):
    """Every line journald will see starts with the record's priority: the continuation lines
    of a traceback too (indented, so they read as part of the record), and the pieces of a
    line longer than `piece` characters."""

    def __init__(self, inner: logging.Formatter, piece: int):
        super().__init__()
        self.inner = inner
        self.piece = piece

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{journal_priority(record.levelno)}>"
        lines = []
        for line in _JOURNAL_BREAKS.split(self.inner.format(record)):
            starts = range(0, len(line) or 1, self.piece)
            lines.extend(line[start : start + self.piece] for start in starts)
        return "\n".join([prefix + lines[0], *(prefix + CONTINUATION + line for line in lines[1:])])


def _formatter(log_format: str, journal: bool) -> logging.Formatter:
    if log_format == "json":
        if journal:  # one line, never cut into pieces: made short enough instead
            line_max = JOURNAL_LINE_MAX - len("<N>")
            return JournalFormatter(JsonFormatter(line_max), piece=line_max)
        return JsonFormatter()
    if journal:
        return JournalFormatter(logging.Formatter(JOURNAL_FORMAT), piece=JOURNAL_TEXT_PIECE)
    return logging.Formatter(FORMAT)


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


def _format_handler(handler: logging.Handler) -> None:
    journal = not isinstance(handler, logging.FileHandler) and stderr_is_journal()
    handler.setFormatter(_formatter(_log_format, journal))


def _make_handler(log_file: str | None) -> logging.Handler:
    if log_file:
        handler: logging.Handler = _PrivateFileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    _format_handler(handler)
    handler.addFilter(_RoleFilter())
    return handler


def _log_uncaught(args: threading.ExceptHookArgs) -> None:
    """A thread's uncaught exception as one log record (Python would print it to stderr,
    outside the log's format)."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger(__name__).error(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
    )


def setup(level: str, log_file: str | None, log_format: str = "text") -> None:
    """Send every log record of this process to stderr or to `log_file`, as `log_format`."""
    global _log_format
    _log_format = log_format
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(_make_handler(log_file))
    root.setLevel(level)
    threading.excepthook = _log_uncaught


def change(level: str, log_format: str) -> None:
    """A reload's level and format, for the handlers this process has open (a worker's are
    the ones it inherited from the master)."""
    global _log_format
    logging.getLogger().setLevel(level)
    if log_format != _log_format:
        _log_format = log_format
        for handler in logging.getLogger().handlers:
            _format_handler(handler)


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
