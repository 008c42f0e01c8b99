"""End to end: once a machine has reported itself installed, its network boot hands over to its
local disk (PXE first, the disk as the second boot entry), under OVMF, AAVMF and SeaBIOS.

The "installed system" on the disk is a stand-in, since a real install needs the uplink:
- UEFI: a FAT disk (QEMU's vvfat, converted to qcow2) holding the lab's own iPXE as the
  removable-media boot file, with an ``autoexec.ipxe`` that prints a marker. Reaching it after
  the PXE chain proves: firmware PXE -> iPXE -> per-MAC script says "installed" and exits with an
  error -> OVMF tries its next boot entry -> the disk boots.
- BIOS: a 512-byte MBR boot sector that writes the marker to the first serial port. The NIC
  ROM's iPXE runs ``sanboot --drive 0x80``; if that failed, the script's ``exit 1`` would make
  SeaBIOS try the disk itself, so this proves the disk boots instead of the installer, not
  which of the two paths got there (the iPXE ROM prints to VGA only).
The status is recorded through the library call the HTTP route uses (the route itself, and its
address check, are unit-tested).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_pvmlab
from pvmlab.assets.ipxe import FIRST_STAGES
from pvmlab.home import LabHome
from pvmlab.records import store
from pvmlab.records.models import DistroAssets
from pvmlab.stack import installcfg

pytestmark = pytest.mark.integration

DISK_MARK = "PVMLAB-LOCAL-DISK-OK"


@pytest.fixture
def lab(running_home: Path) -> Path:
    return running_home  # tests/conftest.py


def fake_distro(home: LabHome, arch: str) -> None:
    """A distro record for the VM (its kernel is never fetched: the machine is installed)."""
    folder = store.distro_dir(home, "debian-12", arch)
    folder.mkdir(parents=True)
    (folder / "vmlinuz").write_bytes(b"not booted")
    (folder / "initrd").write_bytes(b"not booted")
    store.save_distro(home, DistroAssets(
        name="debian-12", arch=arch, kernel_sha256="0" * 64, initrd_sha256="0" * 64,  # type: ignore[arg-type]
        kernel_size=10, initrd_size=10, source="netboot",
    ))  # fmt: skip


UEFI_BOOT = {"x86_64": ("efi-x86_64", "BOOTX64.EFI"), "aarch64": ("efi-arm64", "BOOTAA64.EFI")}


def installed_disk(home: LabHome, arch: str, dest: Path, work: Path) -> None:
    """A qcow2 disk that boots (UEFI removable-media path) iPXE, which prints DISK_MARK."""
    role, name = UEFI_BOOT[arch]
    boot = work / "EFI" / "BOOT"
    boot.mkdir(parents=True)
    (boot / name).write_bytes((home.tftp / FIRST_STAGES[role]).read_bytes())
    (boot / "autoexec.ipxe").write_text(f"#!ipxe\necho {DISK_MARK}\nshell\n")
    dest.unlink()
    subprocess.run(["qemu-img", "convert", "-q", "-O", "qcow2", f"fat:{work}", str(dest)],
                   check=True, timeout=60)  # fmt: skip


def boot_sector_disk(dest: Path, work: Path) -> None:
    """A qcow2 disk whose MBR writes DISK_MARK to COM1 (port 0x3f8) and halts."""
    message = f"{DISK_MARK}\r\n".encode() + b"\0"
    code = bytearray()
    code += b"\xfa\xfc"  # cli; cld
    code += b"\x31\xc0\x8e\xd8"  # xor ax,ax; mov ds,ax
    at_si = len(code)
    code += b"\xbe\x00\x00"  # mov si, message (patched below)
    code += b"\xba\xf8\x03"  # mov dx, 0x3f8
    loop = len(code)
    code += b"\xac\x84\xc0\x74\x03"  # lodsb; test al,al; jz done
    code += b"\xee"  # out dx, al
    code += bytes([0xEB, (loop - (len(code) + 2)) & 0xFF])  # jmp loop
    code += b"\xf4\xeb\xfd"  # done: hlt; jmp done
    code[at_si + 1 : at_si + 3] = (0x7C00 + len(code)).to_bytes(2, "little")
    sector = bytes(code) + message
    raw = work / "mbr.img"
    work.mkdir(parents=True)
    raw.write_bytes(sector.ljust(510, b"\0") + b"\x55\xaa" + bytes(1024 * 1024 - 512))
    dest.unlink()
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(dest)],
                   check=True, timeout=60)  # fmt: skip


@pytest.mark.parametrize(
    ("arch", "firmware", "net_boot"),
    [
        ("x86_64", "uefi", "pxe"),
        ("x86_64", "bios", "pxe"),
        ("aarch64", "uefi", "pxe"),
        ("x86_64", "uefi", "http"),  # UEFI HTTP Boot: iPXE over HTTP, then the same hand-over
    ],
)
def test_installed_machine_boots_its_disk_after_pxe(
    tmp_path: Path, lab: Path, arch: str, firmware: str, net_boot: str
) -> None:
    home = LabHome(lab)
    fake_distro(home, arch)
    vm = json.loads(run_pvmlab(
        "vm", "create", "inst1", "--arch", arch, "--firmware", firmware, "--distro",
        "debian-12", "--unattended", "--disk-size", "64M", "--net-boot", net_boot, "--json",
        home=lab,
    ).stdout)  # fmt: skip
    disk = home.vm_dir("inst1") / "disk.qcow2"
    if firmware == "uefi":
        installed_disk(home, arch, disk, tmp_path / "fat")
    else:
        boot_sector_disk(disk, tmp_path / "mbr")
    spec = store.load_vm(home, "inst1")
    installcfg.record_status(home, spec, "installed", "stand-in disk", spec.ip)

    proc = subprocess.run(
        [
            sys.executable, "-m", "pvmlab.cli.main", "--home", str(lab),
            "vm", "start", "inst1", "--accel", "tcg", "--wait", "--wait-for", DISK_MARK,
            "--timeout", "400",
        ],
        capture_output=True, text=True, timeout=500, cwd=REPO,
    )  # fmt: skip
    console = (lab / "logs" / "inst1.log").read_text(errors="replace")
    assert proc.returncode == 0, proc.stdout + proc.stderr + console[-3000:]
    said = "pvmlab: inst1 is installed, booting its local disk"
    if firmware == "uefi":  # OVMF copies iPXE's console to the serial port; SeaBIOS does not
        assert said in console
        assert console.index(said) < console.index(DISK_MARK)
    reqs = [json.loads(ln) for ln in (lab / "logs" / "http.log").read_text().splitlines()]
    mine = [(r["path"], r["status"]) for r in reqs if r.get("client") == vm["ip"]]
    assert ("/boot.ipxe", 200) in mine
    assert ("/ipxe", 200) in mine
    if firmware == "uefi" and net_boot == "pxe":  # OVMF's HTTP Boot entry came before the
        assert ("/no-http-boot", 404) in mine  # disk, and was refused
    if net_boot == "http":  # the first stage came over HTTP, and no refusal was needed
        assert (f"/tftp/{FIRST_STAGES[UEFI_BOOT[arch][0]]}", 200) in mine
        assert ("/no-http-boot", 404) not in mine
    assert not [p for p, _ in mine if p.startswith(("/images/", "/preseed/"))]

    with contextlib.suppress(subprocess.TimeoutExpired):
        run_pvmlab("vm", "stop", "inst1", "--force", home=lab, check=False, timeout=60)
    run_pvmlab("vm", "reinstall", "inst1", home=lab)
    assert installcfg.status_summary(home, store.load_vm(home, "inst1")) == "pending"
