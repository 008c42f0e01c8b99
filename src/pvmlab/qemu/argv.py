"""QEMU's command line for a target VM: a pure function of a ``QemuConfig``.

No I/O here: the caller finds the firmware, chooses the accelerator, creates the tap and the
per-VM vars file, and passes the paths in. One flag and its value per line, so the result reads
like the command it is.

Machines (the facts come from ``pvmlab.arch``: machine, binary, TCG CPU model, what each
firmware needs):
    x86_64 + uefi   q35 + OVMF in two pflash units (code read-only, per-VM vars); Secure
                    Boot builds need SMM: ``q35,smm=on`` and the pflash in secure mode
    x86_64 + bios   pc + SeaBIOS (QEMU's default firmware)
    aarch64 + uefi  virt + AAVMF in two pflash units; ``-cpu max`` under TCG, ``host`` otherwise

The NIC option ROM (see the "NIC ROM trap" in the lab notes): under UEFI ``romfile=`` is empty so
the firmware's own network stack does PXE (QEMU's bundled efi-virtio.rom is an old iPXE that
pre-empts it); under SeaBIOS the NIC ROM *is* the PXE stack, so QEMU's default stays.

Boot order is set with ``bootindex``: ``pxe`` puts the NIC first (the seed's ``-boot n``) and a
disk, if any, second; ``disk`` puts the disk first with the network as fallback; ``ipxe`` (UEFI
only) puts a small read-only FAT drive first that holds iPXE as the removable-media boot file
(``EFI/BOOT/BOOTX64.EFI`` / ``BOOTAA64.EFI``) and its ``autoexec.ipxe``, the way an iPXE USB stick
boots real hardware: the firmware never does DHCP itself (its PXE waits a fixed ~4 s for offers),
iPXE does, then runs the same HTTP chain. The drive is QEMU's ``vvfat`` view of the directory
``ipxe_media`` (no image tools needed); the NIC follows as fallback, then the disk. A direct
kernel (``kernel``/``initrd``/``append``, for test fixtures and benchmarks) bypasses all three.

The NIC's protocol (``net_boot``, the VM's ``--net-boot``): ``pxe`` leaves the firmware's
entries as they are (PXE over IPv4 first); ``http`` hands EDK2 the fw_cfg files that turn its
PXE support off (``opt/org.tianocore/IPv4PXESupport`` and ``IPv6PXESupport`` = ``n``), so the
NIC's boot entries are UEFI HTTP Boot only and the first of them, HTTP over IPv4, is what its
``bootindex`` reaches. In an IPv6-only lab (``pxe_ipv4`` False) the IPv4 stack goes too
(``IPv4Support``), so the first entry is HTTP over IPv6.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from pvmlab.arch import DEFAULT_NET_BOOT, Arch, Firmware, NetBoot, architecture, firmware
from pvmlab.records.models import DEFAULT_CPUS, DEFAULT_MEMORY_MIB

AccelName = Literal["kvm", "hvf", "tcg"]
Boot = Literal["pxe", "disk", "ipxe"]
ACCEL_NAMES: tuple[AccelName, ...] = get_args(AccelName)
BOOT_MODES: tuple[Boot, ...] = get_args(Boot)


@dataclass(frozen=True)
class QemuConfig:
    name: str
    arch: Arch
    firmware: Firmware
    accel: AccelName
    mac: str
    tap: str | None  # None: no NIC (direct-kernel checks of fixtures)
    serial_log: Path
    qmp_socket: Path
    pid_file: Path
    console_socket: Path | None = None  # serial on a unix socket (logged) for `vm console`
    memory_mib: int = DEFAULT_MEMORY_MIB
    cpus: int = DEFAULT_CPUS
    uefi_code: Path | None = None
    uefi_vars: Path | None = None
    boot: Boot = "pxe"
    disk: Path | None = None
    interactive: bool = False
    kernel: Path | None = None
    initrd: Path | None = None
    append: str | None = None
    ipxe_media: Path | None = None  # boot="ipxe": directory with EFI/BOOT/BOOT*.EFI (vvfat)
    net_boot: NetBoot = DEFAULT_NET_BOOT  # the NIC's protocol: PXE or UEFI HTTP Boot
    pxe_ipv4: bool = True  # False (IPv6-only lab): the UEFI firmware skips its PXE over IPv4
    smm: bool = False  # Secure Boot firmware that requires SMM (x86_64 OVMF secboot builds)


def machine_type(arch: Arch, fw: Firmware) -> str:
    return architecture(arch).machine(fw)


def binary(arch: Arch) -> str:
    return architecture(arch).qemu_binary


def _cpu(cfg: QemuConfig) -> list[str]:
    if cfg.accel in ("kvm", "hvf"):
        return ["-cpu", "host"]
    model = architecture(cfg.arch).tcg_cpu
    return [] if model is None else ["-cpu", model]


def _machine(cfg: QemuConfig) -> str:
    """``-machine``: with ``smm=on`` for Secure Boot firmware that keeps its variable store
    behind System Management Mode (only there can the OS not rewrite the keys)."""
    machine = machine_type(cfg.arch, cfg.firmware)
    return f"{machine},smm=on" if cfg.smm else machine


def _firmware(cfg: QemuConfig) -> list[str]:
    if not firmware(cfg.firmware).pflash:
        return []  # SeaBIOS is the pc machine's default
    if cfg.uefi_code is None or cfg.uefi_vars is None:
        raise ValueError("UEFI needs uefi_code and uefi_vars")
    # SMM firmware: the flash answers writes only from SMM, so the guest cannot tamper with
    # the enrolled keys or turn Secure Boot off.
    secure = ["-global", "driver=cfi.pflash01,property=secure,value=on"] if cfg.smm else []
    return [
        *secure,
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={_opt(cfg.uefi_code)}",
        "-drive", f"if=pflash,format=raw,unit=1,file={_opt(cfg.uefi_vars)}",
    ]  # fmt: skip


def _serial(cfg: QemuConfig) -> list[str]:
    log = _opt(cfg.serial_log)
    if cfg.interactive:
        # The terminal is the console (Ctrl-A X quits, Ctrl-A C toggles the monitor); it is
        # still logged, so `vm logs` and --wait work the same.
        return [
            "-chardev", f"stdio,id=serial0,mux=on,signal=off,logfile={log},logappend=off",
            "-serial", "chardev:serial0",
            "-mon", "chardev=serial0,mode=readline",
        ]  # fmt: skip
    if cfg.console_socket is not None:
        sock = _opt(cfg.console_socket)
        chardev = f"socket,id=serial0,path={sock},server=on,wait=off,logfile={log},logappend=off"
    else:
        chardev = f"file,id=serial0,path={log}"
    return ["-chardev", chardev, "-serial", "chardev:serial0"]


def _boot_indexes(cfg: QemuConfig) -> tuple[int | None, int | None, int | None]:
    """(nic, disk, ipxe media) bootindex values."""
    if cfg.kernel is not None:
        return None, None, None
    if cfg.boot == "ipxe":
        if not firmware(cfg.firmware).removable_media or cfg.ipxe_media is None:
            raise ValueError("boot=ipxe needs UEFI firmware and ipxe_media")
        return 1, (2 if cfg.disk is not None else None), 0
    if cfg.boot == "disk" and cfg.disk is not None:
        return 1, 0, None
    return 0, (1 if cfg.disk is not None else None), None


def _rng(cfg: QemuConfig) -> list[str]:
    """A virtio RNG for UEFI guests: the firmware then offers EFI_RNG_PROTOCOL, and iPXE seeds
    its random generator from it at once instead of timing ~4 s of timer ticks (measured under
    TCG; see docs/performance.md, "Boot overhead"). Real machines have RDRAND/RNDR or a TPM."""
    if not firmware(cfg.firmware).virtio_rng:
        return []
    return ["-device", "virtio-rng-pci"]


# UEFI HTTP Boot over IPv6 (an HTTP VM in an IPv6-only lab) is the NIC's first boot entry, and
# Debian's OVMF (edk2 2022.11) starts its DHCPv6 without waiting for the IPv6 link-local address
# (its PXE driver waits, its HTTP Boot driver does not): tried at once, Dhcp6->Start fails and the
# firmware prints "Unexpected network error" without sending anything. The boot menu's timeout
# (QEMU's splash-time, OVMF's etc/boot-menu-wait) gives the address (one DAD probe, ~1 s) time.
HTTP6_LINK_LOCAL_WAIT_MS = 3000


def _http_boot_over_ipv6(cfg: QemuConfig) -> bool:
    return cfg.net_boot == "http" and not cfg.pxe_ipv4 and cfg.tap is not None


def _boot_menu(cfg: QemuConfig) -> list[str]:
    """UEFI waits for a key before booting unless QEMU hands it a boot-menu timeout: AAVMF
    (aarch64) sits silent for 5 s before its network boot (measured; a direct kernel skips the
    wait). ``splash-time=0`` is passed to the firmware as ``etc/boot-menu-wait`` = 0; HTTP Boot
    over IPv6 waits ``HTTP6_LINK_LOCAL_WAIT_MS`` instead."""
    if not firmware(cfg.firmware).boot_menu_wait or cfg.kernel is not None:
        return []
    if _http_boot_over_ipv6(cfg):
        return ["-boot", f"menu=on,splash-time={HTTP6_LINK_LOCAL_WAIT_MS}"]
    return ["-boot", "menu=on,splash-time=0"]


def _panic_device(cfg: QemuConfig) -> list[str]:
    """A pvpanic device, so a guest kernel's panic reaches QEMU (a guest with the pvpanic driver
    reports it), and ``panic=pause``: the VM then stays, in run state ``guest-panicked``, for
    ``vm list`` and ``vm start --wait`` to report (QEMU's default would exit)."""
    return ["-device", architecture(cfg.arch).panic_device, "-action", "panic=pause"]


def _pxe_families(cfg: QemuConfig) -> list[str]:
    """In an IPv6-only lab, EDK2's PXE over IPv4 (its first network boot entry) would wait out
    its DHCP retries (4+8+16+32 s) before PXE over IPv6 is tried. OVMF's documented runtime
    switch ``opt/org.tianocore/IPv4PXESupport`` (OvmfPkg/RUNTIME_CONFIG.md) turns it off. An
    HTTP Boot VM has all its PXE entries off already (``_net_boot``; QEMU refuses a fw_cfg name
    given twice)."""
    if cfg.pxe_ipv4 or not firmware(cfg.firmware).pflash or cfg.tap is None:
        return []
    if cfg.net_boot == "http" and cfg.kernel is None:
        return []
    return ["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no"]


def _in_boot_order(device: str, bootindex: int | None) -> str:
    """A ``-device`` value, with its place in the boot order when it has one."""
    return device if bootindex is None else f"{device},bootindex={bootindex}"


def _nic(cfg: QemuConfig, bootindex: int | None) -> list[str]:
    if cfg.tap is None:
        return []
    device = f"virtio-net-pci,netdev=net0,mac={cfg.mac}"
    if not firmware(cfg.firmware).nic_rom_pxe:
        device += ",romfile="
    return [
        "-netdev", f"tap,id=net0,ifname={cfg.tap},script=no,downscript=no",
        "-device", _in_boot_order(device, bootindex),
    ]  # fmt: skip


def _net_boot(cfg: QemuConfig) -> list[str]:
    """UEFI HTTP Boot: the firmware's PXE entries turned off through fw_cfg; in an IPv6-only lab
    its IPv4 stack too, so the first entry is HTTP Boot over IPv6 (OVMF lists HTTPv4 first and
    would spend its DHCPv4 retries, 4+8+16+32 s, before it)."""
    if cfg.net_boot != "http" or cfg.tap is None or cfg.kernel is not None:
        return []
    fw = firmware(cfg.firmware)
    if not fw.http_boot:
        raise ValueError(f"{fw.label} firmware has no HTTP Boot")
    out: list[str] = []
    for name in fw.pxe_off_fw_cfg:
        out += ["-fw_cfg", f"name={name},string=n"]
    if not cfg.pxe_ipv4 and fw.ipv4_off_fw_cfg is not None:
        out += ["-fw_cfg", f"name={fw.ipv4_off_fw_cfg},string=n"]
    return out


def _disk(cfg: QemuConfig, bootindex: int | None) -> list[str]:
    if cfg.disk is None:
        return []
    return [
        "-drive", f"if=none,id=disk0,format=qcow2,file={_opt(cfg.disk)}",
        "-device", _in_boot_order("virtio-blk-pci,drive=disk0", bootindex),
    ]  # fmt: skip


def _ipxe_media(cfg: QemuConfig, bootindex: int | None) -> list[str]:
    """The iPXE boot media: QEMU's read-only FAT view of a directory, as a virtio disk (the
    firmware's removable-media fallback boots ``EFI/BOOT/BOOT<arch>.EFI`` from it)."""
    if cfg.ipxe_media is None or bootindex is None:
        return []
    return [
        "-drive", f"if=none,id=ipxemedia,driver=vvfat,dir={_opt(cfg.ipxe_media)},read-only=on",
        "-device", _in_boot_order("virtio-blk-pci,drive=ipxemedia", bootindex),
    ]  # fmt: skip


def _direct_kernel(cfg: QemuConfig) -> list[str]:
    if cfg.kernel is None:
        return []
    out = ["-kernel", str(cfg.kernel)]
    if cfg.initrd is not None:
        out += ["-initrd", str(cfg.initrd)]
    if cfg.append:
        out += ["-append", cfg.append]
    return out


def _opt(path: Path) -> str:
    """A path inside a QEMU option string: commas must be doubled."""
    return str(path).replace(",", ",,")


def build_argv(cfg: QemuConfig) -> list[str]:
    """The full argv (program first) for ``cfg``."""
    nic_index, disk_index, media_index = _boot_indexes(cfg)
    return [
        binary(cfg.arch),
        "-name", cfg.name,
        "-machine", _machine(cfg),
        "-accel", cfg.accel,
        *_cpu(cfg),
        "-m", str(cfg.memory_mib),
        "-smp", str(cfg.cpus),
        "-nodefaults",
        "-display", "none",
        *_firmware(cfg),
        *_serial(cfg),
        "-qmp", f"unix:{_opt(cfg.qmp_socket)},server=on,wait=off",
        "-pidfile", str(cfg.pid_file),
        *_rng(cfg),
        *_panic_device(cfg),
        *_boot_menu(cfg),
        *_pxe_families(cfg),
        *_nic(cfg, nic_index),
        *_net_boot(cfg),
        *_ipxe_media(cfg, media_index),
        *_disk(cfg, disk_index),
        *_direct_kernel(cfg),
    ]  # fmt: skip
