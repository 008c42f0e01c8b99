"""`provisioner logs -f`: following a log prints whole lines and never loses or repeats bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvmlab.cli.provisioner import _follow


def test_follow_prints_whole_lines_and_keeps_its_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "dnsmasq.log"
    log.write_bytes(b"first \xff line\n\npart")  # an invalid UTF-8 byte and an empty line
    offset = _follow(log, 0, "dnsmasq: ")
    assert offset == len(b"first \xff line\n\n")
    assert capsys.readouterr().out == "dnsmasq: first \ufffd line\ndnsmasq: \n"
    assert _follow(log, offset, "dnsmasq: ") == offset  # no newline yet: nothing printed
    assert capsys.readouterr().out == ""
    with log.open("ab") as fh:
        fh.write(b"ial\nnext\n")
    offset = _follow(log, offset, "")
    assert capsys.readouterr().out == "partial\nnext\n"
    assert offset == log.stat().st_size


def test_follow_starts_over_when_the_log_shrinks_or_goes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "http.log"
    log.write_bytes(b"a long first line\n")
    offset = _follow(log, 0, "")
    log.write_bytes(b"new\n")  # replaced by a shorter file
    assert _follow(log, offset, "") == 4
    assert capsys.readouterr().out == "a long first line\nnew\n"
    log.unlink()
    assert _follow(log, 4, "") == 0
