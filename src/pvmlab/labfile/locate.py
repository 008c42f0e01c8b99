"""Where a key of a TOML document is written: its line, for errors that name the line.

``tomllib`` returns plain values without positions, so a small scanner walks the text once and
records, for every table header and every ``key = value`` line, the path it defines
(``("machines", 2, "ready", "timeout")``). Values that span lines (multi-line strings, arrays)
are skipped as a whole; an inline table is located by its key. It only has to be right for
documents ``tomllib`` has already accepted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

Path = tuple[str | int, ...]

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"|\'[^\']*\''
_KEY = rf"(?:{_BARE}|{_QUOTED})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_ARRAY_TABLE = re.compile(rf"^\s*\[\[\s*({_DOTTED})\s*\]\]")
_TABLE = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]")
_ASSIGN = re.compile(rf"^\s*({_DOTTED})\s*=\s*(.*)$")
_PART = re.compile(rf"\s*({_KEY})\s*\.?")


def _parts(dotted: str) -> list[str]:
    out = []
    for m in _PART.finditer(dotted):
        key = m.group(1)
        out.append(key[1:-1] if key[:1] in "\"'" else key)
    return out


def _opens(value: str) -> tuple[str | None, int]:
    """What a value leaves open at the end of its line: a multi-line string, or array depth."""
    depth = 0
    i = 0
    while i < len(value):
        c = value[i]
        if value.startswith('"""', i) or value.startswith("'''", i):
            quote = value[i : i + 3]
            end = value.find(quote, i + 3)
            if end < 0:
                return quote, depth
            i = end + 3
            continue
        if c in "\"'":
            end = i + 1
            while end < len(value) and value[end] != c:
                end += 2 if c == '"' and value[end] == "\\" else 1
            i = end + 1
            continue
        if c == "#":
            break
        if c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        i += 1
    return None, depth


def key_lines(text: str) -> dict[Path, int]:
    """Every path the document defines, with the (1-based) line that defines it."""
    lines: dict[Path, int] = {}
    counts: dict[Path, int] = {}
    table: Path = ()
    open_string: str | None = None
    depth = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if open_string is not None:
            if open_string in line:
                rest = line.split(open_string, 1)[1]
                open_string, depth = _opens(rest)
            continue
        if depth > 0:
            more_string, change = _opens(line)
            depth += change
            open_string = more_string
            continue
        if m := _ARRAY_TABLE.match(line):
            parts = _parts(m.group(1))
            base = (*_resolve(parts[:-1], counts), parts[-1])
            index = counts.get(base, 0)
            counts[base] = index + 1
            table = (*base, index)
            lines.setdefault(base, number)
            lines[table] = number
            continue
        if m := _TABLE.match(line):
            table = _resolve(_parts(m.group(1)), counts)
            lines.setdefault(table, number)
            continue
        if m := _ASSIGN.match(line):
            path = (*table, *_parts(m.group(1)))
            lines.setdefault(path, number)
            open_string, depth = _opens(m.group(2))
    return lines


def _resolve(parts: Sequence[str], counts: dict[Path, int]) -> Path:
    """A header's dotted name as a path: a part naming an array of tables means its last element."""
    path: Path = ()
    for part in parts:
        path = (*path, part)
        if path in counts:
            path = (*path, counts[path] - 1)
    return path


def line_of(lines: dict[Path, int], path: Sequence[str | int]) -> int | None:
    """The line of ``path``, else of its nearest enclosing path that is written in the file."""
    probe = tuple(path)
    while probe:
        if probe in lines:
            return lines[probe]
        probe = probe[:-1]
    return None
