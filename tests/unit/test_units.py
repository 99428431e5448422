"""The systemd unit files: `systemd-analyze verify`, `systemd-analyze security`, the sysusers
snippet, and the settings supervise relies on. tests/systemd/ runs them under a real systemd."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
TEMPLATE = SYSTEMD_DIR / "supervise@.service"
NOTIFY_RELOAD = SYSTEMD_DIR / "notify-reload.conf"
SYSUSERS = SYSTEMD_DIR / "sysusers.conf"
INSTALLED_BINARY = "/opt/supervise/bin/supervise"
MAX_EXPOSURE = 2.0
GRACEFUL_SHUTDOWN_TIMEOUT = 60  # supervise's default graceful_shutdown_timeout, in seconds


def service_settings(*files: Path) -> dict[str, list[str]]:
    """The [Service] sections' settings, each key with its values in file order (an empty
    value resets the list, as systemd reads it)."""
    settings: dict[str, list[str]] = {}
    section = None
    lines = [line for unit in files for line in unit.read_text().splitlines()]
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            values = settings.setdefault(key.strip(), [])
            if value.strip():
                values.append(value.strip())
            else:
                values.clear()
    return settings


@pytest.fixture
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    if not os.access(path, os.X_OK):
        pytest.skip("systemd-analyze is not installed; cannot verify the unit files")
    return path


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    """A copy of the template whose ExecStart= names a stub, since verify insists that the
    binary exists and supervise need not be installed at /usr/local/bin."""
    stub = tmp_path / "supervise"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = TEMPLATE.read_text()
    exec_start = f"ExecStart={INSTALLED_BINARY} "
    assert text.count(exec_start) == 1
    (tmp_path / TEMPLATE.name).write_text(text.replace(exec_start, f"ExecStart={stub} "))
    return tmp_path


def analyze(systemd_analyze: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "info", "SYSTEMD_LOG_COLOR": "0"},
    )


def verify(systemd_analyze: str, unit: Path) -> subprocess.CompletedProcess[str]:
    # --recursive-errors=no: fail on warnings about this unit only, not about the host's units
    # it pulls in (multi-user.target, ...). Without the option, systemd 252 reports unknown
    # keys and unparsable values but still exits 0.
    return analyze(systemd_analyze, "verify", "--recursive-errors=no", "--man=no", str(unit))


def exposure(systemd_analyze: str, unit: Path) -> float:
    """The overall exposure `systemd-analyze security --offline` gives the unit file (0 to
    10, lower is safer)."""
    result = analyze(systemd_analyze, "security", "--offline=yes", "--no-pager", str(unit))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match[1])


def install_notify_reload(unit_dir: Path) -> Path:
    drop_ins = unit_dir / f"{TEMPLATE.name}.d"
    drop_ins.mkdir()
    return Path(shutil.copy(NOTIFY_RELOAD, drop_ins))


@pytest.mark.parametrize("name", ["supervise@.service", "supervise@nova-conductor.service"])
def test_systemd_analyze_verify(systemd_analyze: str, unit_dir: Path, name: str) -> None:
    result = verify(systemd_analyze, unit_dir / name)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert [line for line in output.splitlines() if "supervise@" in line] == []


def test_verify_catches_a_broken_unit(systemd_analyze: str, unit_dir: Path) -> None:
    """Guards the test above: this systemd-analyze does report our unit's mistakes."""
    unit = unit_dir / TEMPLATE.name
    unit.write_text(unit.read_text().replace("KillMode=mixed", "KillMode=mixed\nKilMode=mixed"))
    result = verify(systemd_analyze, unit_dir / "supervise@nova-conductor.service")
    assert result.returncode != 0
    assert "KilMode" in result.stdout + result.stderr


def test_the_notify_reload_drop_in_is_valid_but_for_what_252_does_not_know(
    systemd_analyze: str, unit_dir: Path
) -> None:
    """systemd 252 is all this machine has: it can check the drop-in's section, keys and the
    emptied ExecReload=, but not Type=notify-reload itself (253), which it reports and
    ignores. The drop-in is run for real only where systemd is 253 or later."""
    drop_in = install_notify_reload(unit_dir)
    result = verify(systemd_analyze, unit_dir / "supervise@nova-conductor.service")
    complaints = [line for line in result.stderr.splitlines() if "supervise@" in line]
    assert complaints == [f"{drop_in}:6: Failed to parse service type, ignoring: notify-reload"]
    drop_in.write_text(drop_in.read_text().replace("Type=notify-reload", "Type=notify"))
    result = verify(systemd_analyze, unit_dir / "supervise@nova-conductor.service")
    assert result.returncode == 0, result.stdout + result.stderr
    # Type= takes the last value; an empty ExecReload= removes the template's kill -HUP.
    assert service_settings(NOTIFY_RELOAD) == {"Type": ["notify-reload"], "ExecReload": []}
    assert service_settings(TEMPLATE, NOTIFY_RELOAD)["ExecReload"] == []


@pytest.mark.parametrize("variant", ["notify", "notify-reload"])
def test_security_exposure_is_at_most_2(systemd_analyze: str, unit_dir: Path, variant: str) -> None:
    if variant == "notify-reload":
        install_notify_reload(unit_dir)
    assert exposure(systemd_analyze, unit_dir / "supervise@nova-conductor.service") <= MAX_EXPOSURE


def test_security_exposure_tells_a_weaker_unit(systemd_analyze: str, unit_dir: Path) -> None:
    """Guards the test above: without the sandbox the same unit rates far worse."""
    unit = unit_dir / TEMPLATE.name
    text = unit.read_text()
    unit.write_text(text[: text.index("# The sandbox")] + text[text.index("[Install]") :])
    assert exposure(systemd_analyze, unit_dir / "supervise@nova-conductor.service") > 5


def test_sysusers_snippet_creates_a_system_user_without_a_login(tmp_path: Path) -> None:
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is None:
        pytest.skip("systemd-sysusers is not installed")
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        [sysusers, f"--root={tmp_path}", str(SYSUSERS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    (user,) = (tmp_path / "etc" / "passwd").read_text().splitlines()
    name, _, uid, gid, _, home, shell = user.split(":")
    assert (name, home, shell) == ("supervise", "/var/lib/supervise", "/usr/sbin/nologin")
    assert 0 < int(uid) < 1000 and uid == gid  # a system user with its own group
    settings = service_settings(TEMPLATE)
    assert settings["User"] == settings["Group"] == ["supervise"]


def test_stop_timeout_exceeds_graceful_shutdown_timeout() -> None:
    (timeout,) = service_settings(TEMPLATE)["TimeoutStopSec"]
    match = re.fullmatch(r"(\d+)(?:s|sec)?", timeout)
    assert match, f"TimeoutStopSec={timeout}: write it as plain seconds"
    assert int(match[1]) > GRACEFUL_SHUTDOWN_TIMEOUT


def test_settings_the_master_relies_on() -> None:
    settings = service_settings(TEMPLATE)
    assert settings["Type"] == ["notify"]
    assert settings["NotifyAccess"] == ["main"]
    assert settings["KillMode"] == ["mixed"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["RestartPreventExitStatus"] == ["2"]
    assert "WatchdogSec" in settings
    assert settings["ExecStart"] == [
        f"{INSTALLED_BINARY} run --config-file /etc/supervise/%i.conf "
        "--state-dir ${STATE_DIRECTORY} %i"
    ]
    assert settings["StateDirectoryMode"] == ["0700"]
    assert settings["UMask"] == ["0077"]
