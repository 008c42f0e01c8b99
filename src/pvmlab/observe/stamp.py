"""Time stamps for a VM's serial console: one JSON line per console line, with wall-clock times.

QEMU's console log (``logs/NAME.log``) has no times, and ``-msg timestamp=on`` covers QEMU's own
messages, not the guest's serial output. So ``vm start`` runs a small watcher next to QEMU
(``pvmlab.vm.watch``) that stamps the console with this module; standalone:

    python -m pvmlab.observe.stamp --log logs/NAME.log --out logs/NAME.console.jsonl \
        --pid QEMU_PID --t0 EPOCH [--ready PATTERN]

It reads the log as it grows (every ``POLL`` seconds) and writes ``logs/NAME.console.jsonl``:

    {"event": "start", "t": EPOCH, "pid": 123}           the VM start (time QEMU was launched)
    {"t": 1.234, "end": 1.250, "line": "text"}           one console line: ``t`` when its first
                                                         byte was seen, ``end`` when its newline
                                                         was; both relative to ``t0``
    {"event": "ready", "t": 8.5, "line": "login:",      the first line matching the awaited
     "pattern": "login:"}                                pattern (``--ready``), ``t`` as above
    {"event": "refused", "t": 9.2, "line": "BdsDxe: …"}  the firmware refused to run a boot
                                                         image (EDK2 under Secure Boot: an
                                                         image no enrolled key signed)
    {"event": "exit", "t": 20.1}                         QEMU exited (the watcher ends too)

Given a pattern, the stamper is the one reader that decides "ready": the event is written here
(``vm timeline`` ends the boot at it) and handed to a waiting caller through ``on_event`` (the VM
watcher passes it on over a pipe), so nobody else reads the console log to find the same line.
A line still being written (a ``login:`` prompt has no newline) is matched too.

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
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pvmlab import spawn
from pvmlab.home import open_truncated
from pvmlab.observe.console import clean

POLL = 0.02

EventSink = Callable[[dict[str, Any]], None]

# EDK2's boot manager, when LoadImage fails for a boot option: under Secure Boot an image that
# no enrolled key signed ends in "Access Denied" (EFI_ACCESS_DENIED; "Security Violation" when
# the firmware defers the image). A fact of the firmware, so it is watched on every console.
REFUSED = re.compile(r"BdsDxe: failed to load Boot\w+ .*: (Access Denied|Security Violation)")


def stamps_path(log: Path) -> Path:
    """``logs/NAME.log`` -> ``logs/NAME.console.jsonl``."""
    return log.with_name(log.name.removesuffix(".log") + ".console.jsonl")


class Stamper:
    """Turns chunks of console bytes into stamped lines (kept apart from I/O for tests)."""

    def __init__(
        self,
        out: IO[str],
        t0: float,
        *,
        ready: re.Pattern[str] | None = None,
        on_event: EventSink | None = None,
    ) -> None:
        self.out = out
        self.t0 = t0
        self.ready = ready
        self.on_event = on_event
        self.ready_event: dict[str, Any] | None = None
        self.refused_event: dict[str, Any] | None = None
        self.partial = b""
        self.partial_t: float | None = None

    def _check_ready(self, text: str, first: float) -> None:
        if self.ready is None or self.ready_event is not None or not self.ready.search(text):
            return
        rec = {
            "event": "ready",
            "t": round(first - self.t0, 3),
            "line": text.strip(),
            "pattern": self.ready.pattern,
        }
        self.ready_event = rec
        self.out.write(json.dumps(rec) + "\n")
        self.out.flush()  # on the record before anyone is told (they may read it at once)
        if self.on_event is not None:
            self.on_event(rec)

    def _check_refused(self, text: str, first: float) -> None:
        if self.refused_event is not None or not REFUSED.search(text):
            return
        rec = {"event": "refused", "t": round(first - self.t0, 3), "line": text.strip()}
        self.refused_event = rec
        self.out.write(json.dumps(rec) + "\n")
        self.out.flush()
        if self.on_event is not None:
            self.on_event(rec)

    def _emit(self, data: bytes, first: float, end: float) -> None:
        text = clean(data.decode(errors="replace")).rstrip()
        if text.strip():
            rec = {"t": round(first - self.t0, 3), "end": round(end - self.t0, 3), "line": text}
            self.out.write(json.dumps(rec) + "\n")
            self._check_ready(text, first)
            self._check_refused(text, first)

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
        if rest and self.partial_t is not None:  # a prompt waits on an unfinished line
            self._check_ready(clean(rest.decode(errors="replace")), self.partial_t)
        self.out.flush()

    def finish(self, now: float) -> None:
        if self.partial:
            self._emit(self.partial, self.partial_t or now, now)
            self.partial, self.partial_t = b"", None
        self.out.flush()


def watch(
    log: Path,
    out_path: Path,
    pid: int,
    t0: float,
    poll: float = POLL,
    *,
    ready: re.Pattern[str] | None = None,
    on_event: EventSink | None = None,
) -> None:
    """Stamp ``log`` into ``out_path`` until process ``pid`` exits.

    ``on_event`` receives the ``ready`` event (when ``ready`` is given and first matches) and
    the ``exit`` event, after they are written.
    """
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with io.TextIOWrapper(open_truncated(out_path)) as out:  # never through a symlink
        out.write(json.dumps({"event": "start", "t": t0, "pid": pid}) + "\n")
        out.flush()
        st = Stamper(out, t0, ready=ready, on_event=on_event)
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
            exit_rec = {"event": "exit", "t": round(now - t0, 3)}
            out.write(json.dumps(exit_rec) + "\n")
            out.flush()
            if on_event is not None:
                on_event(exit_rec)


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pvmlab.observe.stamp",
        description="Write time stamps for a VM's console log (started by `pvmlab vm start`).",
    )
    parser.add_argument("--log", required=True, type=Path, help="the console log to watch")
    parser.add_argument("--out", required=True, type=Path, help="JSON-lines file to write")
    parser.add_argument("--pid", required=True, type=int, help="QEMU's pid: stop when it exits")
    parser.add_argument("--t0", required=True, type=float, help="the VM's start (epoch seconds)")
    parser.add_argument("--ready", help="regular expression: write a ready event when it matches")
    ns = parser.parse_args(args)
    ready = re.compile(ns.ready) if ns.ready is not None else None
    watch(ns.log, ns.out, ns.pid, ns.t0, ready=ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())
