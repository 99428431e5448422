"""`supervise.private_files`: what it creates is private, what another user could touch is
refused with one line. Files of "another user" are made with os.chown (the tests run as root;
without root they skip, under CI they fail)."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

import pytest

from supervise import private_files
from supervise.private_files import UnsafePath

OTHER_UID = 65534  # nobody


@pytest.fixture
def root_only() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("these tests chown files to another user: run them as root")
        pytest.skip("chowning a file to another user needs root")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def refused(call, *fragments: str) -> str:
    with pytest.raises(UnsafePath) as error:
        call()
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_a_new_state_directory_and_file_are_private(tmp_path: Path) -> None:
    state = tmp_path / "a" / "state"
    private_files.make_state_directory(str(state))
    assert mode(state) == 0o700
    private_files.create_file(str(state / "queue.db"))
    assert mode(state / "queue.db") == 0o600


def test_an_own_state_directory_is_tightened_to_0700(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    private_files.make_state_directory(str(state))
    assert mode(state) == 0o700


def test_an_own_file_readable_by_others_is_tightened_unless_asked_not_to(tmp_path: Path) -> None:
    lock = tmp_path / "supervise.db.lock"
    lock.touch(mode=0o644)
    os.chmod(lock, 0o644)
    os.close(private_files.open_file(str(lock), tighten=False))
    assert mode(lock) == 0o644
    os.close(private_files.open_file(str(lock)))
    assert mode(lock) == 0o600


@pytest.mark.usefixtures("root_only")
def test_a_state_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, OTHER_UID, OTHER_UID)
    refused(lambda: private_files.make_state_directory(str(state)), str(state), "another user")
    assert mode(state) == 0o700  # left as it was


@pytest.mark.parametrize("bits", [0o770, 0o707, 0o1777])
def test_a_directory_writable_by_others_is_refused(tmp_path: Path, bits: int) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, bits)
    refused(lambda: private_files.make_state_directory(str(state)), "writable by group or others")
    refused(lambda: private_files.create_file(str(state / "queue.db")), str(state))
    assert not (state / "queue.db").exists()


def test_a_directory_above_that_others_can_change_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    refused(
        lambda: private_files.make_state_directory(str(shared / "state")),
        str(shared),
        "can be changed by another user",
    )


def test_a_sticky_directory_above_is_accepted(tmp_path: Path) -> None:
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    private_files.make_state_directory(str(sticky / "state"))
    assert mode(sticky / "state") == 0o700


def test_a_symlinked_file_is_refused_and_its_target_not_created(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "queue.db").symlink_to(target)
    refused(lambda: private_files.create_file(str(tmp_path / "queue.db")), "symlink")
    assert not target.exists()
    refused(lambda: private_files.check_file(str(tmp_path / "queue.db")), "symlink")


@pytest.mark.usefixtures("root_only")
def test_a_file_of_another_user_is_refused(tmp_path: Path) -> None:
    planted = tmp_path / "queue.db"
    planted.touch(mode=0o600)
    os.chown(planted, OTHER_UID, OTHER_UID)
    refused(lambda: private_files.create_file(str(planted)), str(planted), "another user")
    refused(lambda: private_files.check_file(str(planted)), "another user")


def test_a_file_writable_by_others_is_refused(tmp_path: Path) -> None:
    planted = tmp_path / "supervise.db"
    planted.touch()
    os.chmod(planted, 0o666)
    refused(lambda: private_files.create_file(str(planted)), "writable by group or others")
    assert mode(planted) == 0o666


def test_what_is_not_a_regular_file_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "queue.db"
    os.mkfifo(fifo, 0o600)
    refused(lambda: private_files.create_file(str(fifo)), "not a regular file")


def test_a_missing_companion_file_is_fine(tmp_path: Path) -> None:
    private_files.check_file(str(tmp_path / "queue.db-wal"))
    assert not (tmp_path / "queue.db-wal").exists()


def test_a_state_directory_through_an_own_symlink_is_followed(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    private_files.make_state_directory(str(tmp_path / "link"))
    private_files.create_file(str(tmp_path / "link" / "queue.db"))
    assert (real / "queue.db").is_file()


@pytest.mark.usefixtures("root_only")
def test_a_symlink_of_another_user_on_the_way_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    link = sticky / "state"
    link.symlink_to(real)
    os.lchown(link, OTHER_UID, OTHER_UID)  # in a sticky directory, its owner may retarget it
    refused(lambda: private_files.make_state_directory(str(link)), str(link), "symlink")


def test_a_file_where_the_directory_should_be_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    refused(lambda: private_files.make_state_directory(str(tmp_path / "state")), "not a directory")


def _can_lock(path: Path) -> bool:
    """Whether another process can take a POSIX write lock on `path` now."""
    import multiprocessing

    def child(queue) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            queue.put(True)
        except OSError:
            queue.put(False)

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=child, args=(queue,))
    process.start()
    try:
        return queue.get(timeout=30)
    finally:
        process.join(30)


def test_checking_a_file_keeps_the_locks_this_process_holds_on_it(tmp_path: Path) -> None:
    """SQLite locks with POSIX locks, which any close() of the same file in the process
    drops: checking a database file beside an open connection must not open it."""
    path = tmp_path / "held.db"
    private_files.create_file(str(path))
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        assert not _can_lock(path)
        private_files.check_file(str(path))
        private_files.create_file(str(path))
        assert not _can_lock(path), "the check dropped this process's lock"
    finally:
        os.close(fd)
    assert _can_lock(path)
