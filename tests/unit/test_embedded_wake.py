"""The wake-up socket counts only datagrams of this user or root, and only known kinds."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervise.rpc.embedded_wake import READY, Events


def send_as(uid: int, gid: int, address: str, data: bytes) -> None:
    """Send one datagram from a forked child running as `uid`."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(data, address)
            status = 0
        finally:
            os._exit(status)
    assert os.waitpid(pid, 0)[1] == 0, "the datagram was not sent"


@pytest.fixture
def open_directory() -> Iterator[Path]:
    """A directory of root's that others may enter (pytest's tmp_path is root's only)."""
    path = Path(tempfile.mkdtemp(prefix="supervise-wake-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_datagrams_of_other_users_and_unknown_kinds_are_ignored(open_directory: Path) -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("sending as another user needs root")
        pytest.skip("sending as another user needs root")
    tmp_path = open_directory
    events = Events(str(tmp_path / "queue.db.wake"), 1)
    try:
        path = str(tmp_path / "queue.db.wake" / "1")
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)
        # Open the way, as if the directory and socket had been left open to everyone.
        os.chmod(tmp_path / "queue.db.wake", 0o777)
        os.chmod(path, 0o666)
        nobody = pwd.getpwnam("nobody")
        send_as(nobody.pw_uid, nobody.pw_gid, path, READY)
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"x", path)
        events.wait(1)
        assert events.collect() == (set(), [])
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(READY, path)
        events.wait(1)
        assert events.collect() == ({READY}, [])
    finally:
        events.close()
    assert not os.path.exists(path)
