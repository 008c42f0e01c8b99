"""The architecture and firmware tables: the facts every other module asks for, written out."""

from __future__ import annotations

import pytest

from pvmlab import arch
from pvmlab.errors import ValidationError
from pvmlab.stack import dnsmasq


def test_x86_64_facts() -> None:
    a = arch.architecture("x86_64")
    assert a.qemu_binary == "qemu-system-x86_64"
    assert dict(a.machines) == {"uefi": "q35", "bios": "pc"}
    assert a.tcg_cpu is None
    assert a.serial_console == "ttyS0"
    assert {fw: s.tftp_name for fw, s in a.first_stages.items()} == {
        "uefi": "ipxe-x86_64.efi",
        "bios": "undionly.kpxe",
    }
    assert a.efi_boot_file == "BOOTX64.EFI"
    assert (a.descriptor_arch, a.uefi_package, a.qemu_package) == (
        "x86_64", "ovmf", "qemu-system-x86"
    )
    assert a.pe_machine == 0x8664


def test_aarch64_facts() -> None:
    a = arch.architecture("aarch64")
    assert a.qemu_binary == "qemu-system-aarch64"
    assert dict(a.machines) == {"uefi": "virt"}
    assert a.firmwares == ("uefi",)
    assert a.tcg_cpu == "max"
    assert a.serial_console == "ttyAMA0"
    assert {fw: s.tftp_name for fw, s in a.first_stages.items()} == {"uefi": "ipxe-arm64.efi"}
    assert a.efi_boot_file == "BOOTAA64.EFI"
    assert (a.descriptor_arch, a.uefi_package, a.qemu_package) == (
        "aarch64", "qemu-efi-aarch64", "qemu-system-arm"
    )
    assert a.pe_machine == 0xAA64


@pytest.mark.parametrize(
    ("name", "facts"),
    [
        ("x86_64", ("amd64", "x86_64-linux-gnu", "bookworm", "linux-image-cloud-amd64")),
        ("aarch64", ("arm64", "aarch64-linux-gnu", "trixie", "linux-image-cloud-arm64")),
    ],
)
def test_debian_facts(name: arch.Arch, facts: tuple[str, str, str, str]) -> None:
    """The deploy ramdisk's packages come from these (its cache key and apt directory too)."""
    a = arch.architecture(name)
    assert (a.debian_arch, a.debian_triplet, a.cloud_kernel_suite, a.cloud_kernel_package) == facts
    grub = arch.signed_grub(name)
    assert grub.debian_arch == facts[0] and grub.grub_package == f"grub-efi-{facts[0]}-signed"


def test_no_machine_for_bios_on_aarch64() -> None:
    with pytest.raises(ValueError, match="no machine for aarch64 with bios firmware"):
        arch.architecture("aarch64").machine("bios")


@pytest.mark.parametrize(
    ("spelling", "name"),
    [("x86_64", "x86_64"), ("amd64", "x86_64"), ("x86-64", "x86_64"), ("aarch64", "aarch64"),
     ("arm64", "aarch64")],
)
def test_spellings(spelling: str, name: str) -> None:
    assert arch.parse_arch(spelling) == name


def test_unknown_arch_is_refused_with_the_choices() -> None:
    with pytest.raises(ValidationError) as info:
        arch.parse_arch("riscv64")
    assert info.value.problem == "unknown architecture 'riscv64'"
    assert info.value.hint == "choose one of: aarch64, x86_64"


@pytest.mark.parametrize(
    ("uname", "name"),
    [("x86_64", "x86_64"), ("AMD64", "x86_64"), ("aarch64", "aarch64"), ("arm64", "aarch64"),
     ("riscv64", None)],
)
def test_host_arch_from_uname(uname: str, name: str | None) -> None:
    assert arch.host_arch(uname) == name


def test_cli_choices_list_names_then_aliases() -> None:
    assert arch.CLI_CHOICES == ("aarch64", "x86_64", "arm64", "amd64")


def test_dhcp_client_arch_codes_and_first_stages() -> None:
    assert dnsmasq.CLIENT_ARCH_TAGS == {0: "bios", 7: "efi-x86_64", 9: "efi-x86_64",
                                        11: "efi-arm64"}
    assert dnsmasq.FIRST_STAGES == (
        ("bios", "undionly.kpxe"),
        ("efi-x86_64", "ipxe-x86_64.efi"),
        ("efi-arm64", "ipxe-arm64.efi"),
    )


def test_pe_machine_names_the_arch() -> None:
    assert arch.from_pe_machine(0x8664) == "x86_64"
    assert arch.from_pe_machine(0xAA64) == "aarch64"
    assert arch.from_pe_machine(0x14C) is None  # i386


def test_firmware_facts() -> None:
    uefi, bios = arch.firmware("uefi"), arch.firmware("bios")
    assert (uefi.pflash, uefi.nic_rom_pxe, uefi.virtio_rng, uefi.removable_media) == (
        True, False, True, True
    )
    assert (bios.pflash, bios.nic_rom_pxe, bios.virtio_rng, bios.removable_media) == (
        False, True, False, False
    )
    assert arch.DEFAULT_FIRMWARE == "uefi"
    with pytest.raises(ValidationError, match="unknown firmware 'coreboot'"):
        arch.parse_firmware("coreboot")


def test_bios_on_aarch64_is_refused_with_a_hint() -> None:
    arch.check_pair("x86_64", "bios")
    with pytest.raises(ValidationError) as info:
        arch.check_pair("aarch64", "bios")
    assert info.value.problem == "legacy BIOS firmware exists only for x86_64, not aarch64"
    assert info.value.hint == "use --firmware uefi (the default) for aarch64"


def test_test_guest_images() -> None:
    x86 = arch.architecture("x86_64").test_guest
    assert len(x86.image) == 0x10000  # a 64 KiB -bios image, mapped to end at 4 GiB
    assert x86.image[0xFFF0:0xFFF3] == bytes.fromhex("e90d00")  # reset vector: jmp 0x0000
    assert x86.image[:2] == bytes.fromhex("fa2e")  # cli; cs: (lgdt)
    assert x86.exit_code == 99
    a64 = arch.architecture("aarch64").test_guest
    assert a64.image[-8:] == bytes.fromhex("7f2003d5ffffff17")  # wfi; b .-4
    assert a64.exit_code == 0
