"""Method 1: the kernel and initrd taken out of a cloud image, without root, FUSE or guestmount.

    image (qcow2/raw) --diskimage--> partition table (GPT/MBR, parsed in Python)
        --probe--> ext partitions, boot-like ones first (GPT name or fs label "boot": Ubuntu
                   24.04's p16 BOOT, Fedora's /boot), then the others (root filesystems)
        --extfs (debugfs)--> "/" and "/boot" of each: versioned kernels (vmlinuz-VER) and their
                   initrds (initrd.img-VER, initramfs-VER.img, initrd-VER)
        --> the newest version (natural version order), the vmlinuz/initrd.img symlinks resolved
            to say which version the image itself boots by default
        --> both files dumped and imported (``distro.import_result``)

Why these means: QEMU's ``qemu-img`` reads qcow2 exactly as QEMU does (compressed clusters
and all) and can convert just one partition's byte range; e2fsprogs' ``debugfs`` is the
reference ext4 reader and opens a filesystem at an offset inside a raw file. Both run as an
ordinary user and exist on macOS (Homebrew ``qemu``, ``e2fsprogs``). Only the partition that
holds the kernel is converted (Ubuntu's BOOT partition is about 100 MiB of a 3.5 GiB disk).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pvmlab.assets import diskimage, distro
from pvmlab.assets.diskimage import DiskImage, FsInfo, Partition
from pvmlab.assets.extfs import Entry, ExtFs
from pvmlab.errors import ValidationError
from pvmlab.home import LabHome
from pvmlab.records import validate

KERNEL_PREFIXES = ("vmlinuz-", "vmlinux-")
INITRD_PATTERNS = ("initrd.img-{v}", "initramfs-{v}.img", "initrd-{v}", "initrd-{v}.img")


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order: 6.8.0-45-generic sorts after 6.8.0-9-generic."""
    parts = re.split(r"(\d+)", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p)


@dataclass
class Choice:
    partition: Partition
    fs_label: str
    directory: str
    version: str
    kernel: str
    initrd: str
    kernel_size: int
    initrd_size: int
    versions: list[str] = field(default_factory=list)
    default_version: str | None = None

    @property
    def kernel_path(self) -> str:
        return f"{self.directory.rstrip('/')}/{self.kernel}"

    @property
    def initrd_path(self) -> str:
        return f"{self.directory.rstrip('/')}/{self.initrd}"

    def describe(self) -> str:
        where = self.partition.describe()
        if self.fs_label:
            where += f" (ext, label {self.fs_label!r})"
        text = f"found kernel {self.version} in {where} at {self.kernel_path}"
        if len(self.versions) > 1:
            text += f"; newest of {', '.join(self.versions)}"
        if self.default_version == self.version:
            text += " (the image's vmlinuz link points to it too)"
        elif self.default_version:
            text += f" (the image's vmlinuz link points to {self.default_version})"
        return text


@dataclass(frozen=True)
class Extracted:
    kernel: Path
    initrd: Path
    choice: Choice


def _candidates(entries: dict[str, Entry]) -> dict[str, tuple[Entry, Entry]]:
    found: dict[str, tuple[Entry, Entry]] = {}
    for name, e in entries.items():
        if not e.is_file or e.size == 0 or "rescue" in name:
            continue
        prefix = next((p for p in KERNEL_PREFIXES if name.startswith(p)), None)
        if prefix is None:
            continue
        version = name[len(prefix) :]
        if not version or version.endswith((".old", ".bak", ".sig")):
            continue
        for pat in INITRD_PATTERNS:
            ie = entries.get(pat.format(v=version))
            if ie is not None and ie.is_file and ie.size > 0:
                found[version] = (e, ie)
                break
    return found


def _default_version(fs: ExtFs, directory: str, entries: dict[str, Entry]) -> str | None:
    """The version the image's own ``vmlinuz`` symlink points to, if there is one."""
    places = [(directory, entries)]
    if directory != "/":
        top = fs.listdir("/")
        if top:
            places.append(("/", top))
    for d, ents in places:
        link = ents.get("vmlinuz")
        if link is not None and link.is_symlink:
            target = fs.readlink(f"{d.rstrip('/')}/vmlinuz").strip()
            base = target.rsplit("/", 1)[-1]
            for prefix in KERNEL_PREFIXES:
                if base.startswith(prefix):
                    return base[len(prefix) :]
    return None


def _order(parts: list[tuple[Partition, FsInfo]]) -> list[tuple[Partition, FsInfo]]:
    ext = [(p, fs) for p, fs in parts if fs.kind == "ext"]

    def bootlike(item: tuple[Partition, FsInfo]) -> bool:
        p, fs = item
        return "boot" in fs.label.lower() or "boot" in p.name.lower()

    return [x for x in ext if bootlike(x)] + [x for x in ext if not bootlike(x)]


def extract(image: Path, workdir: Path) -> Extracted:
    """Find the newest kernel + initrd in ``image`` and copy them into ``workdir``."""
    disk = DiskImage(image)
    table = diskimage.partitions(disk)
    probed = [(p, diskimage.probe_fs(disk, p)) for p in table]
    looked: list[str] = []
    for part, fsinfo in _order(probed):
        with disk.partition_file(part, workdir) as (raw, offset):
            fs = ExtFs(raw, offset)
            for directory in ("/", "/boot"):
                entries = fs.listdir(directory)
                looked.append(f"{part.describe()}:{directory}")
                if not entries:
                    continue
                cands = _candidates(entries)
                if not cands:
                    continue
                versions = sorted(cands, key=version_key)
                newest = versions[-1]
                ke, ie = cands[newest]
                choice = Choice(
                    partition=part,
                    fs_label=fsinfo.label,
                    directory=directory,
                    version=newest,
                    kernel=ke.name,
                    initrd=ie.name,
                    kernel_size=ke.size,
                    initrd_size=ie.size,
                    versions=versions,
                    default_version=_default_version(fs, directory, entries),
                )
                kout = fs.dump(choice.kernel_path, "kernel.out")
                iout = fs.dump(choice.initrd_path, "initrd.out")
                for got, want, what in (
                    (kout, ke.size, "kernel"),
                    (iout, ie.size, "initrd"),
                ):
                    if got.stat().st_size != want:
                        raise ValidationError(
                            f"{image}: the {what} read back has {got.stat().st_size} bytes, "
                            f"the filesystem says {want}",
                            "the image is damaged or truncated",
                        )
                return Extracted(kout, iout, choice)
    skipped = [f"{p.describe()} ({fs.kind})" for p, fs in probed if fs.kind != "ext"]
    detail = f"looked in {', '.join(looked) or 'no ext filesystem'}"
    if skipped:
        detail += f"; not readable here: {', '.join(skipped)}"
    raise ValidationError(
        f"no kernel with a matching initrd found in {image} ({detail})",
        "is it a Linux cloud image? kernels are expected as vmlinuz-VERSION next to "
        "initrd.img-VERSION or initramfs-VERSION.img on an ext2/3/4 filesystem",
    )


@dataclass(frozen=True)
class FromImage:
    imported: distro.ImportResult
    choice: Choice

    @property
    def note(self) -> str:
        return self.choice.describe()


def import_from_image(
    home: LabHome,
    name: str,
    arch: str,
    image: Path,
    cmdline: str | None,
    *,
    source: str = "cloud-image",
    origin: str | None = None,
    workdir: Path | None = None,
) -> FromImage:
    """Extract from ``image`` and import as NAME/ARCH. Input is validated before any work."""
    name = validate.distro_name(name)
    arch = validate.arch(arch)
    if cmdline:
        validate.cmdline(cmdline)
    image = validate.existing_file(image, "image")
    with tempfile.TemporaryDirectory(prefix="pvmlab-extract-", dir=workdir) as tmp:
        got = extract(image, Path(tmp))
        res = distro.import_result(
            home,
            name,
            arch,
            got.kernel,
            got.initrd,
            cmdline,
            source=source,
            version=got.choice.version,
            origin=origin or str(image),
        )
    return FromImage(res, got.choice)
