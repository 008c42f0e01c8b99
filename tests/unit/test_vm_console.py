"""Waiting for text on a console log that another writer fills (a real thread writing a file)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from pvmlab.errors import ValidationError
from pvmlab.observe.console import clean, compile_pattern, follow, tail, wait_for


def writer(path: Path, chunks: list[bytes], delay: float = 0.05) -> threading.Thread:
    def run() -> None:
        for c in chunks:
            time.sleep(delay)
            with path.open("ab") as fh:
                fh.write(c)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_match_across_writes_and_missing_file_at_first(tmp_path: Path) -> None:
    log = tmp_path / "vm.log"
    t = writer(log, [b"booting...\r\nPVMLAB-BO", b"OT-OK console=ttyS0\r\n"])
    result = wait_for(log, re.compile("PVMLAB-BOOT-OK"), timeout=30, poll=0.01)
    t.join()
    assert result.outcome == "matched"
    assert result.line == "PVMLAB-BOOT-OK console=ttyS0"


def test_timeout(tmp_path: Path) -> None:
    log = tmp_path / "vm.log"
    log.write_text("nothing useful\n")
    result = wait_for(log, re.compile("login:"), timeout=0.2, poll=0.01)
    assert result.outcome == "timeout"


def test_exit_is_noticed_before_timeout_and_last_words_count(tmp_path: Path) -> None:
    log = tmp_path / "vm.log"
    log.write_text("kernel panic\n")
    assert wait_for(log, re.compile("login:"), timeout=60, alive=lambda: False).outcome == "exited"
    log.write_text("x\nhost login: \n")
    r = wait_for(log, re.compile("login:"), timeout=60, alive=lambda: False)
    assert r.outcome == "matched"


def test_truncated_log_is_read_again(tmp_path: Path) -> None:
    log = tmp_path / "vm.log"
    log.write_text("a" * 1000)
    calls = {"n": 0}

    def alive() -> bool:
        calls["n"] += 1
        if calls["n"] == 2:
            log.write_text("ready\n")  # restarted: shorter file with new text
        return True

    r = wait_for(log, re.compile("ready"), timeout=30, alive=alive, poll=0.01)
    assert r.outcome == "matched"


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
