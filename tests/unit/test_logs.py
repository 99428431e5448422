"""Log lines on stderr: stamped by supervise, unless stderr is the journal (JOURNAL_STREAM)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO \[master\] x: hi$")
UNSTAMPED = re.compile(r"^INFO \[master\] x: hi$")
LOG_ONE_LINE = "import logging; from supervise import logs; logs.setup('INFO', None); " \
    "logging.getLogger('x').info('hi')"  # fmt: skip


def log_to(path: Path, journal_stream: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env["PYTHONPATH"] = str(ROOT)
    if journal_stream is not None:
        env["JOURNAL_STREAM"] = journal_stream
    with path.open("w") as stderr:
        subprocess.run([sys.executable, "-c", LOG_ONE_LINE], stderr=stderr, env=env, check=True)
    return path.read_text().rstrip("\n")


def identity(path: Path) -> str:
    info = path.stat()
    return f"{info.st_dev}:{info.st_ino}"


def test_lines_are_stamped_without_the_journal(tmp_path: Path) -> None:
    assert STAMP.match(log_to(tmp_path / "err", None))


def test_the_journal_stamps_lines_itself(tmp_path: Path) -> None:
    stderr = tmp_path / "err"
    stderr.touch()
    assert UNSTAMPED.match(log_to(stderr, identity(stderr)))


def test_a_stderr_redirected_away_from_the_journal_is_stamped(tmp_path: Path) -> None:
    """JOURNAL_STREAM inherited by a process whose stderr goes elsewhere names another file."""
    journal = tmp_path / "journal"
    journal.touch()
    assert STAMP.match(log_to(tmp_path / "err", identity(journal)))
