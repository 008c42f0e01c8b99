"""What a MAC boots, read from real records in a lab home on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pvmlab.errors import ValidationError
from pvmlab.home import LabHome
from pvmlab.records import store
from pvmlab.records.models import DistroAssets, LabSpec, VMSpec
from pvmlab.stack.bootconfig import boot_config, compose_cmdline

LAB = LabSpec(dhcp_start="192.168.105.100", dhcp_end="192.168.105.199")


@pytest.fixture
def home(tmp_path: Path) -> LabHome:
    h = LabHome(tmp_path / "home")
    h.ensure()
    return h


def distro(home: LabHome, name: str = "demo", arch: str = "x86_64", cmdline: str = "quiet",
           kernel: str = "vmlinuz", initrd: str = "initrd") -> Path:
    folder = store.distro_dir(home, name, arch)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / kernel).write_bytes(b"K")
    (folder / initrd).write_bytes(b"I")
    store.save_distro(home, DistroAssets(
        name=name, arch=arch, kernel=kernel, initrd=initrd,  # type: ignore[arg-type]
        kernel_sha256="1" * 64, initrd_sha256="2" * 64, kernel_size=1, initrd_size=1,
        cmdline=cmdline,
    ))
    return folder


def vm(home: LabHome, name: str = "t1", mac: str = "0e:00:00:00:00:01", arch: str = "x86_64",
       distro_name: str | None = "demo", cmdline: str | None = None,
       firmware: str = "uefi") -> VMSpec:
    spec = VMSpec(name=name, arch=arch, mac=mac, ip="192.168.105.10",  # type: ignore[arg-type]
                  distro=distro_name, cmdline=cmdline, firmware=firmware)  # type: ignore[arg-type]
    store.save_vm(home, spec)
    return spec


def test_bootable_vm(home: LabHome) -> None:
    distro(home)
    vm(home)
    cfg = boot_config(home, LAB, "0e:00:00:00:00:01")
    assert cfg is not None and cfg.bootable
    assert cfg.vm == "t1" and cfg.arch == "x86_64" and cfg.firmware == "uefi"
    assert cfg.kernel_url == "http://192.168.105.1/images/demo/x86_64/vmlinuz"
    assert cfg.initrd_url == "http://192.168.105.1/images/demo/x86_64/initrd"
    assert cfg.initrd_name == "initrd"
    assert cfg.cmdline == "quiet initrd=initrd console=ttyS0"
    assert (cfg.kernel_sha256, cfg.initrd_sha256) == ("1" * 64, "2" * 64)


def test_base_url_override(home: LabHome) -> None:
    distro(home)
    vm(home)
    cfg = boot_config(home, LAB, "0e:00:00:00:00:01", base_url="http://127.0.0.1:8080/")
    assert cfg is not None
    assert cfg.kernel_url == "http://127.0.0.1:8080/images/demo/x86_64/vmlinuz"


@pytest.mark.parametrize("spelling", ["0E:00:00:00:00:01", "0e-00-00-00-00-01", "0e0000000001"])
def test_mac_spellings(home: LabHome, spelling: str) -> None:
    distro(home)
    vm(home)
    cfg = boot_config(home, LAB, spelling)
    assert cfg is not None and cfg.vm == "t1"


def test_unknown_mac_is_none_and_bad_mac_raises(home: LabHome) -> None:
    distro(home)
    vm(home)
    assert boot_config(home, LAB, "0e:00:00:00:00:02") is None
    with pytest.raises(ValidationError):
        boot_config(home, LAB, "not a mac")


def test_aarch64_console_and_vm_cmdline(home: LabHome) -> None:
    distro(home, arch="aarch64", cmdline="ro")
    vm(home, arch="aarch64", cmdline="earlycon ip=dhcp")
    cfg = boot_config(home, LAB, "0e:00:00:00:00:01")
    assert cfg is not None
    assert cfg.cmdline == "earlycon ip=dhcp initrd=initrd console=ttyAMA0"  # VM's, not distro's


def test_empty_vm_cmdline_still_overrides_distro(home: LabHome) -> None:
    distro(home, cmdline="quiet splash")
    vm(home, cmdline="")
    cfg = boot_config(home, LAB, "0e:00:00:00:00:01")
    assert cfg is not None and cfg.cmdline == "initrd=initrd console=ttyS0"


def test_compose_keeps_given_console_and_initrd() -> None:
    assert compose_cmdline("console=ttyS1 initrd=x", "x86_64", "initrd") == "console=ttyS1 initrd=x"
    assert compose_cmdline("  a   b ", "aarch64", "ird") == "a b initrd=ird console=ttyAMA0"


def test_initrd_name_follows_distro_file(home: LabHome) -> None:
    distro(home, kernel="linux", initrd="initrd.gz")
    vm(home)
    cfg = boot_config(home, LAB, "0e:00:00:00:00:01")
    assert cfg is not None and cfg.bootable
    assert cfg.initrd_name == "initrd.gz"
    assert cfg.kernel_url is not None and cfg.kernel_url.endswith("/demo/x86_64/linux")
    assert cfg.cmdline is not None and "initrd=initrd.gz" in cfg.cmdline.split()


def test_vm_without_distro(home: LabHome) -> None:
    vm(home, distro_name=None)
    cfg = boot_config(home, LAB, "0e:00:00:00:00:01")
    assert cfg is not None and not cfg.bootable
    assert cfg.problem is not None and "no distro" in cfg.problem
    assert cfg.kernel_url is None and cfg.cmdline is None


def test_distro_missing_for_arch(home: LabHome) -> None:
    distro(home, arch="x86_64")
    vm(home, arch="aarch64")
    cfg = boot_config(home, LAB, "0e:00:00:00:00:01")
    assert cfg is not None and not cfg.bootable
    assert cfg.problem is not None and "not present for aarch64" in cfg.problem


def test_kernel_file_gone(home: LabHome) -> None:
    folder = distro(home)
    vm(home)
    (folder / "vmlinuz").unlink()
    cfg = boot_config(home, LAB, "0e:00:00:00:00:01")
    assert cfg is not None and cfg.problem is not None and "kernel" in cfg.problem


def test_hand_edited_unsafe_file_name_is_not_served(home: LabHome) -> None:
    folder = distro(home)
    vm(home)
    meta = json.loads((folder / "distro.json").read_text())
    meta["kernel"] = "../../../etc/passwd"
    (folder / "distro.json").write_text(json.dumps(meta))
    cfg = boot_config(home, LAB, "0e:00:00:00:00:01")
    assert cfg is not None and not cfg.bootable
    assert cfg.problem is not None and "unsafe" in cfg.problem


def test_broken_vm_file_does_not_hide_others(home: LabHome) -> None:
    distro(home)
    vm(home, name="good", mac="0e:00:00:00:00:07")
    home.vm_file("broken").write_text("{not json")
    cfg = boot_config(home, LAB, "0e:00:00:00:00:07")
    assert cfg is not None and cfg.vm == "good"


def test_bios_firmware_recorded(home: LabHome) -> None:
    distro(home)
    vm(home, firmware="bios")
    cfg = boot_config(home, LAB, "0e:00:00:00:00:01")
    assert cfg is not None and cfg.firmware == "bios" and cfg.bootable
