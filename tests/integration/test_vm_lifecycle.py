"""VM lifecycle through the CLI in a real lab: start, list, a refused second start, kill -9
noticed, a stale pid file ignored, --wait failing with the console and the stack's view, stop,
clean; one behaviour per test, each in a lab of its own (the ``hold_vm``, ``started_hold`` and
``running_hold`` fixtures). The guest is the fixture kernel told to stay up (``pvmlab.hold``)
on SeaBIOS, the fastest of the firmwares under TCG."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bootlab import qemu_pids, vm_lab
from conftest import run_pvmlab
from fixtures.bootassets import BootAssets
from netlab import is_ours, kill_pid, netns_exists, remove_netns, running_lab
from pvmlab import spawn
from pvmlab.home import LabHome
from pvmlab.network import lab as network

pytestmark = pytest.mark.integration


def one_line_error(proc: object, needle: str) -> None:
    assert proc.returncode != 0  # type: ignore[attr-defined]
    lines = proc.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("pvmlab: error: "), lines
    assert needle in lines[0], lines[0]


def read_until(fd: int, needle: bytes, timeout: float = 60) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} in {seen[-500:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"EOF before {needle!r}: {seen[-500:]!r}"
            seen += chunk
    return seen


def console_round_trip(home: Path) -> None:
    """`vm console` on a terminal (a pty): a command typed reaches the guest's shell, its answer
    comes back, Ctrl-] detaches and the VM keeps running."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pvmlab.cli.main", "vm", "console", "hold"],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PVMLAB_HOME": str(home)},
    )
    os.close(slave)
    try:
        assert proc.stdout is not None
        read_until(proc.stdout.fileno(), b"[attached to hold")
        os.write(master, b"echo $((6*7))-from-console\r")
        read_until(proc.stdout.fileno(), b"42-from-console")  # the typed line shows $((6*7))
        os.write(master, b"\x1d")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert listing(home)["hold"]["state"] == "running"


def listing(home: Path) -> dict[str, dict[str, object]]:
    rows = json.loads(run_pvmlab("vm", "list", "--json", home=home).stdout)
    return {r["name"]: r for r in rows}


# --- one VM that stays up (``pvmlab.hold``), in a lab of its own per test ------------------------


@dataclass
class HeldVM:
    home: Path
    lab: LabHome
    vm: dict[str, str]  # `vm create --json`


@pytest.fixture
def hold_vm(tmp_path: Path, boot_assets: dict[str, BootAssets]) -> Iterator[HeldVM]:
    """VM ``hold`` created (SeaBIOS, the fixture kernel told to stay up) in a running lab; the
    lab and whatever the test started are cleaned and checked on the way out."""
    with vm_lab(tmp_path, {"x86_64": boot_assets["x86_64"]}) as home:
        vm = json.loads(
            run_pvmlab(
                "vm", "create", "hold", "--arch", "x86_64", "--firmware", "bios",
                "--distro", "tiny", "--cmdline", "console=ttyS0 pvmlab.hold", "--json",
                home=home,
            ).stdout
        )  # fmt: skip
        yield HeldVM(home, LabHome(home), vm)


@pytest.fixture
def started_hold(hold_vm: HeldVM) -> HeldVM:
    """``hold`` started, not waited for: QEMU runs (for what needs no booted guest)."""
    run_pvmlab("vm", "start", "hold", "--accel", "tcg", home=hold_vm.home)
    return hold_vm


@pytest.fixture
def running_hold(hold_vm: HeldVM) -> HeldVM:
    """``hold`` started and booted to its shell (``pvmlab: holding`` on the console)."""
    out = run_pvmlab(
        "vm", "start", "hold", "--accel", "tcg", "--wait-for", "pvmlab: holding",
        "--timeout", "300", home=hold_vm.home,
    ).stdout  # fmt: skip
    assert "saw 'pvmlab: holding'" in out
    return hold_vm


def test_started_vm_is_listed_running_with_its_tap_and_console(running_hold: HeldVM) -> None:
    home, lab, vm = running_hold.home, running_hold.lab, running_hold.vm
    row = listing(home)["hold"]
    assert (row["state"], row["accel"], row["ip"]) == ("running", "tcg", vm["ip"])
    pid = int(row["pid"])  # type: ignore[call-overload]
    assert pid in qemu_pids(home)
    assert network.is_up(lab) and lab.tap("hold") in network.link_names(lab.netns)
    logs = run_pvmlab("vm", "logs", "hold", home=home).stdout
    assert "pvmlab: holding (pvmlab.hold)" in logs.splitlines()


def test_console_reaches_the_guest_and_detaches(running_hold: HeldVM) -> None:
    console_round_trip(running_hold.home)


def test_second_start_is_refused(started_hold: HeldVM) -> None:
    home = started_hold.home
    one_line_error(
        run_pvmlab("vm", "start", "hold", "--accel", "tcg", home=home, check=False),
        "already running",
    )


def test_kill_9_is_noticed_and_start_works_again(started_hold: HeldVM) -> None:
    home = started_hold.home
    pid = int(listing(home)["hold"]["pid"])  # type: ignore[call-overload]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while pid in qemu_pids(home) and time.monotonic() < deadline:
        time.sleep(0.1)
    row = listing(home)["hold"]
    assert (row["state"], row["pid"]) == ("stopped", None)
    run_pvmlab("vm", "start", "hold", "--accel", "tcg", home=home)
    assert listing(home)["hold"]["state"] == "running"


def test_wait_that_never_sees_its_text_shows_the_console_and_the_stacks_view(
    hold_vm: HeldVM,
) -> None:
    home, vm = hold_vm.home, hold_vm.vm
    failed = run_pvmlab(
        "vm", "start", "hold", "--accel", "tcg", "--wait-for", "NEVER-PRINTED",
        "--timeout", "5", home=home, check=False,
    )  # fmt: skip
    assert failed.returncode != 0
    assert "did not show 'NEVER-PRINTED' on its console within 5 s" in failed.stderr
    assert "console lines of hold ---" in failed.stderr
    assert f"stack's view of {vm['mac']}:" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert listing(home)["hold"]["state"] == "running"  # left running to inspect


def test_stop_quits_a_guest_that_ignores_the_power_button(running_hold: HeldVM) -> None:
    """The busybox guest ignores the power button, so QEMU is asked to quit."""
    home, lab = running_hold.home, running_hold.lab
    stopped = run_pvmlab("vm", "stop", "hold", "--timeout", "2", home=home).stdout
    assert "stopped VM hold (quit)" in stopped
    assert listing(home)["hold"]["state"] == "stopped"
    assert not qemu_pids(home)
    assert lab.tap("hold") not in network.link_names(lab.netns)
    assert not lab.vm_pid("hold").exists() and not lab.vm_qmp("hold").exists()
    assert "is not running" in run_pvmlab("vm", "stop", "hold", home=home).stdout


def test_pid_file_of_another_process_is_not_the_vm(hold_vm: HeldVM) -> None:
    home, lab = hold_vm.home, hold_vm.lab
    lab.vm_pid("hold").write_text(f"{os.getpid()}\n")
    assert listing(home)["hold"]["state"] == "stopped"
    run_pvmlab("vm", "start", "hold", "--accel", "tcg", home=home)
    assert listing(home)["hold"]["state"] == "running"
    assert (lab.vm_dir("hold") / "runtime.json").exists()


def test_clean_stops_the_vm_and_drops_its_files_and_reservation(started_hold: HeldVM) -> None:
    home, lab, vm = started_hold.home, started_hold.lab, started_hold.vm
    hosts_before = (home / "configs" / "dhcp-hosts").read_text()
    assert vm["mac"] in hosts_before
    run_pvmlab("vm", "clean", "hold", home=home)
    assert not qemu_pids(home)
    assert not lab.vm_file("hold").exists() and not lab.vm_dir("hold").exists()
    assert not lab.vm_log("hold").exists() and not lab.vm_pid("hold").exists()
    assert vm["mac"] not in (home / "configs" / "dhcp-hosts").read_text()
    assert listing(home) == {}


def test_start_needs_the_stack_and_a_known_vm(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run_pvmlab("provisioner", "create", home=home)
    run_pvmlab("vm", "create", "v1", "--arch", "x86_64", home=home)
    one_line_error(
        run_pvmlab("vm", "start", "v1", "--accel", "tcg", home=home, check=False),
        "`pvmlab provisioner start`",
    )
    one_line_error(run_pvmlab("vm", "start", "nope", home=home, check=False), "no VM named 'nope'")
    for bad in ("../x", "a b", "x\ny", ""):
        for cmd in (["vm", "start"], ["vm", "stop"], ["vm", "clean"], ["vm", "logs"]):
            one_line_error(run_pvmlab(*cmd, bad, home=home, check=False), "invalid VM name")
    assert not (home / "logs" / "v1.log").exists()


def test_twenty_concurrent_creates_never_share_a_mac_or_ip(tmp_path: Path) -> None:
    """Twenty real `pvmlab vm create` processes at once, with the stack running and reloading."""
    home = (tmp_path / "home").absolute()
    with running_lab(home):
        env = {**os.environ, "PVMLAB_HOME": str(home)}
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pvmlab.cli.main",
                    "vm",
                    "create",
                    f"c{i}",
                    "--arch",
                    "x86_64",
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(20)
        ]
        results = [(p, *p.communicate(timeout=300)) for p in procs]
        for p, out, err in results:
            assert p.returncode == 0, out + err
        rows = listing(home)
        assert len(rows) == 20
        macs = {r["mac"] for r in rows.values()}
        ips = {r["ip"] for r in rows.values()}
        assert len(macs) == 20 and len(ips) == 20
        expected = {f"192.168.105.{n}" for n in range(2, 22)}  # the lowest free, no gaps
        assert ips == expected
        hosts = (home / "configs" / "dhcp-hosts").read_text()
        for r in rows.values():
            assert str(r["mac"]) in hosts and str(r["ip"]) in hosts
        run_pvmlab("clean", home=home)
        assert listing(home) == {}


def processes_of(home: Path) -> list[int]:
    """Live processes whose command line mentions the lab home (stack, dnsmasq, QEMU)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            argv = " ".join(spawn.pid_cmdline(int(entry.name)))
            if str(home) in argv and is_ours(int(entry.name)):
                found.append(int(entry.name))
    return found


def test_clean_purge_removes_the_lab_and_only_the_lab(
    tmp_path: Path, boot_assets: dict[str, BootAssets]
) -> None:
    home = (tmp_path / "home").absolute()
    lab = LabHome(home)
    a = boot_assets["x86_64"]
    try:
        run_pvmlab("provisioner", "create", home=home)
        run_pvmlab("provisioner", "start", home=home)
        run_pvmlab(
            "distro", "import", "tiny", "--arch", "x86_64", "--kernel", str(a.kernel),
            "--initrd", str(a.initrd), home=home,
        )  # fmt: skip
        run_pvmlab(
            "vm", "create", "p1", "--arch", "x86_64", "--firmware", "bios", "--distro", "tiny",
            "--cmdline", "console=ttyS0 pvmlab.hold", home=home,
        )  # fmt: skip
        run_pvmlab("vm", "start", "p1", "--accel", "tcg", home=home)
        assert qemu_pids(home)
        (home / "notes.txt").write_text("the user's, not pvmlab's\n")
        (tmp_path / "beside.txt").write_text("outside the home\n")

        out = run_pvmlab("clean", "--purge", home=home).stdout
        assert "p1: removed" in out
        assert not processes_of(home)
        assert not netns_exists(lab.netns)
        assert sorted(p.name for p in home.iterdir()) == ["notes.txt"]
        assert "notes.txt" in out  # says why the home was kept
        assert (tmp_path / "beside.txt").exists()

        (home / "notes.txt").unlink()
        run_pvmlab("clean", "--purge", home=home)  # nothing left to do: still fine
    finally:
        for pid in processes_of(home):
            kill_pid(pid)
        if netns_exists(lab.netns):
            remove_netns(lab.netns)


def test_interactive_start_puts_the_console_on_the_terminal(
    tmp_path: Path, boot_assets: dict[str, BootAssets]
) -> None:
    """`vm start -i` on a terminal (a pty): the guest's console is the terminal, a command typed
    there powers the guest off, QEMU exits, the command returns and the VM is cleaned up."""
    with vm_lab(tmp_path, {"x86_64": boot_assets["x86_64"]}) as home:
        lab = LabHome(home)
        run_pvmlab(
            "vm", "create", "fg", "--arch", "x86_64", "--firmware", "bios", "--distro", "tiny",
            "--cmdline", "console=ttyS0 pvmlab.hold", home=home,
        )  # fmt: skip
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "pvmlab.cli.main", "vm", "start", "fg", "-i", "--accel", "tcg"],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**os.environ, "PVMLAB_HOME": str(home)},
        )
        os.close(slave)
        try:
            read_until(master, b"pvmlab: holding", timeout=300)
            assert listing(home)["fg"]["state"] == "running"
            os.write(master, b"echo typed-$((40+2)); poweroff -f\r")
            read_until(master, b"typed-42")
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)
        assert listing(home)["fg"]["state"] == "stopped"
        assert lab.tap("fg") not in network.link_names(lab.netns)
        assert "typed-42" in lab.vm_log("fg").read_text(errors="replace")  # still logged


def test_concurrent_starts_launch_one_qemu_and_a_failing_qemu_is_reported(
    tmp_path: Path, boot_assets: dict[str, BootAssets]
) -> None:
    with vm_lab(tmp_path, {"x86_64": boot_assets["x86_64"]}) as home:
        run_pvmlab(
            "vm", "create", "twice", "--arch", "x86_64", "--firmware", "bios", "--distro", "tiny",
            "--cmdline", "console=ttyS0 pvmlab.hold", home=home,
        )  # fmt: skip
        env = {**os.environ, "PVMLAB_HOME": str(home)}
        argv = [sys.executable, "-m", "pvmlab.cli.main", "vm", "start", "twice", "--accel", "tcg"]
        procs = [
            subprocess.Popen(
                argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        results = [(p.wait(timeout=120), p.communicate()) for p in procs]
        codes = sorted(rc for rc, _ in results)
        assert codes[0] == 0 and codes[1] != 0, results
        assert any("already running" in err for _, (_, err) in results), results
        assert len(qemu_pids(home)) == 1

        # QEMU refusing to start (a vars file of the wrong size) is one line, not a traceback
        run_pvmlab("vm", "create", "broken", "--arch", "x86_64", "--distro", "tiny", home=home)
        vars_fd = LabHome(home).vm_dir("broken") / "efivars.fd"
        vars_fd.write_bytes(b"x")
        one_line_error(
            run_pvmlab("vm", "start", "broken", "--accel", "tcg", home=home, check=False),
            "QEMU for VM 'broken' exited at once",
        )
        assert listing(home)["broken"]["state"] == "stopped"
