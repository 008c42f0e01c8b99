"""Removing VMs (``vm clean``) and the whole lab (``pvmlab clean --purge``).

A VM is stopped first, then its definition, its directory (vars, disk, runtime state), logs,
pid file and sockets are deleted and a running stack drops its reservation. ``--purge`` also
stops the stack, takes the lab network down and deletes the lab home's own entries: only names
pvmlab creates are removed, so a home pointed at a directory with other files keeps them.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from pvmlab.errors import PvmlabError, StateError
from pvmlab.home import LabHome
from pvmlab.records import store
from pvmlab.stack import grubcfg
from pvmlab.vm import runtime, ssh, state
from pvmlab.vm.define import reload_stack

log = logging.getLogger(__name__)

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


def clean_vm(
    home: LabHome, name: str, *, reload: bool = True, say: Callable[[str], None] = lambda _m: None
) -> None:
    """Stop VM ``name`` and remove everything of it; works from the name alone, so a VM whose
    record is damaged can be removed too."""
    try:
        vm = store.load_vm(home, name)
        ip: str | None = vm.ip
        mac: str | None = vm.mac
    except PvmlabError:
        ip = mac = None  # a damaged record: no address whose host key could be forgotten
    with runtime.vm_locked(home, name):
        how = runtime.stop_vm_locked(home, name, force=True, say=say)  # unknown name: error
        if how != "not-running":
            say(f"{name}: stopped ({how})")
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
