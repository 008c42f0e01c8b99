"""`vm start --boot ipxe`: the argv (pure), the media directory, and the timeline of real boots.

``tests/unit/data/timeline/{x86_64,aarch64}-uefi-ipxe/`` are what two real ``--boot ipxe``
boots under TCG left in one lab home (OVMF / AAVMF -> iPXE from the vvfat drive -> HTTP; the
same dnsmasq.log and http.log, holding both VMs). ``console.jsonl`` keeps every line except the
middle of the kernel's log, like the other timeline cases.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from samples import qemu_config, timeline_case

from pvmlab.errors import StateError
from pvmlab.home import LabHome
from pvmlab.observe import timeline
from pvmlab.qemu.argv import QemuConfig, build_argv
from pvmlab.records.models import LabSpec
from pvmlab.stack import autoexec
from pvmlab.vm import ipxemedia

MEDIA = Path("/home/vms/t1/ipxe-media")
LAB = LabSpec(address="192.168.105.1/24", dhcp_start="192.168.105.100", dhcp_end="192.168.105.200")


def cfg(**over: object) -> QemuConfig:
    return qemu_config(**{"boot": "ipxe", "ipxe_media": MEDIA, **over})


def devices(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]


def drives(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
@pytest.mark.parametrize("disk", [False, True])
def test_argv_media_first_then_nic_then_disk(arch: str, disk: bool) -> None:
    disk_path = Path("/home/vms/t1/disk.qcow2") if disk else None
    argv = build_argv(cfg(arch=arch, disk=disk_path))
    assert f"if=none,id=ipxemedia,driver=vvfat,dir={MEDIA},read-only=on" in drives(argv), drives(
        argv
    )
    devs = devices(argv)
    assert "virtio-blk-pci,drive=ipxemedia,bootindex=0" in devs
    (nic,) = [d for d in devs if d.startswith("virtio-net-pci")]
    # the NIC ROM stays off (the firmware's PXE is only the fallback), network second
    assert ",romfile=" in nic and nic.endswith(",bootindex=1")
    blk = [d for d in devs if d.startswith("virtio-blk-pci,drive=disk0")]
    assert blk == (["virtio-blk-pci,drive=disk0,bootindex=2"] if disk else [])
    assert "virtio-rng-pci" in devs
    assert argv[argv.index("-boot") + 1] == "menu=on,splash-time=0"


def test_argv_media_path_commas_are_escaped() -> None:
    argv = build_argv(cfg(ipxe_media=Path("/a,b/ipxe-media")))
    assert "dir=/a,,b/ipxe-media" in " ".join(drives(argv))


@pytest.mark.parametrize("boot", ["pxe", "disk"])
def test_other_boot_modes_have_no_media(boot: str) -> None:
    argv = build_argv(cfg(boot=boot))
    assert not any("ipxemedia" in a for a in argv)


def test_argv_refuses_ipxe_without_media_or_on_bios() -> None:
    with pytest.raises(ValueError, match="boot=ipxe"):
        build_argv(cfg(ipxe_media=None))
    with pytest.raises(ValueError, match="boot=ipxe"):
        build_argv(cfg(firmware="bios", uefi_code=None, uefi_vars=None))


def test_direct_kernel_ignores_the_media() -> None:
    argv = build_argv(cfg(kernel=Path("/k"), initrd=Path("/i")))
    assert not any("ipxemedia" in a for a in argv)
    assert not any("bootindex" in a for a in argv)


def test_check_refuses_bios_with_the_reason() -> None:
    with pytest.raises(StateError) as err:
        ipxemedia.check("x86_64", "bios")
    assert "legacy BIOS targets already boot iPXE from the NIC ROM; use --boot pxe" in str(
        err.value
    )
    ipxemedia.check("x86_64", "uefi")
    ipxemedia.check("aarch64", "uefi")


@pytest.mark.parametrize(
    ("arch", "staged", "boot_file"),
    [("x86_64", "ipxe-x86_64.efi", "BOOTX64.EFI"), ("aarch64", "ipxe-arm64.efi", "BOOTAA64.EFI")],
)
def test_build_media_from_the_staged_binary(
    tmp_path: Path, arch: str, staged: str, boot_file: str
) -> None:
    home = LabHome(tmp_path / "home")
    home.tftp.mkdir(parents=True)
    (home.tftp / staged).write_bytes(b"MZ first stage " + arch.encode())
    lab = LAB
    old = ipxemedia.media_dir(home, "t1") / "stale.txt"
    old.parent.mkdir(parents=True)
    old.write_text("from an earlier start")

    root = ipxemedia.build(home, "t1", arch, lab)

    assert root == home.vm_dir("t1") / "ipxe-media"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == [f"EFI/BOOT/{boot_file}", "EFI/BOOT/autoexec.ipxe"]
    assert (root / "EFI/BOOT" / boot_file).read_bytes() == (home.tftp / staged).read_bytes()
    script = (root / "EFI/BOOT/autoexec.ipxe").read_text()
    assert script == autoexec.render(lab)
    assert "chain http://192.168.105.1/boot.ipxe" in script


def test_build_media_without_a_staged_binary_says_so(tmp_path: Path) -> None:
    home = LabHome(tmp_path / "home")
    lab = LAB
    with pytest.raises(StateError, match="no iPXE for aarch64 staged"):
        ipxemedia.build(home, "t1", "aarch64", lab)


@pytest.mark.usefixtures("utc")
@pytest.mark.parametrize(
    ("case", "client_arch"), [("x86_64-uefi-ipxe", 7), ("aarch64-uefi-ipxe", 11)]
)
def test_timeline_of_a_real_ipxe_media_boot(case: str, client_arch: int) -> None:
    tl, vm = timeline_case(case)
    assert [p.name for p in tl.phases] == [
        "vm-start", "ipxe-start", "ipxe-dhcp", "http-script", "http-kernel", "http-initrd",
        "handover", "kernel", "ready",
    ]  # fmt: skip
    by = {p.name: p for p in tl.phases}
    assert by["vm-start"].label == "VM start -> iPXE (local media)"
    assert by["ipxe-start"].detail["autoexec"] == "media"
    assert "autoexec.ipxe from local media" in timeline.phase_details(by["ipxe-start"])
    assert by["ipxe-dhcp"].detail["client_arch"] == client_arch
    assert by["ipxe-dhcp"].detail["ip"] == vm["ip"]
    assert by["http-script"].detail["requests"] == ["/boot.ipxe 200", "/ipxe 200"]
    assert by["http-kernel"].detail["file"] == "vmlinuz"
    assert by["http-initrd"].detail["file"] == "initrd"
    for cur, nxt in itertools.pairwise(tl.phases):
        assert cur.duration == pytest.approx(nxt.start - cur.start, abs=1e-6)
    assert sum(p.duration or 0.0 for p in tl.phases) == pytest.approx(tl.total, abs=1e-6)
    as_json = tl.as_dict()
    assert as_json["phases"][0]["label"] == "VM start -> iPXE (local media)"


@pytest.mark.usefixtures("utc")
def test_timeline_of_a_tftp_autoexec_boot_keeps_its_labels() -> None:
    tl, _ = timeline_case("x86_64-uefi")
    by = {p.name: p for p in tl.phases}
    assert by["vm-start"].label == "VM start -> firmware DHCP"
    assert by["ipxe-start"].detail["autoexec"] == "tftp"
