"""What a Range request for a served file gets (RFC 9110, section 14), decided before aiohttp.

aiohttp's ``FileResponse`` sends the bytes (sendfile), but its reading of ``Range`` and
``If-Range`` differs from the RFC in three places this module corrects:

    Range: bytes=-0             aiohttp: 206 with the whole file. A suffix of length zero is
                                unsatisfiable: 416 with ``Content-Range: bytes */SIZE``.
    If-Range: "stale-etag"      aiohttp reads If-Range only as a date, so an entity tag (the
                                usual validator) never stops the range: 206 with bytes of a
                                file the client no longer has. A validator that does not
                                match means "send it all": 200 with the whole file.
    Range: bytes=0-1,5-9        aiohttp: 416. Several ranges may be answered with the whole
                                file (what most servers do): 200.

Otherwise a Range is ignored (200, whole file) when the RFC allows ignoring it: another unit,
a syntax error, a last position before the first, or a method other than GET. A valid single
range is handed to aiohttp rewritten in the one form it parses (``bytes=FIRST-LAST``,
``bytes=FIRST-``, ``bytes=-SUFFIX``), without the If-Range already evaluated here.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

# one byte-range-spec of the "bytes" unit: FIRST-[LAST] or -SUFFIX (RFC 9110, 14.1.1)
_SINGLE = re.compile(r"bytes[ \t]*=[ \t]*(\d*)-(\d*)[ \t]*", re.ASCII | re.IGNORECASE)


class Outcome(enum.Enum):
    WHOLE = "whole"  # 200 with the whole file (no Range, or one that is ignored)
    PART = "part"  # 206 with ``range`` (a normalised single range)
    UNSATISFIABLE = "unsatisfiable"  # 416 with Content-Range: bytes */SIZE


@dataclass(frozen=True)
class RangePlan:
    outcome: Outcome
    range: str | None = None  # the Range header aiohttp is given for PART


WHOLE = RangePlan(Outcome.WHOLE)
UNSATISFIABLE = RangePlan(Outcome.UNSATISFIABLE)


def plan(
    method: str,
    range_header: str | None,
    if_range: str | None,
    *,
    size: int,
    etag: str,
    last_modified: int,
) -> RangePlan:
    """What to answer a request for a file of ``size`` bytes whose response carries entity
    tag ``etag`` (unquoted) and Last-Modified ``last_modified`` (epoch seconds)."""
    if range_header is None or method != "GET":
        return WHOLE
    if if_range is not None and not if_range_matches(
        if_range, etag=etag, last_modified=last_modified
    ):
        return WHOLE
    match = _SINGLE.fullmatch(range_header.strip())
    if match is None:  # several ranges, another unit, or not a range at all
        return WHOLE
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return WHOLE
    if not first:  # a suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            return UNSATISFIABLE
        return RangePlan(Outcome.PART, f"bytes=-{suffix}")
    start = int(first)
    if last and int(last) < start:
        return WHOLE  # an invalid range-spec: the RFC lets the server ignore the header
    if start >= size:
        return UNSATISFIABLE
    return RangePlan(Outcome.PART, f"bytes={start}-{last}")


def if_range_matches(value: str, *, etag: str, last_modified: int) -> bool:
    """RFC 9110, 13.1.5: a strong entity tag equal to ours, or a date equal to the
    Last-Modified the response carries. A weak tag never matches."""
    value = value.strip()
    if value.startswith('W/'):
        return False
    if value.startswith('"'):
        return value == f'"{etag}"'
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return False
    return int(when.timestamp()) == last_modified
