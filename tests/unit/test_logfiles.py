"""Bounded, rotated logs and rate-limited lines (pvmlab.stack.logfiles)."""

from __future__ import annotations

import asyncio
import errno
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pvmlab.errors import ValidationError
from pvmlab.stack import logfiles
from pvmlab.stack.logfiles import BoundedFileHandler, LogBounds, Notes


def test_a_log_never_takes_more_than_its_bound(tmp_path: Path) -> None:
    bounds = LogBounds(max_bytes=4096, backups=2)
    logger = logging.Logger("bounded-test")
    handler = BoundedFileHandler(tmp_path / "http.log", bounds)
    logger.addHandler(handler)
    for i in range(5000):  # ~300 KB written
        logger.info("request %05d %s", i, "x" * 40)
    handler.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["http.log", "http.log.1", "http.log.2"]
    assert all((tmp_path / f).stat().st_size <= 4096 for f in files)
    assert (tmp_path / "http.log").read_text().splitlines()[-1].startswith("request 04999 ")


def test_stderr_follows_the_current_file_across_rotations(tmp_path: Path) -> None:
    """The supervisor's stderr is its log: after a rotation, stray output (a crash, a warning)
    must land in the current file, not in a rotated or deleted one."""
    log = tmp_path / "supervisor.log"
    child = f"""
import logging, os, sys
from pathlib import Path
from pvmlab.stack import logfiles
logfiles.log_to(Path({str(log)!r}), logfiles.LogBounds(max_bytes=4096, backups=1))
for i in range(300):
    logging.getLogger("t").info("line %d %s", i, "y" * 30)
sys.stderr.write("stray stderr after rotations\\n")
sys.stderr.flush()
os.write(2, b"raw fd 2 write\\n")
"""
    subprocess.run([sys.executable, "-c", child], check=True, timeout=60)
    current = log.read_text()
    assert "stray stderr after rotations" in current
    assert "raw fd 2 write" in current
    assert sorted(p.name for p in tmp_path.iterdir()) == ["supervisor.log", "supervisor.log.1"]


def test_bounds_from_the_environment() -> None:
    assert LogBounds.from_env({}) == LogBounds(logfiles.MAX_BYTES, logfiles.BACKUPS)
    env = {"PVMLAB_LOG_MAX_BYTES": "65536", "PVMLAB_LOG_BACKUPS": "5"}
    assert LogBounds.from_env(env) == LogBounds(65536, 5)
    assert LogBounds(65536, 5).total == 6 * 65536
    for bad in ({"PVMLAB_LOG_MAX_BYTES": "10"}, {"PVMLAB_LOG_BACKUPS": "0"},
                {"PVMLAB_LOG_MAX_BYTES": "lots"}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            LogBounds.from_env(bad)


def test_notes_say_a_repeated_line_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    notes = Notes(logging.getLogger("notes-test"), interval=0.3)
    said = [notes("k", logging.WARNING, "over the cap of %d", 4) for _ in range(50)]
    assert said == [True] + [False] * 49
    assert notes("other", logging.WARNING, "another kind") is True
    time.sleep(0.35)
    assert notes("k", logging.WARNING, "over the cap of %d", 4) is True
    assert [r.getMessage() for r in caplog.records] == [
        "over the cap of 4",
        "another kind",
        "over the cap of 4 (49 more like this since the last such line)",
    ]


def test_loop_os_errors_are_one_line_without_traceback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    loop = asyncio.new_event_loop()
    try:
        logfiles.quiet_loop_errors(loop, Notes(logging.getLogger("loop-test")))
        for _ in range(100):  # what asyncio reports when accept() finds no descriptor left
            loop.call_exception_handler({
                "message": "socket.accept() out of system resource",
                "exception": OSError(errno.EMFILE, "Too many open files"),
            })
    finally:
        loop.close()
    assert [r.getMessage() for r in caplog.records] == [
        "socket.accept() out of system resource: Too many open files"
    ]
    assert all(r.exc_info is None for r in caplog.records)


# --- logs written by another process (dnsmasq.log): rotate, then read across the rotation ------


def test_rotate_shifts_the_files_and_drops_the_oldest(tmp_path: Path) -> None:
    log = tmp_path / "dnsmasq.log"
    assert not logfiles.rotate(log, backups=2)  # nothing to rotate yet
    for text in ("first\n", "second\n", "third\n"):
        log.write_text(text)
        assert logfiles.rotate(log, backups=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dnsmasq.log.1", "dnsmasq.log.2"]
    assert logfiles.backup(log).read_text() == "third\n"
    assert logfiles.backup(log, 2).read_text() == "second\n"


def test_read_lines_puts_the_rotated_file_first(tmp_path: Path) -> None:
    log = tmp_path / "dnsmasq.log"
    assert logfiles.read_lines(log) == []
    log.write_text("a\nb\n")
    assert logfiles.read_lines(log) == ["a", "b"]
    logfiles.rotate(log, backups=3)
    assert logfiles.read_lines(log) == ["a", "b"]  # rotated, not yet reopened by its writer
    log.write_text("c\n")
    assert logfiles.read_lines(log) == ["a", "b", "c"]
    logfiles.rotate(log, backups=3)
    log.write_text("d\n")
    assert logfiles.read_lines(log) == ["c", "d"]  # only the newest rotated file
