"""The process that lives beside a VM's QEMU: stamps its console, reports "ready", tidies up.

``vm start`` launches QEMU detached (it outlives the CLI) and, next to it, this watcher:

    python -m pvmlab.vm.watch --home HOME --vm NAME --pid QEMU_PID --t0 EPOCH \
        [--ready PATTERN] [--notify-fd FD]

It is the one reader of the console log (``pvmlab.observe.stamp``): it writes the time-stamped
lines, and, given ``--ready``, the ``ready`` event when the pattern first matches. With
``--notify-fd`` (a pipe whose read end a waiting ``vm start --wait`` holds) it also writes each
event there as one JSON line (``ready``, then ``exit``), so the waiter learns of them at once and
on the same clock, without reading the log itself.

When QEMU exits, whoever made it exit (a guest that powered itself off, a crash, ``kill -9``),
the watcher removes the VM's tap and runtime files. Why here: it is the only pvmlab process
sure to be alive when a guest powers off on its own, long after the CLI returned. It takes the
VM's lock first and does nothing if a QEMU of this VM is running again (a ``vm start`` that came
right after), so it never removes a tap a new QEMU uses. (The other way, a non-persistent tap
handed to QEMU by fd, would vanish with QEMU by itself, but pvmlab would have to open it inside
the lab namespace and pass it through ``ip netns exec``, the bridge port would need setting up
after QEMU holds it, and a tap left by a QEMU from before, or a failed start, would still need
this clean-up; the watcher already exists and already outlives the CLI.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from pvmlab.errors import PvmlabError
from pvmlab.home import LabHome, file_lock

log = logging.getLogger(__name__)


def argv(
    home: LabHome, name: str, pid: int, t0: float, *, ready: str | None, notify_fd: int | None
) -> list[str]:
    """The watcher's command line (run with ``spawn.start_detached``, from ``/``): an isolated
    interpreter (``-I``), so nothing in the caller's directory is imported."""
    from pvmlab import spawn

    out = [
        *spawn.python_module("pvmlab.vm.watch"),
        "--home", str(home.root), "--vm", name, "--pid", str(pid), "--t0", repr(t0),
    ]  # fmt: skip
    if ready is not None:
        out.append(f"--ready={ready}")  # one word: a pattern may itself start with '-'
    if notify_fd is not None:
        out += ["--notify-fd", str(notify_fd)]
    return out


def start_watcher(
    home: LabHome,
    name: str,
    pid: int,
    t0: float,
    *,
    ready: str | None = None,
    notify_fd: int | None = None,
) -> None:
    """Start the watcher detached; it ends by itself when QEMU (``pid``) exits."""
    from pvmlab import spawn

    spawn.start_detached(
        argv(home, name, pid, t0, ready=ready, notify_fd=notify_fd),
        pass_fds=() if notify_fd is None else (notify_fd,),
        cwd=spawn.PYTHON_CWD,
    )


class _Notifier:
    """Writes events to the waiter's pipe; a waiter that went away is not an error."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def __call__(self, event: dict[str, Any]) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, (json.dumps(event) + "\n").encode())
        except OSError:  # EPIPE: nobody waits any more
            self.close()

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def tidy_after_exit(home: LabHome, name: str) -> None:
    """Remove the tap and runtime files of VM ``name`` unless a QEMU of it runs (again)."""
    from pvmlab.network import lab as network
    from pvmlab.vm import state

    if not home.pids.is_dir():  # the lab home was removed (`clean --purge`): leave it gone
        return
    with file_lock(home.vm_lock(name)):
        if state.running_pid(home, name) is not None:
            return
        state.remove_runtime_files(home, name)
        with contextlib.suppress(PvmlabError, OSError):  # the lab network may be gone already
            network.remove_tap(home, name)


def main(args: list[str] | None = None) -> int:
    from pvmlab.observe import stamp

    parser = argparse.ArgumentParser(
        prog="python -m pvmlab.vm.watch",
        description="Watch a VM's QEMU (started by `pvmlab vm start`): stamp its console, "
        "report the awaited line, remove its tap when it exits.",
    )
    parser.add_argument("--home", required=True, type=Path, help="the lab home")
    parser.add_argument("--vm", required=True, help="the VM's name")
    parser.add_argument("--pid", required=True, type=int, help="QEMU's pid: stop when it exits")
    parser.add_argument("--t0", required=True, type=float, help="QEMU's launch (epoch seconds)")
    parser.add_argument("--ready", help="regular expression marking the end of the boot")
    parser.add_argument("--notify-fd", type=int, help="pipe to write the events to (JSON lines)")
    ns = parser.parse_args(args)
    home = LabHome(ns.home)
    notify = _Notifier(ns.notify_fd)
    try:
        log_path = home.vm_log(ns.vm)
        stamp.watch(
            log_path,
            stamp.stamps_path(log_path),
            ns.pid,
            ns.t0,
            ready=re.compile(ns.ready) if ns.ready is not None else None,
            on_event=notify,
        )
    finally:
        notify.close()
        tidy_after_exit(home, ns.vm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
