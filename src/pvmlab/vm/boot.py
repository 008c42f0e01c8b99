"""Booting a VM as one library call: start it, wait for its console to show a pattern and/or
for SSH to take the lab's key, and return one result.

    result = start_and_wait(home, "node1", pattern=re.compile("login:"), timeout=300)
    result = start_and_wait(home, "node1", pattern=None, ssh_user="root", timeout=300)
    if not result.ready:
        print(result.reason)

With ``ssh_user`` the boot is ready once a login as that user with the lab key runs ``true``
(``pvmlab.vm.ssh.probe``, retried every ``SSH_RETRY`` seconds); with a pattern too, SSH is tried
only after the console showed it (one timeout covers both). ``outcome`` says which condition
failed: ``timeout`` (the console pattern), ``no_ssh`` (SSH did not answer in time), ``exited`` or
``halted`` (the guest stopped, whichever step it was in). A host key other than the one the lab
recorded for the machine ends the SSH step at once (``no_ssh``; the reason says so).

What decides "ready" is the VM's watcher (``pvmlab.vm.watch``), the one reader of the console:
it is given the pattern, stamps the first matching line as a ``ready`` event (which ``vm
timeline`` ends the boot at) and sends the event over a pipe created here. So ``--wait``, the
benchmarks and ``vm timeline`` report the same seconds, counted on the stamper's clock from
QEMU's launch. While it waits, this side asks QEMU for its run state (QMP ``query-status``,
one short connection a second) and gives up within about a second when the guest stops running
code (paused, internal error, panic, shutdown): such a guest would never print the pattern.

Each call has its own pipe and touches only its VM (whose lock ``start_vm`` takes), so calls for
different VMs may run at once in threads.
"""

from __future__ import annotations

import json
import os
import re
import select
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pvmlab.home import LabHome
from pvmlab.qemu import qmp
from pvmlab.qemu.argv import Boot
from pvmlab.vm import runtime, ssh

Outcome = Literal["ready", "exited", "halted", "timeout", "no_ssh", "refused"]
STATE_POLL = 1.0  # seconds between two QMP run-state queries while waiting
SSH_RETRY = 2.0  # seconds between two SSH login attempts (each up to ssh.CONNECT_TIMEOUT)


@dataclass(frozen=True)
class BootResult:
    """How one boot ended. ``elapsed``: seconds from QEMU's launch (the console stamps' clock)."""

    name: str
    outcome: Outcome
    elapsed: float
    pattern: str
    pid: int
    accel: str
    line: str = ""  # ready: the console line that matched
    run_state: str | None = None  # halted: what QMP said (paused, guest-panicked…)
    qemu_log: list[str] = field(default_factory=list)  # not ready: QEMU's last lines
    started_after: float = 0.0  # seconds from the call to QEMU's launch (pvmlab's own work)
    timeout: float = 0.0  # the timeout the wait was given
    ssh_user: str | None = None  # the SSH readiness step's login user (None: no such step)
    console_elapsed: float | None = None  # when the console showed the pattern (with SSH)
    ssh_reason: str = ""  # not ready: the last SSH attempt's failure, in one line

    @property
    def ready(self) -> bool:
        return self.outcome == "ready"

    @property
    def waited_for(self) -> str:
        """What was not seen, in words: the console pattern or SSH."""
        if self.pattern and (self.ssh_user is None or self.console_elapsed is None):
            return f"showing {self.pattern!r} on its console"
        return f"accepting the lab's SSH key for user {self.ssh_user}"

    @property
    def reason(self) -> str:
        """One sentence on why the boot is not ready ("" when it is)."""
        tail = f"; QEMU said: {' | '.join(self.qemu_log)}" if self.qemu_log else ""
        if self.outcome == "ready":
            return ""
        if self.outcome == "halted":
            return (
                f"VM {self.name} is {self.run_state} (QMP) after {self.elapsed:.1f} s, without "
                f"{self.waited_for}{tail}"
            )
        if self.outcome == "exited":
            return (
                f"VM {self.name} stopped after {self.elapsed:.1f} s without {self.waited_for}"
                f"{tail}"
            )
        if self.outcome == "refused":
            return (
                f"VM {self.name}'s firmware refused to run its first stage after "
                f"{self.elapsed:.1f} s ({self.line!r}): under Secure Boot it runs only images "
                "signed by an enrolled key, and this one is not (the lab's iPXE is unsigned; "
                "`vm create --secure-boot` with --loader grub gets Debian's signed shim)"
            )
        if self.outcome == "no_ssh" and ssh.HOSTKEY_CHANGED in self.ssh_reason:
            return f"VM {self.name} cannot be trusted over SSH: {self.ssh_reason}"
        if self.outcome == "no_ssh":
            last = f" (last attempt: {self.ssh_reason})" if self.ssh_reason else ""
            return (
                f"VM {self.name} did not accept the lab's SSH key for user {self.ssh_user} "
                f"within {self.timeout:.0f} s{last}"
            )
        return (
            f"VM {self.name} did not show {self.pattern!r} on its console within "
            f"{self.timeout:.0f} s"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "outcome": self.outcome,
            "elapsed": round(self.elapsed, 3),
            "pattern": self.pattern,
            "line": self.line,
            "run_state": self.run_state,
            "qemu_log": self.qemu_log,
            "pid": self.pid,
            "accel": self.accel,
            "started_after": round(self.started_after, 3),
            "ssh_user": self.ssh_user,
            "console_elapsed": (
                None if self.console_elapsed is None else round(self.console_elapsed, 3)
            ),
            "ssh_reason": self.ssh_reason,
        }


class _Events:
    """The read end of the watcher's pipe: JSON lines, read as they come."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.eof = False

    def read(self, timeout: float) -> list[dict[str, Any]]:
        if self.eof:
            time.sleep(timeout)
            return []
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return []
        chunk = os.read(self.fd, 65536)
        if not chunk:
            self.eof = True
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events


def start_and_wait(
    home: LabHome,
    name: str,
    *,
    pattern: re.Pattern[str] | None,
    timeout: float,
    boot: Boot = "pxe",
    accel: str | None = None,
    ssh_user: str | None = None,
    say: Callable[[str], None] = lambda _msg: None,
) -> BootResult:
    """Start VM ``name`` and wait until its console shows ``pattern`` (if given) and then SSH
    takes the lab key as ``ssh_user`` (if given), it stops running or exits, or ``timeout``
    seconds pass. Start errors (``PvmlabError``) are raised; every way a started boot can end
    is returned."""
    if pattern is None and ssh_user is None:
        raise ValueError("start_and_wait needs a console pattern, an SSH user or both")
    if ssh_user is not None:  # refused before QEMU starts: no client, a bad user name
        ssh.check_user(ssh_user)
        ssh.require_client()
        ssh.ensure_key(home)
    called = time.time()
    read_fd, write_fd = os.pipe()
    try:
        try:
            started = runtime.start_vm(
                home,
                name,
                boot=boot,
                requested_accel=accel,
                wait_for=None if pattern is None else pattern.pattern,
                notify_fd=write_fd,
                say=say,
            )
        finally:
            os.close(write_fd)  # the watcher holds its own copy
        say(f"started VM {name} (pid {started.pid}); console: {home.vm_log(name)}")
        return wait_for_boot(
            home,
            name,
            started,
            pattern=pattern,
            timeout=timeout,
            events_fd=read_fd,
            called=called,
            ssh_user=ssh_user,
        )
    finally:
        os.close(read_fd)


def wait_for_boot(
    home: LabHome,
    name: str,
    started: runtime.Started,
    *,
    pattern: re.Pattern[str] | None,
    timeout: float,
    events_fd: int,
    called: float | None = None,
    ssh_user: str | None = None,
) -> BootResult:
    """Wait for the outcome of a start: ``events_fd`` is the read end of the pipe the VM's
    watcher writes its events to; QEMU's run state is asked on the side, and with ``ssh_user``
    SSH is tried once the console condition (if any) is met."""
    events = _Events(events_fd)
    called = started.t0 if called is None else called
    console_at: float | None = None
    line = ""
    ssh_reason = ""

    def result(outcome: Outcome, elapsed: float, **kw: Any) -> BootResult:
        if outcome != "ready":
            kw.setdefault("qemu_log", runtime.qemu_log_tail(home, name))
        return BootResult(
            name=name,
            outcome=outcome,
            elapsed=elapsed,
            pattern="" if pattern is None else pattern.pattern,
            pid=started.pid,
            accel=started.accel.name,
            started_after=started.t0 - called,
            timeout=timeout,
            ssh_user=ssh_user,
            console_elapsed=console_at if ssh_user is not None else None,
            ssh_reason=ssh_reason,
            line=line,
            **kw,
        )

    deadline = time.monotonic() + timeout
    next_query = time.monotonic() + STATE_POLL
    next_ssh = time.monotonic()
    while True:
        for event in events.read(min(STATE_POLL, max(0.0, deadline - time.monotonic()))):
            if event.get("event") == "ready" and console_at is None:
                console_at, line = float(event["t"]), str(event.get("line", ""))
                if ssh_user is None:
                    return result("ready", console_at)
            if event.get("event") == "exit":
                return result("exited", float(event["t"]))
            if event.get("event") == "refused" and started.vm.secure_boot:
                line = str(event.get("line", ""))
                return result("refused", float(event["t"]))
        now = time.monotonic()
        if ssh_user is not None and (pattern is None or console_at is not None) and now >= next_ssh:
            tried = ssh.probe(home, started.vm, ssh_user)
            if tried is True:
                return result("ready", time.time() - started.t0)
            ssh_reason = tried
            if ssh.HOSTKEY_CHANGED in tried:  # permanent: waiting longer cannot fix it
                return result("no_ssh", time.time() - started.t0)
            now = time.monotonic()
            next_ssh = now + SSH_RETRY
        if events.eof and not started.alive():  # the watcher is gone too (killed?)
            return result("exited", time.time() - started.t0)
        if now >= next_query:
            next_query = now + STATE_POLL
            run_state = qmp.query_status(home.vm_qmp(name))
            if run_state in qmp.HALTED_STATES:
                return result("halted", time.time() - started.t0, run_state=run_state)
        if now >= deadline:
            waiting_ssh = ssh_user is not None and (pattern is None or console_at is not None)
            return result("no_ssh" if waiting_ssh else "timeout", time.time() - started.t0)
