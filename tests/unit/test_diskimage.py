"""Method 1 without root: partition tables, filesystem probing and kernel extraction from
qcow2/raw images built in real cloud-image layouts (tests/mirror/images.py), read with the real
qemu-img and debugfs."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from mirror import images
from pvmlab.assets import diskimage, extract
from pvmlab.assets.kernelinfo import kernel_arch
from pvmlab.errors import ValidationError
from pvmlab.home import LabHome
from pvmlab.records import store

pytestmark = pytest.mark.skipif(
    not (shutil.which("qemu-img") and shutil.which("mkfs.ext4") and shutil.which("debugfs")),
    reason="needs qemu-img and e2fsprogs (scripts/install-system-deps.sh)",
)


@pytest.fixture(scope="module")
def noble(tmp_path_factory: pytest.TempPathFactory) -> images.Built:
    return images.ubuntu_noble(tmp_path_factory.mktemp("noble"))


@pytest.fixture(scope="module")
def debian(tmp_path_factory: pytest.TempPathFactory) -> images.Built:
    return images.debian_rootboot(tmp_path_factory.mktemp("debian"))


def test_gpt_of_noble_layout(noble: images.Built) -> None:
    disk = diskimage.DiskImage(noble.image)
    assert disk.format == "qcow2"
    parts = {p.number: p for p in diskimage.partitions(disk)}
    assert sorted(parts) == [1, 14, 15, 16]
    assert parts[15].type == diskimage.ESP_GUID
    assert parts[14].start < parts[15].start < parts[16].start < parts[1].start  # p1 is last
    assert diskimage.probe_fs(disk, parts[16]) == diskimage.FsInfo("ext", "BOOT")
    assert diskimage.probe_fs(disk, parts[1]) == diskimage.FsInfo("ext", "cloudimg-rootfs")
    assert diskimage.probe_fs(disk, parts[15]).kind == "unknown"  # zeroed placeholder ESP
    # The same table read from the raw image, without qemu-img.
    raw = diskimage.DiskImage(noble.raw)
    assert raw.format == "raw"
    assert diskimage.partitions(raw) == list(parts.values())


def test_noble_extraction_is_byte_identical(noble: images.Built, tmp_path: Path) -> None:
    got = extract.extract(noble.image, tmp_path)
    assert got.kernel.read_bytes() == noble.kernel
    assert got.initrd.read_bytes() == noble.initrd
    c = got.choice
    assert (c.partition.number, c.fs_label, c.directory) == (16, "BOOT", "/")
    assert c.version == "6.8.0-45-generic"  # newer than 6.8.0-9 in version order
    assert c.versions == ["6.8.0-9-generic", "6.8.0-45-generic"]
    assert c.default_version == "6.8.0-45-generic"  # the vmlinuz symlink, resolved
    assert "6.8.0-45-generic" in c.describe() and "partition 16" in c.describe()


def test_rootfs_boot_directory(debian: images.Built, tmp_path: Path) -> None:
    got = extract.extract(debian.image, tmp_path)
    assert (
        hashlib.sha256(got.kernel.read_bytes()).digest() == hashlib.sha256(debian.kernel).digest()
    )
    assert got.initrd.read_bytes() == debian.initrd
    assert (got.choice.partition.number, got.choice.directory) == (1, "/boot")
    assert got.choice.default_version == debian.version  # from /vmlinuz -> boot/vmlinuz-…


def test_mbr_logical_partition_raw_image(tmp_path: Path) -> None:
    fixture = tmp_path / "fixture"
    fixture.mkdir()
    built = images.mbr_logical(fixture)
    parts = diskimage.partitions(diskimage.DiskImage(built.image))
    assert [p.number for p in parts] == [1, 5]
    got = extract.extract(built.image, tmp_path)
    assert got.kernel.read_bytes() == built.kernel
    assert got.initrd.read_bytes() == built.initrd  # initramfs-VER.img naming
    assert got.choice.partition.number == 5


def test_import_from_image_records_version(noble: images.Built, tmp_path: Path) -> None:
    h = LabHome(tmp_path / "home")
    res = extract.import_from_image(h, "noble", "x86_64", noble.image, "console=ttyS0")
    a = res.imported.assets
    assert a.source == "cloud-image" and a.version == "6.8.0-45-generic"
    assert a.kernel_sha256 == hashlib.sha256(noble.kernel).hexdigest()
    assert (h.images / "noble/x86_64/vmlinuz").read_bytes() == noble.kernel
    assert (h.images / "noble/x86_64/initrd").read_bytes() == noble.initrd
    assert store.load_distro(h, "noble", "x86_64") == a


def test_wrong_arch_refused(noble: images.Built, tmp_path: Path) -> None:
    h = LabHome(tmp_path / "home")
    with pytest.raises(ValidationError, match="built for x86_64, not aarch64"):
        extract.import_from_image(h, "noble", "aarch64", noble.image, None)
    assert not h.root.exists()


def test_arm64_gzip_kernel_recognised(tmp_path: Path) -> None:
    k = tmp_path / "vmlinuz"
    k.write_bytes(images.fake_kernel("aarch64", 200_000, "a"))
    assert kernel_arch(k) == "aarch64"
    k.write_bytes(images.fake_kernel("x86_64", 200_000, "x"))
    assert kernel_arch(k) == "x86_64"
    k.write_bytes(b"\0" * 4096)
    assert kernel_arch(k) is None


def test_truncated_qcow2_refused(noble: images.Built, tmp_path: Path) -> None:
    cut = tmp_path / "cut.img"
    data = noble.image.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    h = LabHome(tmp_path / "home")
    with pytest.raises(ValidationError, match="damaged or truncated qcow2") as err:
        extract.import_from_image(h, "cut", "x86_64", cut, None)
    assert "\n" not in str(err.value)
    assert not h.root.exists()
    assert not list(tmp_path.glob("**/kernel.out"))


def test_image_without_kernel_refused(tmp_path: Path) -> None:
    img = images.no_kernel(tmp_path)
    h = LabHome(tmp_path / "home")
    with pytest.raises(ValidationError, match="no kernel with a matching initrd") as err:
        extract.import_from_image(h, "empty", "x86_64", img, None)
    assert "partition 1:/boot" in err.value.problem
    assert not h.root.exists()


def test_not_an_image_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"hello" * 10)
    with pytest.raises(ValidationError):
        extract.extract(junk, tmp_path)


def test_damaged_gpt_header_refused(noble: images.Built, tmp_path: Path) -> None:
    bad = tmp_path / "bad.raw"
    data = bytearray(noble.raw.read_bytes())
    data[512 + 40] ^= 0xFF  # inside the primary header, after its CRC
    bad.write_bytes(bytes(data))
    with pytest.raises(ValidationError, match="GPT header checksum"):
        diskimage.partitions(diskimage.DiskImage(bad))


@pytest.mark.parametrize(
    ("versions", "newest"),
    [
        (["6.8.0-9-generic", "6.8.0-45-generic", "6.8.0-31-generic"], "6.8.0-45-generic"),
        (["5.15.0-100-generic", "6.1.0-9-amd64"], "6.1.0-9-amd64"),
        (["6.14.2-300.fc42.x86_64", "6.14.10-300.fc42.x86_64"], "6.14.10-300.fc42.x86_64"),
    ],
)
def test_version_order(versions: list[str], newest: str) -> None:
    assert sorted(versions, key=extract.version_key)[-1] == newest
