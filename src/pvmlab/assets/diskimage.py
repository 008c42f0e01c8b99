"""Disk images without root: qcow2 or raw, GPT or MBR, read as plain files.

Nothing is mounted and no block device is attached (no loop devices, nbd, FUSE or
guestmount), so this works as an ordinary user and on macOS.

- A raw image is read directly.
- Any other format QEMU knows (qcow2 above all, compressed clusters included) is read through
  ``qemu-img convert`` with QEMU's ``raw`` driver layered on top of the image with an ``offset``
  and a ``size``: only the requested byte range is converted, sparse, to a temporary raw file.
  That is how a partition table (a few KiB) and then one partition are pulled out of a cloud
  image without converting the whole disk. QEMU's reader is used rather than a qcow2 parser of
  our own because it handles every variant (compression types, extended L2, backing files,
  external data files) correctly, and qemu-img ships with QEMU, which the lab needs anyway.
- Partition tables are parsed here (``struct``): GPT (header and entry-array CRCs checked,
  512- and 4096-byte sectors) and MBR (primary and logical partitions).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import struct
import tempfile
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pvmlab import spawn
from pvmlab.errors import DependencyError, ProcessError, ValidationError

QCOW2_MAGIC = b"QFI\xfb"
ESP_GUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
LINUX_FS_GUID = "0fc63daf-8483-4772-8e79-3d69d8477de4"
EXTENDED_MBR = {0x05, 0x0F, 0x85}


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes
    size: int  # bytes
    type: str  # GPT type GUID, or the MBR type as 0xNN
    name: str  # GPT partition name ("" for MBR)

    def describe(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"partition {self.number}{label}"


def _qemu_img() -> str:
    path = shutil.which("qemu-img")
    if path is None:
        raise DependencyError(
            "qemu-img is needed to read this disk image",
            "install QEMU's tools (Debian/Ubuntu: apt-get install qemu-utils; macOS: brew install "
            "qemu)",
        )
    return path


def _opt_escape(value: str) -> str:
    return value.replace(",", ",,")


class DiskImage:
    """A disk image opened read-only; ``read`` gives bytes, ``export`` a raw file of a range."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._info_data: dict[str, object] | None = None
        try:
            with path.open("rb") as fh:
                magic = fh.read(4)
        except OSError as exc:
            raise ValidationError(
                f"cannot read image {str(path)!r}: {exc.strerror}", "check the path"
            ) from None
        if magic == QCOW2_MAGIC:
            self.format = "qcow2"
        else:
            self.format = self._probe_format()
        self.size = self._virtual_size()
        if self.format == "qcow2":
            self._check()

    def _check(self) -> None:
        """Refuse a damaged or truncated qcow2 up front (metadata only: fast)."""
        proc = spawn.run(
            [_qemu_img(), "check", "--output=json", "-f", "qcow2", "--", str(self.path)],
            timeout=600,
            check=False,
        )
        try:
            report = json.loads(proc.stdout) if proc.stdout.strip() else {}
        except json.JSONDecodeError:
            report = {}
        bad = int(report.get("corruptions", 0)) + int(report.get("check-errors", 0))
        if proc.returncode in (1, 2) or bad:
            detail = f"{bad} error(s)" if bad else _qemu_error_text(proc.stderr)
            raise ValidationError(
                f"{self.path} is a damaged or truncated qcow2 image (qemu-img check: {detail})",
                "download it again",
            )

    def _probe_format(self) -> str:
        if shutil.which("qemu-img") is None:
            return "raw"
        info = self._info()
        fmt = str(info.get("format", "raw"))
        return fmt if re.fullmatch(r"[a-z0-9_-]+", fmt) else "raw"

    def _info(self) -> dict[str, object]:
        """``qemu-img info`` of the image (asked once: format probing and size both use it)."""
        if self._info_data is None:
            self._info_data = self._ask_info()
        return self._info_data

    def _ask_info(self) -> dict[str, object]:
        try:
            proc = spawn.run(
                [_qemu_img(), "info", "--output=json", "--", str(self.path)], timeout=60
            )
            data = json.loads(proc.stdout)
        except (ProcessError, json.JSONDecodeError) as exc:
            raise ValidationError(
                f"{self.path} is not a readable disk image: {_first_line(exc)}",
                "give a qcow2 or raw disk image",
            ) from None
        return data if isinstance(data, dict) else {}

    def _virtual_size(self) -> int:
        if self.format == "raw":
            return self.path.stat().st_size
        size = self._info().get("virtual-size")
        if not isinstance(size, int):
            raise ValidationError(f"{self.path}: cannot tell the disk size", "is it a disk image?")
        return size

    def _image_opts(self, offset: int, size: int) -> str:
        return (
            f"driver=raw,offset={offset},size={size},"
            f"file.driver={self.format},file.file.driver=file,"
            f"file.file.filename={_opt_escape(str(self.path.resolve()))}"
        )

    def export(self, offset: int, size: int, dest: Path, timeout: float = 1800) -> None:
        """Write bytes [offset, offset+size) of the virtual disk to ``dest`` as a raw file."""
        if offset < 0 or size <= 0 or offset + size > self.size:
            raise ValidationError(
                f"{self.path}: range {offset}+{size} lies outside the {self.size}-byte disk",
                "the partition table points past the end of the image (truncated image?)",
            )
        if self.format == "raw":
            with self.path.open("rb") as fin, dest.open("wb") as fout:
                fin.seek(offset)
                left = size
                while left:
                    chunk = fin.read(min(left, 1 << 20))
                    if not chunk:
                        raise ValidationError(
                            f"{self.path} ends before byte {offset + size}",
                            "the image is truncated",
                        )
                    fout.write(chunk)
                    left -= len(chunk)
            return
        try:
            spawn.run(
                [
                    _qemu_img(),
                    "convert",
                    "--image-opts",
                    self._image_opts(offset, size),
                    "-O",
                    "raw",
                    str(dest),
                ],
                timeout=timeout,
            )
        except ProcessError as exc:
            raise ValidationError(
                f"cannot read {self.path} ({self.format}): {_qemu_error(exc)}",
                "the image is damaged or truncated; download it again",
            ) from None

    def read(self, offset: int, size: int) -> bytes:
        size = min(size, self.size - offset)
        if size <= 0:
            return b""
        if self.format == "raw":
            with self.path.open("rb") as fh:
                fh.seek(offset)
                return fh.read(size)
        # QEMU's raw driver wants sector-aligned windows.
        start = offset - offset % 512
        end = min(-(-(offset + size) // 512) * 512, self.size)
        with tempfile.TemporaryDirectory(prefix="pvmlab-read-") as tmp:
            out = Path(tmp) / "range.raw"
            self.export(start, end - start, out)
            data = out.read_bytes()
        return data[offset - start : offset - start + size]

    @contextlib.contextmanager
    def partition_file(self, part: Partition, workdir: Path) -> Iterator[tuple[Path, int]]:
        """A raw file holding ``part`` and the offset of the partition in it.

        For a raw image that is the image itself (through a symlink with a plain name) at the
        partition's offset; otherwise the partition converted to a temporary raw file.
        """
        if self.format == "raw":
            link = workdir / f"disk-{uuid.uuid4().hex[:8]}.raw"
            link.symlink_to(self.path.resolve())
            try:
                yield link, part.start
            finally:
                link.unlink(missing_ok=True)
            return
        out = workdir / f"part{part.number}-{uuid.uuid4().hex[:8]}.raw"
        try:
            self.export(part.start, part.size, out)
            yield out, 0
        finally:
            out.unlink(missing_ok=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _qemu_error_text(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no details"


def _qemu_error(exc: ProcessError) -> str:
    return _qemu_error_text(exc.stderr) if exc.stderr.strip() else _first_line(exc)


# --- partition tables ------------------------------------------------------------------------


def _guid(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw))


def _parse_gpt(disk: DiskImage, sector: int) -> list[Partition] | None:
    header = disk.read(sector, 512)
    if header[:8] != b"EFI PART":
        return None
    hsize = struct.unpack_from("<I", header, 12)[0]
    if not 92 <= hsize <= len(header):
        raise ValidationError(
            f"{disk.path}: GPT header has an invalid size", "the image is damaged"
        )
    crc = struct.unpack_from("<I", header, 16)[0]
    zeroed = header[:16] + b"\0\0\0\0" + header[20:hsize]
    if zlib.crc32(zeroed) & 0xFFFFFFFF != crc:
        raise ValidationError(f"{disk.path}: GPT header checksum mismatch", "the image is damaged")
    entries_lba, count, esize, ecrc = struct.unpack_from("<QIII", header, 72)
    if esize < 128 or count > 1024:
        raise ValidationError(f"{disk.path}: implausible GPT entry array", "the image is damaged")
    table = disk.read(entries_lba * sector, count * esize)
    if len(table) < count * esize or zlib.crc32(table) & 0xFFFFFFFF != ecrc:
        raise ValidationError(
            f"{disk.path}: GPT partition entries are damaged or missing", "the image is truncated?"
        )
    parts: list[Partition] = []
    for i in range(count):
        e = table[i * esize : (i + 1) * esize]
        if e[:16] == b"\0" * 16:
            continue
        first, last = struct.unpack_from("<QQ", e, 32)
        name = e[56:128].decode("utf-16-le", errors="replace").split("\0", 1)[0]
        parts.append(
            Partition(i + 1, first * sector, (last - first + 1) * sector, _guid(e[:16]), name)
        )
    return parts


def _mbr_entries(sector0: bytes) -> list[tuple[int, int, int]]:
    out = []
    for i in range(4):
        e = sector0[446 + 16 * i : 446 + 16 * (i + 1)]
        ptype = e[4]
        start, count = struct.unpack_from("<II", e, 8)
        if ptype and count:
            out.append((ptype, start, count))
    return out


def _parse_mbr(disk: DiskImage, sector0: bytes) -> list[Partition]:
    parts: list[Partition] = []
    for n, (ptype, start, count) in enumerate(_mbr_entries(sector0), start=1):
        if ptype in EXTENDED_MBR:
            parts.extend(_logical(disk, start))
        else:
            parts.append(Partition(n, start * 512, count * 512, f"0x{ptype:02x}", ""))
    return parts


def _logical(disk: DiskImage, ext_start: int) -> list[Partition]:
    parts: list[Partition] = []
    ebr_lba, number, seen = ext_start, 5, set()
    while ebr_lba not in seen and len(parts) < 128:
        seen.add(ebr_lba)
        ebr = disk.read(ebr_lba * 512, 512)
        if len(ebr) < 512 or ebr[510:512] != b"\x55\xaa":
            break
        entries = _mbr_entries(ebr)
        if not entries:
            break
        ptype, rel, count = entries[0]
        parts.append(Partition(number, (ebr_lba + rel) * 512, count * 512, f"0x{ptype:02x}", ""))
        number += 1
        if len(entries) < 2 or entries[1][0] not in EXTENDED_MBR:
            break
        ebr_lba = ext_start + entries[1][1]
    return parts


def partitions(disk: DiskImage) -> list[Partition]:
    """The partitions of ``disk``; a disk without a table is one partition (a bare filesystem)."""
    head = disk.read(0, 512)
    if len(head) < 512:
        raise ValidationError(f"{disk.path} is too small to be a disk image", "check the file")
    for sector in (512, 4096):
        gpt = _parse_gpt(disk, sector)
        if gpt is not None:
            return gpt
    if head[510:512] == b"\x55\xaa":
        mbr = _parse_mbr(disk, head)
        if mbr:
            return mbr
    return [Partition(0, 0, disk.size, "none", "")]


# --- filesystems -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FsInfo:
    kind: str  # ext, vfat, btrfs, xfs, swap, unknown
    label: str


def probe_fs(disk: DiskImage, part: Partition) -> FsInfo:
    head = disk.read(part.start, 0x10000 + 0x300)  # up to the end of a btrfs superblock
    if len(head) >= 1024 + 136 and head[1024 + 56 : 1024 + 58] == b"\x53\xef":
        label = head[1024 + 120 : 1024 + 136].split(b"\0", 1)[0].decode(errors="replace")
        return FsInfo("ext", label)
    if head[:4] == b"XFSB":
        return FsInfo("xfs", head[108:120].split(b"\0", 1)[0].decode(errors="replace"))
    if len(head) >= 90 and (
        head[54:59] == b"FAT12" or head[54:59] == b"FAT16" or head[82:87] == b"FAT32"
    ):
        return FsInfo("vfat", "")
    if head[4086:4096] in (b"SWAPSPACE2", b"SWAP-SPACE"):
        return FsInfo("swap", "")
    btrfs = head[0x10000:]
    if btrfs[0x40:0x48] == b"_BHRfS_M":
        return FsInfo("btrfs", btrfs[0x12B:0x22B].split(b"\0", 1)[0].decode(errors="replace"))
    return FsInfo("unknown", "")
