"""The pure QEMU argv builder, for every arch x firmware x accel x boot combination."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from samples import CODE, VARS, qemu_config

from pvmlab.qemu.argv import QemuConfig, build_argv, machine_type

COMBOS = [
    (arch, fw)
    for arch, fw in itertools.product(("x86_64", "aarch64"), ("uefi", "bios"))
    if not (arch == "aarch64" and fw == "bios")
]


cfg = qemu_config


def opt(argv: list[str], flag: str) -> list[str]:
    """Every value given to ``flag``."""
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def nic(argv: list[str]) -> str:
    (dev,) = [d for d in opt(argv, "-device") if d.startswith("virtio-net-pci")]
    return dev


@pytest.mark.parametrize(
    ("arch", "firmware", "accel", "boot", "disk"),
    [
        (a, f, acc, b, d)
        for (a, f) in COMBOS
        for acc in ("tcg", "kvm", "hvf")
        for b in ("pxe", "disk")
        for d in (False, True)
    ],
)
def test_every_combination(arch: str, firmware: str, accel: str, boot: str, disk: bool) -> None:
    disk_path = Path("/home/vms/t1/disk.qcow2") if disk else None
    argv = build_argv(cfg(arch=arch, firmware=firmware, accel=accel, boot=boot, disk=disk_path))

    assert argv[0] == f"qemu-system-{arch}"
    assert opt(argv, "-name") == ["t1"]
    assert opt(argv, "-accel") == [accel]
    expected_machine = {"x86_64": {"uefi": "q35", "bios": "pc"}, "aarch64": {"uefi": "virt"}}
    assert opt(argv, "-machine") == [expected_machine[arch][firmware]]

    cpu = opt(argv, "-cpu")
    if accel in ("kvm", "hvf"):
        assert cpu == ["host"]
    elif arch == "aarch64":
        assert cpu == ["max"]
    else:
        assert cpu == []

    drives = opt(argv, "-drive")
    pflash = [d for d in drives if d.startswith("if=pflash")]
    if firmware == "uefi":
        assert pflash == [
            f"if=pflash,format=raw,unit=0,readonly=on,file={CODE}",
            f"if=pflash,format=raw,unit=1,file={VARS}",
        ]
    else:
        assert pflash == []

    # NIC ROM trap: UEFI disables QEMU's bundled iPXE ROM, BIOS keeps it (it is the PXE stack).
    dev = nic(argv)
    assert "mac=0e:00:00:00:00:01" in dev
    assert ("romfile=" in dev) == (firmware == "uefi")
    assert opt(argv, "-netdev") == ["tap,id=net0,ifname=pvt12345678,script=no,downscript=no"]

    disks = [d for d in opt(argv, "-device") if d.startswith("virtio-blk-pci")]
    if not disk:
        assert disks == []
        assert dev.endswith(",bootindex=0")
    elif boot == "pxe":
        assert dev.endswith(",bootindex=0")
        assert disks == ["virtio-blk-pci,drive=disk0,bootindex=1"]
    else:
        assert dev.endswith(",bootindex=1")
        assert disks == ["virtio-blk-pci,drive=disk0,bootindex=0"]
    # bootindex alone decides the order (mixing in -boot order= confuses firmware); UEFI only
    # gets a zero boot-menu timeout (AAVMF otherwise waits 5 s before a network boot)
    assert opt(argv, "-boot") == (["menu=on,splash-time=0"] if firmware == "uefi" else [])

    assert opt(argv, "-qmp") == ["unix:/home/monitors/t1.qmp,server=on,wait=off"]
    assert opt(argv, "-pidfile") == ["/home/pids/t1.pid"]
    assert "-nodefaults" in argv and opt(argv, "-display") == ["none"]
    assert "-kernel" not in argv


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
    assert "bootindex" not in nic(argv)


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
