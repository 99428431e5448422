"""The real `supervise` command, run as a subprocess, given bad input.

Bad input must end in exit status 2 and exactly one line on stderr, ``supervise: error: ...``,
with nothing on stdout and no traceback. None of these cases may start a master that keeps
running: each run has a 30 s timeout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

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
    env.update(extra)
    return env


def supervise(
    args: Sequence[str],
    cwd: Path,
    env: dict[str, str] | None = None,
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
