"""Log lines on stderr and in log files, from a real process: stamped by supervise unless
stderr is the journal (JOURNAL_STREAM), then prefixed with the journal's priority; text or
one JSON object a line."""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from supervise import logs

ROOT = Path(__file__).resolve().parents[2]
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO \[master\] x: hi$")
UNSTAMPED = re.compile(r"^INFO \[master\] x: hi$")
LOG_ONE_LINE = "import logging; logging.getLogger('x').info('hi')"
# Text a handler or the network may put in a message: every control character, a line
# separator, lone surrogates (undecodable bytes of a file name), a forged record.
NASTY = "".join(map(chr, range(32))) + "\x7f\u2028\u2029 \udcff \ud800 é 😀 \n<0>ERROR forged"


def log_to(
    path: Path, code: str, journal_stream: str | None = None, log_format: str = "text"
) -> str:
    """Run `code` in a new process after logs.setup, its stderr the file `path`."""
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env["PYTHONPATH"] = str(ROOT)
    if journal_stream is not None:
        env["JOURNAL_STREAM"] = journal_stream
    script = f"from supervise import logs\nlogs.setup('DEBUG', None, {log_format!r})\n{code}"
    with path.open("a") as stderr:
        subprocess.run([sys.executable, "-c", script], stderr=stderr, env=env, check=True)
    with path.open(newline="") as written:  # a carriage return is no line break
        return written.read().rstrip("\n")


def identity(path: Path) -> str:
    path.touch()
    info = path.stat()
    return f"{info.st_dev}:{info.st_ino}"


def json_lines(text: str) -> list[dict]:
    """Every line one JSON object, ASCII only, with no lone surrogate a strict parser refuses."""
    entries = []
    for line in text.split("\n"):
        assert line.isascii(), line
        entry = json.loads(line)
        json.dumps(entry, ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate
        entries.append(entry)
    return entries


def test_lines_are_stamped_without_the_journal(tmp_path: Path) -> None:
    assert STAMP.match(log_to(tmp_path / "err", LOG_ONE_LINE))


def test_the_journal_stamps_lines_itself_and_gets_their_priority(tmp_path: Path) -> None:
    stderr = tmp_path / "err"
    line = log_to(stderr, LOG_ONE_LINE, identity(stderr))
    assert line.startswith("<6>")
    assert UNSTAMPED.match(line.removeprefix("<6>"))


def test_a_stderr_redirected_away_from_the_journal_is_stamped(tmp_path: Path) -> None:
    """JOURNAL_STREAM inherited by a process whose stderr goes elsewhere names another file."""
    assert STAMP.match(log_to(tmp_path / "err", LOG_ONE_LINE, identity(tmp_path / "journal")))


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        *[(logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6)],
        *[(logging.DEBUG, 7), (logging.ERROR + 5, 3), (logging.INFO - 1, 7), (100, 2)],
    ],
)
def test_journal_priorities_follow_sd_daemon(level: int, priority: int) -> None:
    assert logs.journal_priority(level) == priority


def test_every_line_of_a_record_in_the_journal_has_its_priority(tmp_path: Path) -> None:
    """journald splits at newlines and NULs, and cuts lines over 48K: each piece is prefixed,
    so a traceback's lines are all errors and a message cannot forge a priority."""
    stderr = tmp_path / "err"
    code = textwrap.dedent(f"""
        import logging
        log = logging.getLogger("x")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed: %s", {NASTY!r})
        log.warning("%s", "y" * 20000)
        log.debug("done")
        """)
    lines = log_to(stderr, code, identity(stderr)).split("\n")
    assert lines[:2] == ["<3>ERROR [master] x: failed: ", "<3>  " + "".join(map(chr, range(1, 10)))]
    error_lines = lines[: lines.index("<3>  ValueError: boom") + 1]
    assert all(line.startswith("<3>  ") for line in error_lines[1:]), error_lines
    assert "<3>  <0>ERROR forged" in error_lines
    assert "<3>  Traceback (most recent call last):" in error_lines
    long_lines = lines[len(error_lines) : -1]
    assert [line[:5] for line in long_lines] == ["<4>WA"] + ["<4>  "] * 4
    pieces = [long_lines[0][3:], *(line[5:] for line in long_lines[1:])]
    assert [len(piece) for piece in pieces[:4]] == [logs.JOURNAL_TEXT_PIECE] * 4
    assert "".join(pieces) == "WARNING [master] x: " + "y" * 20000
    assert lines[-1] == "<7>DEBUG [master] x: done"


def test_json_lines_name_the_time_level_process_and_logger(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import logging
        logs.set_role("worker 2/1")
        logging.getLogger("supervise.worker").warning("slow: %s", "echo")
        try:
            {}["missing"]
        except KeyError:
            logging.getLogger("x").exception("failed")
        logging.getLogger("x").info("here", stack_info=True)
        """)
    before = datetime.datetime.now(datetime.UTC)
    warning, error, info = json_lines(log_to(tmp_path / "err", code, log_format="json"))
    after = datetime.datetime.now(datetime.UTC)
    pid = warning["pid"]
    assert warning == {
        "time": warning["time"],
        "level": "WARNING",
        "role": "worker 2/1",
        "pid": pid,
        "logger": "supervise.worker",
        "message": "slow: echo",
    }
    stamp = datetime.datetime.fromisoformat(warning["time"])
    assert stamp.utcoffset() == datetime.timedelta(0) and warning["time"].endswith("+00:00")
    assert before - datetime.timedelta(seconds=1) <= stamp <= after
    assert error["message"] == "failed" and error["level"] == "ERROR" and error["pid"] == pid
    assert error["traceback"].startswith("Traceback (most recent call last):\n")
    assert error["traceback"].endswith("KeyError: 'missing'")
    assert info["stack"].startswith("Stack (most recent call last):\n") and "traceback" not in info


def test_any_text_gives_one_json_line(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import logging
        log = logging.getLogger({NASTY!r})
        log.warning("%s", {NASTY!r})
        log.error("%s %s", "too few arguments")
        log.info("%s", "z" * 1_000_000)
        try:
            raise RuntimeError({NASTY!r})
        except RuntimeError:
            log.exception("")
        """)
    nasty, misformatted, long, failed = json_lines(
        log_to(tmp_path / "err", code, log_format="json")
    )
    printable = NASTY.replace("\udcff", "\\udcff").replace("\ud800", "\\ud800")
    assert nasty["message"] == nasty["logger"] == printable
    assert misformatted["message"] == (
        "'%s %s' % ('too few arguments',) (cannot format: TypeError)"
    )
    assert long["message"] == "z" * 1_000_000
    assert failed["traceback"].endswith(f"RuntimeError: {printable}")


def test_a_json_line_in_the_journal_fits_its_line_limit(tmp_path: Path) -> None:
    stderr = tmp_path / "err"
    code = textwrap.dedent("""
        import logging
        log = logging.getLogger("x")
        log.warning("short")
        try:
            raise ValueError("\\0" * 30000)
        except ValueError:
            log.exception("%s", "\\x01" * 100000)
        """)
    lines = log_to(stderr, code, identity(stderr), log_format="json").split("\n")
    assert [line[:3] for line in lines] == ["<4>", "<3>"]
    short, cut = json_lines("\n".join(line[3:] for line in lines))
    assert short["message"] == "short" and "time" in short
    assert len(lines[1]) <= logs.JOURNAL_LINE_MAX
    assert len(lines[1]) > logs.JOURNAL_LINE_MAX * 0.8  # cut to fit, not far below
    assert cut["message"].endswith(logs.CUT) and set(cut["message"][: -len(logs.CUT)]) == {"\x01"}
    assert cut["traceback"].startswith("Traceback (most recent call last):\n")


def test_a_threads_uncaught_exception_is_one_record(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import threading
        def fail():
            raise OSError("lost")
        thread = threading.Thread(target=fail, name="poller")
        thread.start()
        thread.join()
        """)
    (entry,) = json_lines(log_to(tmp_path / "err", code, log_format="json"))
    assert entry["message"] == "uncaught exception in thread poller"
    assert entry["traceback"].endswith("OSError: lost")


def test_a_log_file_gets_json_too_and_keeps_it_when_reopened(tmp_path: Path) -> None:
    log_file = tmp_path / "supervise.log"
    code = textwrap.dedent(f"""
        import logging, os
        logs.setup("INFO", {str(log_file)!r}, "json")
        logging.getLogger("x").info("before")
        os.rename({str(log_file)!r}, {str(log_file)!r} + ".1")
        logs.reopen()
        logging.getLogger("x").info("after")
        """)
    assert log_to(tmp_path / "err", code) == ""
    (before,) = json_lines(Path(f"{log_file}.1").read_text().rstrip("\n"))
    (after,) = json_lines(log_file.read_text().rstrip("\n"))
    assert (before["message"], after["message"]) == ("before", "after")


def test_a_change_of_format_applies_to_the_open_handlers(tmp_path: Path) -> None:
    stderr = tmp_path / "err"
    code = textwrap.dedent("""
        import logging
        log = logging.getLogger("x")
        log.info("text")
        logs.change("WARNING", "json")
        log.info("hidden")
        log.warning("json")
        logs.change("INFO", "text")
        log.info("text again")
        """)
    text, as_json, text_again = log_to(stderr, code, identity(stderr)).split("\n")
    assert text == "<6>INFO [master] x: text"
    assert json.loads(as_json.removeprefix("<4>"))["message"] == "json"
    assert text_again == "<6>INFO [master] x: text again"
