"""The pure parts of a disk image: partition arithmetic, the sfdisk script, the boot loader's
files, the root's fstab, the recipe and its cache key. No I/O here (``build`` does it).

The disk (all sizes in 512-byte sectors, partitions aligned to 1 MiB):

    LBA 0        protective MBR
    LBA 1-33     primary GPT header and entries
    1 MiB        p1  ESP, FAT32, label ESP: EFI/BOOT/BOOT<ARCH>.EFI (systemd-boot),
                     loader/loader.conf, loader/entries/pvmlab.conf, EFI/pvmlab/{vmlinuz,initrd}-VER
    after ESP    p2  root, ext4, label root: up to the last whole MiB before the backup GPT
    last 33      backup GPT

The root partition is the last one, so whoever writes the image onto a larger disk grows it in
place (cloud-init's growpart, or a deploy ramdisk).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from pvmlab.arch import Arch, architecture

SECTOR = 512
MIB = 1024 * 1024
ALIGN_SECTORS = MIB // SECTOR  # 2048
GPT_BACKUP_SECTORS = 33  # backup header (1) + 128 entries of 128 bytes (32)
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ESP_LABEL = "ESP"
ROOT_LABEL = "root"
ESP_SIZE_DEFAULT = 256 * MIB
ROOT_PARTITION = 2
ESP_PARTITION = 1
LOADER_ENTRY = "pvmlab.conf"  # loader/entries/<this> on the ESP
KERNEL_DIR = "EFI/pvmlab"  # on the ESP: vmlinuz-VER, initrd.img-VER

# What every image gets beyond Debian's essential set (``--variant=apt``): each is needed for
# the image to boot from its disk, take cloud-init's data and be reached over SSH.
BASE_PACKAGES: tuple[str, ...] = (
    "systemd-sysv",  # init
    "udev",
    "dbus",
    "initramfs-tools",  # the initrd the loader entry names
    "systemd-boot-efi",  # the EFI boot loader, taken from the image itself (its arch)
    "e2fsprogs",  # fsck and resize2fs of the root
    "fdisk",  # sfdisk, for growpart
    "cloud-guest-utils",  # growpart: cloud-init grows the root partition to the disk
    "cloud-init",
    "openssh-server",
    "openssh-sftp-server",  # scp (`vm cp`) speaks SFTP
    "ifupdown",  # cloud-init's network renderer on Debian
    "isc-dhcp-client",
    "sudo",  # cloud-init's default user
)


@dataclass(frozen=True)
class Distro:
    """A distro images can be built from: its suite and archive."""

    name: str
    suite: str
    mirror: str  # the default archive URL
    kernel_package: str  # with {debian_arch} to fill in


DISTROS: dict[str, Distro] = {
    "debian-12": Distro(
        name="debian-12",
        suite="bookworm",
        mirror="http://deb.debian.org/debian",
        kernel_package="linux-image-{debian_arch}",
    ),
}


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the root filesystem tarball (its cache key hashes all of it)."""

    distro: str
    suite: str
    arch: Arch
    mirror: str
    packages: tuple[str, ...]  # every package asked for, base ones included, sorted
    source_date_epoch: int

    def as_dict(self) -> dict[str, object]:
        return {
            "distro": self.distro,
            "suite": self.suite,
            "arch": self.arch,
            "mirror": self.mirror,
            "packages": list(self.packages),
            "source_date_epoch": self.source_date_epoch,
            "format": RECIPE_FORMAT,
        }

    @property
    def key(self) -> str:
        """The cache key: the sha256 of the canonical JSON of the recipe, 16 hex digits."""
        text = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# Bumped whenever the mmdebstrap hooks change what goes into the tarball.
RECIPE_FORMAT = 1


def make_recipe(
    distro: Distro, arch: Arch, extra: Sequence[str], mirror: str | None, epoch: int
) -> Recipe:
    kernel = distro.kernel_package.format(debian_arch=architecture(arch).debian_arch)
    packages = tuple(sorted({*BASE_PACKAGES, kernel, *extra}))
    return Recipe(
        distro=distro.name,
        suite=distro.suite,
        arch=arch,
        mirror=(mirror or distro.mirror).rstrip("/"),
        packages=packages,
        source_date_epoch=epoch,
    )


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # sector
    size: int  # sectors
    type_guid: str
    uuid: str  # PARTUUID
    name: str

    @property
    def offset(self) -> int:
        return self.start * SECTOR

    @property
    def size_bytes(self) -> int:
        return self.size * SECTOR


@dataclass(frozen=True)
class Layout:
    disk_size: int  # bytes
    disk_guid: str
    esp: Partition
    root: Partition

    @property
    def partitions(self) -> tuple[Partition, Partition]:
        return (self.esp, self.root)


def _align_up(sectors: int) -> int:
    return -(-sectors // ALIGN_SECTORS) * ALIGN_SECTORS


def image_uuids(name: str, key: str) -> dict[str, str]:
    """The image's identifiers, derived from its name and recipe (the same inputs give the same
    image, byte for byte where the tools allow)."""
    ns = uuid.uuid5(uuid.NAMESPACE_URL, f"pvmlab-image:{name}:{key}")
    return {
        what: str(uuid.uuid5(ns, what))
        for what in ("disk", "esp-part", "root-part", "root-fs")
    } | {"esp-fs": hashlib.sha256(f"{ns}:esp".encode()).hexdigest()[:8].upper()}


def plan_layout(
    arch: Arch, disk_size: int, uuids: dict[str, str], esp_size: int = ESP_SIZE_DEFAULT
) -> Layout:
    """Place the ESP at 1 MiB and the root after it, up to the last whole MiB before the backup
    GPT. ValueError when the disk is too small for both."""
    if disk_size % SECTOR:
        raise ValueError(f"disk size {disk_size} is not a whole number of sectors")
    total = disk_size // SECTOR
    esp_start = ALIGN_SECTORS
    esp_sectors = _align_up(esp_size // SECTOR)
    root_start = esp_start + esp_sectors
    last_usable = total - GPT_BACKUP_SECTORS - 1
    root_end = ((last_usable + 1) // ALIGN_SECTORS) * ALIGN_SECTORS  # exclusive, aligned
    root_sectors = root_end - root_start
    if root_sectors < ALIGN_SECTORS:
        raise ValueError(
            f"a {disk_size} byte disk leaves no room for a root partition after the "
            f"{esp_size} byte ESP"
        )
    return Layout(
        disk_size=disk_size,
        disk_guid=uuids["disk"],
        esp=Partition(ESP_PARTITION, esp_start, esp_sectors, ESP_TYPE, uuids["esp-part"], "ESP"),
        root=Partition(
            ROOT_PARTITION,
            root_start,
            root_sectors,
            architecture(arch).gpt_root_type,
            uuids["root-part"],
            "root",
        ),
    )


def auto_disk_size(rootfs_bytes: int, esp_size: int = ESP_SIZE_DEFAULT) -> int:
    """A disk that holds the root files with a third to spare (at least 512 MiB free), rounded
    up to 256 MiB: small to store and stream; the root grows to the target disk at first boot."""
    root = rootfs_bytes + max(rootfs_bytes // 3, 512 * MIB)
    total = MIB + esp_size + root + MIB
    step = 256 * MIB
    return -(-total // step) * step


def sfdisk_script(layout: Layout) -> str:
    """The input sfdisk reads to write the GPT (``sfdisk --no-reread --no-tell-kernel FILE``)."""
    lines = [
        "label: gpt",
        f"label-id: {layout.disk_guid}",
        "unit: sectors",
        f"first-lba: {ALIGN_SECTORS}",
        "",
    ]
    for p in layout.partitions:
        lines.append(
            f"start={p.start}, size={p.size}, type={p.type_guid}, uuid={p.uuid}, name={p.name}"
        )
    return "\n".join(lines) + "\n"


def kernel_cmdline(arch: Arch, root_fs_uuid: str) -> str:
    """The loader entry's command line: the root by filesystem UUID, the arch's serial console
    (the last console= is /dev/console, where systemd puts its getty)."""
    console = architecture(arch).serial_console
    return f"root=UUID={root_fs_uuid} ro rootwait console=tty0 console={console},115200n8"


def loader_conf() -> str:
    """systemd-boot's loader.conf: boot the one entry at once (no menu)."""
    return f"default {LOADER_ENTRY}\ntimeout 0\nconsole-mode keep\n"


def loader_entry(title: str, kernel_version: str, cmdline: str) -> str:
    """A Boot Loader Specification type 1 entry naming the kernel and initrd on the ESP."""
    for value in (title, kernel_version, cmdline):
        if "\n" in value or "\r" in value:
            raise ValueError(f"a newline in a loader entry value: {value!r}")
    return (
        f"title {title}\n"
        f"version {kernel_version}\n"
        f"linux /{KERNEL_DIR}/vmlinuz-{kernel_version}\n"
        f"initrd /{KERNEL_DIR}/initrd.img-{kernel_version}\n"
        f"options {cmdline}\n"
    )


def fstab(root_fs_uuid: str, esp_part_uuid: str) -> str:
    return (
        "# written by pvmlab image build\n"
        f"UUID={root_fs_uuid} / ext4 defaults,errors=remount-ro 0 1\n"
        f"PARTUUID={esp_part_uuid} /boot/efi vfat umask=0077,nofail 0 2\n"
    )
