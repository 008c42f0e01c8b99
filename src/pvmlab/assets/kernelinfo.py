"""What a kernel file is built for, from its header, so a kernel is never filed under the
wrong architecture. The magic numbers are in ``pvmlab.arch`` (``kernel_magic``, ``pe_machine``):

    x86 boot protocol   "HdrS" at 0x202                       -> x86_64
    arm64 Image         "ARM\\x64" at 0x38                    -> aarch64
    EFI (zboot, stub)   PE/COFF machine 0x8664 / 0xAA64       -> x86_64 / aarch64
    gzip                the header of the decompressed start  (Ubuntu's arm64 vmlinuz)
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from pvmlab.arch import ARCHITECTURES, Arch, from_pe_machine


def _from_header(head: bytes) -> Arch | None:
    for a in ARCHITECTURES.values():
        offset, magic = a.kernel_magic
        if head[offset : offset + len(magic)] == magic:
            return a.name
    if head[:2] == b"MZ" and len(head) >= 0x40:
        (pe,) = struct.unpack_from("<I", head, 0x3C)
        if head[pe : pe + 4] == b"PE\0\0":
            (machine,) = struct.unpack_from("<H", head, pe + 4)
            return from_pe_machine(machine)
    return None


def kernel_arch(path: Path) -> Arch | None:
    """``x86_64``, ``aarch64``, or None when the file is not a kernel we recognise."""
    try:
        with path.open("rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return None
    if head[:2] == b"\x1f\x8b":
        try:
            head = zlib.decompressobj(wbits=31).decompress(head, 1 << 16)
        except zlib.error:
            return None
    return _from_header(head)
