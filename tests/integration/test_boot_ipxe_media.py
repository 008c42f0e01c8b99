"""`vm start --boot ipxe` with real firmware, driven only through `pvmlab` commands (TCG):

    UEFI boots iPXE from a local vvfat drive -> iPXE DHCP -> HTTP boot.ipxe -> per-MAC script
    -> kernel + initrd -> the fixture's ``PVMLAB-BOOT-OK`` marker

The point of the mode is what does NOT happen: the firmware's own PXE never runs, so dnsmasq
sees only iPXE's DHCP (user class iPXE) from the VM and sends it nothing over TFTP. Both UEFI
arches boot in one lab; a BIOS VM is refused with one line and the lab left as it was. Boot
wall times are printed (``pytest -s``); nothing asserts a timing.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from pathlib import Path

import pytest

from bootlab import (
    boot_seconds,
    create,
    dhcp_serials,
    dnsmasq_log,
    exchange,
    http_requests,
    start_cmd,
    vm_lab,
)
from conftest import REPO, run_pvmlab
from fixtures.bootassets import MARKER, BootAssets
from pvmlab.home import LabHome

pytestmark = pytest.mark.integration

BOOT_FILE = {
    "x86_64": ("ipxe-x86_64.efi", "BOOTX64.EFI"),
    "aarch64": ("ipxe-arm64.efi", "BOOTAA64.EFI"),
}
CLIENT_ARCH = {"x86_64": 7, "aarch64": 11}
PHASES = [
    "vm-start", "ipxe-start", "ipxe-dhcp", "http-script", "http-kernel", "http-initrd",
    "handover", "kernel", "ready",
]  # fmt: skip


def start_ipxe(home: Path, name: str) -> subprocess.CompletedProcess[str]:
    argv = start_cmd(home, name)
    argv[argv.index("start") + 2 : argv.index("start") + 2] = ["--boot", "ipxe"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=400, cwd=REPO)


def check_no_firmware_pxe(home: Path, vm: dict[str, str]) -> None:
    """dnsmasq saw only iPXE's DHCP from this MAC, acked its address, and sent it no file."""
    mac, ip = vm["mac"], vm["ip"]
    log = dnsmasq_log(home)
    serials = dhcp_serials(log, mac)
    assert serials, f"no DHCP from {mac} in dnsmasq.log"
    for serial in serials:
        ex = exchange(log, serial)
        assert "user class: iPXE" in ex, f"a DHCP exchange that is not iPXE's:\n{ex}"
        assert f"PXEClient:Arch:{CLIENT_ARCH[vm['arch']]:05d}" in ex, ex
    assert any(
        re.search(rf"DHCPACK\([^)]*\) {re.escape(ip)} {mac}", exchange(log, s)) for s in serials
    )
    tftp = [ln for ln in log.splitlines() if "dnsmasq-tftp" in ln and re.search(rf" {ip}\b", ln)]
    assert tftp == [], tftp


def check_http(home: Path, vm: dict[str, str]) -> None:
    reqs = http_requests(home, vm["ip"])
    paths = [(r["path"], r["status"]) for r in reqs]
    assert paths[:2] == [("/boot.ipxe", 200), ("/ipxe", 200)], paths
    script = [r for r in reqs if r["path"] == "/ipxe"]
    build = {"aarch64": "arm64", "x86_64": "x86_64"}[vm["arch"]]
    assert script[0].get("mac") == vm["mac"]
    assert f"arch={build}&platform=efi" in str(script[0]["query"])
    for f in ("vmlinuz", "initrd"):
        assert (f"/images/tiny/{vm['arch']}/{f}", 200) in paths, paths


def check_media_and_argv(home: Path, vm: dict[str, str]) -> None:
    staged, boot_name = BOOT_FILE[vm["arch"]]
    media = home / "vms" / vm["name"] / "ipxe-media"
    boot_file = media / "EFI" / "BOOT" / boot_name
    assert boot_file.read_bytes() == (home / "tftp" / staged).read_bytes()
    assert (media / "EFI" / "BOOT" / "autoexec.ipxe").read_text() == (
        home / "tftp" / "autoexec.ipxe"
    ).read_text()
    rt = json.loads((home / "vms" / vm["name"] / "runtime.json").read_text())
    assert rt["boot"] == "ipxe"
    devs = [rt["argv"][i + 1] for i, a in enumerate(rt["argv"]) if a == "-device"]
    assert "virtio-blk-pci,drive=ipxemedia,bootindex=0" in devs
    (nic,) = [d for d in devs if d.startswith("virtio-net-pci")]
    assert ",romfile=" in nic and nic.endswith("bootindex=1")


def check_timeline(home: Path, vm: dict[str, str], a: BootAssets) -> None:
    out = run_pvmlab("vm", "timeline", vm["name"], "--wait-for", MARKER, "--json", home=home)
    tl = json.loads(out.stdout)
    phases = tl["phases"]
    assert [p["name"] for p in phases] == PHASES, phases
    for cur, nxt in itertools.pairwise(phases):
        assert cur["duration"] == pytest.approx(nxt["start"] - cur["start"], abs=0.002)
    by = {p["name"]: p for p in phases}
    assert by["vm-start"]["label"] == "VM start -> iPXE (local media)"
    assert by["ipxe-start"]["autoexec"] == "media"
    assert by["ipxe-dhcp"]["client_arch"] == CLIENT_ARCH[vm["arch"]]
    assert by["ipxe-dhcp"]["ip"] == vm["ip"]
    assert by["http-kernel"]["bytes"] == a.kernel.stat().st_size
    assert by["http-initrd"]["bytes"] == a.initrd.stat().st_size
    assert MARKER in by["ready"]["line"]


def test_uefi_boots_ipxe_from_local_media(
    tmp_path: Path, boot_assets: dict[str, BootAssets], record_property: pytest.RecordProperty
) -> None:
    with vm_lab(tmp_path, boot_assets) as home:
        for name, arch in (("im-x86", "x86_64"), ("im-arm", "aarch64")):
            vm = create(home, name, arch, "uefi")
            proc = start_ipxe(home, name)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            console = (home / "logs" / f"{name}.log").read_text(errors="replace")
            assert re.search(rf"{MARKER} .*pvmlab\.test=1", console), console[-2000:]
            # iPXE came from the drive and ran the script next to it: no Ctrl-B prompt, and
            # the firmware never started its own PXE
            assert "file:autoexec.ipxe... ok" in console, console[:2000]
            assert "Press Ctrl-B" not in console and "Start PXE over IPv4" not in console
            check_no_firmware_pxe(home, vm)
            check_http(home, vm)
            check_media_and_argv(home, vm)
            check_timeline(home, vm, boot_assets[arch])
            secs = boot_seconds(proc.stdout)
            record_property(f"boot_seconds_{arch}_uefi_ipxe_media", secs)
            print(f"\nBOOT {arch}+uefi --boot ipxe: marker after {secs:.1f} s")
        rows = {
            r["name"]: r for r in json.loads(run_pvmlab("vm", "list", "--json", home=home).stdout)
        }
        assert rows["im-x86"]["boot"] == rows["im-arm"]["boot"] == "ipxe"
        assert rows["im-x86"]["boot_chain"] == "media/ipxe"
        listed = run_pvmlab("vm", "list", home=home).stdout
        assert re.search(r"^im-x86\s+x86_64\s+uefi\s+media/ipxe\s", listed, re.M), listed


def test_bios_vm_is_refused_and_the_lab_left_alone(
    tmp_path: Path, boot_assets: dict[str, BootAssets]
) -> None:
    with vm_lab(tmp_path, {"x86_64": boot_assets["x86_64"]}) as home:
        create(home, "old1", "x86_64", "bios")
        before = sorted(p.name for p in (home / "vms").rglob("*"))
        bad = run_pvmlab(
            "vm", "start", "old1", "--boot", "ipxe", "--accel", "tcg", home=home, check=False
        )
        assert bad.returncode != 0 and "Traceback" not in bad.stderr
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert "legacy BIOS targets already boot iPXE from the NIC ROM; use --boot pxe" in lines[0]
        assert sorted(p.name for p in (home / "vms").rglob("*")) == before
        tap = LabHome(home).tap("old1")
        links = subprocess.run(
            ["ip", "-n", LabHome(home).netns, "-o", "link"], capture_output=True, text=True
        ).stdout
        assert tap not in links
        rows = json.loads(run_pvmlab("vm", "list", "--json", home=home).stdout)
        assert [(r["name"], r["state"]) for r in rows] == [("old1", "stopped")]
