"""Watching a VM's serial console log: wait for text, show the last lines, follow it.

QEMU appends whatever the guest writes to ``logs/NAME.log``. Waiting reads that file
incrementally (it may not exist yet, it may be truncated by a restart), matches a regular
expression against the text seen so far (a match may span reads, not lines) and stops early
when QEMU has exited, so a dead VM is reported at once rather than at the timeout.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pvmlab.errors import ValidationError

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1bc")
_KEEP = 64 * 1024  # characters of history kept for matching across reads


def clean(text: str) -> str:
    """Console text without terminal escapes and carriage returns."""
    return _ANSI.sub("", text).replace("\r", "")


def compile_pattern(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise ValidationError(
            f"--wait-for {text!r} is not a valid regular expression: {exc}",
            "escape special characters (e.g. '\\.' for a dot) or give plain text",
        ) from None


@dataclass(frozen=True)
class WaitResult:
    outcome: Literal["matched", "timeout", "exited"]
    elapsed: float
    line: str = ""  # the console line holding the match


def _line_around(text: str, start: int, end: int) -> str:
    left = text.rfind("\n", 0, start) + 1
    right = text.find("\n", end)
    return text[left : right if right >= 0 else len(text)].strip()


def wait_for(
    log: Path,
    pattern: re.Pattern[str],
    *,
    timeout: float,
    alive: Callable[[], bool] | None = None,
    poll: float = 0.2,
    clock: Callable[[], float] = time.monotonic,
) -> WaitResult:
    """Wait until ``pattern`` shows up in ``log``, the timeout passes or ``alive()`` is False."""
    start = clock()
    offset = 0
    seen = ""
    while True:
        try:
            with log.open("rb") as fh:
                size = fh.seek(0, 2)
                if size < offset:  # truncated (restarted): read again from the start
                    offset, seen = 0, ""
                fh.seek(offset)
                chunk = fh.read()
                offset += len(chunk)
        except FileNotFoundError:
            chunk = b""
        if chunk:
            seen = (seen + clean(chunk.decode(errors="replace")))[-_KEEP:]
            m = pattern.search(seen)
            if m:
                return WaitResult("matched", clock() - start, _line_around(seen, *m.span()))
        elapsed = clock() - start
        if alive is not None and not alive():
            # One last read: QEMU may have written the line just before it exited.
            try:
                with log.open("rb") as fh:
                    fh.seek(offset)
                    rest = fh.read()
            except FileNotFoundError:
                rest = b""
            seen = (seen + clean(rest.decode(errors="replace")))[-_KEEP:]
            m = pattern.search(seen)
            if m:
                return WaitResult("matched", elapsed, _line_around(seen, *m.span()))
            return WaitResult("exited", elapsed)
        if elapsed >= timeout:
            return WaitResult("timeout", elapsed)
        time.sleep(poll)


def tail(log: Path, lines: int = 20) -> list[str]:
    """The last ``lines`` lines of the console log (escapes removed)."""
    try:
        with log.open("rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(0, size - 256 * 1024))
            data = fh.read()
    except FileNotFoundError:
        return []
    text = clean(data.decode(errors="replace"))
    return [ln for ln in text.splitlines() if ln.strip()][-lines:]


def follow(
    log: Path, *, poll: float = 0.3, stop: Callable[[], bool] | None = None
) -> Iterator[str]:
    """Yield the log's text as it grows, starting with what is there (like ``tail -f``)."""
    offset = 0
    while True:
        try:
            with log.open("rb") as fh:
                if fh.seek(0, 2) < offset:
                    offset = 0
                fh.seek(offset)
                chunk = fh.read()
                offset += len(chunk)
        except FileNotFoundError:
            chunk = b""
        if chunk:
            yield chunk.decode(errors="replace")
        elif stop is not None and stop():
            return
        time.sleep(poll)
