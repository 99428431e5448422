"""Another local user attacks a master that root runs: each attack is refused or harmless.

The attacker is a real process of a throwaway system user this module creates (useradd, no
home; userdel at the end), started with ``setpriv --reuid/--regid``. Where the attacker
needs a place of its own it gets the "arena", a sticky world-writable directory like /tmp.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from supervise.rpc.client import Messenger, RPCClient
from supervise.rpc.dispatcher import Target
from tests.functional.conftest import RPC_SERVICE, wait_until

FAST = ("--heartbeat-interval", "0.5")


class Attacker(NamedTuple):
    uid: int
    gid: int

    def argv(self, code: str, *args: str) -> list[str]:
        setpriv = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]
        return [*setpriv, sys.executable, "-c", code, *args]

    def run(self, code: str, *args: str) -> str:
        """Run `code` as the attacker; what it printed (it must exit 0)."""
        done = subprocess.run(
            self.argv(code, *args), capture_output=True, text=True, timeout=60, cwd="/"
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the cross-user tests need {what}")
    pytest.skip(f"the cross-user tests need {what}")


@pytest.fixture(scope="module")
def attacker() -> Iterator[Attacker]:
    if os.geteuid() != 0:
        _missing("root (they create a user)")
    for tool in ("useradd", "userdel", "setpriv"):
        if shutil.which(tool) is None:
            _missing(tool)
    name = f"sv-attack-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        timeout=60,
    )
    try:
        entry = subprocess.run(
            ["getent", "passwd", name], capture_output=True, text=True, check=True
        ).stdout.split(":")
        yield Attacker(int(entry[2]), int(entry[3]))
    finally:
        subprocess.run(["userdel", name], check=True, timeout=60)


@pytest.fixture
def arena() -> Iterator[Path]:
    """A directory everyone may write in, sticky, as /tmp."""
    path = Path(tempfile.mkdtemp(prefix="supervise-arena-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


def refused_with_one_line(sup, *fragments: str) -> str:
    assert sup.wait_exit(30) == 2, sup.log()
    log = sup.log()
    assert "Traceback" not in log, log
    errors = [line for line in log.splitlines() if "refusing" in line]
    assert errors, log
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    print(f"refused: {errors[0]}")
    return errors[0]


def test_a_state_directory_the_attacker_created_is_refused(supervise, attacker, arena):
    state = arena / "state"
    target = arena / "root-wrote-here"
    attacker.run(
        "import os, sys; os.mkdir(sys.argv[1], 0o777); os.chmod(sys.argv[1], 0o777); "
        "os.symlink(sys.argv[2], os.path.join(sys.argv[1], 'queue.db'))",
        str(state),
        str(target),
    )
    sup = supervise(RPC_SERVICE, "--state-dir", str(state), *FAST)
    assert sup.wait_exit(30) == 2
    lines = sup.log().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("supervise: error: "), lines
    assert str(state) in lines[0]
    assert not target.exists()


def test_a_queue_file_symlink_in_the_state_directory_is_refused(supervise, state_dir, tmp_path):
    target = tmp_path / "root-wrote-here"
    (state_dir / "queue.db").symlink_to(target)
    sup = supervise(RPC_SERVICE, "--state-dir", str(state_dir), *FAST)
    refused_with_one_line(sup, str(state_dir / "queue.db"), "symlink")
    assert not target.exists()


@pytest.mark.parametrize("name", ["queue.db", "supervise.db", "queue.db-wal", "supervise.db.lock"])
@pytest.mark.parametrize("how", ["world-writable", "the-attacker's"])
def test_a_file_others_can_write_or_own_is_refused(supervise, attacker, state_dir, name, how):
    planted = state_dir / name
    planted.write_bytes(b"")
    if how == "world-writable":
        planted.chmod(0o666)
    else:
        os.chown(planted, attacker.uid, attacker.gid)
    sup = supervise("nova-conductor", "--workers", "2", "--state-dir", str(state_dir), *FAST)
    refused_with_one_line(sup, str(planted))
    assert planted.stat().st_size == 0  # nothing was handed over


@pytest.fixture
def private_master(supervise, state_dir) -> Iterator:
    """nova-conductor on the embedded defaults in a state directory of root's."""
    sup = supervise("nova-conductor", "--workers", "2", "--state-dir", str(state_dir), *FAST)
    sup.wait_ready(2, timeout=60)
    yield sup
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit(30) == 0


def test_every_file_in_the_state_directory_is_private(private_master, state_dir, attacker):
    found = {}
    for path in [state_dir, *state_dir.rglob("*")]:
        info = path.lstat()
        found[str(path.relative_to(state_dir))] = oct(stat.S_IMODE(info.st_mode))
        assert info.st_uid == 0, path
        expected = 0o700 if stat.S_ISDIR(info.st_mode) else 0o600
        assert stat.S_IMODE(info.st_mode) == expected, path
    print(json.dumps(found))
    for name in ("supervise.db", "supervise.db-wal", "supervise.db-shm", "queue.db-wal"):
        assert name in found, found
    said = attacker.run(
        "import fcntl, sys\n"
        "try:\n"
        "    fcntl.flock(open(sys.argv[1], 'rb'), fcntl.LOCK_SH | fcntl.LOCK_NB)\n"
        "    print('locked')\n"
        "except OSError as error:\n"
        "    print(type(error).__name__)\n",
        str(state_dir / "supervise.db.lock"),
    )
    assert said == "PermissionError"


@pytest.mark.parametrize("where", ["shared-directory", "private-directory"])
def test_a_log_file_symlink_is_refused(supervise, attacker, arena, tmp_path, where):
    target = tmp_path / "root-wrote-here"
    if where == "shared-directory":
        log = arena / "supervise.log"
        attacker.run("import os, sys; os.symlink(sys.argv[1], sys.argv[2])", str(target), str(log))
    else:
        log = tmp_path / "supervise.log"
        log.symlink_to(target)
    sup = supervise("idle", "--log-file", str(log))
    assert sup.wait_exit(30) == 2
    lines = sup.log().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("supervise: error: "), lines
    print(f"refused: {lines[0]}")
    assert not target.exists()


SQUATTER = """
import os, socket, sys
wake_directory, predictable = sys.argv[1:]
bound = []
names = [predictable + str(n) for n in range(1, 200)]  # the next connection ids' names of old
names += ["supervise-local-" + os.urandom(8).hex() for n in range(200)]
for name in names:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.bind("\\0" + name)
        bound.append(s)
    except OSError:  # taken already
        s.close()
refused = 0
for n in range(1, 100):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.bind(os.path.join(wake_directory, str(n)))
    except OSError:
        refused += 1
print(len(bound), refused, flush=True)
sys.stdin.read()
"""

FLOODER = """
import os, socket, sys, time
wake_directory, seconds = sys.argv[1], float(sys.argv[2])
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.setblocking(False)
with open("/proc/net/unix") as table:
    names = [row[7] for row in map(str.split, table) if len(row) > 7]
targets = [n for n in names if n.startswith("/proc/self/fd/")]  # as the workers bound them
targets += [os.path.join(wake_directory, str(n)) for n in range(1, 20)]
sent = refused = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    for target in targets:
        try:
            sock.sendto(b"r", target)
            sent += 1
        except OSError:
            refused += 1
print(sent, refused)
"""


@pytest.fixture
def queue_dir(arena: Path) -> Path:
    """Where the queue file lives: a directory of root's that others may enter and list, so
    that only the wake-up directory's own 0700 keeps them out."""
    path = arena / "queue"
    path.mkdir()
    path.chmod(0o755)
    return path


@pytest.fixture
def rpc_master(supervise, state_dir, queue_dir):
    url = f"local://{queue_dir / 'queue.db'}"
    topic = f"cross_{uuid.uuid4().hex[:8]}"
    args = ["--workers", "2", "--state-dir", str(state_dir), "--transport-url", url]
    sup = supervise(RPC_SERVICE, *args, "--topic", topic, *FAST)
    sup.wait_ready(2, timeout=60)
    messenger = Messenger(url)
    yield sup, RPCClient(messenger, Target(topic=topic), timeout=10)
    messenger.close()


def calls_answered(client: RPCClient, count: int) -> int:
    return sum(client.call({}, "echo", payload=n) == n for n in range(count))


def test_squatting_wake_up_names_breaks_nothing(rpc_master, attacker, queue_dir):
    sup, client = rpc_master
    queue_file = os.stat(queue_dir / "queue.db")
    predictable = f"supervise-local-{queue_file.st_dev:x}-{queue_file.st_ino:x}-"
    squatter = subprocess.Popen(
        attacker.argv(SQUATTER, str(queue_dir / "queue.db.wake"), predictable),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    try:
        bound, refused = map(int, squatter.stdout.readline().split())
        assert bound >= 200 and refused == 99
        workers = sup.worker_pids()
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: len(sup.worker_pids() - workers) == 2, 30, "two respawned workers")
        answered = calls_answered(client, 50)
        print(
            f"squatted {bound} names, {refused} binds in the wake directory refused; after "
            f"2 kills: answered {answered}/50, master exit: {sup.process.poll()}"
        )
        assert answered == 50
        assert sup.process.poll() is None
        assert "exited with status 78" not in sup.log()
    finally:
        squatter.kill()
        squatter.wait(10)


def test_a_datagram_flood_from_another_user_is_harmless(rpc_master, attacker, queue_dir):
    sup, client = rpc_master
    assert sorted(os.listdir(queue_dir / "queue.db.wake"))  # the sockets are there
    flooder = subprocess.Popen(
        attacker.argv(FLOODER, str(queue_dir / "queue.db.wake"), "5"),
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    try:
        answered = 0
        while flooder.poll() is None:
            answered += calls_answered(client, 10)
        sent, refused = map(int, flooder.stdout.read().split())
    finally:
        flooder.kill()
        flooder.wait(10)
    print(f"flood: {sent} datagrams delivered, {refused} refused; {answered} calls answered")
    assert sent == 0 and refused > 0
    assert answered > 0
    assert sup.process.poll() is None
