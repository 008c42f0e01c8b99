"""A console log that another writer fills (a real thread writing a file): the stamper reports
the awaited line and QEMU's exit; tail, escapes and follow."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pvmlab.errors import ValidationError
from pvmlab.observe import stamp
from pvmlab.observe.console import clean, compile_pattern, follow, tail


def writer(path: Path, chunks: list[bytes], delay: float = 0.05) -> threading.Thread:
    def run() -> None:
        for c in chunks:
            time.sleep(delay)
            with path.open("ab") as fh:
                fh.write(c)

    t = threading.Thread(target=run)
    t.start()
    return t


def watch_while(log: Path, pattern: str, write: Callable[[], None]) -> list[dict[str, Any]]:
    """The stamper's events while ``write`` fills ``log`` from another thread and a real
    process (the stand-in for QEMU) lives until it is done."""
    events: list[dict[str, Any]] = []
    with subprocess.Popen(["sleep", "600"]) as proc:
        t = threading.Thread(target=write)
        t.start()
        stamper = threading.Thread(
            target=stamp.watch,
            args=(log, stamp.stamps_path(log), proc.pid, time.time()),
            kwargs={"poll": 0.01, "ready": re.compile(pattern), "on_event": events.append},
        )
        stamper.start()
        t.join()
        time.sleep(0.1)  # let the stamper see the last write while "QEMU" still runs
        proc.kill()
        proc.wait()
        stamper.join(30)
    return events


def appender(log: Path, chunks: list[bytes]) -> Callable[[], None]:
    def run() -> None:
        for c in chunks:
            time.sleep(0.05)
            with log.open("ab") as fh:
                fh.write(c)

    return run


def test_match_across_writes_and_missing_file_at_first(tmp_path: Path) -> None:
    log = tmp_path / "vm.log"
    chunks = [b"booting...\r\nPVMLAB-BO", b"OT-OK console=ttyS0\r\n"]
    events = watch_while(log, "PVMLAB-BOOT-OK", appender(log, chunks))
    assert [e["event"] for e in events] == ["ready", "exit"]
    assert events[0]["line"] == "PVMLAB-BOOT-OK console=ttyS0"


def test_no_match_ends_with_the_exit(tmp_path: Path) -> None:
    log = tmp_path / "vm.log"
    events = watch_while(log, "login:", appender(log, [b"kernel panic\n"]))
    assert [e["event"] for e in events] == ["exit"]


def test_truncated_log_is_read_again(tmp_path: Path) -> None:
    log = tmp_path / "vm.log"
    log.write_text("a" * 1000 + "\n")

    def restart() -> None:
        time.sleep(0.2)
        log.write_text("ready\n")  # restarted: a shorter file with new text

    events = watch_while(log, "ready", restart)
    assert events[0]["event"] == "ready" and events[0]["line"] == "ready"


def test_tail_and_escapes(tmp_path: Path) -> None:
    log = tmp_path / "vm.log"
    log.write_bytes(b"".join(f"\x1b[0mline {i}\r\n".encode() for i in range(50)))
    assert tail(log, 3) == ["line 47", "line 48", "line 49"]
    assert tail(tmp_path / "missing.log") == []
    assert clean("\x1b[2J\x1b[01;01Hhi\r\n") == "hi\n"


def test_bad_regex_is_a_user_error() -> None:
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        compile_pattern("login:(")


def test_follow_yields_existing_then_new_text(tmp_path: Path) -> None:
    log = tmp_path / "vm.log"
    log.write_text("first\n")
    got: list[str] = []
    t = writer(log, [b"second\n"], delay=0.1)
    for chunk in follow(log, poll=0.01, stop=lambda: "second" in "".join(got)):
        got.append(chunk)
    t.join()
    assert "".join(got) == "first\nsecond\n"
