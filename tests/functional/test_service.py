"""The nova Service under a real master: record, hooks, heartbeat, periodic tasks, CLI."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time

import pytest

from supervise import config
from supervise.db import Database
from supervise.rpc.client import RPCClient
from supervise.rpc.dispatcher import Target
from supervise.rpc.wire import RemoteError
from supervise.service import Service
from supervise.services.versions import SERVICE_VERSION
from tests.functional.conftest import wait_until
from tests.functional.nova_services import HookRecorder
from tests.functional.services import EVENTS_DIR_VARIABLE

HOOKS = "tests.functional.nova_services:hook_service"


@pytest.fixture
def run_hooks(supervise, rabbit_url, topic, tmp_path):
    """Start the hook-recording nova Service with its own SQLite database."""
    database = f"sqlite:///{tmp_path / 'services.db'}"

    def start(workers: int = 1, *args: str, behaviours: dict[str, str] | None = None):
        sup = supervise(
            HOOKS,
            "--workers", str(workers),
            "--transport-url", rabbit_url,
            "--topic", topic,
            "--host", "hosta",
            "--database-url", database,
            "--periodic-fuzzy-delay", "0",
            "--heartbeat-interval", "0.5",
            *args,
            behaviours=behaviours,
        )  # fmt: skip
        sup.database = Database(database)
        return sup

    return start


def hooks(sup) -> list[str]:
    return [e.kind for e in sup.events() if not e.kind.startswith(("tick", "started"))]


def test_hooks_run_in_novas_order_with_their_arguments(run_hooks):
    sup = run_hooks(1)
    sup.wait_ready(1)
    ref = sup.database.service_get_by_host_and_binary("hosta", "nova-hooks")
    assert hooks(sup) == ["init_host:none", f"pre_start_hook:{ref.id}", "post_start_hook"]
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0
    assert hooks(sup)[3:] == ["graceful_shutdown:30", "cleanup_host"]

    again = run_hooks(1)
    again.wait_ready(1)
    assert hooks(again)[:2] == ["init_host:ref", f"pre_start_hook:{ref.id}"]


def test_workers_starting_together_register_one_record(run_hooks):
    sup = run_hooks(4)
    sup.wait_ready(4)
    records = sup.database.service_get_all(host="hosta", binary="nova-hooks")
    assert len(records) == 1
    assert records[0].topic == sup.log().split("serves topic ")[1].split()[0]


def test_heartbeat_once_per_interval_per_host_whatever_the_worker_count(run_hooks):
    sup = run_hooks(4, "--report-interval", "0.5")
    sup.wait_ready(4)
    began = time.monotonic()

    def report_count() -> int:
        ref = sup.database.service_get_by_host_and_binary("hosta", "nova-hooks")
        return ref.report_count if ref else 0

    wait_until(lambda: report_count() >= 6, what="six heartbeats")
    elapsed = time.monotonic() - began
    # one reporter: at most one beat per 0.5 s (the first after 0.5 s); four would give 4x
    assert report_count() <= elapsed / 0.5 + 1, (report_count(), elapsed)
    assert sup.database.service_get_by_host_and_binary("hosta", "nova-hooks").last_seen_up


@pytest.mark.parametrize(("mode", "runners"), [("leader", 1), ("all", 3)])
def test_periodic_tasks_run_in_the_leader_or_in_all_workers(run_hooks, mode, runners):
    sup = run_hooks(3, "--periodic-workers", mode)
    sup.wait_ready(3)
    wait_until(lambda: len(sup.events("tick")) >= 3 * runners, what="periodic ticks")
    time.sleep(0.5)  # a window in which a wrong worker would tick too
    assert len({e.pid for e in sup.events("tick")}) == runners


def test_a_failing_hook_exits_the_worker_and_the_crash_budget_applies(run_hooks):
    sup = run_hooks(1, "--max-restarts", "2", behaviours={"fail-init": ""})
    assert sup.wait_exit(timeout=30) == 3
    assert sup.log().count("RuntimeError: init_host told to fail by the test") == 3
    assert not sup.notify.with_key("READY")


def test_term_during_start_ends_it_between_steps_and_undoes_only_those_that_ran(run_hooks):
    sup = run_hooks(1, behaviours={"init-delay": "0.5"})
    wait_until(lambda: "init_host:none" in hooks(sup), what="init_host")
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0
    assert hooks(sup) == ["init_host:none", "graceful_shutdown:30", "cleanup_host"]
    assert "start ended (Cancelled: told to stop while starting)" in sup.log()
    assert "Traceback" not in sup.log()
    assert sup.database.service_get_by_host_and_binary("hosta", "nova-hooks") is None


def test_mutate_reload_resets_the_manager_in_every_worker(run_hooks):
    sup = run_hooks(2, "--reload-method", "mutate")
    pids = sup.wait_ready(2)
    sup.signal(signal.SIGHUP)
    wait_until(lambda: len(sup.events("reset")) == 2, what="two resets")
    assert {e.pid for e in sup.events("reset")} == pids == sup.worker_pids()


def service_command(database: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "supervise", "service", *args, "--database-url", database],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_service_commands_list_and_change_records(run_hooks, tmp_path):
    sup = run_hooks(1, "--report-interval", "0.5")
    sup.wait_ready(1)
    url = str(sup.database.url)
    wait_until(
        lambda: sup.database.service_get_by_host_and_binary("hosta", "nova-hooks").report_count,
        what="a heartbeat",
    )
    listing = json.loads(service_command(url, "list", "--json").stdout)
    fields = ("binary", "host", "status", "state", "forced_down", "version")
    assert [tuple(r[f] for f in fields) for r in listing] == [
        ("nova-hooks", "hosta", "enabled", "up", False, SERVICE_VERSION)
    ]
    done = service_command(url, "disable", "hosta", "nova-hooks", "--reason", "maintenance")
    assert done.returncode == 0 and "disabled" in done.stdout
    done = service_command(url, "force-down", "hosta", "nova-hooks", "--json")
    assert json.loads(done.stdout)[0]["state"] == "down"
    assert json.loads(done.stdout)[0]["disabled_reason"] == "maintenance"
    done = service_command(url, "enable", "hosta", "nova-hooks")
    assert done.returncode == 0 and "enabled" in done.stdout
    table = service_command(url, "list", "--binary", "nova-hooks").stdout.splitlines()
    assert table[0].split() == ["id", "binary", "host", "topic", "status", "state",
                                "updated_at", "forced_down", "version"]  # fmt: skip
    assert table[1].split()[-1] == str(SERVICE_VERSION)
    done = service_command(url, "delete", "hosta", "nova-hooks")
    assert done.returncode == 0
    assert json.loads(service_command(url, "list", "--json").stdout) == []
    missing = service_command(url, "enable", "hosta", "nova-nothing")
    assert missing.returncode == 1
    assert missing.stderr == "supervise: no service nova-nothing on host hosta\n"


def test_database_outage_kills_no_worker_and_heartbeats_resume(
    supervise, rabbit_url, topic, postgres_server, postgres_url
):
    Database(postgres_url).sync()
    sup = supervise(
        HOOKS,
        "--workers", "3", "--transport-url", rabbit_url, "--topic", topic, "--host", "hosta",
        "--database-url", postgres_url, "--report-interval", "0.5", "--periodic-fuzzy-delay", "0",
    )  # fmt: skip
    pids = sup.wait_ready(3)
    database = Database(postgres_url)

    def report_count() -> int:
        return database.service_get_by_host_and_binary("hosta", "nova-hooks").report_count

    wait_until(lambda: report_count() >= 2, what="heartbeats")
    postgres_server.stop()
    try:
        outage_began = time.monotonic()
        wait_until(lambda: "cannot report service state" in sup.log(), what="the outage warning")
        time.sleep(max(0.0, 10 - (time.monotonic() - outage_began)))  # a 10 s outage
    finally:
        postgres_server.start()
    before = report_count()
    wait_until(lambda: report_count() > before + 2, timeout=20, what="heartbeats again")
    assert sup.worker_pids() == pids
    assert sup.log().count("cannot report service state") == 1
    assert "reporting service state to the database again" in sup.log()


def test_reference_services_conductor_scheduler_compute(supervise, rabbit_url, tmp_path, messenger):
    """Only the conductor has a database; tests/functional/test_nova_roles.py goes further."""
    database = f"sqlite:///{tmp_path / 'nova.db'}"
    transport = ("--transport-url", rabbit_url)
    supervise("nova-conductor", *transport, "--database-url", database, "--workers", "2",
              "--host", "ctl").wait_ready(2)  # fmt: skip
    for binary, host in (("nova-compute", "cmp1"), ("nova-compute", "cmp2"),
                         ("nova-scheduler", "ctl")):  # fmt: skip
        supervise(binary, *transport, "--state-dir", str(tmp_path / host), "--host", host,
                  "--workers", "1", "--report-interval", "1").wait_ready(1)  # fmt: skip

    def client(topic: str, version: str) -> RPCClient:
        return RPCClient(messenger, Target(topic=topic, version=version), timeout=10)

    conductor = client("conductor", "3.0").call({}, "service_get_by_host_and_binary",
                                                host="ctl", binary="nova-conductor")  # fmt: skip
    assert (conductor["topic"], conductor["version"]) == ("conductor", SERVICE_VERSION)
    assert client("compute", "6.0").prepare(server="cmp2").call({}, "get_host_uptime") >= 0
    spec = {"vcpus": 1, "memory_mb": 1, "disk_gb": 0, "count": 2}

    def both_hosts() -> bool:
        with contextlib.suppress(RemoteError):  # NoValidHost until both computes reported
            placed = client("scheduler", "4.0").call({}, "select_destinations", spec=spec)
            return len(placed) == 2 and set(placed) <= {"cmp1", "cmp2"}
        return False

    wait_until(both_hosts, what="both compute hosts reported")
    with pytest.raises(RemoteError, match="NoSuchMethod"):
        client("conductor", "3.0").call({}, "init_host", service_ref=None)  # a hook, not RPC
    rows = Database(database).service_get_all()
    assert sorted((r.binary, r.host, r.topic) for r in rows) == [
        ("nova-compute", "cmp1", "compute"),
        ("nova-compute", "cmp2", "compute"),
        ("nova-conductor", "ctl", "conductor"),
        ("nova-scheduler", "ctl", "scheduler"),
    ]


def test_kill_soft_deletes_the_record_and_the_service_registers_again(
    rabbit_url, tmp_path, monkeypatch
):
    monkeypatch.setenv(EVENTS_DIR_VARIABLE, str(tmp_path))
    conf = config.load(
        {
            "transport_url": rabbit_url,
            "database_url": f"sqlite:///{tmp_path / 'kill.db'}",
            "periodic_enable": False,
            "report_interval": 0.0,
        },
        environ={},
    )
    first = Service.create(host="h", binary="nova-hooks", manager=HookRecorder, conf=conf)
    first.start()
    first.kill()
    assert first.db.service_get_by_host_and_binary("h", "nova-hooks") is None
    second = Service.create(host="h", binary="nova-hooks", manager=HookRecorder, conf=conf)
    second.start()
    try:
        assert second.service_ref.id != first.service_ref.id
        assert [r.id for r in second.db.service_get_all(host="h")] == [second.service_ref.id]
    finally:
        second.stop()
