"""``vm create``: validate a VM definition against the lab and write it.

The whole check-and-write runs under ``LabHome.locked()``, so concurrent ``vm create`` calls
never hand out the same MAC or IP (a VM start or stop does not take that lock). A damaged
record of another VM does not stop it: the MAC and IP it still names are avoided. Nothing is
written until every check passed; a failure while creating the disk removes what was made.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import shutil
from dataclasses import dataclass

from pvmlab import spawn
from pvmlab.errors import ValidationError
from pvmlab.home import LabHome
from pvmlab.records import store, validate
from pvmlab.records.models import LabSpec, VMSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CreateRequest:
    name: str
    arch: str
    firmware: str = "uefi"
    mac: str | None = None
    ip: str | None = None
    distro: str | None = None
    cmdline: str | None = None
    memory_mib: int = 1024
    cpus: int = 1
    disk_size: str | None = None


def check_ip(lab: LabSpec, value: str, taken: dict[str, str]) -> ipaddress.IPv4Address:
    addr = validate.ipv4_in(value, lab.network, "VM address")
    if addr == lab.ip:
        raise ValidationError(
            f"VM address {addr} is the provisioner's address", "choose another address"
        )
    if lab.in_dynamic_range(addr):
        raise ValidationError(
            f"VM address {addr} is inside the DHCP dynamic range {lab.dhcp_start}-{lab.dhcp_end}",
            "choose an address outside it (or omit --ip to get the lowest free one)",
        )
    if str(addr) in taken:
        raise ValidationError(
            f"VM address {addr} is already used by VM {taken[str(addr)]!r}",
            "choose another address (or omit --ip)",
        )
    return addr


def allocate_ip(lab: LabSpec, taken: set[str]) -> ipaddress.IPv4Address:
    """The lowest free host address outside the dynamic range (so below it, when there is room)."""
    for addr in lab.network.hosts():
        if addr == lab.ip or lab.in_dynamic_range(addr) or str(addr) in taken:
            continue
        return addr
    raise ValidationError(
        f"no free address left in {lab.network} outside the dynamic range",
        "remove a VM (`pvmlab vm clean NAME`) or give the lab a larger subnet",
    )


def validate_request(home: LabHome, lab: LabSpec, req: CreateRequest) -> VMSpec:
    """All checks of ``vm create``; the lock must be held. Returns the VM to write."""
    name = validate.vm_name(req.name)
    arch = validate.arch(req.arch)
    if req.firmware not in validate.FIRMWARES:
        raise ValidationError(
            f"unknown firmware {req.firmware!r}", f"choose one of: {', '.join(validate.FIRMWARES)}"
        )
    if req.firmware == "bios" and arch != "x86_64":
        raise ValidationError(
            f"legacy BIOS firmware exists only for x86_64, not {arch}",
            "use --firmware uefi (the default) for aarch64",
        )
    memory = validate.memory_mib(req.memory_mib)
    cpus = validate.cpus(req.cpus)
    disk_bytes = validate.disk_size(req.disk_size) if req.disk_size is not None else None
    cmdline = validate.cmdline(req.cmdline) if req.cmdline is not None else None
    distro = None
    if req.distro is not None:
        distro = validate.distro_name(req.distro)
        if store.load_distro(home, distro, arch) is None:
            raise ValidationError(
                f"unknown distro {distro!r} for {arch}",
                "see `pvmlab distro ls`; add one with `pvmlab distro import`",
            )

    existing, damaged = store.scan_vms(home)
    if home.vm_file(name).exists() or any(v.name == name for v in existing):
        raise ValidationError(
            f"a VM named {name!r} already exists", "choose another name or `pvmlab vm clean` it"
        )
    # A damaged record does not block the lab, but the addresses it still names stay taken.
    macs = {d.mac: d.name for d in damaged if d.mac} | {v.mac: v.name for v in existing}
    if req.mac is not None:
        mac = validate.mac(req.mac)
        if mac in macs:
            raise ValidationError(
                f"MAC address {mac} is already used by VM {macs[mac]!r}",
                "choose another MAC (or omit --mac to get a random one)",
            )
    else:
        mac = validate.random_mac(macs)
    ips = {d.ip: d.name for d in damaged if d.ip} | {v.ip: v.name for v in existing}
    addr = check_ip(lab, req.ip, ips) if req.ip is not None else allocate_ip(lab, set(ips))
    return VMSpec(
        name=name,
        arch=arch,  # type: ignore[arg-type]
        firmware=req.firmware,  # type: ignore[arg-type]
        mac=mac,
        ip=str(addr),
        distro=distro,
        cmdline=cmdline,
        memory_mib=memory,
        cpus=cpus,
        disk_bytes=disk_bytes,
    )


def create(home: LabHome, req: CreateRequest) -> VMSpec:
    """Validate, write ``vms/NAME.json`` (and the disk), then tell a running stack."""
    home.require()
    lab = store.load_lab(home)
    with home.locked():
        vm = validate_request(home, lab, req)
        vm_dir = home.vm_dir(vm.name)
        made_dir = not vm_dir.exists()
        try:
            vm_dir.mkdir(parents=True, exist_ok=True)
            if vm.disk_bytes is not None:
                disk = vm_dir / "disk.qcow2"
                spawn.run(
                    ["qemu-img", "create", "-q", "-f", "qcow2", str(disk), str(vm.disk_bytes)]
                )
            store.save_vm(home, vm)
        except BaseException:
            if made_dir:
                shutil.rmtree(vm_dir, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                home.vm_file(vm.name).unlink()
            raise
    reload_stack(home)
    return vm


def reload_stack(home: LabHome) -> None:
    """Have a running stack re-read the reservations (a no-op when it is stopped)."""
    from pvmlab.stack import control

    control.reload(home)
