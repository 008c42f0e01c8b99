"""The lab's records: what they accept, and that hand-edited files cannot smuggle bad values in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError as PydanticError

from pvmlab.errors import StateError, ValidationError
from pvmlab.home import LabHome
from pvmlab.records import store
from pvmlab.records.models import DistroAssets, LabSpec, VMSpec

VM: dict[str, Any] = {
    "name": "t1", "arch": "x86_64", "mac": "52-54-00-12-34-56", "ip": "192.168.105.10",
}
DISTRO: dict[str, Any] = {
    "name": "demo", "arch": "aarch64", "kernel_sha256": "a" * 64, "initrd_sha256": "b" * 64,
    "kernel_size": 10, "initrd_size": 20,
}
LAB: dict[str, Any] = {"dhcp_start": "192.168.105.100", "dhcp_end": "192.168.105.199"}


def test_lab_defaults_to_the_seed_address() -> None:
    lab = LabSpec(**LAB)
    assert lab.address == "192.168.105.1/24"
    assert str(lab.ip) == "192.168.105.1"
    assert str(lab.network) == "192.168.105.0/24"
    assert lab.in_dynamic_range(lab.dhcp_range[0])
    assert not lab.in_dynamic_range(lab.ip)
    assert lab.created  # stamped


def test_lab_without_a_family_says_so() -> None:
    only6 = LabSpec(address=None, ipv6="fd00:105::1/64")
    with pytest.raises(ValidationError) as info:
        _ = only6.iface
    assert (info.value.problem, info.value.hint) == (
        "this lab is IPv6-only: it has no IPv4 address",
        "define the lab with `provisioner create --ip CIDR` to use IPv4",
    )
    with pytest.raises(ValidationError) as info:
        _ = LabSpec(**LAB).iface6
    assert (info.value.problem, info.value.hint) == (
        "this lab has no IPv6 prefix",
        "define the lab with `provisioner create --ipv6 PREFIX/64` to use IPv6",
    )


@pytest.mark.parametrize(
    "change",
    [
        {"address": "192.168.105.1"},
        {"address": "192.168.105.0/24"},
        {"dhcp_start": "192.168.106.100"},  # outside the subnet
        {"dhcp_end": "192.168.105.50"},  # ends before it starts
        {"dhcp_start": "192.168.105.1"},  # holds the provisioner
        {"dhcp_start": "192.168.105.100\ndhcp-range=0.0.0.0"},
        {"extra": 1},
    ],
)
def test_lab_refused(change: dict[str, Any]) -> None:
    with pytest.raises(PydanticError):
        LabSpec(**{**LAB, **change})


def test_vm_normalises_mac_and_has_defaults() -> None:
    vm = VMSpec(**VM)
    assert vm.mac == "52:54:00:12:34:56"
    assert (vm.firmware, vm.memory_mib, vm.cpus, vm.distro, vm.cmdline) == (
        "uefi", 1024, 1, None, None
    )


@pytest.mark.parametrize(
    "change",
    [
        {"name": "../x"},
        {"name": "a b"},
        {"name": "a\nb"},
        {"name": ""},
        {"mac": "ff:ff:ff:ff:ff:ff"},
        {"mac": "01:00:5e:00:00:01"},
        {"ip": "192.168.105.300"},
        {"arch": "riscv64"},
        {"firmware": "coreboot"},
        {"distro": "../etc"},
        {"cmdline": "quiet\nboot"},
        {"cmdline": "quiet || reboot"},
        {"memory_mib": 0},
        {"cpus": 0},
        {"unknown": "field"},
    ],
)
def test_vm_refused(change: dict[str, Any]) -> None:
    with pytest.raises(PydanticError):
        VMSpec(**{**VM, **change})


def test_records_are_frozen() -> None:
    vm = VMSpec(**VM)
    with pytest.raises(PydanticError):
        vm.name = "other"  # type: ignore[misc]


def test_distro_defaults_and_refusals() -> None:
    d = DistroAssets(**DISTRO)
    assert (d.kernel, d.initrd, d.cmdline, d.source) == ("vmlinuz", "initrd", "", "import")
    for change in (
        {"name": "Bad Name"},
        {"kernel": "../../etc/passwd"},
        {"initrd": ".hidden"},
        {"kernel_sha256": "nothex"},
        {"cmdline": "a\nb"},
        {"arch": "i386"},
    ):
        with pytest.raises(PydanticError):
            DistroAssets(**{**DISTRO, **change})


def test_round_trip_through_the_store(tmp_path: Path) -> None:
    home = LabHome(tmp_path / "home")
    home.ensure()
    lab, vm, d = LabSpec(**LAB), VMSpec(**VM), DistroAssets(**DISTRO)
    store.save_lab(home, lab)
    store.save_vm(home, vm)
    store.save_distro(home, d)
    assert store.load_lab(home) == lab
    assert store.load_vm(home, "t1") == vm
    assert store.load_vms(home) == [vm]
    assert store.load_distro(home, "demo", "aarch64") == d
    assert store.load_distros(home) == [d]
    assert store.load_distro(home, "demo", "x86_64") is None


def test_hand_edited_file_is_refused_on_read(tmp_path: Path) -> None:
    home = LabHome(tmp_path / "home")
    home.ensure()
    raw = {**VM, "mac": "52:54:00:12:34:56", "name": "t1", "cmdline": "quiet\nchain http://evil"}
    home.vm_file("t1").write_text(json.dumps(raw))
    with pytest.raises(StateError, match="invalid") as err:
        store.load_vm(home, "t1")
    # the field and the reason, not pydantic's "1 validation error for VMSpec" headline
    assert "cmdline: kernel command line contains a newline" in err.value.problem
    assert "validation error" not in err.value.problem
    home.lab_file.write_text(json.dumps({**LAB, "dhcp_end": "10.0.0.1"}))
    with pytest.raises(StateError):
        store.load_lab(home)
