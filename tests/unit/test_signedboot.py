"""Staging Debian's signed GRUB and shim into the TFTP root (a fake host root; no network)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pvmlab.assets import signedboot
from pvmlab.home import LabHome


def pe(machine: int) -> bytes:
    """The smallest file ``pe_machine`` reads as a PE image of ``machine``."""
    dos = bytearray(64)
    dos[:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 64)
    return bytes(dos) + b"PE\0\0" + struct.pack("<H", machine) + b"\0" * 32


@pytest.fixture
def home(tmp_path: Path) -> LabHome:
    h = LabHome(tmp_path / "home")
    h.ensure()
    return h


def install(root: Path, relpath: str, data: bytes) -> None:
    (root / relpath).parent.mkdir(parents=True, exist_ok=True)
    (root / relpath).write_bytes(data)


def test_grub_and_shim_staged_under_the_names_shim_expects(home: LabHome, tmp_path: Path) -> None:
    root = tmp_path / "host"
    install(root, "usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed", pe(0x8664) + b"grub")
    install(root, "usr/lib/shim/shimx64.efi.signed", pe(0x8664) + b"shim")
    plain = signedboot.stage(home, "x86_64", secure_boot=False, system_root=root)
    assert [s.tftp_name for s in plain] == ["grubx64.efi"]
    assert not (home.tftp / "shimx64.efi").exists()
    staged = signedboot.stage(home, "x86_64", secure_boot=True, system_root=root)
    assert [(s.tftp_name, s.source) for s in staged] == [
        ("grubx64.efi", root / "usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"),
        ("shimx64.efi", root / "usr/lib/shim/shimx64.efi.signed"),
    ]
    assert (home.tftp / "grubx64.efi").read_bytes().endswith(b"grub")
    assert (home.tftp / "shimx64.efi").read_bytes().endswith(b"shim")


def test_the_cache_serves_a_foreign_architecture(home: LabHome, tmp_path: Path) -> None:
    cached = home.loader_cache / "arm64" / "grub-efi-arm64-signed"
    install(cached, "usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed", pe(0xAA64))
    staged = signedboot.stage(home, "aarch64", secure_boot=False, system_root=tmp_path / "none")
    assert [s.tftp_name for s in staged] == ["grubaa64.efi"]


def test_a_file_of_the_wrong_machine_type_is_not_taken(home: LabHome, tmp_path: Path) -> None:
    root = tmp_path / "host"
    install(root, "usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed", pe(0x8664))
    found = signedboot.find(home, "aarch64", "grub-efi-arm64-signed",
                            "usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed",
                            system_root=root)  # fmt: skip
    assert found is None
