"""Starting and stopping a VM's QEMU inside the lab namespace.

Start: the stack must run (the VM would find no DHCP otherwise) and the VM must not; the
accelerator is chosen and said; UEFI firmware comes from QEMU's descriptors and the VM keeps its
own vars file (``vms/NAME/efivars.fd``, copied once from the template and kept across starts,
like NVRAM on real hardware); ``--boot ipxe`` rebuilds the VM's iPXE boot media
(``pvmlab.vm.ipxemedia``); the tap is created in the lab namespace on the bridge; QEMU runs
detached in the namespace. The previous console log is kept as ``logs/NAME.log.1`` and the new
one starts empty, so ``--wait`` never matches text of an earlier boot.

Both hold the VM's own lock (``LabHome.vm_lock``), never the lab's: a VM whose QEMU takes 15 s
to open its monitor delays only commands on that VM, not ``vm create`` or other VMs' starts.

Stop: ACPI power button over QMP, wait; then QMP ``quit``; then SIGKILL. A guest that is not
running (QMP says ``paused``, ``internal-error``, ``guest-panicked``…) cannot press a button, so
it is quit at once. Whatever happened, the pid file, sockets and tap are removed afterwards (and
by the VM's watcher, ``pvmlab.vm.watch``, when QEMU exits on its own). Stopping needs no VM
record: the runtime state is the pid file checked against /proc, so a VM whose record is damaged
can still be stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pvmlab import spawn
from pvmlab.arch import firmware as firmware_table
from pvmlab.errors import ProcessError, PvmlabError, StateError
from pvmlab.home import LabHome, file_lock
from pvmlab.qemu import accel as accel_mod
from pvmlab.qemu import firmware as firmware_mod
from pvmlab.qemu import qmp
from pvmlab.qemu.argv import AccelName, Boot, QemuConfig, build_argv, machine_type
from pvmlab.records import store
from pvmlab.records.models import LabSpec, VMSpec, utc_now
from pvmlab.vm import ipxemedia, state, watch

log = logging.getLogger(__name__)

STARTUP_TIMEOUT = 15.0


@dataclass
class Started:
    vm: VMSpec
    accel: accel_mod.Accel
    pid: int
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None  # set when started by this process
    t0: float = 0.0  # QEMU's launch (epoch seconds): the clock of the console stamps

    def alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            return False
        return spawn.pid_alive(self.pid) and bool(spawn.pid_cmdline(self.pid))


def vars_file(home: LabHome, name: str) -> Path:
    return home.vm_efivars(name)


def disk_file(home: LabHome, name: str) -> Path:
    return home.vm_disk(name)


def ensure_vars(home: LabHome, name: str, template: Path) -> Path:
    """The VM's own UEFI variable store, created from the template once."""
    dest = vars_file(home, name)
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(".efivars.fd.tmp")
        shutil.copyfile(template, tmp)
        tmp.chmod(0o644)
        tmp.replace(dest)
    return dest


def rotate_log(log_path: Path) -> None:
    if log_path.exists():
        log_path.replace(log_path.with_name(log_path.name + ".1"))


def require_stack(home: LabHome) -> None:
    from pvmlab.stack import control

    control.require_serving(home)  # names `provisioner start` when stopped or degraded


def config_for(
    home: LabHome,
    vm: VMSpec,
    chosen: AccelName,
    *,
    boot: Boot,
    tap: str,
    interactive: bool,
    ipxe_media: Path | None = None,
) -> QemuConfig:
    code = vars_path = None
    smm = False
    if firmware_table(vm.firmware).pflash:
        fw = firmware_mod.find_uefi(
            vm.arch, machine_type(vm.arch, vm.firmware), secure_boot=vm.secure_boot
        )
        code = fw.code
        smm = fw.requires_smm
        vars_path = ensure_vars(home, vm.name, fw.vars_template)
    disk = disk_file(home, vm.name)
    return QemuConfig(
        name=vm.name,
        arch=vm.arch,
        firmware=vm.firmware,
        accel=chosen,
        mac=vm.mac,
        tap=tap,
        serial_log=home.vm_log(vm.name),
        qmp_socket=home.vm_qmp(vm.name),
        pid_file=home.vm_pid(vm.name),
        console_socket=state.console_socket(home, vm.name),
        memory_mib=vm.memory_mib,
        cpus=vm.cpus,
        uefi_code=code,
        uefi_vars=vars_path,
        boot=boot,
        disk=disk if disk.exists() else None,
        interactive=interactive,
        ipxe_media=ipxe_media,
        net_boot=vm.net_boot,
        pxe_ipv4=vm.ip is not None,  # None: an IPv6-only lab
        smm=smm,
    )


def qemu_log_tail(home: LabHome, name: str, lines: int = 3) -> list[str]:
    """The last lines QEMU itself wrote (its stderr: KVM errors, failed options)."""
    try:
        text = state.qemu_log(home, name).read_text(errors="replace")
    except OSError:
        return []
    return [ln for ln in text.strip().splitlines() if ln.strip()][-lines:]


def vm_locked(home: LabHome, name: str) -> contextlib.AbstractContextManager[None]:
    """The lock of one VM: held by its start (through QEMU's start-up), stop and clean."""
    home.pids.mkdir(parents=True, exist_ok=True)
    return file_lock(home.vm_lock(name))


def _prepare_loader(
    home: LabHome, lab: LabSpec, vm: VMSpec, say: Callable[[str], None]
) -> None:
    """GRUB machines: the signed GRUB (and shim) staged and the machine's GRUB configuration
    written into the TFTP root (``pvmlab.stack.grubcfg``: TFTP serves files, not answers)."""
    if vm.loader == "grub":
        from pvmlab.assets import signedboot
        from pvmlab.stack import grubcfg

        for staged in signedboot.stage(home, vm.arch, secure_boot=vm.secure_boot):
            say(f"first stage: {staged.tftp_name} (from {staged.source})")
        grubcfg.write_machine(home, lab, vm)
    elif vm.secure_boot:
        say(
            "warning: the first stage is iPXE, which is not signed: the firmware enforces "
            "Secure Boot and will refuse it (`vm create --loader grub` gets shim and GRUB)"
        )


def start_vm(
    home: LabHome,
    name: str,
    *,
    boot: Boot = "pxe",
    requested_accel: str | None = None,
    interactive: bool = False,
    wait_for: str | None = None,
    notify_fd: int | None = None,
    say: Callable[[str], None] = lambda _msg: None,
) -> Started:
    """Start VM ``name``. Interactive starts return after QEMU exits.

    ``wait_for`` (a regular expression) is handed to the VM's watcher, which writes a ``ready``
    event when the console first shows it, and sends its events to ``notify_fd`` (the write end
    of a pipe; see ``pvmlab.vm.boot``).
    """
    home.require()
    vm = store.load_vm(home, name)
    lab = store.load_lab(home)
    if boot not in ("pxe", "disk", "ipxe"):
        raise StateError(f"unknown boot order {boot!r}", "choose pxe, disk or ipxe")
    if boot == "ipxe":
        ipxemedia.check(vm.arch, vm.firmware, vm.name)
    if boot == "disk" and not disk_file(home, name).exists():
        raise StateError(
            f"VM {name!r} has no disk to boot from",
            "create it with --disk-size, or boot with --boot pxe",
        )
    chosen = accel_mod.choose(vm.arch, requested_accel)
    with vm_locked(home, name):
        if state.running_pid(home, name) is not None:
            raise StateError(
                f"VM {name!r} is already running", f"stop it with `pvmlab vm stop {name}`"
            )
        require_stack(home)
        say(str(chosen))
        _prepare_loader(home, lab, vm, say)
        from pvmlab.network import lab as network

        media = ipxemedia.build(home, name, vm.arch, lab) if boot == "ipxe" else None
        tap = network.ensure_tap(home, name)
        try:
            cfg = config_for(
                home, vm, chosen.name, boot=boot, tap=tap, interactive=interactive, ipxe_media=media
            )
        except BaseException:  # no QEMU will use the tap (and no watcher will remove it)
            remove_leftovers(home, name)
            raise
        argv = build_argv(cfg)
        for d in (home.logs, home.pids, home.monitors):
            d.mkdir(parents=True, exist_ok=True)
        state.remove_runtime_files(home, name)
        rotate_log(home.vm_log(name))
        home.vm_log(name).touch()
        record = state.RuntimeRecord(
            accel=chosen.name, boot=boot, started=utc_now(), argv=argv, wait_for=wait_for
        )
        state.save_runtime(home, name, record)
        if not interactive:
            # Still under the VM's lock, so two `vm start NAME` at once cannot both launch QEMU.
            rotate_log(state.qemu_log(home, name))
            t0 = time.time()
            proc = spawn.start_detached(argv, netns=home.netns, log_file=state.qemu_log(home, name))
            watch.start_watcher(home, name, proc.pid, t0, ready=wait_for, notify_fd=notify_fd)
            try:
                await_startup(home, name, proc)
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
                raise
            state.save_runtime(home, name, record.model_copy(update={"pid": proc.pid}))
    if interactive:
        return _run_interactive(home, vm, chosen, argv)
    return Started(vm=vm, accel=chosen, pid=proc.pid, argv=argv, proc=proc, t0=t0)


def await_startup(home: LabHome, name: str, proc: subprocess.Popen[bytes]) -> None:
    """Until QEMU has built the machine and answers on QMP, or died trying."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ProcessError(
                f"QEMU for VM {name!r} exited at once with code {proc.returncode}: "
                f"{' | '.join(qemu_log_tail(home, name)) or '(no output)'}",
                f"see {state.qemu_log(home, name)}",
                returncode=proc.returncode,
            )
        # QEMU opens the socket and writes the pid file before it builds the machine (and may
        # still fail there); QMP answers only from the main loop, after that.
        if (
            home.vm_qmp(name).exists()
            and spawn.read_pid_file(home.vm_pid(name)) == proc.pid
            and qmp.query_status(home.vm_qmp(name)) is not None
        ):
            return
        time.sleep(0.05)
    raise ProcessError(
        f"QEMU for VM {name!r} did not open its monitor within {STARTUP_TIMEOUT:.0f} s",
        f"see {state.qemu_log(home, name)}",
    )


def _run_interactive(
    home: LabHome, vm: VMSpec, chosen: accel_mod.Accel, argv: list[str]
) -> Started:
    """QEMU in the foreground with the console on this terminal; cleans up when it exits."""
    try:
        t0 = time.time()
        with spawn.spawn(argv, netns=home.netns, stdin=None, stdout=None, stderr=None) as proc:
            watch.start_watcher(home, vm.name, proc.pid, t0)  # for `vm timeline`
            proc.wait()
        return Started(vm=vm, accel=chosen, pid=proc.pid, argv=argv, proc=proc, t0=t0)
    finally:
        remove_leftovers(home, vm.name)


def remove_leftovers(home: LabHome, name: str) -> None:
    """Remove what a run leaves behind: pid file, sockets and the tap."""
    state.remove_runtime_files(home, name)
    from pvmlab.network import lab as network

    with contextlib.suppress(PvmlabError, OSError):  # the lab network may already be gone
        network.remove_tap(home, name)


def _wait_gone(home: LabHome, name: str, pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not state.is_vm_process(home, name, pid):
            return True
        time.sleep(0.1)
    return not state.is_vm_process(home, name, pid)


def stop_vm(
    home: LabHome,
    name: str,
    *,
    force: bool = False,
    timeout: float = 30.0,
    say: Callable[[str], None] = lambda _msg: None,
    lock_held: bool = False,
) -> str:
    """Stop VM ``name``; returns how: powerdown, quit, kill or not-running.

    Works from the name alone (pid file + /proc + QMP), so a damaged record does not matter.
    Takes the VM's lock, unless the caller holds it already (``lock_held``: ``vm clean``).
    """
    home.require()
    with contextlib.nullcontext() if lock_held else vm_locked(home, name):
        return _stop_vm(home, name, force, timeout, say)


def _stop_vm(
    home: LabHome, name: str, force: bool, timeout: float, say: Callable[[str], None]
) -> str:
    pid = state.running_pid(home, name)
    if pid is None and not home.vm_file(name).exists():
        raise StateError(f"no VM named {name!r}", "see `pvmlab vm list` for the defined VMs")
    how = "not-running"
    try:
        if pid is None:
            return how
        sock = home.vm_qmp(name)
        if not force:
            run_state = qmp.query_status(sock)
            if run_state is not None and run_state != qmp.RUNNING:
                say(f"{name}: the guest is {run_state}, it cannot react to the power button")
            elif qmp.press_power_button(sock):
                say(f"{name}: ACPI power button pressed, waiting up to {timeout:.0f} s")
                if _wait_gone(home, name, pid, timeout):
                    return (how := "powerdown")
                say(f"{name}: did not power off; asking QEMU to quit")
            else:
                say(f"{name}: QEMU does not answer on QMP; asking it to quit")
        if qmp.quit_qemu(sock) and _wait_gone(home, name, pid, 10):
            return (how := "quit")
        say(f"{name}: QEMU did not quit; killing pid {pid}")
        if state.is_vm_process(home, name, pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not _wait_gone(home, name, pid, 10):
            raise StateError(f"QEMU (pid {pid}) of VM {name!r} survived SIGKILL", "check `ps`")
        return (how := "kill")
    finally:
        if how != "not-running" or state.running_pid(home, name) is None:
            remove_leftovers(home, name)
