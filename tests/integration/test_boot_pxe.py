"""The seed's whole chain with real firmware, driven only through `pvmlab` commands (TCG):

    firmware DHCP -> TFTP iPXE -> iPXE DHCP -> HTTP boot.ipxe -> per-MAC script -> kernel + initrd

The guest is the fixture kernel + busybox initramfs (tests/fixtures), whose /init prints
``PVMLAB-BOOT-OK <cmdline>`` and powers off. Each test has its own lab home (its namespace,
bridge and taps are named from it) and checks on the way out that no QEMU, namespace or stack
process of that lab is left. Boot wall times are printed (``pytest -s``) and recorded as test
properties.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
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

pytestmark = pytest.mark.integration

FIRST_STAGE = {("aarch64", "uefi"): "ipxe-arm64.efi", ("x86_64", "uefi"): "ipxe-x86_64.efi"}
CLIENT_ARCH = {("aarch64", "uefi"): 11, ("x86_64", "uefi"): 7, ("x86_64", "bios"): 0}


def check_chain(home: Path, vm: dict[str, str], console: str) -> None:
    """What the stack saw of this VM, and what the guest printed."""
    arch, firmware, mac, ip = vm["arch"], vm["firmware"], vm["mac"], vm["ip"]
    log = dnsmasq_log(home)
    serials = dhcp_serials(log, mac)
    assert serials, f"no DHCP from {mac} in dnsmasq.log"
    first = exchange(log, serials[0])
    # the firmware's own DHCP: its client architecture (option 93) and the reserved address
    assert f"PXEClient:Arch:{CLIENT_ARCH[(arch, firmware)]:05d}" in first, first
    assert re.search(rf"DHCPACK\([^)]*\) {re.escape(ip)} {mac}", first), first
    if firmware == "uefi":
        # the firmware's native PXE is not iPXE: it gets the first stage over TFTP ...
        assert "user class: iPXE" not in first, first
        assert f"sent {home}/tftp/{FIRST_STAGE[(arch, firmware)]} to {ip}" in log
        # ... and that iPXE asks again, as iPXE, and is acked its reserved address
        later = "\n".join(exchange(log, s) for s in serials[1:])
        assert "user class: iPXE" in later and re.search(
            rf"DHCPACK\([^)]*\) {re.escape(ip)} {mac}", later
        )
    else:
        # SeaBIOS has no PXE of its own: the NIC's option ROM (QEMU's pxe-virtio.rom) is an
        # iPXE build, so its very first DHCP already says iPXE and goes straight to HTTP;
        # undionly.kpxe is for real PXE ROMs and is not fetched here.
        assert "user class: iPXE" in first, first
        assert (
            f"to {ip}\n"
            not in "\n".join(ln for ln in log.splitlines() if "dnsmasq-tftp" in ln) + "\n"
        )
    reqs = http_requests(home, ip)
    paths = [(r["path"], r["status"]) for r in reqs]
    assert ("/boot.ipxe", 200) in paths, paths
    script = [r for r in reqs if r["path"] == "/ipxe"]
    assert script and script[0]["status"] == 200 and script[0].get("mac") == mac, script
    build = {"aarch64": "arm64", "x86_64": "x86_64" if firmware == "uefi" else "i386"}[arch]
    platform = "efi" if firmware == "uefi" else "pcbios"
    assert f"arch={build}&platform={platform}" in str(script[0]["query"])
    for f in ("vmlinuz", "initrd"):
        assert (f"/images/tiny/{arch}/{f}", 200) in paths, paths
    assert re.search(rf"{MARKER} .*pvmlab\.test=1", console), console[-2000:]


def test_aarch64_uefi_pxe_boot(
    tmp_path: Path, boot_assets: dict[str, BootAssets], record_property: pytest.RecordProperty
) -> None:
    with vm_lab(tmp_path, boot_assets) as home:
        vm = create(home, "arm1", "aarch64", "uefi")
        t0 = time.monotonic()
        proc = subprocess.run(
            start_cmd(home, "arm1"), capture_output=True, text=True, timeout=400, cwd=REPO
        )
        wall = time.monotonic() - t0
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "accelerator: tcg (asked for with --accel)" in proc.stdout
        check_chain(home, vm, (home / "logs" / "arm1.log").read_text(errors="replace"))
        record_property("boot_seconds_aarch64_uefi", boot_seconds(proc.stdout))
        secs = boot_seconds(proc.stdout)
        print(f"\nBOOT aarch64+uefi: marker after {secs:.1f} s (CLI {wall:.1f} s)")
        lst = json.loads(run_pvmlab("vm", "list", "--json", home=home).stdout)
        assert [(v["name"], v["state"], v["accel"]) for v in lst] == [("arm1", "stopped", "tcg")]


def test_x86_uefi_and_bios_boot_together(
    tmp_path: Path, boot_assets: dict[str, BootAssets], record_property: pytest.RecordProperty
) -> None:
    """Two targets started at the same time both boot, each with its own reserved IP."""
    with vm_lab(tmp_path, boot_assets) as home:
        vms = [create(home, "efi1", "x86_64", "uefi"), create(home, "bios1", "x86_64", "bios")]
        assert vms[0]["ip"] != vms[1]["ip"]
        procs = [
            subprocess.Popen(
                start_cmd(home, v["name"]),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO,
            )
            for v in vms
        ]
        try:
            outs = [p.communicate(timeout=400) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        for vm, p, (out, err) in zip(vms, procs, outs, strict=True):
            assert p.returncode == 0, f"{vm['name']}: {out}{err}"
            check_chain(home, vm, (home / "logs" / f"{vm['name']}.log").read_text(errors="replace"))
            secs = boot_seconds(out)
            record_property(f"boot_seconds_x86_64_{vm['firmware']}", secs)
            print(f"\nBOOT x86_64+{vm['firmware']} (two at once): marker after {secs:.1f} s")
        leases = (home / "stack" / "dnsmasq.leases").read_text()
        for vm in vms:
            assert re.search(rf"{vm['mac']} {re.escape(vm['ip'])} ", leases), leases


def test_disk_first_falls_back_to_the_network(
    tmp_path: Path, boot_assets: dict[str, BootAssets]
) -> None:
    """`--boot disk` on a VM whose disk is blank: the firmware tries the disk, then PXE-boots."""
    with vm_lab(tmp_path, {"x86_64": boot_assets["x86_64"]}) as home:
        run_pvmlab(
            "vm", "create", "dsk", "--arch", "x86_64", "--firmware", "bios", "--distro", "tiny",
            "--disk-size", "64M", home=home,
        )  # fmt: skip
        argv = start_cmd(home, "dsk")
        argv[argv.index("start") + 2 : argv.index("start") + 2] = ["--boot", "disk"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=400, cwd=REPO)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        print(f"\nBOOT x86_64+bios, disk first then network: {boot_seconds(proc.stdout):.1f} s")
        rt = json.loads((home / "vms" / "dsk" / "runtime.json").read_text())
        devices = [rt["argv"][i + 1] for i, a in enumerate(rt["argv"]) if a == "-device"]
        assert "virtio-blk-pci,drive=disk0,bootindex=0" in devices
        assert any(d.startswith("virtio-net-pci") and d.endswith("bootindex=1") for d in devices)
        rows = json.loads(run_pvmlab("vm", "list", "--json", home=home).stdout)
        assert rows[0]["boot"] == "disk"
