"""The local boot media of ``vm start --boot ipxe``: iPXE on a virtual FAT drive.

A UEFI firmware boots ``EFI/BOOT/BOOTX64.EFI`` (x86_64) or ``BOOTAA64.EFI`` (aarch64) from any
FAT drive that has no boot entry of its own (the removable-media fallback), so a directory with
the lab's staged iPXE under that name, handed to QEMU as a ``vvfat`` drive, boots iPXE without
the firmware doing any network step: no firmware DHCP (EDK2's PXE collects offers for a fixed
~4 s), no TFTP. iPXE started from a disk reads ``autoexec.ipxe`` from the directory it was loaded
from (its console says ``file:autoexec.ipxe... ok``) and runs it at once, so there is no Ctrl-B
prompt either; the script is the one the stack serves over TFTP (``pvmlab.stack.autoexec``:
DHCP, then chain ``boot.ipxe``), so the rest of the chain is the network boot's.

The directory is ``vms/NAME/ipxe-media/``, rebuilt from ``tftp/`` at each start (the stack
stages the binaries there when it starts), so it always holds what the stack serves.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pvmlab.arch import UEFI, Arch, Firmware, architecture, firmware
from pvmlab.errors import StateError
from pvmlab.home import LabHome, write_atomic
from pvmlab.records.models import LabSpec
from pvmlab.stack import autoexec

BIOS_PROBLEM = "legacy BIOS targets already boot iPXE from the NIC ROM; use --boot pxe"


def media_dir(home: LabHome, name: str) -> Path:
    return home.vm_ipxe_media(name)


def check(arch: Arch, fw: Firmware, name: str = "NAME") -> None:
    """Refuse what the mode cannot do, before anything is touched."""
    if not firmware(fw).removable_media:
        raise StateError(BIOS_PROBLEM, f"start it with `pvmlab vm start {name} --boot pxe`")
    if fw not in architecture(arch).first_stages:
        raise StateError(f"no iPXE boot media for {arch}", "use --boot pxe")


def build(home: LabHome, name: str, arch: Arch, lab: LabSpec, fw: Firmware = UEFI.name) -> Path:
    """(Re)build VM ``name``'s media directory from the staged iPXE; returns the directory."""
    target = architecture(arch)
    boot_name = target.efi_boot_file
    staged = home.tftp_file(target.first_stages[fw].tftp_name)
    if not staged.is_file():
        raise StateError(
            f"the stack has no iPXE for {arch} staged ({staged} is missing)",
            "restart the provisioner (`pvmlab provisioner start`) or see `pvmlab distro ipxe`",
        )
    root = media_dir(home, name)
    shutil.rmtree(root, ignore_errors=True)
    boot_dir = root / "EFI" / "BOOT"
    boot_dir.mkdir(parents=True)
    shutil.copyfile(staged, boot_dir / boot_name)
    # Next to the binary: iPXE looks there first, then at the root of the drive.
    write_atomic(boot_dir / autoexec.NAME, autoexec.render(lab))
    return root
