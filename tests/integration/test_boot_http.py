"""UEFI HTTP Boot with real firmware (OVMF, AAVMF; TCG), driven only through `pvmlab` commands:

    firmware DHCP (vendor class HTTPClient, client-arch 16/19) -> iPXE over HTTP (the URL in
    the DHCP answer) -> iPXE DHCP -> HTTP boot.ipxe -> per-MAC script -> kernel + initrd

No TFTP at all: dnsmasq's log must not show a file sent to the VM. The guest is the fixture
kernel + busybox initramfs (tests/fixtures), whose /init prints ``PVMLAB-BOOT-OK <cmdline>``.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from bootlab import boot_seconds, dhcp_serials, dnsmasq_log, exchange, http_requests, vm_lab
from bootlab import start_cmd as start_argv
from conftest import REPO, run_pvmlab
from fixtures.bootassets import MARKER, BootAssets

pytestmark = pytest.mark.integration

# arch -> (HTTP Boot client-arch, the first stage's URL path)
HTTP_BOOT = {"x86_64": (16, "/tftp/ipxe-x86_64.efi"), "aarch64": (19, "/tftp/ipxe-arm64.efi")}
PHASES = [
    "vm-start", "firmware-dhcp", "http-first-stage", "ipxe-start", "ipxe-dhcp", "http-script",
    "http-kernel", "http-initrd", "handover", "kernel", "ready",
]  # fmt: skip


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_uefi_http_boot(
    tmp_path: Path,
    boot_assets: dict[str, BootAssets],
    arch: str,
    record_property: pytest.RecordProperty,
) -> None:
    with vm_lab(tmp_path, boot_assets) as home:
        name = f"hb-{arch[:3]}"
        created = run_pvmlab(
            "vm", "create", name, "--arch", arch, "--net-boot", "http", "--distro", "tiny",
            "--json", home=home,
        )  # fmt: skip
        vm = json.loads(created.stdout)
        assert vm["net_boot"] == "http"
        assert f"{vm['mac']},set:netboot-http,{vm['ip']},{name}" in (
            home / "configs" / "dhcp-hosts"
        ).read_text()
        proc = subprocess.run(
            start_argv(home, name), capture_output=True, text=True, timeout=500, cwd=REPO
        )
        console = (home / "logs" / f"{name}.log").read_text(errors="replace")
        assert proc.returncode == 0, proc.stdout + proc.stderr + console[-3000:]
        assert re.search(rf"{MARKER} .*pvmlab\.test=1", console), console[-2000:]
        secs = boot_seconds(proc.stdout)
        record_property(f"boot_seconds_http_{arch}", secs)
        print(f"\nBOOT {arch} UEFI HTTP Boot: marker after {secs:.1f} s")

        code, path = HTTP_BOOT[arch]
        mac, ip = vm["mac"], vm["ip"]
        log = dnsmasq_log(home)
        serials = dhcp_serials(log, mac)
        assert serials, f"no DHCP from {mac} in dnsmasq.log"
        first = exchange(log, serials[0])
        # the firmware's HTTP Boot client asked, and was handed the URL of its first stage
        assert f"HTTPClient:Arch:{code:05d}" in first, first
        assert f"http://192.168.105.1{path}" in first, first
        assert re.search(rf"DHCPACK\([^)]*\) {re.escape(ip)} {mac}", first), first
        # no TFTP for this machine: nothing sent, not even asked for
        tftp = [ln for ln in log.splitlines() if "dnsmasq-tftp" in ln and ip in ln]
        assert tftp == [], tftp
        # the first stage came over HTTP, whole, then iPXE's usual chain
        reqs = http_requests(home, ip)
        paths = [(r["path"], r["status"]) for r in reqs]
        size = (home / "tftp" / path.rsplit("/", 1)[1]).stat().st_size
        got = [(r["method"], r["bytes"]) for r in reqs if r["path"] == path]
        assert ("GET", size) in got, got  # EDK2 asks HEAD first, for the size
        assert paths.index((path, 200)) < paths.index(("/boot.ipxe", 200)), paths
        assert ("/ipxe", 200) in paths and ("/no-http-boot", 404) not in paths, paths
        for f in ("vmlinuz", "initrd"):
            assert (f"/images/tiny/{arch}/{f}", 200) in paths, paths
        argv = json.loads((home / "vms" / name / "runtime.json").read_text())["argv"]
        assert "name=opt/org.tianocore/IPv4PXESupport,string=n" in argv

        listed = json.loads(run_pvmlab("vm", "list", "--json", home=home).stdout)
        assert [(v["name"], v["net_boot"]) for v in listed] == [(name, "http")]

        out = run_pvmlab("vm", "timeline", name, "--wait-for", MARKER, "--json", home=home)
        tl = json.loads(out.stdout)
        phases = tl["phases"]
        assert [p["name"] for p in phases] == PHASES, phases
        by = {p["name"]: p for p in phases}
        assert by["firmware-dhcp"]["client_arch"] == code
        assert by["firmware-dhcp"]["ip"] == ip
        assert f"GET {path} 200" in by["http-first-stage"]["requests"]
        assert by["http-first-stage"]["bytes"] == size
        assert "tftp" not in by
