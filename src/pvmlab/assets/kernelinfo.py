"""What a kernel file is built for, from its header, so a kernel is never filed under the
wrong architecture.

    x86 boot protocol   "HdrS" at 0x202                       -> x86_64
    arm64 Image         "ARM\\x64" at 0x38                    -> aarch64
    EFI (zboot, stub)   PE/COFF machine 0x8664 / 0xAA64       -> x86_64 / aarch64
    gzip                the header of the decompressed start  (Ubuntu's arm64 vmlinuz)
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

PE_ARCH = {0x8664: "x86_64", 0xAA64: "aarch64"}


def _from_header(head: bytes) -> str | None:
    if head[0x202:0x206] == b"HdrS":
        return "x86_64"
    if head[0x38:0x3C] == b"ARM\x64":
        return "aarch64"
    if head[:2] == b"MZ" and len(head) >= 0x40:
        (pe,) = struct.unpack_from("<I", head, 0x3C)
        if head[pe : pe + 4] == b"PE\0\0":
            (machine,) = struct.unpack_from("<H", head, pe + 4)
            return PE_ARCH.get(machine)
    return None


def kernel_arch(path: Path) -> str | None:
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
