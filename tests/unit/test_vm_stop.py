"""`vm stop`'s ladder (power button, QMP quit, SIGKILL) against real QEMU processes.

QEMU runs with ``-machine none`` and no guest: it ignores the power button, like a guest without
ACPI support, so a stop has to climb to ``quit``; without a QMP socket it has to climb to kill.
No network is involved (there is no lab namespace, so removing the tap is a no-op).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from conftest import needs
from pvmlab.home import LabHome
from pvmlab.records import store
from pvmlab.records.models import LabSpec, VMSpec
from pvmlab.vm import runtime, state

pytestmark = needs("qemu-system-x86_64")


@pytest.fixture
def home(tmp_path: Path) -> LabHome:
    h = LabHome(tmp_path / "home")
    h.ensure()
    store.save_lab(h, LabSpec(dhcp_start="192.168.105.100", dhcp_end="192.168.105.199"))
    store.save_vm(h, VMSpec(name="v1", arch="x86_64", mac="0e:00:00:00:00:01", ip="192.168.105.2"))
    return h


def start_qemu(h: LabHome, *, with_qmp: bool) -> subprocess.Popen[bytes]:
    argv = ["qemu-system-x86_64", "-name", "v1", "-machine", "none", "-nodefaults"]
    argv += ["-display", "none", "-pidfile", str(h.vm_pid("v1"))]
    if with_qmp:
        argv += ["-qmp", f"unix:{h.vm_qmp('v1')},server=on,wait=off"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while state.running_pid(h, "v1") != proc.pid:
        assert proc.poll() is None and time.monotonic() < deadline, "qemu did not start"
        time.sleep(0.05)
    if with_qmp:
        while not h.vm_qmp("v1").exists():
            time.sleep(0.05)
    return proc


def test_powerdown_ignored_then_quit(home: LabHome) -> None:
    proc = start_qemu(home, with_qmp=True)
    said: list[str] = []
    try:
        how = runtime.stop_vm(home, "v1", timeout=0.5, say=said.append)
        assert how == "quit"
        assert proc.wait(timeout=10) == 0  # QEMU exits cleanly on quit
        assert any("power button" in s for s in said)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert state.run_state(home, "v1") == "stopped"
    assert not home.vm_pid("v1").exists() and not home.vm_qmp("v1").exists()


def test_force_skips_the_power_button(home: LabHome) -> None:
    proc = start_qemu(home, with_qmp=True)
    said: list[str] = []
    try:
        assert runtime.stop_vm(home, "v1", force=True, say=said.append) == "quit"
        assert not any("power button" in s for s in said)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_no_monitor_means_kill(home: LabHome) -> None:
    proc = start_qemu(home, with_qmp=False)
    try:
        assert runtime.stop_vm(home, "v1", timeout=0.2) == "kill"
        assert proc.wait(timeout=10) == -9
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not home.vm_pid("v1").exists()


def test_stopping_a_stopped_vm_cleans_stale_files(home: LabHome) -> None:
    home.vm_pid("v1").write_text("1\n")  # pid 1 is not this VM's QEMU
    home.vm_qmp("v1").write_text("")
    assert runtime.stop_vm(home, "v1") == "not-running"
    assert not home.vm_pid("v1").exists() and not home.vm_qmp("v1").exists()
