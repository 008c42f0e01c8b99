"""Time stamps for a VM's serial console: one JSON line per console line, with wall-clock times.

QEMU's console log (``logs/NAME.log``) has no times, and ``-msg timestamp=on`` covers QEMU's own
messages, not the guest's serial output. So ``vm start`` runs this small watcher next to QEMU:

    python -m pvmlab.observe.stamp --log logs/NAME.log --out logs/NAME.console.jsonl \
        --pid QEMU_PID --t0 EPOCH

It reads the log as it grows (every ``POLL`` seconds) and writes ``logs/NAME.console.jsonl``:

    {"event": "start", "t": EPOCH, "pid": 123}           the VM start (time QEMU was launched)
    {"t": 1.234, "end": 1.250, "line": "text"}           one console line: ``t`` when its first
                                                         byte was seen, ``end`` when its newline
                                                         was; both relative to ``t0``
    {"event": "exit", "t": 20.1}                         QEMU exited (the watcher ends too)

Firmware prints a line and completes it only when the step is done (``>>Start PXE over IPv4.``
then, seconds later, the address), so the time of a line's *first byte* marks when a step began
and its newline when it ended. Resolution is the poll interval (20 ms), good enough for phases
that last tenths of seconds to seconds; it reads a file, so it never slows the guest down.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import IO

from pvmlab import spawn
from pvmlab.home import open_truncated
from pvmlab.observe.console import clean

POLL = 0.02


def stamps_path(log: Path) -> Path:
    """``logs/NAME.log`` -> ``logs/NAME.console.jsonl``."""
    return log.with_name(log.name.removesuffix(".log") + ".console.jsonl")


class Stamper:
    """Turns chunks of console bytes into stamped lines (kept apart from I/O for tests)."""

    def __init__(self, out: IO[str], t0: float) -> None:
        self.out = out
        self.t0 = t0
        self.partial = b""
        self.partial_t: float | None = None

    def _emit(self, data: bytes, first: float, end: float) -> None:
        text = clean(data.decode(errors="replace")).rstrip()
        if text.strip():
            rec = {"t": round(first - self.t0, 3), "end": round(end - self.t0, 3), "line": text}
            self.out.write(json.dumps(rec) + "\n")

    def feed(self, chunk: bytes, now: float) -> None:
        if not chunk:
            return
        if not self.partial:
            self.partial_t = now  # a new line begins in this chunk
        first = self.partial_t if self.partial_t is not None else now
        *lines, rest = (self.partial + chunk).split(b"\n")
        for line in lines:
            self._emit(line, first, now)
            first = now
        self.partial = rest
        if lines:
            self.partial_t = now if rest else None
        self.out.flush()

    def finish(self, now: float) -> None:
        if self.partial:
            self._emit(self.partial, self.partial_t or now, now)
            self.partial, self.partial_t = b"", None
        self.out.flush()


def watch(log: Path, out_path: Path, pid: int, t0: float, poll: float = POLL) -> None:
    """Stamp ``log`` into ``out_path`` until process ``pid`` exits."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with io.TextIOWrapper(open_truncated(out_path)) as out:  # never through a symlink
        out.write(json.dumps({"event": "start", "t": t0, "pid": pid}) + "\n")
        out.flush()
        st = Stamper(out, t0)
        offset = 0
        fh: IO[bytes] | None = None
        try:
            while True:
                alive = spawn.pid_alive(pid)
                if fh is None:
                    try:
                        fh = log.open("rb")
                    except FileNotFoundError:
                        fh = None
                if fh is not None:
                    if os.fstat(fh.fileno()).st_size < offset:  # truncated: start again
                        fh.seek(0)
                        offset = 0
                    chunk = fh.read()
                    offset += len(chunk)
                    st.feed(chunk, time.time())
                if not alive:
                    break
                time.sleep(poll)
        finally:
            if fh is not None:
                fh.close()
            now = time.time()
            st.finish(now)
            out.write(json.dumps({"event": "exit", "t": round(now - t0, 3)}) + "\n")


def argv(log: Path, pid: int, t0: float) -> list[str]:
    """The watcher's command line (run with ``spawn.start_detached``)."""
    return [
        *spawn.python_module("pvmlab.observe.stamp"),
        "--log", str(log), "--out", str(stamps_path(log)),
        "--pid", str(pid), "--t0", repr(t0),
    ]  # fmt: skip


def start_watcher(log: Path, pid: int, t0: float) -> None:
    """Start the watcher detached; it ends by itself when QEMU (``pid``) exits."""
    from pvmlab import spawn

    spawn.start_detached(argv(log, pid, t0), cwd=spawn.PYTHON_CWD)


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pvmlab.observe.stamp",
        description="Write time stamps for a VM's console log (started by `pvmlab vm start`).",
    )
    parser.add_argument("--log", required=True, type=Path, help="the console log to watch")
    parser.add_argument("--out", required=True, type=Path, help="JSON-lines file to write")
    parser.add_argument("--pid", required=True, type=int, help="QEMU's pid: stop when it exits")
    parser.add_argument("--t0", required=True, type=float, help="the VM's start (epoch seconds)")
    ns = parser.parse_args(args)
    watch(ns.log, ns.out, ns.pid, ns.t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
