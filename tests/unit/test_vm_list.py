"""`vm list`: what each VM boots (network boot protocol, first stage, Secure Boot) in the JSON
rows and folded into the table's BOOT column, from VM records and runtime files in a temp home
(the real CLI; no VM runs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import run_pvmlab
from pvmlab.home import LabHome
from pvmlab.records import store
from pvmlab.records.models import LabSpec, VMSpec
from pvmlab.vm import state


@pytest.fixture
def home(tmp_path: Path) -> LabHome:
    h = LabHome(tmp_path / "home")
    h.ensure()
    store.save_lab(h, LabSpec(dhcp_start="192.168.105.100", dhcp_end="192.168.105.199"))
    vms = [
        VMSpec(name="a-pxe", arch="x86_64", mac="0e:00:00:00:40:01", ip="192.168.105.11"),
        VMSpec(name="b-http", arch="aarch64", net_boot="http", mac="0e:00:00:00:40:02",
               ip="192.168.105.12"),
        VMSpec(name="c-grub-sb", arch="x86_64", loader="grub", secure_boot=True,
               mac="0e:00:00:00:40:03", ip="192.168.105.13"),
        VMSpec(name="d-bios", arch="x86_64", firmware="bios", mac="0e:00:00:00:40:04",
               ip="192.168.105.14"),
        VMSpec(name="e-media", arch="x86_64", mac="0e:00:00:00:40:05", ip="192.168.105.15"),
    ]  # fmt: skip
    for vm in vms:
        store.save_vm(h, vm)
    h.vm_dir("e-media").mkdir(parents=True, exist_ok=True)  # its last start: --boot ipxe
    state.save_runtime(h, "e-media", state.RuntimeRecord(accel="tcg", boot="ipxe"))
    h.vm_file("f-damaged").write_text("{")
    return h


def test_json_says_how_each_vm_boots(home: LabHome) -> None:
    rows = {r["name"]: r for r in json.loads(
        run_pvmlab("vm", "list", "--json", home=home.root).stdout)}  # fmt: skip
    got = {n: (r["net_boot"], r["loader"], r["secure_boot"], r["boot"], r["boot_chain"])
           for n, r in rows.items()}  # fmt: skip
    assert got == {
        "a-pxe": ("pxe", "ipxe", False, "pxe", "pxe/ipxe"),
        "b-http": ("http", "ipxe", False, "pxe", "http/ipxe"),
        "c-grub-sb": ("pxe", "grub", True, "pxe", "pxe/grub+sb"),
        "d-bios": ("pxe", "ipxe", False, "pxe", "pxe/ipxe"),
        "e-media": ("pxe", "ipxe", False, "ipxe", "media/ipxe"),
        "f-damaged": (None, None, None, None, None),
    }
    assert rows["f-damaged"]["state"] == "damaged"


def test_table_has_one_boot_column(home: LabHome) -> None:
    proc = run_pvmlab("vm", "list", home=home.root)
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ARCH", "FIRMWARE", "BOOT", "MAC", "IP", "DISTRO",
                                "STATE", "ACCEL", "PID", "PROVISIONING", "INSTALL"]  # fmt: skip
    table = "\n".join(lines)
    for name, arch, fw, chain in (("a-pxe", "x86_64", "uefi", "pxe/ipxe"),
                                  ("b-http", "aarch64", "uefi", "http/ipxe"),
                                  ("c-grub-sb", "x86_64", "uefi", "pxe/grub+sb"),
                                  ("d-bios", "x86_64", "bios", "pxe/ipxe"),
                                  ("e-media", "x86_64", "uefi", "media/ipxe")):  # fmt: skip
        assert re.search(rf"^{name}\s+{arch}\s+{fw}\s+{re.escape(chain)}\s", table, re.M), table
    assert "f-damaged: damaged record" in proc.stderr
