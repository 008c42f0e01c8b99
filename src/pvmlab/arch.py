"""What pvmlab knows about each target architecture and each firmware: one table per axis.

Every fact that differs between x86_64 and aarch64 (QEMU binary and machine type, serial
console, the DHCP client-arch codes of its firmware, the iPXE first stage it is served, the
removable-media boot file, the firmware descriptors' name for it, how its kernels are
recognised, the test guest of the KVM probe) lives in ``ARCHITECTURES``; every fact that
differs between UEFI and legacy BIOS lives in ``FIRMWARES``. Other modules ask these tables
(``architecture("aarch64").serial_console``) instead of comparing strings, so a third
architecture is one new entry here.

    arch     QEMU                 machine (uefi/bios)  console  client-arch  first stage (uefi/bios)
    x86_64   qemu-system-x86_64   q35 / pc             ttyS0    7, 9 / 0     ipxe-x86_64.efi /
                                                                             undionly.kpxe
    aarch64  qemu-system-aarch64  virt                 ttyAMA0  11           ipxe-arm64.efi

Names come in as ``Arch`` and ``Firmware`` (typed literals, checked by mypy end to end); the
spellings users and ``uname -m`` give (``arm64``, ``amd64``) are mapped by ``parse_arch`` and
``host_arch``.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, TypeVar

from pvmlab.errors import ValidationError

Arch = Literal["aarch64", "x86_64"]
Firmware = Literal["uefi", "bios"]


@dataclass(frozen=True)
class FirstStage:
    """An iPXE first stage the lab serves over TFTP to a client type (dnsmasq tag = ``role``)."""

    role: str  # the dnsmasq tag and `distro ipxe --role` value
    tftp_name: str  # the fixed name in the TFTP root
    client_arches: tuple[int, ...]  # DHCP option 93 values of the firmware PXE clients it serves
    pe_machine: int | None  # PE/COFF machine type of an EFI build; None: a PXE NBP (not PE)
    candidates: tuple[str, ...]  # file names tried in a search directory, most wanted first
    official_path: str  # below boot.ipxe.org
    # DHCP option 93 values of the firmware's UEFI HTTP Boot client (vendor class HTTPClient)
    # it serves: the same file, fetched over HTTP from ``/tftp/<tftp_name>``; () = none
    http_client_arches: tuple[int, ...] = ()


BIOS_PXE = FirstStage(
    role="bios",
    tftp_name="undionly.kpxe",
    client_arches=(0,),
    pe_machine=None,
    candidates=("undionly.kpxe",),
    official_path="undionly.kpxe",
)
EFI_X86_64 = FirstStage(
    role="efi-x86_64",
    tftp_name="ipxe-x86_64.efi",
    client_arches=(7, 9),  # EFI BC and EFI x86-64: OVMF sends 7
    pe_machine=0x8664,
    candidates=(
        "ipxe-amd64.efi",
        "ipxe-x86_64.efi",
        "x86_64-efi/ipxe.efi",
        "ipxe.efi",
        "snponly.efi",
    ),
    official_path="x86_64-efi/ipxe.efi",
    http_client_arches=(16,),  # x64 UEFI HTTP (RFC 4578 registry, IANA "Processor Architecture")
)
EFI_ARM64 = FirstStage(
    role="efi-arm64",
    tftp_name="ipxe-arm64.efi",
    client_arches=(11,),
    pe_machine=0xAA64,
    candidates=("ipxe-arm64.efi", "ipxe-aarch64.efi", "arm64-efi/ipxe.efi", "ipxe.efi"),
    official_path="arm64-efi/ipxe.efi",
    http_client_arches=(19,),  # ARM 64-bit UEFI HTTP
)
# Every first stage, in the order the TFTP root, dnsmasq.conf and `distro ipxe` list them.
FIRST_STAGES: tuple[FirstStage, ...] = (BIOS_PXE, EFI_X86_64, EFI_ARM64)


@dataclass(frozen=True)
class TestGuest:
    """A firmware-less guest for the KVM probe (``pvmlab.qemu.kvmprobe``): QEMU runs ``image``
    as its ``-bios`` and exits with ``exit_code`` once the guest reached its end."""

    __test__ = False  # not a pytest test class

    machine: str
    image: bytes
    extra_argv: tuple[str, ...]
    exit_code: int


# x86_64: the reset vector jumps to code that enters protected mode, turns on x87 and SSE, builds
# identity page tables for 4 GiB, enters long mode, writes 16 MiB of RAM and then the byte 0x31 to
# the isa-debug-exit port: QEMU exits with (0x31 << 1) | 1 = 99. Assembled from
# qemu/testguest-x86_64.S (tests/unit/test_kvmprobe.py re-assembles it and compares); the code
# sits at the start of a 64 KiB image mapped to end at 4 GiB, the reset vector's jump 16 bytes
# before its end.
_X86_64_CODE = bytes.fromhex(
    "fa2e660f011618010f20c06683c8010f22c066ea1a00ffff080066b810008ed88ec08ed00f20c083e0fb83c8"
    "020f22c00f20e00d200600000f22e0dbe3d9e8d9e8dec1ddd8bf0000010031c0b900180000f3abc705000001"
    "0003100100bf00100100b803200100b9040000008907050010000083c708e2f4bf00200100b88300000031d2"
    "b9000800008907895704050000200083d20083c708e2eeb8000001000f22d8b9800000c00f320d000100000f"
    "300f20c00d000000800f22c0eac300ffff18000f57c0660f76c90f58c148c7c70000200048893f0f29471048"
    "81c7001000004881ff0000200172e931c00fa20f31b031e6f4f4ebfd0000000000000000ffff0000009acf00"
    "ffff00000092cf00ffff0000009aaf001f00f800ffff"
)
_X86_64_RESET_JUMP = bytes.fromhex("e90d00")  # at 0xfff0: jmp 0x0000 (the code above)
_X86_64_IMAGE = (
    _X86_64_CODE.ljust(0xFFF0, b"\0") + _X86_64_RESET_JUMP.ljust(0x10, b"\0")
)

# aarch64: QEMU's virt machine starts a -bios image at 0 in EL1; the guest turns on the FPU, adds
# two doubles, stores the result to RAM (0x40000000) and calls PSCI SYSTEM_OFF through HVC: QEMU
# (TCG) or KVM powers the machine off and QEMU exits 0.
_AARCH64_WORDS = (
    0xD2A00600,  # movz x0, #0x30, lsl #16        CPACR_EL1.FPEN = 0b11
    0xD5181040,  # msr  cpacr_el1, x0
    0xD5033FDF,  # isb
    0x1E6E1000,  # fmov d0, #1.0
    0x1E602800,  # fadd d0, d0, d0
    0xD2A80001,  # movz x1, #0x4000, lsl #16      RAM
    0xFD000020,  # str  d0, [x1]
    0x52800100,  # movz w0, #0x0008
    0x72B08000,  # movk w0, #0x8400, lsl #16      PSCI SYSTEM_OFF (0x84000008)
    0xD4000002,  # hvc  #0
    0xD503207F,  # wfi
    0x17FFFFFF,  # b    .-4
)
_AARCH64_IMAGE = b"".join(word.to_bytes(4, "little") for word in _AARCH64_WORDS)


@dataclass(frozen=True)
class Architecture:
    name: Arch
    aliases: tuple[str, ...]  # other names users give (listed as CLI choices)
    also_accepted: tuple[str, ...]  # further spellings accepted, but not listed
    qemu_binary: str
    qemu_package: str  # Debian package of qemu_binary
    machines: Mapping[Firmware, str]  # -machine per firmware this arch has
    tcg_cpu: str | None  # -cpu under TCG (None: QEMU's default model); KVM/HVF use "host"
    serial_console: str  # the Linux console= of the machine's first UART
    panic_device: str  # the pvpanic device model (a guest's panic reaches QEMU's run state)
    first_stages: Mapping[Firmware, FirstStage]
    efi_boot_file: str  # UEFI's removable-media boot file, EFI/BOOT/<this>
    descriptor_arch: str  # "architecture" in QEMU's firmware descriptors
    uefi_package: str  # Debian package of the UEFI firmware
    pe_machine: int  # PE/COFF machine type of its EFI executables (and EFI-stub kernels)
    kernel_magic: tuple[int, bytes]  # (offset, bytes) of the boot header of a raw kernel
    test_guest: TestGuest
    debian_arch: str  # Debian's name (dpkg, mmdebstrap, linux-image-<this>)
    debian_triplet: str  # Debian's multiarch tuple: libraries sit in lib/<this>/ in its packages
    # the Debian suite and meta package of the cloud kernel the deploy ramdisk boots
    # (pvmlab.deploy.ramdisk; the test fixtures' kernels come from the same)
    cloud_kernel_suite: str
    cloud_kernel_package: str
    gpt_root_type: str  # GPT type of its root partition (Discoverable Partitions Spec)
    systemd_boot_file: str  # systemd-boot's EFI binary in systemd-boot-efi

    @property
    def firmwares(self) -> tuple[Firmware, ...]:
        return tuple(self.machines)

    def machine(self, firmware: Firmware) -> str:
        try:
            return self.machines[firmware]
        except KeyError:
            raise ValueError(f"no machine for {self.name} with {firmware} firmware") from None


X86_64 = Architecture(
    name="x86_64",
    aliases=("amd64",),
    also_accepted=("x86-64",),
    qemu_binary="qemu-system-x86_64",
    qemu_package="qemu-system-x86",
    machines=MappingProxyType({"uefi": "q35", "bios": "pc"}),
    tcg_cpu=None,  # QEMU's default model boots everything we need, fastest
    serial_console="ttyS0",  # 16550
    panic_device="pvpanic",  # ISA, on pc and q35
    first_stages=MappingProxyType({"uefi": EFI_X86_64, "bios": BIOS_PXE}),
    efi_boot_file="BOOTX64.EFI",
    descriptor_arch="x86_64",
    uefi_package="ovmf",
    pe_machine=0x8664,
    kernel_magic=(0x202, b"HdrS"),  # the x86 boot protocol header
    test_guest=TestGuest(
        machine="pc",
        image=_X86_64_IMAGE,
        extra_argv=("-device", "isa-debug-exit,iobase=0xf4,iosize=0x01"),
        exit_code=99,
    ),
    debian_arch="amd64",
    debian_triplet="x86_64-linux-gnu",
    cloud_kernel_suite="bookworm",
    cloud_kernel_package="linux-image-cloud-amd64",
    gpt_root_type="4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
    systemd_boot_file="systemd-bootx64.efi",
)
AARCH64 = Architecture(
    name="aarch64",
    aliases=("arm64",),
    also_accepted=(),
    qemu_binary="qemu-system-aarch64",
    qemu_package="qemu-system-arm",
    machines=MappingProxyType({"uefi": "virt"}),
    tcg_cpu="max",
    serial_console="ttyAMA0",  # PL011
    panic_device="pvpanic-pci",  # virt has no ISA bus
    first_stages=MappingProxyType({"uefi": EFI_ARM64}),
    efi_boot_file="BOOTAA64.EFI",
    descriptor_arch="aarch64",
    uefi_package="qemu-efi-aarch64",
    pe_machine=0xAA64,
    kernel_magic=(0x38, b"ARM\x64"),  # the arm64 Image header
    test_guest=TestGuest(machine="virt", image=_AARCH64_IMAGE, extra_argv=(), exit_code=0),
    debian_arch="arm64",
    debian_triplet="aarch64-linux-gnu",
    cloud_kernel_suite="trixie",  # its cloud kernel is a plain Image, which iPXE boots
    cloud_kernel_package="linux-image-cloud-arm64",
    gpt_root_type="B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
    systemd_boot_file="systemd-bootaa64.efi",
)

# The table, in the order `pvmlab setup` checks them.
ARCHITECTURES: Mapping[Arch, Architecture] = MappingProxyType(
    {X86_64.name: X86_64, AARCH64.name: AARCH64}
)
ARCHES: tuple[Arch, ...] = tuple(sorted(ARCHITECTURES))  # as messages and CLI choices list them
CLI_CHOICES: tuple[str, ...] = (
    *ARCHES,
    *(alias for name in ARCHES for alias in ARCHITECTURES[name].aliases),
)
_BY_SPELLING: Mapping[str, Arch] = MappingProxyType(
    {
        spelling: a.name
        for a in ARCHITECTURES.values()
        for spelling in (a.name, *a.aliases, *a.also_accepted)
    }
)


def architecture(name: Arch) -> Architecture:
    return ARCHITECTURES[name]


def parse_arch(value: str) -> Arch:
    """An architecture as a user writes it (``arm64``, ``amd64`` accepted)."""
    found = _BY_SPELLING.get(value)
    if found is None:
        raise ValidationError(
            f"unknown architecture {value!r}", f"choose one of: {', '.join(ARCHES)}"
        )
    return found


def host_arch_name(machine: str | None = None) -> str:
    """The host's architecture as the table names it (``uname -m``: arm64 on macOS is
    ``aarch64``); an architecture the table does not know is returned as it is."""
    m = (machine or platform.machine()).lower()
    return _BY_SPELLING.get(m, m)


def host_arch(machine: str | None = None) -> Arch | None:
    """The host's architecture, or None when it is none the lab can run natively."""
    return _BY_SPELLING.get(host_arch_name(machine))


def from_pe_machine(machine: int) -> Arch | None:
    for a in ARCHITECTURES.values():
        if a.pe_machine == machine:
            return a.name
    return None


@dataclass(frozen=True)
class FirmwareKind:
    name: Firmware
    label: str  # as messages name it
    pflash: bool  # code and a per-VM vars copy in two pflash units (QEMU's descriptors)
    nic_rom_pxe: bool  # the NIC's option ROM is the PXE stack; else ROM off (romfile=)
    virtio_rng: bool  # offers EFI_RNG_PROTOCOL from a virtio RNG (iPXE seeds from it)
    boot_menu_wait: bool  # waits for a key before booting unless told splash-time=0
    removable_media: bool  # boots EFI/BOOT/<efi_boot_file> from a FAT drive (--boot ipxe)
    descriptor_interface: str | None  # "interface-types" value in QEMU's firmware descriptors
    # UEFI HTTP Boot: the firmware may have a driver for it (``qemu.firmware.has_http_boot``
    # checks the file); these fw_cfg files (``string=n``) take its PXE entries away, so the
    # NIC's first boot entry is HTTP Boot over IPv4 (EDK2's OVMF and ArmVirtQemu read them)
    http_boot: bool = False
    pxe_off_fw_cfg: tuple[str, ...] = ()
    # fw_cfg file (``string=n``) that takes the IPv4 stack away, with its HTTP Boot over IPv4
    # entry: an HTTP Boot VM in an IPv6-only lab would wait out that entry's DHCPv4 (~60 s)
    ipv4_off_fw_cfg: str | None = None


UEFI = FirmwareKind(
    name="uefi",
    label="UEFI",
    pflash=True,
    nic_rom_pxe=False,  # the firmware's own PXE (QEMU's bundled efi-virtio.rom pre-empts it)
    virtio_rng=True,
    boot_menu_wait=True,
    removable_media=True,
    descriptor_interface="uefi",
    http_boot=True,
    pxe_off_fw_cfg=("opt/org.tianocore/IPv4PXESupport", "opt/org.tianocore/IPv6PXESupport"),
    ipv4_off_fw_cfg="opt/org.tianocore/IPv4Support",
)
BIOS = FirmwareKind(
    name="bios",
    label="legacy BIOS",
    pflash=False,  # SeaBIOS is the pc machine's default
    nic_rom_pxe=True,  # pxe-virtio.rom is iPXE
    virtio_rng=False,
    boot_menu_wait=False,
    removable_media=False,
    descriptor_interface=None,
)
FIRMWARES: Mapping[Firmware, FirmwareKind] = MappingProxyType(
    {UEFI.name: UEFI, BIOS.name: BIOS}
)
FIRMWARE_NAMES: tuple[Firmware, ...] = tuple(FIRMWARES)
DEFAULT_FIRMWARE: Firmware = UEFI.name  # what `vm create` gives a VM without --firmware


def firmware(name: Firmware) -> FirmwareKind:
    return FIRMWARES[name]


_Name = TypeVar("_Name", bound=str)


def _one_of(value: str, names: Sequence[_Name], what: str) -> _Name:
    """``value`` as one of the typed ``names`` of an axis (so mypy knows the literal), or a
    one-line error listing them."""
    for name in names:
        if value == name:
            return name
    raise ValidationError(f"unknown {what} {value!r}", f"choose one of: {', '.join(names)}")


def parse_firmware(value: str) -> Firmware:
    return _one_of(value, FIRMWARE_NAMES, "firmware")


def check_pair(name: Arch, fw: Firmware) -> None:
    """Refuse a firmware the architecture's machines do not have."""
    if fw not in architecture(name).machines:
        have = [a.name for a in ARCHITECTURES.values() if fw in a.machines]
        raise ValidationError(
            f"{firmware(fw).label} firmware exists only for {', '.join(have)}, not {name}",
            f"use --firmware {DEFAULT_FIRMWARE} (the default) for {name}",
        )


# --- the network boot protocol axis -------------------------------------------------------------

NetBoot = Literal["pxe", "http"]
HTTP_VM_TAG = "netboot-http"  # the dnsmasq tag of a --net-boot http VM's reservation


@dataclass(frozen=True)
class NetBootKind:
    """How a machine's firmware fetches its first stage (``vm create --net-boot``)."""

    name: NetBoot
    label: str  # as messages and `pvmlab loaders` name it
    vendor_class: str  # the DHCP option 60 prefix its firmware sends ("PXEClient:Arch:...")
    transport: Literal["tftp", "http"]  # how the first stage travels
    dnsmasq_tag: str | None  # tag a VM's reservation sets when it boots this way (None: default)
    firmwares: tuple[Firmware, ...]  # firmware kinds that have a client for it


PXE = NetBootKind(
    name="pxe",
    label="PXE",
    vendor_class="PXEClient",
    transport="tftp",
    dnsmasq_tag=None,
    firmwares=("uefi", "bios"),
)
HTTP = NetBootKind(
    name="http",
    label="HTTP Boot",
    vendor_class="HTTPClient",
    transport="http",
    dnsmasq_tag=HTTP_VM_TAG,
    firmwares=("uefi",),
)
NET_BOOTS: Mapping[NetBoot, NetBootKind] = MappingProxyType({PXE.name: PXE, HTTP.name: HTTP})
NET_BOOT_NAMES: tuple[NetBoot, ...] = tuple(NET_BOOTS)
DEFAULT_NET_BOOT: NetBoot = PXE.name


def net_boot(name: NetBoot) -> NetBootKind:
    return NET_BOOTS[name]


def parse_net_boot(value: str) -> NetBoot:
    return _one_of(value, NET_BOOT_NAMES, "network boot")


def check_net_boot(fw: Firmware, nb: NetBoot) -> None:
    """Refuse a network boot protocol the firmware kind has no client for."""
    kind = net_boot(nb)
    if fw not in kind.firmwares:
        needs = " or ".join(firmware(f).label for f in kind.firmwares)
        raise ValidationError(
            f"{kind.label} needs {needs} firmware, not {firmware(fw).label}",
            f"use --firmware {DEFAULT_FIRMWARE}, or --net-boot {DEFAULT_NET_BOOT}",
        )


# --- the loader axis: which first stage a UEFI machine is served ------------------------------
#
#     loader  first stage over TFTP           under Secure Boot
#     ipxe    ipxe-<arch>.efi (FIRST_STAGES)  refused by the firmware (iPXE is not signed)
#     grub    Debian's signed network GRUB    Debian's signed shim, which loads that GRUB
#
# GRUB's network image finds its configuration under its built-in prefix ``(tftp,SERVER)/grub``
# (seen in dnsmasq's TFTP log: it asks for grub/grub.cfg) and has no HTTP module, so its
# configuration, the kernel and the initrd all come over TFTP.

Loader = Literal["ipxe", "grub"]
LOADER_NAMES: tuple[Loader, ...] = ("ipxe", "grub")
DEFAULT_LOADER: Loader = "ipxe"
GRUB_PREFIX_DIR = "grub"  # the signed network GRUB's prefix below the TFTP root


@dataclass(frozen=True)
class SignedGrub:
    """Debian's signed network GRUB and shim for one architecture, as the lab serves them."""

    arch: Arch
    grub_package: str
    grub_file: str  # inside the package
    grub_tftp_name: str  # the name shim loads from its own directory (and GRUB's own DHCP file)
    shim_package: str
    shim_file: str
    shim_tftp_name: str

    @property
    def debian_arch(self) -> str:
        """The Debian architecture the packages are fetched for."""
        return architecture(self.arch).debian_arch


GRUB_X86_64 = SignedGrub(
    arch=X86_64.name,
    grub_package="grub-efi-amd64-signed",
    grub_file="usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",
    grub_tftp_name="grubx64.efi",
    shim_package="shim-signed",
    shim_file="usr/lib/shim/shimx64.efi.signed",
    shim_tftp_name="shimx64.efi",
)
GRUB_AARCH64 = SignedGrub(
    arch=AARCH64.name,
    grub_package="grub-efi-arm64-signed",
    grub_file="usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed",
    grub_tftp_name="grubaa64.efi",
    shim_package="shim-signed",
    shim_file="usr/lib/shim/shimaa64.efi.signed",
    shim_tftp_name="shimaa64.efi",
)
SIGNED_GRUBS: Mapping[Arch, SignedGrub] = MappingProxyType(
    {GRUB_X86_64.arch: GRUB_X86_64, GRUB_AARCH64.arch: GRUB_AARCH64}
)


def signed_grub(name: Arch) -> SignedGrub:
    return SIGNED_GRUBS[name]


def parse_loader(value: str) -> Loader:
    return _one_of(value, LOADER_NAMES, "loader")


def check_loader(fw: Firmware, loader: Loader, secure_boot: bool) -> None:
    """Refuse what legacy BIOS cannot do: GRUB's network image and Secure Boot are UEFI's."""
    if fw == "uefi":
        return
    if secure_boot:
        raise ValidationError(
            f"Secure Boot needs UEFI firmware, not {firmware(fw).label}",
            f"use --firmware {UEFI.name} with --secure-boot",
        )
    if loader == "grub":
        raise ValidationError(
            f"the GRUB first stage is a UEFI program; {firmware(fw).label} gets iPXE",
            f"use --firmware {UEFI.name} with --loader grub, or --loader ipxe",
        )
