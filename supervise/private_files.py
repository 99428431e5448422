"""Files and directories that no other local user can read, change or redirect.

Everything supervise keeps on disk (the state directory, the queue file, the services
database, its lock, SQLite's -wal and -shm files, the log) goes through here: a file is
opened with ``O_NOFOLLOW`` (never through a symlink), must be a regular file owned by the
running user and not writable by group or others, and is made 0600 if it was readable by
them; a directory created here is 0700. The directory a file lives in, and every directory
above it, must belong to root or the running user and be writable by nobody else, unless it
is sticky (as /tmp), where others cannot move our entries; symlinks on the way are followed
only when they belong to root or the running user, so nobody else can redirect the path
later. Anything else is refused with an `UnsafePath`, one line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from supervise.config import ConfigError

PRIVATE_FILE = 0o600
PRIVATE_DIRECTORY = 0o700
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
_OTHERS_ANY = 0o077


class UnsafePath(ConfigError):
    """A file or directory another user owns, could change, or points elsewhere; one line."""


def _trusted_owners() -> tuple[int, int]:
    return (0, os.geteuid())


def _describe(info: os.stat_result) -> str:
    return f"owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o}"


def _prefixes(path: str) -> list[str]:
    """ "/a/b/c" -> ["/", "/a", "/a/b", "/a/b/c"]."""
    parts = [part for part in path.split("/") if part]
    return ["/"] + ["/" + "/".join(parts[: n + 1]) for n in range(len(parts))]


def check_directory(directory: str) -> None:
    """Files may live in `directory`: it is writable by root and the running user only, and
    so is every directory above it (a sticky one, as /tmp, excepted); symlinks on the way
    belong to root or the running user."""
    trusted = _trusted_owners()
    final = os.path.realpath(directory)
    checked: set[str] = set()
    for prefix in _prefixes(os.path.abspath(directory)):
        try:
            link = os.lstat(prefix)
            if stat.S_ISLNK(link.st_mode) and link.st_uid not in trusted:
                raise UnsafePath(
                    f"{prefix} is a symlink of another user ({_describe(link)}): refusing it"
                )
            for real in _prefixes(os.path.realpath(prefix)):
                if real not in checked:
                    checked.add(real)
                    _check_directory_entry(real, final, trusted)
        except FileNotFoundError:
            return  # the rest does not exist yet: it is checked once created
        except PermissionError as error:
            raise UnsafePath(f"{prefix}: {error.strerror}") from None


def _check_directory_entry(real: str, final: str, trusted: tuple[int, int]) -> None:
    info = os.stat(real)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath(f"{real} is not a directory")
    if real == final:
        if info.st_uid not in trusted:
            raise UnsafePath(f"{real} belongs to another user ({_describe(info)}): refusing it")
        if info.st_mode & _OTHERS_WRITE:
            raise UnsafePath(
                f"{real} is writable by group or others ({_describe(info)}): refusing it"
            )
    elif info.st_uid not in trusted or (
        info.st_mode & _OTHERS_WRITE and not info.st_mode & stat.S_ISVTX
    ):
        raise UnsafePath(
            f"{real} can be changed by another user ({_describe(info)}): "
            f"refusing to keep files under it"
        )


def make_directory(path: str) -> None:
    """Create `path` 0700 (and what is missing above it), or check the existing one, as
    `check_directory` does."""
    try:
        os.makedirs(path, mode=PRIVATE_DIRECTORY, exist_ok=True)
    except FileExistsError:
        raise UnsafePath(f"{path} exists and is not a directory") from None
    except OSError as error:
        raise UnsafePath(f"cannot create the directory {path}: {error.strerror}") from None
    check_directory(path)


def make_state_directory(path: str) -> None:
    """The state directory: as `make_directory`, owned by the running user, and 0700."""
    make_directory(path)
    info = os.stat(path)
    if info.st_uid != os.geteuid():
        raise UnsafePath(f"{path} belongs to another user ({_describe(info)}): refusing it")
    if stat.S_IMODE(info.st_mode) != PRIVATE_DIRECTORY:
        os.chmod(path, PRIVATE_DIRECTORY)


def open_file(
    path: str, flags: int = os.O_RDWR, *, create: bool = True, tighten: bool = True
) -> int:
    """A descriptor of the private file `path`, created 0600 if missing (unless not
    `create`: FileNotFoundError), made 0600 if group or others could read it (unless not
    `tighten`). Refused: a symlink, anything but a regular file, a file of another user or
    one writable by group or others, or one in a directory `check_directory` refuses."""
    check_directory(os.path.dirname(os.path.abspath(path)))
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # no hang on a planted FIFO
    if create:
        flags |= os.O_CREAT
    try:
        fd = os.open(path, flags, PRIVATE_FILE)
    except OSError as error:
        if error.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            raise UnsafePath(f"{path} is a symlink: refusing to follow it") from None
        raise
    try:
        _check_open_file(fd, path, tighten)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_open_file(fd: int, path: str, tighten: bool) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePath(f"{path} is not a regular file: refusing it")
    if info.st_uid != os.geteuid():
        raise UnsafePath(f"{path} belongs to another user ({_describe(info)}): refusing it")
    mode = stat.S_IMODE(info.st_mode)
    if mode & _OTHERS_WRITE:
        raise UnsafePath(f"{path} is writable by group or others (mode {mode:04o}): refusing it")
    if tighten and mode & _OTHERS_ANY:
        os.chmod(f"/proc/self/fd/{fd}", PRIVATE_FILE)  # fchmod refuses an O_PATH descriptor


def check_file(path: str) -> None:
    """If `path` exists, the checks of `open_file` (SQLite opens its -wal and -shm itself).

    The file is looked at through an ``O_PATH`` descriptor: closing a descriptor opened for
    reading or writing releases every POSIX lock this process holds on the file, those
    SQLite holds for the process's other connections to it included; then the next process
    to close its connection takes itself for the last one and deletes the write-ahead log
    this process still uses. Closing an ``O_PATH`` descriptor releases nothing."""
    check_directory(os.path.dirname(os.path.abspath(path)))
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise UnsafePath(f"{path} is a symlink: refusing to follow it")
        _check_open_file(fd, path, tighten=True)
    finally:
        os.close(fd)


def create_file(path: str) -> None:
    """Make sure the private file `path` exists (a file another program opens by name);
    created without being opened, and checked as `check_file` does, for the same reason."""
    check_directory(os.path.dirname(os.path.abspath(path)))
    with contextlib.suppress(FileExistsError):  # mknod never follows a symlink
        os.mknod(path, stat.S_IFREG | PRIVATE_FILE)
    check_file(path)
