"""The process's resident memory, as the HTTP server reports it after a flood."""

from __future__ import annotations

import os
from pathlib import Path


def rss_bytes() -> int:
    """Resident set size of this process (0 where /proc is missing)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")
