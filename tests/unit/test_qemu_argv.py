"""The pure QEMU argv builder, for every arch x firmware x accel x boot combination."""

from __future__ import annotations

from pathlib import Path

import pytest
from samples import qemu_config

from pvmlab.qemu.argv import QemuConfig, build_argv, machine_type

cfg = qemu_config
DISK = Path("/home/vms/t1/disk.qcow2")
AAVMF = Path("/fw/AAVMF_CODE.fd")

# The parts every target shares, as they appear in the full command lines below.
SERIAL = [
    "-chardev",
    "socket,id=serial0,path=/home/monitors/t1.console,server=on,wait=off,"
    "logfile=/home/logs/t1.log,logappend=off",
    "-serial", "chardev:serial0",
]  # fmt: skip
CONTROL = ["-qmp", "unix:/home/monitors/t1.qmp,server=on,wait=off", "-pidfile", "/home/pids/t1.pid"]
# A guest's panic reaches QEMU's run state (guest-panicked) and pauses the VM there.
PANIC_X86 = ["-device", "pvpanic", "-action", "panic=pause"]
PANIC_ARM = ["-device", "pvpanic-pci", "-action", "panic=pause"]
TAP = ["-netdev", "tap,id=net0,ifname=pvt12345678,script=no,downscript=no"]
SIZE_AND_DISPLAY = ["-m", "1024", "-smp", "1", "-nodefaults", "-display", "none"]
RNG = ["-device", "virtio-rng-pci"]
UEFI_MENU = ["-boot", "menu=on,splash-time=0"]


def head(arch: str, machine: str, accel: str, cpu: str | None = None) -> list[str]:
    """The binary, name, machine, accelerator, CPU (if any), memory, CPUs and display."""
    return [
        f"qemu-system-{arch}", "-name", "t1", "-machine", machine, "-accel", accel,
        *(["-cpu", cpu] if cpu else []), *SIZE_AND_DISPLAY,
    ]  # fmt: skip


def pflash(code: str) -> list[str]:
    """UEFI: the read-only code and the VM's own vars."""
    return [
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
        "-drive", "if=pflash,format=raw,unit=1,file=/home/vms/t1/efivars.fd",
    ]  # fmt: skip


def nic(bootindex: int, *, rom: bool = False) -> list[str]:
    """The NIC, its option ROM kept only for BIOS (``rom``)."""
    romfile = "" if rom else "romfile=,"
    return ["-device", f"virtio-net-pci,netdev=net0,mac=0e:00:00:00:00:01,{romfile}"
            f"bootindex={bootindex}"]  # fmt: skip


def disk(bootindex: int) -> list[str]:
    return [
        "-drive", "if=none,id=disk0,format=qcow2,file=/home/vms/t1/disk.qcow2",
        "-device", f"virtio-blk-pci,drive=disk0,bootindex={bootindex}",
    ]  # fmt: skip


def opt(argv: list[str], flag: str) -> list[str]:
    """Every value given to ``flag``."""
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_x86_64_uefi_tcg_network_boot() -> None:
    assert build_argv(cfg()) == [
        *head("x86_64", "q35", "tcg"), *pflash("/fw/CODE.fd"),
        *SERIAL, *CONTROL, *RNG, *PANIC_X86, *UEFI_MENU, *TAP, *nic(0),
    ]  # fmt: skip


def test_x86_64_bios_kvm_disk_first() -> None:
    argv = build_argv(
        cfg(firmware="bios", accel="kvm", boot="disk", disk=DISK, uefi_code=None, uefi_vars=None)
    )
    assert argv == [
        *head("x86_64", "pc", "kvm", cpu="host"),
        *SERIAL, *CONTROL, *PANIC_X86, *TAP, *nic(1, rom=True), *disk(0),
    ]  # fmt: skip


def test_aarch64_uefi_tcg_network_then_disk() -> None:
    assert build_argv(cfg(arch="aarch64", disk=DISK, uefi_code=AAVMF)) == [
        *head("aarch64", "virt", "tcg", cpu="max"), *pflash(str(AAVMF)),
        *SERIAL, *CONTROL, *RNG, *PANIC_ARM, *UEFI_MENU, *TAP, *nic(0), *disk(1),
    ]  # fmt: skip


def test_aarch64_hvf_ipxe_media_first_then_network_then_disk() -> None:
    media = Path("/home/vms/t1/ipxe-media")
    argv = build_argv(
        cfg(arch="aarch64", accel="hvf", boot="ipxe", ipxe_media=media, disk=DISK, uefi_code=AAVMF)
    )
    assert argv == [
        *head("aarch64", "virt", "hvf", cpu="host"), *pflash(str(AAVMF)),
        *SERIAL, *CONTROL, *RNG, *PANIC_ARM, *UEFI_MENU, *TAP, *nic(1),
        "-drive", "if=none,id=ipxemedia,driver=vvfat,dir=/home/vms/t1/ipxe-media,read-only=on",
        "-device", "virtio-blk-pci,drive=ipxemedia,bootindex=0",
        *disk(2),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("arch", "firmware", "accel", "machine", "cpu"),
    [
        ("x86_64", "uefi", "tcg", "q35", []),
        ("x86_64", "uefi", "kvm", "q35", ["host"]),
        ("x86_64", "uefi", "hvf", "q35", ["host"]),
        ("x86_64", "bios", "tcg", "pc", []),
        ("x86_64", "bios", "kvm", "pc", ["host"]),
        ("aarch64", "uefi", "tcg", "virt", ["max"]),
        ("aarch64", "uefi", "kvm", "virt", ["host"]),
        ("aarch64", "uefi", "hvf", "virt", ["host"]),
    ],
)
def test_machine_and_cpu(
    arch: str, firmware: str, accel: str, machine: str, cpu: list[str]
) -> None:
    argv = build_argv(cfg(arch=arch, firmware=firmware, accel=accel))
    assert argv[0] == {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64"}[arch]
    assert opt(argv, "-machine") == [machine]
    assert opt(argv, "-accel") == [accel]
    assert opt(argv, "-cpu") == cpu


@pytest.mark.parametrize(
    ("firmware", "boot", "disk", "nic", "disks"),
    [
        ("uefi", "pxe", None, "romfile=,bootindex=0", []),
        ("uefi", "pxe", DISK, "romfile=,bootindex=0", ["virtio-blk-pci,drive=disk0,bootindex=1"]),
        ("uefi", "disk", DISK, "romfile=,bootindex=1", ["virtio-blk-pci,drive=disk0,bootindex=0"]),
        ("uefi", "disk", None, "romfile=,bootindex=0", []),  # no disk: the network after all
        ("bios", "pxe", None, "bootindex=0", []),  # BIOS keeps the NIC ROM: it is the PXE stack
        ("bios", "pxe", DISK, "bootindex=0", ["virtio-blk-pci,drive=disk0,bootindex=1"]),
        ("bios", "disk", DISK, "bootindex=1", ["virtio-blk-pci,drive=disk0,bootindex=0"]),
    ],
)
def test_boot_order_by_bootindex(
    firmware: str, boot: str, disk: Path | None, nic: str, disks: list[str]
) -> None:
    argv = build_argv(cfg(firmware=firmware, boot=boot, disk=disk))
    nics = [d for d in opt(argv, "-device") if d.startswith("virtio-net-pci")]
    assert nics == [f"virtio-net-pci,netdev=net0,mac=0e:00:00:00:00:01,{nic}"]
    assert [d for d in opt(argv, "-device") if d.startswith("virtio-blk-pci")] == disks
    # bootindex alone decides the order (mixing in -boot order= confuses firmware); UEFI only
    # gets a zero boot-menu timeout (AAVMF otherwise waits 5 s before a network boot)
    assert opt(argv, "-boot") == (["menu=on,splash-time=0"] if firmware == "uefi" else [])


def test_serial_socket_is_logged_for_console_attach() -> None:
    argv = build_argv(cfg())
    (chardev,) = opt(argv, "-chardev")
    assert chardev == (
        "socket,id=serial0,path=/home/monitors/t1.console,server=on,wait=off,"
        "logfile=/home/logs/t1.log,logappend=off"
    )
    assert opt(argv, "-serial") == ["chardev:serial0"]


def test_serial_plain_file_without_console_socket() -> None:
    argv = build_argv(cfg(console_socket=None))
    assert opt(argv, "-chardev") == ["file,id=serial0,path=/home/logs/t1.log"]


def test_interactive_puts_console_on_stdio_and_still_logs() -> None:
    argv = build_argv(cfg(interactive=True))
    (chardev,) = opt(argv, "-chardev")
    assert chardev.startswith("stdio,id=serial0,mux=on")
    assert "logfile=/home/logs/t1.log" in chardev
    assert opt(argv, "-mon") == ["chardev=serial0,mode=readline"]


def test_direct_kernel_boot_has_no_boot_indexes() -> None:
    argv = build_argv(
        cfg(kernel=Path("/k/vmlinuz"), initrd=Path("/k/initrd"), append="console=ttyS0 x=1")
    )
    assert opt(argv, "-kernel") == ["/k/vmlinuz"]
    assert opt(argv, "-initrd") == ["/k/initrd"]
    assert opt(argv, "-append") == ["console=ttyS0 x=1"]
    assert "-boot" not in argv  # no boot menu to skip: the firmware loads the kernel itself
    assert "virtio-net-pci,netdev=net0,mac=0e:00:00:00:00:01,romfile=" in opt(argv, "-device")


def test_no_network_when_no_tap() -> None:
    argv = build_argv(cfg(tap=None, kernel=Path("/k/vmlinuz")))
    assert "-netdev" not in argv
    assert not [d for d in opt(argv, "-device") if d.startswith("virtio-net")]


def test_commas_in_paths_are_escaped_for_qemu_options() -> None:
    argv = build_argv(cfg(uefi_vars=Path("/a,b/vars.fd")))
    assert "if=pflash,format=raw,unit=1,file=/a,,b/vars.fd" in opt(argv, "-drive")


def test_memory_and_cpus() -> None:
    argv = build_argv(cfg(memory_mib=2048, cpus=4))
    assert opt(argv, "-m") == ["2048"] and opt(argv, "-smp") == ["4"]


def test_uefi_without_firmware_paths_is_a_bug() -> None:
    with pytest.raises(ValueError, match="uefi_code"):
        build_argv(QemuConfig(**{**cfg().__dict__, "uefi_code": None}))


def test_bios_on_aarch64_has_no_machine() -> None:
    with pytest.raises(ValueError, match="no machine"):
        machine_type("aarch64", "bios")


def test_argv_is_pure() -> None:
    c = cfg(disk=Path("/d.qcow2"))
    assert build_argv(c) == build_argv(c)


@pytest.mark.parametrize(("arch", "firmware", "device"), [
    ("x86_64", "uefi", "pvpanic"),
    ("x86_64", "bios", "pvpanic"),
    ("aarch64", "uefi", "pvpanic-pci"),
])  # fmt: skip
def test_guest_panics_reach_qemu_and_pause_the_vm(arch: str, firmware: str, device: str) -> None:
    argv = build_argv(cfg(arch=arch, firmware=firmware))
    assert device in opt(argv, "-device")
    assert opt(argv, "-action") == ["panic=pause"]


def test_secure_boot_firmware_with_smm() -> None:
    """OVMF's Secure Boot build keeps its variables behind SMM: q35 with smm=on and the flash
    in secure mode, so the guest cannot rewrite the enrolled keys."""
    argv = build_argv(QemuConfig(**{**cfg().__dict__, "smm": True}))
    assert opt(argv, "-machine") == ["q35,smm=on"]
    assert opt(argv, "-global") == ["driver=cfi.pflash01,property=secure,value=on"]
    i = argv.index("-global")
    assert argv[i + 2] == "-drive" and argv[i + 3].startswith("if=pflash,format=raw,unit=0,")
