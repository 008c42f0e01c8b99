"""Removing VMs (``vm clean``) and the whole lab (``pvmlab clean --purge``).

A VM is stopped first, then its DHCP leases are released, its definition, its directory (vars,
disk, runtime state), logs, pid file and sockets are deleted and a running stack drops its
reservation.

Leases: dnsmasq keeps a reserved address from any other MAC while a lease of the old one holds
it, so a VM made again under the same name and address with a new MAC would get a dynamic
address. A running dnsmasq is asked to drop the leases with ``dhcp_release`` (dnsmasq-utils)
sent from inside the lab namespace, and the lease file is watched until they are gone; a
stopped one has the lines taken out of its lease file, which it reads when it starts (under the
stack's start/stop lock, so it cannot start meanwhile). ``--purge`` also
stops the stack, takes the lab network down and deletes the lab home's own entries: only names
pvmlab creates are removed, so a home pointed at a directory with other files keeps them.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from pvmlab import spawn
from pvmlab.errors import DependencyError, PvmlabError, StateError
from pvmlab.home import LabHome, file_lock, write_atomic
from pvmlab.records import store
from pvmlab.stack import dnsmasq, grubcfg
from pvmlab.vm import runtime, ssh, state
from pvmlab.vm.define import reload_stack

log = logging.getLogger(__name__)

RELEASE_WAIT = 10.0  # seconds a running dnsmasq gets to drop the released leases


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def remove_files(home: LabHome, name: str) -> None:
    shutil.rmtree(home.vm_dir(name), ignore_errors=True)
    for path in (
        home.vm_log(name),
        home.vm_log(name).with_name(f"{name}.log.1"),
        state.qemu_log(home, name),
        state.qemu_log(home, name).with_name(f"{name}.qemu.log.1"),
        home.vm_console_times(name),  # console times (pvmlab.observe.stamp)
    ):
        _unlink(path)
    state.remove_runtime_files(home, name)
    _unlink(home.vm_file(name))


def _vm_leases(home: LabHome, name: str, mac: str | None) -> list[dnsmasq.Lease]:
    return [
        lease for lease in dnsmasq.read_leases(home)
        if lease.mac == mac or lease.hostname == name
    ]


def release_leases(
    home: LabHome, name: str, mac: str | None, *, say: Callable[[str], None] = lambda _m: None
) -> list[str]:
    """Drop the DHCP leases of VM ``name`` (those of ``mac`` or with its host name); returns the
    addresses released."""
    from pvmlab.stack import control

    with file_lock(home.control_lock):  # no stack start or stop meanwhile
        leases = _vm_leases(home, name, mac)
        if not leases:
            return []
        if not control.is_stack_running(home):
            gone = {(lease.mac, lease.ip) for lease in leases}
            kept = [
                line for line in home.dnsmasq_leases.read_text().splitlines(keepends=True)
                if not any(line.split()[1:3] == [m, ip] for m, ip in gone)
            ]
            write_atomic(home.dnsmasq_leases, "".join(kept))
            return [lease.ip for lease in leases]
        try:
            for lease in leases:
                spawn.run(["dhcp_release", home.bridge, lease.ip, lease.mac], netns=home.netns)
        except DependencyError:
            say(f"{name}: DHCP lease kept: dhcp_release is missing (install dnsmasq-utils)")
            return []
        except PvmlabError as exc:
            say(f"{name}: DHCP lease kept: {exc}")
            return []
        deadline = time.monotonic() + RELEASE_WAIT
        while _vm_leases(home, name, mac) and time.monotonic() < deadline:
            time.sleep(0.1)
    left = [lease.ip for lease in _vm_leases(home, name, mac)]
    if left:
        say(f"{name}: dnsmasq kept the lease of {', '.join(left)}")
    return [lease.ip for lease in leases if lease.ip not in left]


def clean_vm(
    home: LabHome, name: str, *, reload: bool = True, say: Callable[[str], None] = lambda _m: None
) -> None:
    """Stop VM ``name`` and remove everything of it; works from the name alone, so a VM whose
    record is damaged can be removed too."""
    ip: str | None
    mac: str | None
    try:
        vm = store.load_vm(home, name)
        ip, mac = vm.ip, vm.mac
    except PvmlabError:
        ip = mac = None  # a damaged record: its leases are found by host name alone
    with runtime.vm_locked(home, name):
        # an unknown name is an error here
        how = runtime.stop_vm(home, name, force=True, say=say, lock_held=True)
        if how != "not-running":
            say(f"{name}: stopped ({how})")
        released = release_leases(home, name, mac, say=say)
        if released:
            say(f"{name}: DHCP lease released ({', '.join(released)})")
        with home.locked():  # the records are the lab's: MAC/IP allocation reads them all
            remove_files(home, name)
            if mac is not None:
                grubcfg.remove_machine(home, mac)  # its GRUB configuration in the TFTP root
    if ip is not None:
        ssh.forget_host(home, ip)  # a later machine at this address has another host key
    say(f"{name}: removed")
    if reload:
        reload_stack(home)


def clean_all(
    home: LabHome, *, say: Callable[[str], None] = lambda _m: None
) -> tuple[list[str], dict[str, str]]:
    """Remove every VM: (the names removed, {name: why} for those that could not be)."""
    removed: list[str] = []
    failed: dict[str, str] = {}
    for name in store.vm_names(home):
        try:
            clean_vm(home, name, reload=False, say=say)
            removed.append(name)
        except (PvmlabError, OSError) as exc:
            failed[name] = str(exc)
            say(f"{name}: not removed: {exc}")
    if removed:
        reload_stack(home)
    return removed, failed


def purge(home: LabHome, *, say: Callable[[str], None] = lambda _m: None) -> None:
    """Everything: VMs, the stack, the lab network, and the home's own entries."""
    if not home.exists():
        say(f"no lab home at {home.root}")
        return
    root = home.root.resolve()
    if root == Path("/") or root == Path.home().resolve():
        raise StateError(f"refusing to purge {root}", "set PVMLAB_HOME to the lab's own directory")
    if store.vm_names(home):
        clean_all(home, say=say)
    from pvmlab.network import lab as network
    from pvmlab.stack import control

    if control.is_stack_running(home):
        control.stop_stack(home)
        say("provisioner stack stopped")
    if network.is_up(home):
        network.down(home)
        say("lab network removed")
    for sub in home.subdirs:
        shutil.rmtree(sub, ignore_errors=True)
    for f in home.own_files:
        _unlink(f)
    left = sorted(p.name for p in home.root.iterdir())
    if left:
        say(f"kept {home.root}: it holds files pvmlab did not create ({', '.join(left)})")
    else:
        home.root.rmdir()
        say(f"removed {home.root}")
