"""A VM's serial console log: cleaning its text, the pattern to wait for, the last lines,
following it.

QEMU appends whatever the guest writes to ``logs/NAME.log``. Whether the awaited text has
appeared is not decided here: the console stamper (``pvmlab.observe.stamp``), the one reader of
the log as it grows, decides it and reports it (see ``pvmlab.vm.boot``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pvmlab.errors import ValidationError

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1bc")


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
