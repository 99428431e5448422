"""The real `supervise` command, run as a subprocess, given bad input.

Bad input must end in exit status 2 and exactly one line on stderr, ``supervise: error: ...``,
with nothing on stdout and no traceback. None of these cases may start a master that keeps
running: each run has a 30 s timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from supervise import config
from supervise.db import Database
from supervise.services.versions import SERVICE_VERSION
from tests.functional.conftest import ROOT, each_transport, wait_until

TIMEOUT = 30.0
EXIT_USAGE = 2
PREFIX = "supervise: error:"
# Variables that would change what a run does; the command must see none of them.
SYSTEMD_VARIABLES = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"}


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SUPERVISE_") and key not in SYSTEMD_VARIABLES
    }
    env["PYTHONPATH"] = str(ROOT)  # this checkout's supervise, whichever is installed
    env.update(extra)
    return env


def supervise(
    args: Sequence[str | bytes],
    cwd: Path,
    env: dict[str | bytes, str | bytes] | None = None,
    command: Sequence[str] = (sys.executable, "-m", "supervise"),
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env=clean_env() if env is None else env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=TIMEOUT,
        check=False,
    )


def console_script() -> str:
    """The `supervise` script installed next to this interpreter, else the first on PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("supervise", path=path)
    if found is None:
        pytest.skip("the supervise console script is not installed")
    return found


def assert_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    shown = f"status {result.returncode}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert "Traceback" not in result.stdout + result.stderr, shown
    assert result.returncode == EXIT_USAGE, shown
    assert result.stdout == "", shown
    assert result.stderr.endswith("\n"), shown
    assert result.stderr.count("\n") == 1 and "\r" not in result.stderr, shown
    line = result.stderr.rstrip("\n")
    assert line.startswith(PREFIX), shown
    assert line[len(PREFIX) :].strip(), shown
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} missing: {shown}"
    return line


COMPUTE_POLICY = ["nova-compute runs at most one worker", "one process per host"]
# (id, arguments, extra environment, fragments the message must contain)
BAD_INPUT = [
    ("no-arguments", [], {}, ["SERVICE"]),
    ("run-without-service", ["run"], {}, ["SERVICE"]),
    ("unknown-service", ["nosuchservice"], {}, ["nosuchservice"]),
    ("missing-module", ["nosuchmodule:Thing"], {}, ["nosuchmodule"]),
    ("missing-package", ["nosuchpackage.sub:Thing"], {}, ["nosuchpackage"]),
    ("empty-attribute", ["os:"], {}, ["os:"]),
    ("workers-0", ["--workers", "0", "idle"], {}, ["workers"]),
    ("workers-abc", ["--workers", "abc", "idle"], {}, ["workers", "abc"]),
    ("workers-0-after-service", ["run", "idle", "--workers=0"], {}, ["workers"]),
    ("workers-without-value", ["idle", "--workers"], {}, ["--workers"]),
    ("unknown-flag", ["--bogus", "idle"], {}, ["--bogus"]),
    ("unknown-flag-after-service", ["idle", "--bogus"], {}, ["--bogus"]),
    ("extra-argument", ["idle", "extra"], {}, ["extra"]),
    (
        "missing-config-file",
        ["--config-file", "/nonexistent.conf", "idle"],
        {},
        ["/nonexistent.conf"],
    ),
    ("reload-method", ["--reload-method", "sideways", "idle"], {}, ["reload_method", "sideways"]),
    ("negative-timeout", ["--graceful-shutdown-timeout", "-5", "idle"], {}, ["graceful_shutdown"]),
    ("nan-timeout", ["--graceful-shutdown-timeout", "nan", "idle"], {}, ["graceful_shutdown"]),
    ("log-level", ["--log-level", "LOUD", "idle"], {}, ["log_level"]),
    ("typo-in-environment", ["idle"], {"SUPERVISE_WORKRES": "3"}, ["SUPERVISE_WORKRES"]),
    ("bad-environment-value", ["idle"], {"SUPERVISE_WORKERS": "0"}, ["SUPERVISE_WORKERS"]),
    (
        "missing-config-file-from-environment",
        ["idle"],
        {"SUPERVISE_CONFIG_FILE": "/nonexistent.conf"},
        ["/nonexistent.conf"],
    ),
    (
        "log-file-in-missing-directory",
        ["--log-file", "/nonexistent-dir/x.log", "idle"],
        {},
        ["/nonexistent-dir/x.log"],
    ),
    ("preload-missing-attribute", ["--preload", "os:NoSuchThing"], {}, ["NoSuchThing"]),
    ("preload-missing-module", ["--preload", "nosuchmodule:Thing"], {}, ["nosuchmodule"]),
    ("preload-not-callable", ["--preload", "os:sep"], {}, ["os:sep"]),
    ("workers-over-the-cap", ["--workers", "257", "idle"], {}, ["workers", "1 to 256"]),
    ("workers-10**12", ["--workers", str(10**12), "idle"], {}, ["workers"]),
    (
        "worker-ready-timeout-past-7-days",
        ["--worker-ready-timeout", "9999999", "idle"],
        {},
        ["worker_ready_timeout", "604800"],
    ),
    (
        "graceful-shutdown-timeout-past-7-days",
        ["--graceful-shutdown-timeout", "9999999", "idle"],
        {},
        ["graceful_shutdown_timeout", "604800"],
    ),
    ("heartbeat-interval-1e300", ["--heartbeat-interval", "1e300", "idle"], {}, ["heartbeat"]),
    (
        "heartbeat-interval-1e300-in-environment",
        ["idle"],
        {"SUPERVISE_HEARTBEAT_INTERVAL": "1e300"},
        ["SUPERVISE_HEARTBEAT_INTERVAL"],
    ),
    ("amqp-heartbeat-under-1s", ["--heartbeat-timeout-threshold", "0.5", "idle"], {}, ["0.5"]),
    ("call-timeout-past-7-days", ["call", "--timeout", "1e9", "t", "m"], {}, ["--timeout"]),
    ("host-with-escape-codes", ["--host", "h\x1b[2J", "idle"], {}, ["host", "\\x1b"]),
    # nova-compute's worker policy: one process per host
    ("compute-workers-2", ["--workers", "2", "nova-compute"], {}, [*COMPUTE_POLICY, "= 2"]),
    ("compute-workers-env", ["nova-compute"], {"SUPERVISE_WORKERS": "3"}, COMPUTE_POLICY),
]


@pytest.mark.parametrize(
    ("args", "extra_env", "fragments"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
def test_bad_input(
    tmp_path: Path, args: list[str], extra_env: dict[str, str], fragments: list[str]
) -> None:
    assert_usage_error(supervise(args, tmp_path, clean_env(**extra_env)), *fragments)


def test_bad_value_in_config_file(tmp_path: Path) -> None:
    path = tmp_path / "supervise.conf"
    path.write_text("[DEFAULT]\ntransport_url = rabbit://u:p@h:5672/\n[supervise]\nworkers = 0\n")
    result = supervise(["--config-file", str(path), "idle"], tmp_path)
    assert_usage_error(result, str(path), "workers")


def test_worker_policy_applies_to_config_files(tmp_path: Path) -> None:
    path = tmp_path / "nova.conf"
    path.write_text("[DEFAULT]\nworkers = 4\n")
    result = supervise(["--config-file", str(path), "nova-compute"], tmp_path)
    assert_usage_error(result, *COMPUTE_POLICY, "= 4")


def test_unknown_option_in_config_file(tmp_path: Path) -> None:
    path = tmp_path / "supervise.conf"
    path.write_text("[supervise]\nwrokers = 2\n")
    result = supervise(["--config-file", str(path), "idle"], tmp_path)
    assert_usage_error(result, str(path), "wrokers")


def test_unparsable_config_file(tmp_path: Path) -> None:
    path = tmp_path / "supervise.conf"
    path.write_text("workers = 2\n")
    result = supervise(["--config-file", str(path), "idle"], tmp_path)
    assert_usage_error(result, str(path))


def test_non_utf8_config_file(tmp_path: Path) -> None:
    path = tmp_path / "supervise.conf"
    path.write_bytes(b"[supervise]\nhost = \xff\xfe\n")
    result = supervise(["--config-file", str(path), "idle"], tmp_path)
    assert_usage_error(result, str(path))


def test_config_file_is_a_directory(tmp_path: Path) -> None:
    result = supervise(["--config-file", str(tmp_path), "idle"], tmp_path)
    assert_usage_error(result, str(tmp_path))


def test_console_script_reports_bad_input_like_python_m(tmp_path: Path) -> None:
    args = ["--workers", "0", "idle"]
    by_script = supervise(args, tmp_path, command=[console_script()])
    by_module = supervise(args, tmp_path)
    assert assert_usage_error(by_script, "workers") == assert_usage_error(by_module, "workers")


def test_console_script_without_arguments(tmp_path: Path) -> None:
    assert_usage_error(supervise([], tmp_path, command=[console_script()]), "SERVICE")


def test_resolving_a_service_does_not_import_its_parent_package(tmp_path: Path) -> None:
    """BUG: hosted.resolve promises to check a service's module "without importing it", but
    importlib.util.find_spec("pkg.mod") imports (runs) pkg first. `this` prints the Zen of
    Python when imported, so resolving `this.nosuchmodule:Thing` writes it to stdout. A real
    parent package (nova.cmd) would run its import-time side effects, such as eventlet
    monkey-patching, in the master."""
    assert_usage_error(supervise(["this.nosuchmodule:Thing"], tmp_path), "this.nosuchmodule")


# ----- help and version -------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["--help"], ["-h"], ["run", "--help"], ["idle", "--help"]],
    ids=["--help", "-h", "run --help", "SERVICE --help"],
)
def test_help_mentions_workers(tmp_path: Path, args: list[str]) -> None:
    result = supervise(args, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "--workers" in result.stdout, result.stdout


def test_console_script_help(tmp_path: Path) -> None:
    result = supervise(["run", "--help"], tmp_path, command=[console_script()])
    assert result.returncode == 0, result.stderr
    assert "--workers" in result.stdout


def test_version(tmp_path: Path) -> None:
    result = supervise(["--version"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("supervise "), result.stdout
    assert result.stdout.count("\n") == 1
    assert result.stderr == ""


def test_console_script_version_matches_python_m(tmp_path: Path) -> None:
    by_script = supervise(["--version"], tmp_path, command=[console_script()])
    assert by_script.returncode == 0, by_script.stderr
    assert by_script.stdout == supervise(["--version"], tmp_path).stdout


def test_out_of_range_value_in_config_file(tmp_path: Path) -> None:
    path = tmp_path / "supervise.conf"
    path.write_text("[DEFAULT]\nheartbeat_interval = 1e300\n")
    result = supervise(["--config-file", str(path), "idle"], tmp_path)
    assert_usage_error(result, str(path), "heartbeat_interval", "604800")


# ----- any bytes in the arguments ---------------------------------------------------------

# Arguments that are not UTF-8 reach sys.argv as lone surrogates (PEP 383); each of these used
# to fail with a traceback where the text was encoded (the database, a call's JSON, a URL).
NOT_UTF8 = [
    ("run-service", [b"id\xffle"]),
    ("run-host", [b"--host", b"h\xff", b"idle"]),
    ("run-state-dir", [b"--state-dir", b"/tmp/s\xff", b"idle"]),
    ("call-topic", [b"call", b"t\xff", b"m"]),
    ("call-key-value", [b"call", b"t", b"m", b"a=\xff"]),
    ("call-key", [b"call", b"t", b"m", b"\xff=1"]),
    ("call-json", [b"call", b"--json", b'{"a": "\xff"}', b"t", b"m"]),
    ("call-server", [b"call", b"--server", b"\xfe", b"t", b"m"]),
    ("service-enable-host", [b"service", b"enable", b"h\xff", b"nova-compute"]),
    ("service-list-host", [b"service", b"list", b"--host=h\xff"]),
    ("service-disable-reason", [b"service", b"disable", b"h", b"b", b"--reason", b"\xff"]),
    ("db-sync-state-dir", [b"db", b"sync", b"--state-dir", b"/tmp/\xff"]),
]


@pytest.mark.parametrize("args", [c[1] for c in NOT_UTF8], ids=[c[0] for c in NOT_UTF8])
def test_arguments_that_are_not_utf8(tmp_path: Path, args: list[bytes]) -> None:
    state = ["--state-dir", str(tmp_path / "state")] if args[0] in (b"service", b"call") else []
    result = supervise([*args, *state], tmp_path)
    assert_usage_error(result, "not valid UTF-8", "\\udc")
    assert not (tmp_path / "state").exists()  # refused before anything was opened


def test_environment_that_is_not_utf8(tmp_path: Path) -> None:
    env: dict[str | bytes, str | bytes] = {**clean_env(), b"SUPERVISE_HOST": b"h\xff"}
    result = supervise(["idle"], tmp_path, env)
    assert_usage_error(result, "SUPERVISE_HOST", "not valid UTF-8")


# ----- subcommands: the same state directory and config files as run ----------------------


@pytest.fixture
def supervise_master(request: pytest.FixtureRequest):
    """conftest's `supervise` fixture, which starts a master (here `supervise` runs a command)."""
    return request.getfixturevalue("supervise")


def test_call_takes_state_dir_config_file_and_options_in_any_order(
    tmp_path: Path, supervise_master
) -> None:
    state = tmp_path / "state"
    master = supervise_master("echo", "--workers", "1", "--state-dir", str(state))
    master.wait_ready(1, timeout=30)
    conf = tmp_path / "call.conf"
    conf.write_text(f"[supervise]\nstate_dir = {state}\n")
    orders = [
        ["call", "--state-dir", str(state), "--timeout", "20", "echo", "echo", "payload=1"],
        ["call", "echo", "echo", "--timeout", "20", "payload=2", "--state-dir", str(state)],
        ["call", "--timeout", "20", "echo", "echo", "--state-dir", str(state), "payload=3"],
        ["call", "echo", "echo", "payload=4", "--config-file", str(conf), "--timeout", "20"],
        ["call", "echo", "--cast", "echo", "payload=5", "--state-dir", str(state)],
    ]
    for number, args in enumerate(orders, 1):
        result = supervise(args, tmp_path)
        assert (result.returncode, result.stderr) == (0, ""), args
        assert result.stdout == ("" if "--cast" in args else f"{number}\n"), args


def test_service_list_on_a_database_no_service_has_used(tmp_path: Path) -> None:
    state = tmp_path / "state"
    listing = supervise(["service", "list", "--state-dir", str(state)], tmp_path)
    assert (listing.returncode, listing.stderr) == (0, "")
    assert listing.stdout.split() == list(
        ("id", "binary", "host", "topic", "status", "state", "updated_at", "forced_down", "version")
    )
    # a database file with other tables but not the services table
    with sqlite3.connect(state / "supervise.db") as db:
        db.execute("CREATE TABLE other (x)")
    as_json = supervise(["service", "list", "--json", "--state-dir", str(state)], tmp_path)
    assert (as_json.returncode, as_json.stderr, json.loads(as_json.stdout)) == (0, "", [])
    enable = supervise(
        ["service", "enable", "h", "nova-compute", "--state-dir", str(state)], tmp_path
    )
    assert (enable.returncode, enable.stdout) == (1, "")
    assert enable.stderr == "supervise: no service nova-compute on host h\n"


def test_service_list_escapes_control_characters(tmp_path: Path) -> None:
    """A host name is whatever a service registered: printed raw, its escape codes would
    retitle or clear the operator's terminal. JSON keeps it exactly."""
    state = tmp_path / "state"
    host = "evil\x1b]0;owned\x07\x1b[2J\nnext line\u202e"
    with Database(f"sqlite:///{state / 'supervise.db'}") as db:
        db.ensure_schema()
        db.service_create({"host": host, "binary": "nova-compute"})
        db.service_create({"host": "plain", "binary": "nova-compute", "topic": "c\tc"})
    listing = supervise(["service", "list", "--state-dir", str(state)], tmp_path)
    assert (listing.returncode, listing.stderr) == (0, "")
    lines = listing.stdout.splitlines()
    assert len(lines) == 3, lines  # a header and one line per service
    assert all(character.isprintable() for line in lines for character in line), lines
    assert "evil\\x1b]0;owned\\x07\\x1b[2J\\nnext line\\u202e" in lines[1]
    assert "c\\tc" in lines[2]
    as_json = supervise(["service", "list", "--json", "--state-dir", str(state)], tmp_path)
    rows = json.loads(as_json.stdout)
    assert [row["host"] for row in rows] == [host, "plain"]


# ----- every option at its maximum --------------------------------------------------------

# The longest waits and biggest counts supervise accepts, on a real master: each used to be
# able to crash it (epoll takes at most 24.8 days, threading.TIMEOUT_MAX, AMQP's 16 bits).
MAXIMA = {
    f.name: f.metadata["parse"].maximum
    for f in config.settable_fields()
    # workers: see the TTIN test; a port number is not a limit (and the port may be taken)
    if "range" in f.metadata and f.name not in ("workers", "metrics_port")
}
HOST = "maxima"


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = supervise(args, tmp_path)
    assert (result.returncode, result.stderr) == (0, ""), args
    return result


@each_transport
def test_a_master_runs_and_stops_with_every_option_at_its_maximum(
    tmp_path: Path, supervise_master, transport_url: str
) -> None:
    state = tmp_path / "db"
    args = [
        arg for name, top in MAXIMA.items() for arg in (f"--{name.replace('_', '-')}", str(top))
    ]
    master = supervise_master(
        "nova-conductor",
        "--workers", "2",
        "--transport-url", transport_url,
        "--state-dir", str(state),
        "--host", HOST,
        *args,
    )  # fmt: skip
    master.wait_ready(2, timeout=30)
    call = [
        "call", "--transport-url", transport_url, "--server", HOST, "--api-version", "3.0",
        "--timeout", f"{MAXIMA['rpc_response_timeout']:g}", "conductor", "service_get_all",
    ]  # fmt: skip

    def hosts() -> list[str]:
        return [r["host"] for r in json.loads(cli(tmp_path, *call, f"host={HOST}").stdout)]

    assert hosts() == [HOST]
    listing = cli(tmp_path, "service", "list", "--json", "--state-dir", str(state))
    rows = [(r["host"], r["state"], r["version"]) for r in json.loads(listing.stdout)]
    assert rows == [(HOST, "up", SERVICE_VERSION)]

    master.signal(signal.SIGHUP)  # a rolling reload, reload_batch at its maximum
    wait_until(lambda: "generation 2 serves" in master.log(), 30, "the reload")
    workers = wait_until(lambda: len(pids := master.worker_pids()) == 2 and pids, 30, "2 workers")

    # Two crashes in a row within healthy_uptime: the second respawn waits restart_backoff_max.
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    replaced = wait_until(
        lambda: len(pids := master.worker_pids() - {victim}) == 2 and pids, 30, "a respawn"
    )
    os.kill(min(replaced - workers), signal.SIGKILL)
    wait_until(
        lambda: f"respawning in {MAXIMA['restart_backoff_max']:.2f} s" in master.log(),
        15,
        "the long back-off",
    )
    assert hosts() == [HOST]  # the other worker serves

    master.signal(signal.SIGTERM)  # the drain deadline is graceful_shutdown_timeout's maximum
    assert master.wait_exit(30) == 0, master.log()
    assert "Traceback" not in master.log()


def test_ttin_stops_at_the_worker_cap(supervise_master) -> None:
    master = supervise_master("idle", "--workers", str(config.MAX_WORKERS))
    master.wait_ready(config.MAX_WORKERS, timeout=120)
    master.signal(signal.SIGTTIN)
    warning = f"SIGTTIN ignored: idle runs at most {config.MAX_WORKERS} workers"
    wait_until(lambda: warning in master.log(), 15, "the warning")
    master.signal(signal.SIGTTOU)  # the loop goes on: one fewer, then one more again
    wait_until(lambda: len(master.worker_pids()) == config.MAX_WORKERS - 1, 15, "one fewer")
    master.signal(signal.SIGTTIN)
    wait_until(lambda: len(master.worker_pids()) == config.MAX_WORKERS, 15, "one more")
    log = master.log()
    assert log.count(warning) == 1
    assert log.count("Started child") == config.MAX_WORKERS + 1
    master.signal(signal.SIGTERM)
    assert master.wait_exit(60) == 0
