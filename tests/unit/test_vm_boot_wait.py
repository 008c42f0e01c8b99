"""Waiting for a boot through the VM watcher's pipe, with a real watcher process and a real
QEMU (``-machine none``: no guest, no network, but a pid file and a QMP socket).

The console text is written by the test into the VM's console log, as QEMU would; the watcher
(``python -m pvmlab.vm.watch``) reads it, decides "ready" and reports over the pipe; the waiter
asks QMP for the run state on the side. There is no lab network, so the watcher's tap removal
after QEMU exits has nothing to remove.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pvmlab.home import LabHome
from pvmlab.qemu import qmp
from pvmlab.qemu.accel import Accel
from pvmlab.records.models import VMSpec
from pvmlab.vm import boot, runtime, state, watch

VM = VMSpec(name="v1", arch="x86_64", mac="0e:00:00:00:00:01", ip="192.168.105.2")


@pytest.fixture
def home(tmp_path: Path) -> LabHome:
    h = LabHome(tmp_path / "home")
    h.ensure()
    return h


@pytest.fixture
def qemu(home: LabHome) -> Iterator[subprocess.Popen[bytes]]:
    argv = ["qemu-system-x86_64", "-name", "v1", "-machine", "none", "-nodefaults"]
    argv += ["-display", "none", "-pidfile", str(home.vm_pid("v1"))]
    argv += ["-qmp", f"unix:{home.vm_qmp('v1')},server=on,wait=off"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while state.running_pid(home, "v1") != proc.pid or not home.vm_qmp("v1").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "qemu did not start"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def watched(home: LabHome, proc: subprocess.Popen[bytes], pattern: str) -> tuple[int, float]:
    """Start the real watcher for ``proc``; returns the pipe's read end and t0."""
    read_fd, write_fd = os.pipe()
    t0 = time.time()
    home.vm_log("v1").touch()
    watch.start_watcher(home, "v1", proc.pid, t0, ready=pattern, notify_fd=write_fd)
    os.close(write_fd)
    return read_fd, t0


def wait(
    home: LabHome, proc: subprocess.Popen[bytes], pattern: str, timeout: float
) -> boot.BootResult:
    read_fd, t0 = watched(home, proc, pattern)
    started = runtime.Started(
        vm=VM, accel=Accel("tcg", "test"), pid=proc.pid, argv=[], proc=proc, t0=t0
    )
    try:
        return boot.wait_for_boot(
            home, "v1", started, pattern=re.compile(pattern), timeout=timeout, events_fd=read_fd
        )
    finally:
        os.close(read_fd)


def write_later(path: Path, text: bytes, delay: float = 0.3) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        with path.open("ab") as fh:
            fh.write(text)

    t = threading.Thread(target=run)
    t.start()
    return t


def stamps(home: LabHome) -> list[dict[str, object]]:
    path = home.logs / "v1.console.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ready_comes_from_the_watcher_on_its_clock(
    home: LabHome, qemu: subprocess.Popen[bytes]
) -> None:
    writer = write_later(home.vm_log("v1"), b"Debian GNU/Linux 12\r\nnode1 login: ")
    result = wait(home, qemu, "login:", timeout=120)
    writer.join()
    assert (result.outcome, result.line, result.pattern) == ("ready", "node1 login:", "login:")
    (event,) = [s for s in stamps(home) if s.get("event") == "ready"]
    assert result.elapsed == event["t"] and result.ready and result.reason == ""


def test_a_paused_guest_ends_the_wait(home: LabHome, qemu: subprocess.Popen[bytes]) -> None:
    qmp.execute(home.vm_qmp("v1"), "stop")
    result = wait(home, qemu, "login:", timeout=3000)
    assert (result.outcome, result.run_state) == ("halted", "paused")
    assert result.reason.startswith("VM v1 is paused (QMP) after ")


def test_qemu_exit_ends_the_wait(home: LabHome, qemu: subprocess.Popen[bytes]) -> None:
    threading.Timer(0.5, qmp.quit_qemu, (home.vm_qmp("v1"),)).start()
    result = wait(home, qemu, "login:", timeout=3000)
    assert result.outcome == "exited"
    assert result.reason.startswith("VM v1 stopped after ")
    # the watcher tidied up after QEMU: no pid file, no sockets
    deadline = time.monotonic() + 30
    while home.vm_qmp("v1").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not home.vm_pid("v1").exists() and not home.vm_qmp("v1").exists()


def test_timeout(home: LabHome, qemu: subprocess.Popen[bytes]) -> None:
    result = wait(home, qemu, "login:", timeout=1)
    assert result.outcome == "timeout"
    assert result.reason == "VM v1 did not show 'login:' on its console within 1 s"


def test_a_pattern_may_start_with_a_dash(home: LabHome, qemu: subprocess.Popen[bytes]) -> None:
    writer = write_later(home.vm_log("v1"), b"--- ready ---\n")
    result = wait(home, qemu, "--- ready", timeout=120)
    writer.join()
    assert (result.outcome, result.line) == ("ready", "--- ready ---")


# --- the SSH readiness step (the login attempt itself is stood in for here; the real one, to
# a real dropbear, is in tests/integration/test_vm_wait_ssh.py)


def wait_ssh(
    home: LabHome,
    proc: subprocess.Popen[bytes],
    pattern: str | None,
    timeout: float,
    monkeypatch: pytest.MonkeyPatch,
    answers: list[bool | str],
) -> tuple[boot.BootResult, list[float]]:
    """wait_for_boot with an SSH step whose attempts return ``answers`` in turn (the last one
    repeats); also when each attempt was made (seconds since t0)."""
    read_fd, t0 = watched(home, proc, pattern or "never-shown")
    tried: list[float] = []

    def probe(_home: LabHome, vm: VMSpec, user: str) -> bool | str:
        assert (vm.name, user) == ("v1", "root")
        tried.append(time.time() - t0)
        return answers[min(len(tried), len(answers)) - 1]

    monkeypatch.setattr(boot.ssh, "probe", probe)
    started = runtime.Started(
        vm=VM, accel=Accel("tcg", "test"), pid=proc.pid, argv=[], proc=proc, t0=t0
    )
    try:
        result = boot.wait_for_boot(
            home, "v1", started, pattern=None if pattern is None else re.compile(pattern),
            timeout=timeout, events_fd=read_fd, ssh_user="root",
        )  # fmt: skip
    finally:
        os.close(read_fd)
    return result, tried


def test_ssh_is_tried_only_after_the_console_pattern(
    home: LabHome, qemu: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = write_later(home.vm_log("v1"), b"node1 login: ")
    result, tried = wait_ssh(home, qemu, "login:", 120, monkeypatch, ["no SSH server", True])
    writer.join()
    assert result.outcome == "ready" and result.ssh_user == "root"
    assert result.line == "node1 login:" and result.console_elapsed is not None
    assert len(tried) == 2 and tried[0] >= result.console_elapsed - 0.0005  # stamps: ms
    assert result.elapsed >= result.console_elapsed
    assert result.as_dict()["ssh_user"] == "root"


def test_ssh_alone_and_its_failure_is_its_own_outcome(
    home: LabHome, qemu: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    why = "no SSH server answers on 192.168.105.2:22 (connection refused)"
    result, tried = wait_ssh(home, qemu, None, 1, monkeypatch, [why])
    assert result.outcome == "no_ssh" and tried and result.pattern == ""
    assert result.reason == (
        f"VM v1 did not accept the lab's SSH key for user root within 1 s (last attempt: {why})"
    )


def test_a_console_timeout_with_ssh_asked_is_still_the_console_s(
    home: LabHome, qemu: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    result, tried = wait_ssh(home, qemu, "login:", 1, monkeypatch, [True])
    assert result.outcome == "timeout" and not tried
    assert result.reason == "VM v1 did not show 'login:' on its console within 1 s"


def test_a_guest_stopping_during_the_ssh_step_says_which_step(
    home: LabHome, qemu: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    qmp.execute(home.vm_qmp("v1"), "stop")
    result, _ = wait_ssh(home, qemu, None, 3000, monkeypatch, ["no SSH server"])
    assert (result.outcome, result.run_state) == ("halted", "paused")
    assert "without accepting the lab's SSH key for user root" in result.reason


def test_start_and_wait_needs_a_condition(home: LabHome) -> None:
    with pytest.raises(ValueError, match="pattern, an SSH user or both"):
        boot.start_and_wait(home, "v1", pattern=None, timeout=1)


def test_a_changed_host_key_ends_the_ssh_step_at_once(
    home: LabHome, qemu: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    why = f"the SSH host key of VM v1 (192.168.105.2) {boot.ssh.HOSTKEY_CHANGED}"
    result, tried = wait_ssh(home, qemu, None, 3000, monkeypatch, [why])
    assert result.outcome == "no_ssh" and len(tried) == 1
    assert result.reason == f"VM v1 cannot be trusted over SSH: {why}"
