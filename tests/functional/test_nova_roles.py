"""The reference nova services as separate masters: conductor (the only one with a
database), scheduler and two computes, on the embedded defaults and on RabbitMQ + PostgreSQL.
Everything is driven through the `supervise` command (call, service list/disable/enable)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from supervise.db import Database
from supervise.rpc.client import Messenger, RPCClient
from supervise.rpc.dispatcher import Target
from supervise.rpc.transport_url import local_transport_url
from supervise.rpc.wire import RemoteError
from supervise.services.versions import SERVICE_VERSION
from tests.functional.conftest import ROOT, Supervisor, own_vhost, wait_until
from tests.functional.load import Load

REPORT_INTERVAL = 2.0
FAST = [
    "--report-interval", str(REPORT_INTERVAL),
    "--service-down-time", "10",
    "--periodic-fuzzy-delay", "0",
    "--heartbeat-interval", "0.5",
]  # fmt: skip
COMPUTES = ("cmp1", "cmp2")
FITS = {"vcpus": 1, "memory_mb": 16, "disk_gb": 0}
FITS_NOWHERE = {"vcpus": 1, "memory_mb": 1 << 30, "disk_gb": 0}  # a petabyte of RAM
OUTAGE = 10.0
RECOVERY_LINE = "reporting service state to the database again"
HEARTBEAT_WARNING = "cannot report service state"


@pytest.fixture
def private_vhost() -> Iterator[str]:
    """A RabbitMQ virtual host of the test's own: the nova topics are fixed names."""
    with own_vhost("supervise-nova") as url:
        yield url


@dataclass
class Deployment:
    """How each role is configured: only the conductor gets a database."""

    transport: str
    database: str
    conductor: list[str]
    admin: list[str]  # what `supervise service` and `supervise db` need
    tmp_path: Path
    own_state_dirs: list[Path] = field(default_factory=list)

    def role(self, name: str) -> list[str]:
        """Options of a role without database access: the transport, and a state
        directory of its own in which no database file may appear."""
        state = self.tmp_path / f"state-{name}"
        self.own_state_dirs.append(state)
        return ["--transport-url", self.transport, "--state-dir", str(state)]

    def command(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervise", *args],
            capture_output=True, text=True, timeout=timeout, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip

    def call(self, method: str, **arguments: object) -> subprocess.CompletedProcess[str]:
        return self.command(
            "call", "scheduler", method, "--api-version", "4.0", "--timeout", "20",
            "--transport-url", self.transport, "--json", json.dumps(arguments),
        )  # fmt: skip

    def service(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = self.command("service", *args, *self.admin, *FAST[:4])
        assert done.returncode == 0, done.stderr
        return done


@pytest.fixture(params=["embedded", "rabbit-postgres"])
def deployment(request, tmp_path) -> Deployment:
    if request.param == "embedded":
        shared = tmp_path / "state"  # the conductor's: its SQLite database and the queue
        return Deployment(
            transport=local_transport_url(str(shared)),
            database=f"sqlite:///{shared / 'supervise.db'}",
            conductor=["--state-dir", str(shared)],
            admin=["--state-dir", str(shared)],
            tmp_path=tmp_path,
        )
    rabbit = request.getfixturevalue("private_vhost")
    postgres = request.getfixturevalue("postgres_url")
    state = tmp_path / "state-conductor"
    conductor = ["--transport-url", rabbit, "--database-url", postgres, "--state-dir", str(state)]
    deployment = Deployment(
        transport=rabbit,
        database=postgres,
        conductor=conductor,
        admin=["--database-url", postgres],
        tmp_path=tmp_path,
    )
    synced = deployment.command("db", "sync", *deployment.admin)
    assert synced.returncode == 0, synced.stderr
    return deployment


def report_count(database: Database, host: str) -> int:
    ref = database.service_get_by_host_and_binary(host, "nova-compute")
    return ref.report_count if ref else 0


def start_roles(supervise, deployment: Deployment):
    """The conductor (4 workers), the scheduler (2) and two computes, each its own master."""

    def start_conductor() -> Supervisor:
        return supervise(
            "nova-conductor", "--workers", "4", "--host", "ctl", *deployment.conductor, *FAST
        )

    conductor = start_conductor()
    conductor.wait_ready(4, timeout=30)
    scheduler = supervise(
        "nova-scheduler", "--workers", "2", "--host", "ctl", "--reload-method", "mutate",
        *deployment.role("scheduler"), *FAST,
    )  # fmt: skip
    computes = {host: supervise("nova-compute", "--host", host, *deployment.role(host), *FAST)
                for host in COMPUTES}  # fmt: skip
    scheduler.wait_ready(2, timeout=30)
    for compute in computes.values():
        compute.wait_ready(1, timeout=30)
    return start_conductor, conductor, scheduler, computes


def assert_no_database_file(deployment: Deployment) -> None:
    """Computes and the scheduler never touched a database: none appeared in their state."""
    for state in deployment.own_state_dirs:
        assert not [p.name for p in state.iterdir() if p.name.startswith("supervise.db")]


def test_conductor_scheduler_and_two_computes(supervise, deployment):
    _, _, scheduler, computes = start_roles(supervise, deployment)
    ready = time.monotonic()
    messenger = Messenger(deployment.transport)
    try:
        client = RPCClient(messenger, Target(topic="scheduler", version="4.0"), timeout=20)
        # within two report intervals, a fitting spec gets a compute host (a compute's
        # first cast may come before the scheduler consumes: the next one counts)
        placed = wait_until(lambda: placed_or_none(client), 2 * REPORT_INTERVAL, "a host")
        assert placed[0] in COMPUTES
        assert time.monotonic() - ready <= 2 * REPORT_INTERVAL
        check_the_deployment(deployment, scheduler, client)
    finally:
        messenger.close()
    check_a_compute_too_old(deployment, supervise)
    assert_still_supervised(computes["cmp2"])
    assert_no_database_file(deployment)


def test_a_conductor_outage_kills_no_compute_and_reports_resume(supervise, deployment):
    start_conductor, conductor, _, computes = start_roles(supervise, deployment)
    compute_pids = {host: sup.worker_pids() for host, sup in computes.items()}
    check_a_conductor_outage(deployment, conductor, start_conductor, computes, compute_pids)
    assert_no_database_file(deployment)


def placed_or_none(client: RPCClient) -> list[str] | None:
    try:
        return client.call({}, "select_destinations", spec=FITS)
    except RemoteError as error:
        if error.exc_type != "NoValidHost":
            raise
        return None


def check_the_deployment(deployment: Deployment, scheduler: Supervisor, client: RPCClient):
    # all four up, with their versions
    rows = json.loads(deployment.service("list", "--json").stdout)
    assert sorted((r["binary"], r["host"], r["state"], r["version"]) for r in rows) == [
        ("nova-compute", "cmp1", "up", SERVICE_VERSION),
        ("nova-compute", "cmp2", "up", SERVICE_VERSION),
        ("nova-conductor", "ctl", "up", SERVICE_VERSION),
        ("nova-scheduler", "ctl", "up", SERVICE_VERSION),
    ]
    # through the CLI; two instances that fit once per host (both computes measure this
    # machine) go to both hosts
    half_and_more = psutil.virtual_memory().available * 6 // 10 >> 20
    placed = deployment.call("select_destinations", spec={**FITS, "memory_mb": half_and_more,
                                                          "count": 2})  # fmt: skip
    assert placed.returncode == 0, placed.stderr
    assert sorted(json.loads(placed.stdout)) == list(COMPUTES)
    nowhere = deployment.call("select_destinations", spec=FITS_NOWHERE)
    assert nowhere.returncode == 1
    assert nowhere.stderr.startswith("supervise: remote error: NoValidHost: no host fits")
    bad = deployment.call("select_destinations", spec={**FITS, "vcpus": "many"})
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "InvalidArguments: vcpus must be a whole number" in bad.stderr

    # a disabled compute is never selected, from the next call on
    deployment.service("disable", "cmp1", "nova-compute", "--reason", "maintenance")
    for _ in range(3):
        placed = deployment.call("select_destinations", spec={**FITS, "count": 2})
        assert json.loads(placed.stdout) == ["cmp2", "cmp2"], placed.stderr
    deployment.service("enable", "cmp1", "nova-compute")

    # SIGHUP the scheduler (a mutate reload: its host states reset) under calls
    def select_one(client: RPCClient) -> None:
        assert client.call({}, "select_destinations", spec=FITS)[0] in COMPUTES

    with Load(client, callers=4, call=select_one).running() as load:
        load.wait_for_calls(20)
        scheduler.signal(signal.SIGHUP)
        wait_until(lambda: scheduler.log().count("host states reset") == 2, 20, "2 resets")
        load.wait_for_calls(20)
    assert load.failures == []


def check_a_conductor_outage(
    deployment: Deployment,
    conductor: Supervisor,
    start_conductor: Callable[[], Supervisor],
    computes: dict[str, Supervisor],
    compute_pids: dict[str, set[int]],
) -> None:
    # the conductor stops for 10 s while the computes report
    database = Database(deployment.database)
    wait_until(lambda: all(report_count(database, h) >= 2 for h in COMPUTES), 10, "reports")
    conductor.signal(signal.SIGTERM)
    assert conductor.wait_exit(30) == 0
    stopped = time.monotonic()
    before = {host: report_count(database, host) for host in COMPUTES}
    for sup in computes.values():
        wait_until(lambda s=sup: HEARTBEAT_WARNING in s.log(), 10, "the outage warning")
    time.sleep(max(0.0, OUTAGE - (time.monotonic() - stopped)))  # the outage lasts 10 s
    conductor = start_conductor()
    conductor.wait_ready(4, timeout=30)
    back = time.monotonic()
    for host in COMPUTES:
        wait_until(lambda h=host: report_count(database, h) > before[h], 10, "reports again")
        # the heartbeats sent during the outage expired: they did not pile up for its return
        assert report_count(database, host) - before[host] <= (
            (time.monotonic() - back) / REPORT_INTERVAL + 2
        )
    for host, sup in computes.items():
        # the database has the report before its reply reaches the compute and its log
        wait_until(lambda s=sup: RECOVERY_LINE in s.log(), 10, "the recovery line")
        log = sup.log()
        assert sup.worker_pids() == compute_pids[host]  # no compute died
        assert log.count(HEARTBEAT_WARNING) == 1, log
        warnings = [line for line in log.splitlines() if " WARNING " in line]
        assert [line for line in warnings if "again" not in line] == warnings[:1], log
        wait_until(lambda s=sup, h=host: f"reporting the resources of host {h} again" in s.log())
        assert "Traceback" not in log


def check_a_compute_too_old(deployment: Deployment, supervise) -> None:
    # a compute too old for the conductor refuses to start: exit 2, one line (one worker, as
    # a compute runs: named as module:attribute, the test's compute has no worker policy)
    old = supervise(
        "tests.functional.nova_services:old_compute", "--host", "old1", "--workers", "1",
        *deployment.role("old1"), *FAST,
    )  # fmt: skip
    assert old.wait_exit(30) == 2
    refused = [line for line in old.log().splitlines() if "older than the oldest" in line]
    assert len(refused) == 1, old.log()
    assert "Traceback" not in old.log()
    assert (
        Database(deployment.database).service_get_by_host_and_binary("old1", "nova-compute") is None
    )


def assert_still_supervised(compute: Supervisor) -> None:
    """One worker by policy, and yet respawned, reloaded and drained like any other."""
    (pid,) = compute.worker_pids()
    compute.signal(signal.SIGTTIN)
    refusal = "SIGTTIN ignored: nova-compute runs at most one worker"
    wait_until(lambda: refusal in compute.log(), 10, "the TTIN refusal")
    assert compute.worker_pids() == {pid}

    def ready_lines() -> int:
        return compute.log().count("ready: nova-compute started")

    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: ready_lines() == 2 and pid not in compute.worker_pids(), 20, "respawn")
    (respawned,) = compute.worker_pids()
    compute.signal(signal.SIGHUP)
    wait_until(lambda: ready_lines() == 3, 20, "the reload's worker")
    wait_until(lambda: respawned not in compute.worker_pids(), 20, "the old worker drained")
    assert len(compute.worker_pids()) == 1
    compute.signal(signal.SIGTERM)
    assert compute.wait_exit(30) == 0
    assert "Traceback" not in compute.log()


# ----- the README's main command -----------------------------------------------------------

README_COMMAND = "supervise --workers 4 nova-conductor"


def test_the_readme_main_command_exactly_as_written(supervise, tmp_path):
    readme = (ROOT / "README.md").read_text()
    assert f"pip install -e . && {README_COMMAND}\n" in readme
    program, *args = shlex.split(README_COMMAND)
    service = args.pop()
    home = tmp_path / "home"
    home.mkdir()
    state = tmp_path / "xdg-state"
    env = {"HOME": str(home), "XDG_STATE_HOME": str(state)}
    wrapper: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root's state directory is /var/lib/supervise: make it private
        state.mkdir(mode=0o700)
        wrapper = (
            "unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mkdir -p /var/lib/supervise && mount --bind "$0" /var/lib/supervise && exec "$@"',
            str(state),
        )  # fmt: skip
    master = supervise(service, *args, env=env, program=(*wrapper, program))
    master.wait_ready(4, timeout=30)
    queue = state / ("queue.db" if wrapper else "supervise/queue.db")
    assert queue.exists()
    master.signal(signal.SIGTERM)
    assert master.wait_exit(30) == 0
    log = master.log()
    assert log.count("Child ") == 4 and "exited with status 0" in log
    assert "master exiting with status 0" in log
    assert "Traceback" not in log
