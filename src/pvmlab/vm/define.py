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
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError as PydanticError

from pvmlab import spawn
from pvmlab.arch import (
    DEFAULT_LOADER,
    DEFAULT_NET_BOOT,
    Loader,
    architecture,
    check_loader,
    check_net_boot,
    check_pair,
    parse_loader,
    parse_net_boot,
)
from pvmlab.errors import DependencyError, ValidationError
from pvmlab.home import LabHome
from pvmlab.qemu import firmware as firmware_mod
from pvmlab.records import store, validate
from pvmlab.records.models import (
    DEFAULT_CPUS,
    DEFAULT_FIRMWARE,
    DEFAULT_MEMORY_MIB,
    Arch,
    LabSpec,
    VMSpec,
    first_problem,
)
from pvmlab.stack import installcfg
from pvmlab.stack.endpoint import lab_endpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CreateRequest:
    name: str
    arch: str
    firmware: str = DEFAULT_FIRMWARE
    net_boot: str = DEFAULT_NET_BOOT
    mac: str | None = None
    ip: str | None = None
    ipv6: str | None = None  # a DHCPv6 reservation inside the lab's /64 (labs with IPv6)
    distro: str | None = None
    cmdline: str | None = None
    memory_mib: int = DEFAULT_MEMORY_MIB
    cpus: int = DEFAULT_CPUS
    disk_size: str | None = None
    install: str | None = None  # an install kind, or "default" (the distro's shipped one)
    install_template: Path | None = None  # the user's template (None: the shipped default)
    mirror: str | None = None
    proxy: str | None = None
    image: Path | None = None  # deploy this image onto the disk (pvmlab.deploy)
    loader: str | None = None  # None: the distro's default loader, else GRUB under Secure Boot
    secure_boot: bool = False


def choose_loader(requested: str | None, distro_loader: Loader | None, secure_boot: bool) -> Loader:
    """The first stage a new VM gets: the one asked for, else its distro's, else GRUB (through
    shim) under Secure Boot and iPXE otherwise."""
    if requested is not None:
        return parse_loader(requested)
    if distro_loader is not None:
        return distro_loader
    return "grub" if secure_boot else DEFAULT_LOADER


_Address = TypeVar("_Address", ipaddress.IPv4Address, ipaddress.IPv6Address)


def _check_reservable(
    addr: _Address,
    what: str,
    *,
    provisioner: _Address,
    dynamic: tuple[_Address, _Address],
    server: str,
    flag: str,
    taken: dict[str, str],
) -> _Address:
    """``addr`` (``what``: VM address, VM IPv6 address) may be reserved for a VM: it is not the
    provisioner's, lies outside the ``server``'s (DHCP, DHCPv6) dynamic range and no other VM
    (``taken``: address -> VM) has it. ``flag`` is the option that would pick one instead."""
    if addr == provisioner:
        raise ValidationError(
            f"{what} {addr} is the provisioner's address", "choose another address"
        )
    start, end = dynamic
    if start <= addr <= end:
        raise ValidationError(
            f"{what} {addr} is inside the {server} dynamic range {start}-{end}",
            f"choose an address outside it (or omit {flag} to get the lowest free one)",
        )
    if str(addr) in taken:
        raise ValidationError(
            f"{what} {addr} is already used by VM {taken[str(addr)]!r}",
            f"choose another address (or omit {flag})",
        )
    return addr


def check_ip(lab: LabSpec, value: str, taken: dict[str, str]) -> ipaddress.IPv4Address:
    addr = validate.ipv4_in(value, lab.network, "VM address")
    return _check_reservable(addr, "VM address", provisioner=lab.ip, dynamic=lab.dhcp_range,
                             server="DHCP", flag="--ip", taken=taken)  # fmt: skip


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


def check_http_boot_firmware(arch: Arch) -> None:
    """The UEFI firmware QEMU's descriptors give this architecture has the HTTP Boot driver."""
    from pvmlab.qemu import firmware as firmware_mod

    machine = architecture(arch).machine("uefi")
    fw = firmware_mod.find_uefi(arch, machine)
    try:
        found = firmware_mod.has_http_boot(fw.code)
    except OSError as exc:
        raise DependencyError(
            f"cannot read UEFI firmware {fw.code}: {exc.strerror}", "check the file's permissions"
        ) from None
    if not found:
        raise DependencyError(
            f"the UEFI firmware for {arch} ({fw.code}, from {fw.descriptor.name}) has no HTTP"
            " Boot driver",
            "use --net-boot pxe, or install an EDK2 build with NETWORK_HTTP_BOOT_ENABLE and a"
            " QEMU firmware descriptor for it (/etc/qemu/firmware)",
        )


def check_ipv6(lab: LabSpec, value: str, taken: dict[str, str]) -> ipaddress.IPv6Address:
    addr = validate.ipv6_in(value, lab.iface6.network, "VM IPv6 address")
    return _check_reservable(addr, "VM IPv6 address", provisioner=lab.iface6.ip,
                             dynamic=lab.ipv6_dhcp_range, server="DHCPv6", flag="--ipv6",
                             taken=taken)  # fmt: skip


def allocate_ipv6(lab: LabSpec, taken: set[str]) -> ipaddress.IPv6Address:
    """The lowest free address of the /64 below the DHCPv6 dynamic range (``PREFIX::2`` up)."""
    base = int(lab.iface6.network.network_address)
    start, _ = lab.ipv6_dhcp_range
    for n in range(base + 1, int(start)):
        addr = ipaddress.IPv6Address(n)
        if addr != lab.iface6.ip and str(addr) not in taken:
            return addr
    raise ValidationError(
        f"no free IPv6 address left below the DHCPv6 dynamic range {start}",
        "remove a VM (`pvmlab vm clean NAME`) or give its address with --ipv6",
    )


def set_lab_ipv6(home: LabHome, lab: LabSpec, ipv6: str | None) -> tuple[LabSpec, list[VMSpec]]:
    """Give a defined lab an IPv6 prefix (``ipv6``: its address, from
    ``validate.ipv6_interface``), or take it away (None); the lock must be held. Each VM gets a
    reservation in the new prefix (the lowest free one) or loses its own. Returns the lab and the
    VMs whose record changed; nothing is written when a check fails."""
    if ipv6 is None and not lab.has_ipv4:
        raise ValidationError(
            "this lab is IPv6-only: without IPv6 it would have no address",
            "keep its IPv6 prefix, or define a new lab",
        )
    try:
        new_lab = LabSpec.model_validate({**lab.model_dump(), "ipv6": ipv6})
    except PydanticError as exc:
        raise ValidationError(
            f"cannot give the lab IPv6 {ipv6}: {first_problem(exc)}",
            "give the prefix alone (the provisioner takes ::1) or an address below ::1000",
        ) from None
    vms, damaged = store.scan_vms(home)
    if damaged:
        raise ValidationError(
            f"VM record {damaged[0].path} cannot be read, so its IPv6 address cannot be changed",
            damaged[0].hint,
        )
    changed: list[VMSpec] = []
    taken: set[str] = set()
    for vm in sorted(vms, key=lambda v: v.name):
        if ipv6 is None:
            update: str | None = None
        else:
            update = str(allocate_ipv6(new_lab, taken))
            taken.add(update)
        if update != vm.ipv6:
            changed.append(vm.model_copy(update={"ipv6": update}))
    return new_lab, changed


def validate_request(home: LabHome, lab: LabSpec, req: CreateRequest) -> VMSpec:
    """All checks of ``vm create``; the lock must be held. Returns the VM to write."""
    name = validate.vm_name(req.name)
    arch = validate.arch(req.arch)
    firmware = validate.firmware(req.firmware)
    check_pair(arch, firmware)  # legacy BIOS exists only for x86_64
    net_boot = parse_net_boot(req.net_boot)
    check_net_boot(firmware, net_boot)  # HTTP Boot exists only in UEFI
    if net_boot == "http":
        check_http_boot_firmware(arch)
    memory = validate.memory_mib(req.memory_mib)
    cpus = validate.cpus(req.cpus)
    disk_bytes = validate.disk_size(req.disk_size) if req.disk_size is not None else None
    cmdline = validate.cmdline(req.cmdline) if req.cmdline is not None else None
    for what, url in (("mirror", req.mirror), ("proxy", req.proxy)):
        if url is not None:
            installcfg.check_url(url, what)
    distro = None
    distro_loader: Loader | None = None
    if req.distro is not None:
        distro = validate.distro_name(req.distro)
        assets = store.load_distro(home, distro, arch)
        if assets is None:
            raise ValidationError(
                f"unknown distro {distro!r} for {arch}",
                "see `pvmlab distro ls`; add one with `pvmlab distro import`",
            )
        distro_loader = assets.loader
    loader = choose_loader(req.loader, distro_loader, req.secure_boot)
    check_loader(firmware, loader, req.secure_boot)
    if req.secure_boot:
        firmware_mod.require_secure_boot(arch, architecture(arch).machine(firmware))

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
    ip: str | None = None
    if lab.has_ipv4:
        ips = {d.ip: d.name for d in damaged if d.ip} | {
            v.ip: v.name for v in existing if v.ip is not None
        }
        addr = check_ip(lab, req.ip, ips) if req.ip is not None else allocate_ip(lab, set(ips))
        ip = str(addr)
    elif req.ip is not None:
        raise ValidationError(
            f"the lab is IPv6-only: VM {name} cannot have the IPv4 address {req.ip}",
            "omit --ip (give --ipv6 ADDR for its reservation)",
        )
    ipv6: str | None = None
    if lab.has_ipv6:
        taken6 = {v.ipv6: v.name for v in existing if v.ipv6 is not None}
        ipv6 = str(
            check_ipv6(lab, req.ipv6, taken6)
            if req.ipv6 is not None
            else allocate_ipv6(lab, set(taken6))
        )
    elif req.ipv6 is not None:
        raise ValidationError(
            f"the lab has no IPv6 prefix: VM {name} cannot have the IPv6 address {req.ipv6}",
            "omit --ipv6, or define the lab with `pvmlab provisioner create --ipv6 PREFIX/64`",
        )
    return VMSpec(
        name=name,
        arch=arch,
        firmware=firmware,
        net_boot=net_boot,
        mac=mac,
        ip=ip,
        ipv6=ipv6,
        distro=distro,
        cmdline=cmdline,
        memory_mib=memory,
        cpus=cpus,
        disk_bytes=disk_bytes,
        mirror=req.mirror,
        proxy=req.proxy,
        loader=loader,
        secure_boot=req.secure_boot,
    )


def create(home: LabHome, req: CreateRequest) -> VMSpec:
    """Validate, write ``vms/NAME.json`` (and the disk), then tell a running stack."""
    home.require()
    lab = store.load_lab(home)
    with home.locked():
        vm = validate_request(home, lab, req)
        if req.image is not None:
            from pvmlab.deploy import image

            vm, template = image.configure(
                home, vm, req.image, vm.disk_bytes, req.install, req.install_template
            )
            image.ramdisk_for(home, vm)
        else:
            vm, template = installcfg.resolve(home, vm, req.install, req.install_template)
        installcfg.check(home, lab, vm, lab_endpoint(lab).base_url, template)
        vm_dir = home.vm_dir(vm.name)
        made_dir = not vm_dir.exists()
        try:
            vm_dir.mkdir(parents=True, exist_ok=True)
            if vm.disk_bytes is not None:
                disk = home.vm_disk(vm.name)
                spawn.run(
                    ["qemu-img", "create", "-q", "-f", "qcow2", str(disk), str(vm.disk_bytes)]
                )
            installcfg.store_template(home, vm, template)
            store.save_vm(home, vm)
        except BaseException:
            if made_dir:
                shutil.rmtree(vm_dir, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                home.vm_file(vm.name).unlink()
            raise
    from pvmlab.vm import ssh

    ssh.forget_host(home, vm.address)  # a new machine: a key recorded for its address is stale
    reload_stack(home)
    return vm


def reinstall(
    home: LabHome,
    name: str,
    install: str | None = None,
    template: Path | None = None,
    *,
    mirror: str | None = None,
    proxy: str | None = None,
) -> VMSpec:
    """Have VM ``name`` install again at its next network boot: its install status is cleared
    (so its iPXE script boots the installer again). With ``install`` its install configuration
    is replaced first, with ``mirror``/``proxy`` those; the result is checked by rendering it,
    as at create."""
    lab = store.load_lab(home)
    with home.locked():
        vm = store.load_vm(home, validate.vm_name(name))
        changes = {
            what: installcfg.check_url(url, what)
            for what, url in (("mirror", mirror), ("proxy", proxy))
            if url is not None
        }
        vm = vm.model_copy(update=changes)
        text = None
        if vm.image_sha256 is not None:
            from pvmlab.deploy import image, state

            if install is not None or changes:
                raise ValidationError(
                    f"VM {vm.name} is deployed from an image",
                    "`pvmlab vm reinstall NAME` alone deploys it again",
                )
            image.ramdisk_for(home, vm)
            if not home.deploy_image(vm.image_sha256).is_file():
                vm = _reprepare(home, vm)
            state.clear(home, vm.name)
        elif install is not None:
            vm, text = installcfg.resolve(home, vm, install, template)
        elif vm.install is None:
            raise ValidationError(
                f"VM {vm.name} has no unattended install",
                "give one: --unattended, or --preseed/--autoinstall/--kickstart/--user-data FILE",
            )
        installcfg.check(home, lab, vm, lab_endpoint(lab).base_url, text)
        if install is not None:
            installcfg.store_template(home, vm, text)
        if vm.image_sha256 is not None:
            store.save_vm(home, vm)
        if install is not None or changes:
            store.save_vm(home, vm)
        installcfg.clear_status(home, vm.name)
    from pvmlab.vm import ssh

    ssh.forget_host(home, vm.address)  # the reinstalled machine comes back with new SSH host keys
    return vm


def _reprepare(home: LabHome, vm: VMSpec) -> VMSpec:
    """The raw form of the VM's image is gone from the lab home: make it again from the path
    given at create (refused when that file now holds another image)."""
    from pvmlab.deploy import image

    prepared = image.prepare(home, Path(str(vm.image)))
    if prepared.sha256 != vm.image_sha256:
        raise ValidationError(
            f"the image {vm.image} of VM {vm.name} changed since it was created",
            f"make the VM again: `pvmlab vm clean {vm.name}`, then `pvmlab vm create --image`",
        )
    return vm


def reload_stack(home: LabHome) -> None:
    """Have a running stack re-read the reservations (a no-op when it is stopped)."""
    from pvmlab.stack import control

    control.reload_stack(home)
