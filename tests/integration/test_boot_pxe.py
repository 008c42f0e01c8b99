"""The seed's whole chain with real firmware, driven only through `pvmlab` commands (TCG):

    firmware DHCP -> TFTP iPXE -> iPXE DHCP -> HTTP boot.ipxe -> per-MAC script -> kernel + initrd

The guest is the fixture kernel + busybox initramfs (tests/fixtures), whose /init prints
``PVMLAB-BOOT-OK <cmdline>`` and powers off. Each test has its own lab home (its namespace,
bridge and taps are named from it) and checks on the way out that no QEMU, namespace or stack
process of that lab is left. Boot wall times are printed (``pytest -s``) and recorded as test
properties.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, run_pvmlab
from fixtures.bootassets import MARKER, BootAssets
from netlab import is_ours, kill_pid, running_lab
from pvmlab import spawn

pytestmark = pytest.mark.integration

BOOT_TIMEOUT = "300"
FIRST_STAGE = {("aarch64", "uefi"): "ipxe-arm64.efi", ("x86_64", "uefi"): "ipxe-x86_64.efi"}
CLIENT_ARCH = {("aarch64", "uefi"): 11, ("x86_64", "uefi"): 7, ("x86_64", "bios"): 0}


def qemu_pids(home: Path) -> list[int]:
    """QEMU processes started for this lab home (their argv holds the home's pid file path)."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            argv = spawn.pid_cmdline(int(proc.name))
            if argv and "qemu-system" in argv[0] and any(str(home) in a for a in argv):
                out.append(int(proc.name))
    return [p for p in out if is_ours(p)]


@contextlib.contextmanager
def vm_lab(tmp_path: Path, assets: dict[str, BootAssets]) -> Iterator[Path]:
    """A running lab with the fixture kernels imported as distro ``tiny``; VMs cleaned after."""
    home = (tmp_path / "home").absolute()
    with running_lab(home):
        try:
            for arch, a in assets.items():
                run_pvmlab(
                    "distro", "import", "tiny", "--arch", arch,
                    "--kernel", str(a.kernel), "--initrd", str(a.initrd),
                    "--cmdline", f"{a.cmdline} pvmlab.test=1",
                    home=home,
                )  # fmt: skip
            yield home
        finally:
            run_pvmlab("clean", home=home, check=False)
            left = qemu_pids(home)
            for pid in left:
                kill_pid(pid)
            assert not left, f"QEMU processes left after `pvmlab clean`: {left}"


def dnsmasq_log(home: Path) -> str:
    return (home / "logs" / "dnsmasq.log").read_text(errors="replace")


def dhcp_serials(log: str, mac: str) -> list[str]:
    return list(
        dict.fromkeys(re.findall(rf"dnsmasq-dhcp\[\d+\]: (\d+) DHCP\w+\([^)]*\) .*{mac}", log))
    )


def exchange(log: str, serial: str) -> str:
    return "\n".join(ln for ln in log.splitlines() if f"]: {serial} " in ln)


def http_requests(home: Path, ip: str) -> list[dict[str, object]]:
    lines = (home / "logs" / "http.log").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("client") == ip]


def create(home: Path, name: str, arch: str, firmware: str) -> dict[str, str]:
    out = run_pvmlab(
        "vm", "create", name, "--arch", arch, "--firmware", firmware, "--distro", "tiny", "--json",
        home=home,
    ).stdout  # fmt: skip
    return json.loads(out)  # type: ignore[no-any-return]


def start_cmd(home: Path, name: str) -> list[str]:
    return [
        sys.executable, "-m", "pvmlab.cli.main", "--home", str(home),
        "vm", "start", name, "--accel", "tcg", "--wait", "--wait-for", MARKER,
        "--timeout", BOOT_TIMEOUT,
    ]  # fmt: skip


def boot_seconds(stdout: str) -> float:
    m = re.search(rf"saw '{MARKER}' after ([0-9.]+) s", stdout)
    assert m, stdout
    return float(m.group(1))


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
