"""The systemd unit files: `systemd-analyze verify` and the settings supervise relies on."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

TEMPLATE = Path(__file__).resolve().parents[2] / "systemd" / "supervise@.service"
INSTALLED_BINARY = "/usr/local/bin/supervise"
GRACEFUL_SHUTDOWN_TIMEOUT = 60  # supervise's default graceful_shutdown_timeout, in seconds


def service_settings(unit: Path) -> dict[str, list[str]]:
    """The [Service] section's settings, each key with its values in file order."""
    settings: dict[str, list[str]] = {}
    section = None
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
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


def verify(systemd_analyze: str, unit: Path) -> subprocess.CompletedProcess[str]:
    # --recursive-errors=no: fail on warnings about this unit only, not about the host's units
    # it pulls in (multi-user.target, ...). Without the option, systemd 252 reports unknown
    # keys and unparsable values but still exits 0.
    return subprocess.run(
        [systemd_analyze, "verify", "--recursive-errors=no", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "info", "SYSTEMD_LOG_COLOR": "0"},
    )


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
    assert "WatchdogSec" in settings
