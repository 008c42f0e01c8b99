"""`pvmlab test`: boot every machine of a lab file, wait for its ready condition, keep evidence.

The lab is first reconciled with the file (``apply.up`` without starting machines); then the
machines boot in parallel (at most ``parallel`` at once), each through
``pvmlab.vm.boot.start_and_wait`` (the one reader of the console decides "ready"), followed by
its SSH check when the file asks for one. Each machine's result carries its boot timeline, the
tail of its console and what dnsmasq and the HTTP server saw of its MAC, for the JUnit, JSON and
HTML reports. Machines are stopped afterwards unless ``keep``.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from pvmlab.errors import PvmlabError
from pvmlab.home import LabHome
from pvmlab.labfile.apply import Say, up
from pvmlab.labfile.load import LabFile, MachinePlan
from pvmlab.report.results import MachineResult, RunResult

CONSOLE_TAIL = 40  # console lines kept per machine
Progress = Callable[[str, str], None]  # (machine, what it is doing now)


def console_tail(home: LabHome, name: str, lines: int = CONSOLE_TAIL) -> list[str]:
    from pvmlab.observe.console import clean

    try:
        text = home.vm_log(name).read_bytes()[-64 * 1024 :].decode(errors="replace")
    except OSError:
        return []
    return [ln for ln in clean(text).splitlines() if ln.strip()][-lines:]


def current_phase(home: LabHome, name: str, pattern: re.Pattern[str]) -> str | None:
    """The label of the last boot phase seen so far (for the progress view)."""
    from pvmlab.observe.timeline import timeline_of_vm

    try:
        tl = timeline_of_vm(home, name, pattern)
    except (PvmlabError, OSError, ValueError):
        return None
    return tl.phases[-1].label if tl.phases else None


def _ssh_command(
    home: LabHome, plan: MachinePlan, command: str, deadline: float
) -> str | None:
    """Run the file's ``ssh`` command in a machine that takes the lab key; None when it exits
    0 and prints what ``expect`` asks for, else why not."""
    from pvmlab import spawn
    from pvmlab.records import store
    from pvmlab.vm import ssh

    ready = plan.decl.ready
    vm = store.load_vm(home, plan.name)
    argv = ssh.ssh_argv(home, vm, ssh.DEFAULT_USER, [command])
    left = max(1.0, deadline - time.monotonic())
    try:
        proc = spawn.run(argv, netns=home.netns, check=False, timeout=left)
    except PvmlabError as exc:  # the command outlived the deadline
        return f"ssh {ready.ssh!r}: {exc.problem}"
    out = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0:
        return f"ssh {ready.ssh!r} exited with {proc.returncode}: {out.strip()[-200:]}"
    if ready.expect is not None and not re.search(ready.expect, proc.stdout or ""):
        printed = (proc.stdout or "").strip()[-200:]
        return f"ssh {ready.ssh!r} printed {printed!r}, not /{ready.expect}/"
    return None


def boot_until_ready(
    home: LabHome, plan: MachinePlan, *, say: Callable[[str], None] = lambda _m: None
) -> tuple[float, str | None]:
    """Start a machine and wait for its ready condition; ``(elapsed, None)`` when it holds, else
    ``(elapsed, why)``.

    One path for `pvmlab test` and `pvmlab up --wait`: ``start_and_wait`` waits for the console
    pattern and then, when the file has an ``ssh`` command, for SSH to take the lab key as root
    (its SSH step); then the command runs and its output is held against ``expect``, all
    within ``timeout``. Failures of the SSH part say "SSH step". Start errors are raised.

    A machine booted from scratch may bring a new host key (a network-booted guest makes one
    at every boot), so the one recorded for its address is forgotten before the start; within
    the boot the key taken first is held to.
    """
    from pvmlab.records import store
    from pvmlab.vm import boot, ssh

    decl = plan.decl
    ready = decl.ready
    if ready.ssh is not None:
        ssh.forget_host(home, store.load_vm(home, plan.name).address)
    began = time.monotonic()
    res = boot.start_and_wait(
        home, plan.name, pattern=re.compile(ready.pattern), timeout=ready.timeout,
        boot=decl.boot, accel=decl.accel,
        ssh_user=ssh.DEFAULT_USER if ready.ssh is not None else None, say=say,
    )  # fmt: skip
    if not res.ready:
        return res.elapsed, f"SSH step: {res.reason}" if res.outcome == "no_ssh" else res.reason
    if ready.ssh is None:
        return res.elapsed, None
    say(f"{plan.name}: running {ready.ssh!r} over SSH")
    why = _ssh_command(home, plan, ready.ssh, began + ready.timeout)
    return time.monotonic() - began, None if why is None else f"{plan.name}: SSH step: {why}"


def judge_machine(
    home: LabHome, plan: MachinePlan, *, keep: bool, progress: Progress
) -> MachineResult:
    """Boot one machine from scratch and judge it against its ready condition."""
    from pvmlab.observe.stacklog import stack_view
    from pvmlab.observe.timeline import timeline_of_vm
    from pvmlab.records import store
    from pvmlab.vm import runtime, state

    decl = plan.decl
    ready = decl.ready
    pattern = re.compile(ready.pattern)
    result = MachineResult(
        name=plan.name,
        arch=decl.arch,
        firmware=decl.firmware,
        boot=decl.boot,
        expectation=ready.describe(),
        outcome="failed",
    )
    began = time.monotonic()
    try:
        if state.running_pid(home, plan.name) is not None:
            progress(plan.name, "stopping the previous run")
            runtime.stop_vm(home, plan.name, force=True)
        progress(plan.name, "starting")

        def said(msg: str) -> None:
            if "over SSH" in msg:
                progress(plan.name, "checking SSH")

        result.elapsed, why = boot_until_ready(home, plan, say=said)
        if why is None:
            result.outcome = "passed"
        else:
            result.reason = why
    except PvmlabError as exc:
        result.reason = str(exc)
        result.elapsed = time.monotonic() - began
    progress(plan.name, "ready" if result.passed else "failed")
    # Evidence, whatever happened.
    try:
        result.timeline = timeline_of_vm(home, plan.name, pattern).as_dict()
    except (PvmlabError, OSError, ValueError):
        result.timeline = None
    result.console_tail = console_tail(home, plan.name)
    try:
        vm = store.load_vm(home, plan.name)
        result.stack_view = stack_view(home, vm.mac, vm.address).summary_lines()
    except PvmlabError:
        result.stack_view = []
    if not keep and state.running_pid(home, plan.name) is not None:
        with contextlib.suppress(PvmlabError):  # reported by the next command that looks at it
            runtime.stop_vm(home, plan.name, force=True)
    return result


class _PhaseWatcher:
    """While machines boot, tells the progress view which phase each one is in (once a second)."""

    def __init__(self, home: LabHome, progress: Progress) -> None:
        self.home = home
        self.progress = progress
        self.booting: dict[str, re.Pattern[str]] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(1.0):
            with self.lock:
                items = list(self.booting.items())
            for name, pattern in items:
                phase = current_phase(self.home, name, pattern)
                if phase is not None:
                    self.progress(name, f"booting: {phase}")

    def track(self, name: str, pattern: re.Pattern[str] | None) -> None:
        with self.lock:
            if pattern is None:
                self.booting.pop(name, None)
            else:
                self.booting[name] = pattern


def run_lab_tests(
    lab: LabFile,
    home: LabHome,
    *,
    parallel: int,
    keep: bool = False,
    progress: Progress = lambda _n, _s: None,
    say: Say = lambda _m: None,
) -> RunResult:
    """Reconcile the lab, boot every machine (``parallel`` at a time), return the results."""
    started = datetime.now(UTC)
    t0 = time.monotonic()
    up(lab, home, start_machines=False, say=say)
    watcher = _PhaseWatcher(home, progress)
    watcher.thread.start()

    def one(plan: MachinePlan) -> MachineResult:
        def tell(name: str, what: str) -> None:
            if what == "starting":
                watcher.track(name, re.compile(plan.decl.ready.pattern))
            elif what in ("ready", "failed", "checking SSH"):
                watcher.track(name, None)
            progress(name, what)

        return judge_machine(home, plan, keep=keep, progress=tell)

    for plan in lab.machines:
        progress(plan.name, "waiting")
    try:
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            results = list(pool.map(one, lab.machines))
    finally:
        watcher.stop.set()
        watcher.thread.join(2)
    return RunResult(
        lab=lab.name,
        lab_file=str(lab.path),
        started=started.isoformat(timespec="seconds"),
        duration=time.monotonic() - t0,
        machines=results,
    )
