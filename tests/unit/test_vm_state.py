"""Runtime state comes from the pid file checked against /proc, then from QEMU over QMP, with
a real QEMU process.

QEMU runs with ``-machine none`` (no guest, no network): enough to own a pid file and a command
line, which is all the pid check looks at, and to answer ``query-status``, ``cont`` and ``stop``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import needs
from pvmlab import spawn
from pvmlab.home import LabHome
from pvmlab.qemu import qmp
from pvmlab.vm import state

pytestmark = needs("qemu-system-x86_64")


def start_qemu(
    pid_file: Path, name: str, qmp_socket: Path | None = None
) -> subprocess.Popen[bytes]:
    argv = ["qemu-system-x86_64", "-name", name, "-machine", "none", "-nodefaults"]
    argv += ["-display", "none", "-S", "-pidfile", str(pid_file)]
    if qmp_socket is not None:
        argv += ["-qmp", f"unix:{qmp_socket},server=on,wait=off"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
        assert proc.poll() is None, "qemu exited"
        time.sleep(0.05)
    return proc


@pytest.fixture
def home(tmp_path: Path) -> LabHome:
    h = LabHome(tmp_path / "home")
    h.ensure()
    return h


def test_running_then_kill_9_is_stopped(home: LabHome) -> None:
    proc = start_qemu(home.vm_pid("v1"), "v1")  # no QMP socket: alive, but nobody answers
    try:
        assert state.running_pid(home, "v1") == proc.pid
        assert state.run_state(home, "v1") == "unresponsive"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert state.running_pid(home, "v1") is None
        assert state.run_state(home, "v1") == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_zombie_is_not_running(home: LabHome) -> None:
    proc = start_qemu(home.vm_pid("v1"), "v1")
    try:
        os.kill(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while spawn.pid_cmdline(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        # not reaped yet: the pid exists, but it is no longer our QEMU
        assert state.running_pid(home, "v1") is None
    finally:
        proc.kill()
        proc.wait()


def test_reused_pid_is_not_taken_for_the_vm(home: LabHome) -> None:
    home.vm_pid("v1").write_text(f"{os.getpid()}\n")  # a live process that is not QEMU
    assert state.running_pid(home, "v1") is None


def test_another_vms_qemu_is_not_this_vm(home: LabHome, tmp_path: Path) -> None:
    other = tmp_path / "other.pid"
    proc = start_qemu(other, "v1")  # same -name, another lab home's pid file
    try:
        home.vm_pid("v1").write_text(f"{proc.pid}\n")
        assert state.running_pid(home, "v1") is None
    finally:
        proc.kill()
        proc.wait()


def test_garbage_and_missing_pid_files(home: LabHome) -> None:
    assert state.running_pid(home, "v1") is None
    home.vm_pid("v1").write_text("not a number")
    assert state.running_pid(home, "v1") is None


def test_runtime_record_round_trip(home: LabHome) -> None:
    assert state.load_runtime(home, "v1") is None
    state.save_runtime(home, "v1", state.RuntimeRecord(accel="tcg", boot="disk", pid=5))
    rec = state.load_runtime(home, "v1")
    assert rec is not None and (rec.accel, rec.boot, rec.pid) == ("tcg", "disk", 5)


def test_run_state_is_what_qmp_says(home: LabHome) -> None:
    home.monitors.mkdir(parents=True, exist_ok=True)
    proc = start_qemu(home.vm_pid("v1"), "v1", home.vm_qmp("v1"))
    try:
        deadline = time.monotonic() + 30
        while not home.vm_qmp("v1").exists():
            assert time.monotonic() < deadline, "no QMP socket"
            time.sleep(0.05)
        assert state.run_state(home, "v1") == "prelaunch"  # -S: built, not yet started
        qmp.execute(home.vm_qmp("v1"), "cont")
        assert state.run_state(home, "v1") == "running"
        qmp.execute(home.vm_qmp("v1"), "stop")
        assert state.run_state(home, "v1") == "paused"
        assert "paused" in qmp.HALTED_STATES and "prelaunch" not in qmp.HALTED_STATES
    finally:
        proc.kill()
        proc.wait()
    assert state.run_state(home, "v1") == "stopped"
