"""A real systemd for the unit files: ../shared/tools/with-systemd (relative to the project
root) boots a throw-away systemd 252 as PID 1 of private namespaces in about 0.3 s.

supervise is installed as docs/deploy.md says: its `<!-- test: venv -->` block runs once per
session on this host, in a private mount namespace where /opt/supervise is a temporary
directory (the build needs the package index, which the container's private network cannot
reach); the container then sees that directory, read-only, at /opt/supervise. Each test boots
a container of its own and runs the `<!-- test: units -->` block in it, from the checkout
bound at /usr/src/supervise.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.functional.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT.parent / "shared" / "tools" / "with-systemd"
DEPLOY = ROOT / "docs" / "deploy.md"
VENV = "/opt/supervise"
SOURCE = "/usr/src/supervise"  # the checkout, read-only, inside the container
TESTS_ROOT = "/usr/src/supervise-tests"  # holds only tests/, for the in-container client
STATE_DIR = "/var/lib/supervise"
USER = "supervise"


def deploy_block(name: str) -> str:
    """The shell block docs/deploy.md marks with `<!-- test: NAME -->`."""
    match = re.search(
        rf"<!-- test: {re.escape(name)} -->\n```sh\n(.*?)```", DEPLOY.read_text(), re.DOTALL
    )
    assert match, f"docs/deploy.md has no block marked <!-- test: {name} -->"
    return match[1]


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the systemd tests cannot run under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def with_systemd() -> ModuleType:
    if not TOOL.is_file():
        _missing(f"{TOOL} is absent")
    loader = importlib.machinery.SourceFileLoader("with_systemd", str(TOOL))
    spec = importlib.util.spec_from_loader("with_systemd", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    reason = module.unavailable()
    if reason:
        _missing(f"with-systemd cannot boot systemd here: {reason}")
    return module


@pytest.fixture(scope="session")
def venv(with_systemd: ModuleType) -> Iterator[str]:
    """A host directory holding the virtualenv docs/deploy.md builds at /opt/supervise."""
    work = Path(tempfile.mkdtemp(prefix="supervise-venv."))
    built, upper, scratch = work / "venv", work / "upper", work / "work"
    for directory in (built, upper, scratch):
        directory.mkdir()
    built.chmod(0o755)  # the mount point's mode: the user supervise must traverse it
    script = (
        "set -e\n"
        # /opt as an overlay, so that /opt/supervise can be made without touching the host.
        f"mount -t overlay overlay -o lowerdir=/opt,upperdir={upper},workdir={scratch} /opt\n"
        f"mkdir {VENV}\n"
        f"mount --bind {built} {VENV}\n" + deploy_block("venv")
    )
    started = time.monotonic()
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"virtualenv built in {time.monotonic() - started:.1f} s")
    yield str(built)
    shutil.rmtree(work)


class Host:
    """One booted container with supervise installed as docs/deploy.md says."""

    def __init__(self, container) -> None:
        self.container = container

    def sh(self, script: str, timeout: float = 60) -> str:
        result = self.container.run("bash", "-c", script, check=False, timeout=timeout)
        assert result.returncode == 0, f"{script}\n{result.stdout}"
        return result.stdout

    def as_user(self, *argv: str, timeout: float = 60, check: bool = True):
        return self.container.run("runuser", "-u", USER, "--", *argv, timeout=timeout, check=check)

    def supervise(self, *args: str, timeout: float = 60, check: bool = True):
        return self.as_user(
            f"{VENV}/bin/supervise", *args, "--state-dir", STATE_DIR, timeout=timeout, check=check
        )

    def configure(self, instance: str, text: str) -> None:
        """The instance's config file, made as docs/deploy.md makes it."""
        path = f"/etc/supervise/{instance}.conf"
        self.container.run("install", "-m", "640", "-g", USER, "/dev/null", path)
        self.container.run("tee", "-a", path, input=text)

    def drop_in(self, instance: str, text: str) -> None:
        directory = f"/etc/systemd/system/supervise@{instance}.service.d"
        self.container.run("mkdir", "-p", directory)
        self.container.run("tee", f"{directory}/test.conf", input=f"[Service]\n{text}\n")
        self.container.systemctl("daemon-reload")

    def unit(self, instance: str) -> str:
        return f"supervise@{instance}.service"

    def show(self, instance: str, *props: str) -> dict[str, str]:
        return self.container.show(self.unit(instance), *props)

    def main_pid(self, instance: str) -> int:
        return int(self.show(instance, "MainPID")["MainPID"])

    def workers(self, instance: str) -> list[int]:
        """The master's children, as the container's /proc shows them."""
        pid = self.main_pid(instance)
        out = self.container.run("sh", "-c", f"cat /proc/{pid}/task/*/children", check=False).stdout
        return sorted(int(p) for p in out.split())

    def uid(self, pid: int) -> int:
        status = self.container.run("cat", f"/proc/{pid}/status").stdout
        (line,) = [line for line in status.splitlines() if line.startswith("Uid:")]
        return int(line.split()[2])  # effective

    def journal(self, instance: str) -> str:
        return self.container.journal(self.unit(instance))

    def wait_for_state(self, instance: str, want: dict[str, str], timeout: float = 30) -> None:
        last: dict[str, str] = {}

        def reached() -> bool:
            nonlocal last
            last = self.show(instance, *want)
            return last == want

        with contextlib.suppress(AssertionError):
            wait_until(reached, timeout=timeout, what=f"{want}")
        assert last == want, f"{self.unit(instance)}: {last}\n{self.journal(instance)}"

    @contextlib.contextmanager
    def caller(self, callers: int = 4) -> Iterator[Caller]:
        """tests/systemd/caller.py inside the container, as the user supervise."""
        argv = self.container.command(
            "runuser", "-u", USER, "--", "env", f"PYTHONPATH={TESTS_ROOT}",
            f"{VENV}/bin/python", f"{TESTS_ROOT}/tests/systemd/caller.py", STATE_DIR,
            str(callers),
        )  # fmt: skip
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            assert proc.stdout.readline().strip() == "calling", "the caller did not start"
            yield Caller(proc)
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Caller:
    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def finish(self) -> dict:
        """Stop calling; what succeeded and what failed."""
        out, _ = self.proc.communicate(timeout=60)
        return json.loads(out)


@pytest.fixture
def host(with_systemd: ModuleType, venv: str, tmp_path: Path) -> Iterator[Host]:
    container = with_systemd.SystemdContainer(
        binds=[(venv, VENV, True), (str(ROOT), SOURCE, True), (str(ROOT / "tests"),
               f"{TESTS_ROOT}/tests", True)],
        console_log=str(tmp_path / "console.log"),
    )  # fmt: skip
    with container:
        host = Host(container)
        host.sh(f"cd {SOURCE}\nset -e\n" + deploy_block("units"))
        yield host
