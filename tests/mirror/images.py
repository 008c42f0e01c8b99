"""Disk images in the layouts of real cloud images, built without root.

Filesystems are made with ``mkfs.ext4 -d DIR`` (no mount); partition tables are written here
(GPT with protective MBR, primary and backup headers and CRCs; or a classic MBR with an
extended partition); qcow2 comes from ``qemu-img convert -c`` (compressed, like Ubuntu's).

``ubuntu_noble`` mirrors Ubuntu 24.04's cloud image: GPT entry 1 the root filesystem
(``cloudimg-rootfs``, with an empty /boot mount point) placed last on the disk, 14 BIOS boot, 15
the ESP, 16 an ext4 ``BOOT`` holding ``vmlinuz-<ver>``/``initrd.img-<ver>`` for two versions plus
the ``vmlinuz``/``initrd.img`` (and ``.old``) symlinks. There is no ``mkfs.vfat`` here
(dosfstools is not installed), so the ESP and BIOS boot partitions are zero-filled placeholders
of the right type; the extractor must skip them either way.

``debian_rootboot`` has /boot inside the root filesystem (Debian's genericcloud layout, with
``/vmlinuz`` symlinks at the top of the root) and ``mbr_logical`` puts such a root filesystem in
a logical partition of an MBR disk.
"""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

SECTOR = 512
MIB = 1024 * 1024
ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
BIOS_BOOT = "21686148-6449-6e6f-744e-656564454649"
LINUX = "0fc63daf-8483-4772-8e79-3d69d8477de4"
ROOT_X86_64 = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
XBOOTLDR = "bc13c2ff-59e6-4262-a352-b275fd6f7172"


def fake_kernel(arch: str, size: int, seed: str) -> bytes:
    """Random bytes with the header marks of a real kernel for ``arch`` (gzip for aarch64,
    as Ubuntu's arm64 vmlinuz is)."""
    rnd = bytearray(_rand(size, seed))
    if arch == "x86_64":
        rnd[0:2] = b"MZ"
        rnd[0x202:0x206] = b"HdrS"
        return bytes(rnd)
    rnd[0x38:0x3C] = b"ARM\x64"
    return gzip.compress(bytes(rnd), compresslevel=1)


def _rand(size: int, seed: str) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += zlib.compress(f"{seed}{counter}".encode())  # cheap, deterministic filler
        out += os.urandom(4096)
        counter += 1
    return bytes(out[:size])


def mkext4(src: Path, out: Path, size_mib: int, label: str) -> Path:
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", label, "-d", str(src), str(out), f"{size_mib}M"],
        check=True,
        capture_output=True,
    )
    return out


@dataclass
class Part:
    number: int
    type_guid: str
    name: str
    size: int  # bytes (multiple of 1 MiB)
    content: Path | None = None  # raw filesystem image written at the start


def _crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def write_gpt(out: Path, parts: list[Part], order: list[int] | None = None) -> dict[int, int]:
    """Write a GPT disk; partitions are laid out in ``order`` (numbers), 1 MiB aligned.

    Returns partition number -> start byte.
    """
    order = order or [p.number for p in parts]
    by_num = {p.number: p for p in parts}
    pos = MIB
    starts: dict[int, int] = {}
    for n in order:
        starts[n] = pos
        pos += by_num[n].size
    total = pos + MIB
    sectors = total // SECTOR
    n_entries, esize = 128, 128
    entries = bytearray(n_entries * esize)
    for p in parts:
        first = starts[p.number] // SECTOR
        last = first + p.size // SECTOR - 1
        e = (
            uuid.UUID(p.type_guid).bytes_le
            + uuid.uuid4().bytes_le
            + struct.pack("<QQQ", first, last, 0)
            + p.name.encode("utf-16-le").ljust(72, b"\0")
        )
        entries[(p.number - 1) * esize : p.number * esize] = e
    ecrc = _crc(bytes(entries))
    disk_guid = uuid.uuid4().bytes_le
    entry_sectors = n_entries * esize // SECTOR

    def header(current: int, backup: int, entries_lba: int) -> bytes:
        h = bytearray(
            struct.pack(
                "<8sIIIIQQQQ16sQIII",
                b"EFI PART",
                0x00010000,
                92,
                0,
                0,
                current,
                backup,
                2 + entry_sectors,
                sectors - 2 - entry_sectors,
                disk_guid,
                entries_lba,
                n_entries,
                esize,
                ecrc,
            )
        )
        struct.pack_into("<I", h, 16, _crc(bytes(h)))
        return bytes(h).ljust(SECTOR, b"\0")

    mbr = bytearray(SECTOR)
    mbr[446:462] = struct.pack(
        "<B3sB3sII", 0, b"\0\x02\0", 0xEE, b"\xff\xff\xff", 1, min(sectors - 1, 0xFFFFFFFF)
    )
    mbr[510:512] = b"\x55\xaa"
    with out.open("wb") as fh:
        fh.truncate(total)
        fh.write(mbr)
        fh.write(header(1, sectors - 1, 2))
        fh.write(entries)
        fh.seek((sectors - 1 - entry_sectors) * SECTOR)
        fh.write(entries)
        fh.write(header(sectors - 1, 1, sectors - 1 - entry_sectors))
        for p in parts:
            if p.content is not None:
                fh.seek(starts[p.number])
                fh.write(p.content.read_bytes())
    return starts


def write_mbr_logical(out: Path, primary: Part, logical: Part) -> None:
    """An MBR disk: one primary partition, then an extended one holding one logical partition."""
    p1_start = MIB // SECTOR
    p1_len = primary.size // SECTOR
    ext_start = p1_start + p1_len
    ebr_to_log = MIB // SECTOR
    log_len = logical.size // SECTOR
    ext_len = ebr_to_log + log_len
    total = (ext_start + ext_len) * SECTOR + MIB

    def entry(ptype: int, start: int, count: int) -> bytes:
        return struct.pack("<B3sB3sII", 0, b"\0\0\0", ptype, b"\0\0\0", start, count)

    mbr = bytearray(SECTOR)
    mbr[446:462] = entry(0x83, p1_start, p1_len)
    mbr[462:478] = entry(0x05, ext_start, ext_len)
    mbr[510:512] = b"\x55\xaa"
    ebr = bytearray(SECTOR)
    ebr[446:462] = entry(0x83, ebr_to_log, log_len)
    ebr[510:512] = b"\x55\xaa"
    with out.open("wb") as fh:
        fh.truncate(total)
        fh.write(mbr)
        fh.seek(ext_start * SECTOR)
        fh.write(ebr)
        for start, part in ((p1_start, primary), (ext_start + ebr_to_log, logical)):
            if part.content is not None:
                fh.seek(start * SECTOR)
                fh.write(part.content.read_bytes())


def to_qcow2(raw: Path, out: Path) -> Path:
    subprocess.run(
        ["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(out)],
        check=True,
        capture_output=True,
    )
    return out


@dataclass(frozen=True)
class Built:
    image: Path  # qcow2 (or raw for the MBR case)
    raw: Path
    kernel: bytes  # the newest kernel's bytes
    initrd: bytes
    version: str
    older: str


def _boot_files(
    d: Path, arch: str, versions: list[str], naming: str = "debian"
) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for v in versions:
        k = fake_kernel(arch, 1_500_000 + len(v) * 1000, f"k{v}")
        i = _rand(900_000 + len(v) * 777, f"i{v}")
        (d / f"vmlinuz-{v}").write_bytes(k)
        initrd_name = f"initrd.img-{v}" if naming == "debian" else f"initramfs-{v}.img"
        (d / initrd_name).write_bytes(i)
        files[f"k{v}"], files[f"i{v}"] = k, i
    return files


def ubuntu_noble(work: Path, arch: str = "x86_64") -> Built:
    """Ubuntu 24.04's cloud image layout, qcow2 (see the module docstring)."""
    work.mkdir(parents=True, exist_ok=True)
    new, old = "6.8.0-45-generic", "6.8.0-9-generic"  # natural order: 45 > 9
    boot = work / "boot-tree"
    boot.mkdir()
    files = _boot_files(boot, arch, [old, new])
    (boot / "vmlinuz").symlink_to(f"vmlinuz-{new}")
    (boot / "initrd.img").symlink_to(f"initrd.img-{new}")
    (boot / "vmlinuz.old").symlink_to(f"vmlinuz-{old}")
    (boot / "initrd.img.old").symlink_to(f"initrd.img-{old}")
    (boot / "grub").mkdir()
    (boot / "grub" / "grub.cfg").write_text("# placeholder\n")
    root = work / "root-tree"
    (root / "boot").mkdir(parents=True)  # empty mount point for p16
    (root / "etc").mkdir()
    (root / "etc" / "os-release").write_text('NAME="Ubuntu"\nVERSION_ID="24.04"\n')
    p16 = mkext4(boot, work / "p16.ext4", 24, "BOOT")
    p1 = mkext4(root, work / "p1.ext4", 16, "cloudimg-rootfs")
    raw = work / "noble.raw"
    write_gpt(
        raw,
        [
            Part(1, LINUX, "", 16 * MIB, p1),
            Part(14, BIOS_BOOT, "", 4 * MIB),
            Part(15, ESP, "", 8 * MIB),
            Part(16, XBOOTLDR, "", 24 * MIB, p16),
        ],
        order=[14, 15, 16, 1],
    )
    qcow = to_qcow2(raw, work / f"noble-server-cloudimg-{arch}.img")
    return Built(qcow, raw, files[f"k{new}"], files[f"i{new}"], new, old)


def debian_rootboot(work: Path, arch: str = "x86_64") -> Built:
    """/boot inside the root filesystem, /vmlinuz symlinks at its top (Debian genericcloud)."""
    work.mkdir(parents=True, exist_ok=True)
    new, old = "6.1.0-28-cloud-amd64", "6.1.0-9-cloud-amd64"
    root = work / "root-tree"
    (root / "boot").mkdir(parents=True)
    files = _boot_files(root / "boot", arch, [old, new])
    (root / "vmlinuz").symlink_to(f"boot/vmlinuz-{new}")
    (root / "initrd.img").symlink_to(f"boot/initrd.img-{new}")
    (root / "etc").mkdir()
    p1 = mkext4(root, work / "p1.ext4", 24, "")
    raw = work / "debian.raw"
    write_gpt(
        raw,
        [
            Part(1, ROOT_X86_64, "", 24 * MIB, p1),
            Part(14, BIOS_BOOT, "", 1 * MIB),
            Part(15, ESP, "", 4 * MIB),
        ],
        order=[14, 15, 1],
    )
    qcow = to_qcow2(raw, work / "debian-12-genericcloud-amd64.qcow2")
    return Built(qcow, raw, files[f"k{new}"], files[f"i{new}"], new, old)


def mbr_logical(work: Path, arch: str = "x86_64") -> Built:
    """A raw MBR disk: an empty primary ext4, the root (with /boot) in a logical partition;
    Fedora's initramfs-VER.img naming."""
    work.mkdir(parents=True, exist_ok=True)
    new, old = "6.14.2-300.fc42.x86_64", "6.14.0-63.fc42.x86_64"
    root = work / "root-tree"
    (root / "boot").mkdir(parents=True)
    files = _boot_files(root / "boot", arch, [old, new], naming="fedora")
    other = work / "other-tree"
    other.mkdir()
    (other / "data.txt").write_text("not a boot partition\n")
    p1 = mkext4(other, work / "p1.ext4", 8, "data")
    p5 = mkext4(root, work / "p5.ext4", 24, "root")
    raw = work / "mbr.raw"
    write_mbr_logical(raw, Part(1, "", "", 8 * MIB, p1), Part(5, "", "", 24 * MIB, p5))
    return Built(raw, raw, files[f"k{new}"], files[f"i{new}"], new, old)


def no_kernel(work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    tree = work / "empty-tree"
    (tree / "boot").mkdir(parents=True)
    (tree / "boot" / "vmlinuz-1.0").write_bytes(b"kernel without initrd")
    p1 = mkext4(tree, work / "p1.ext4", 8, "root")
    raw = work / "nokernel.raw"
    write_gpt(raw, [Part(1, LINUX, "", 8 * MIB, p1)])
    return to_qcow2(raw, work / "nokernel.qcow2")
