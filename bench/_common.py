"""Helpers shared by the benchmarks.

The lab network and the client namespaces come from the test helpers in ``tests/netlab.py``
(a lab started with the real ``pvmlab provisioner`` CLI in a temporary home; client namespaces
joined to its bridge by veth; busybox clients); tables and JSON from ``pvmlab.cli.common``.
Programs run through ``pvmlab.spawn``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
if str(TESTS) not in sys.path:  # netlab (and the conftest it uses) live in tests/
    sys.path.insert(0, str(TESTS))

import netlab  # noqa: E402
from pvmlab.cli.common import emit_json, table  # noqa: E402

__all__ = [
    "REPO",
    "cpu_seconds",
    "emit_json",
    "interruptible",
    "machine",
    "netlab",
    "one_line_errors",
    "process_tree",
    "require_programs",
    "require_root",
    "rss_kib",
    "table",
    "workdir",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("this benchmark creates network namespaces: run it as root "
                 "(sudo .venv/bin/python -m bench.…)")


def require_programs(*names: str) -> None:
    """Stop with a one-line message when a program the benchmark drives is not installed."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        sys.exit(f"missing program(s): {', '.join(missing)} "
                 "(hint: scripts/install-system-deps.sh --with-test-tools)")


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """A benchmark that fails says why in one line (pvmlab's errors, our RuntimeErrors)."""
    from pvmlab.errors import PvmlabError

    try:
        yield
    except (PvmlabError, RuntimeError) as exc:
        sys.exit(f"benchmark failed: {exc}")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every ``finally`` cleans up."""
    old = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def workdir(path: Path | None, prefix: str) -> Iterator[Path]:
    """``path`` (created, kept) or a fresh temporary directory (removed on the way out)."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path.absolute()
        return
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- /proc ----------------------------------------------------------------------------------


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB (None when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (nginx's master and workers, for instance)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found += process_tree(int(child))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time consumed so far by these processes."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU time of this process's waited-for children so far (the benchmark's clients)."""
    usage = os.times()
    return usage.children_user + usage.children_system


def machine() -> dict[str, Any]:
    """Where the figures came from."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
