"""UEFI HTTP Boot over IPv6 with real OVMF (TCG) in an IPv6-only lab, driven only through
`pvmlab` commands:

    router advertisement -> the firmware's HTTP Boot DHCPv6 (option 61 = 16, vendor class
    "HTTPClient") answered with option 59 http://[provisioner]/tftp/ipxe-x86_64.efi and the
    vendor class EDK2 requires -> iPXE over HTTP on IPv6 -> iPXE DHCPv6 -> boot.ipxe, per-MAC
    script, kernel and initrd over HTTP on IPv6 -> marker

No TFTP and no IPv4 at all. QEMU gets EDK2's switches for PXE (both families) and the IPv4 stack
off, so OVMF's one network boot entry is "UEFI HTTPv6" (qemu/argv.py says why, and why the boot
menu waits a moment first); AAVMF honours the PXE switches only and tries HTTP over IPv4 first.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from bootlab import boot_seconds, dnsmasq_log, http_requests, start_cmd, vm_lab
from conftest import REPO, run_pvmlab
from fixtures.bootassets import MARKER, BootAssets

pytestmark = pytest.mark.integration

PREFIX = "fd00:6e57:1b6::"  # the lab's namespace is its own; distinct from the other IPv6 tests
PROVISIONER = PREFIX + "1"
FIRST_VM = PREFIX + "2"  # the lowest free address below the DHCPv6 range (PREFIX::1000)
# arch -> (the first stage's file, dnsmasq's tag for its HTTP Boot client architecture)
FIRST_STAGES = {
    "x86_64": ("ipxe-x86_64.efi", "efi-x86_64"),
    "aarch64": ("ipxe-arm64.efi", "efi-arm64"),
}
PHASES = [
    "vm-start", "firmware-dhcp", "http-first-stage", "ipxe-start", "ipxe-dhcp", "http-script",
    "http-kernel", "http-initrd", "handover", "kernel", "ready",
]  # fmt: skip


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_uefi_http_boot_over_ipv6_in_an_ipv6_only_lab(
    tmp_path: Path,
    boot_assets: dict[str, BootAssets],
    arch: str,
    record_property: pytest.RecordProperty,
) -> None:
    name, tag = FIRST_STAGES[arch]
    first_stage = f"/tftp/{name}"
    with vm_lab(tmp_path, {arch: boot_assets[arch]}, "--ipv6", PREFIX + "/64",
                "--no-ipv4") as home:  # fmt: skip
        created = run_pvmlab(
            "vm", "create", "h6", "--arch", arch, "--net-boot", "http", "--distro", "tiny",
            "--json", home=home,
        )  # fmt: skip
        vm = json.loads(created.stdout)
        mac = vm["mac"]
        assert (vm["net_boot"], vm["ip"], vm["ipv6"]) == ("http", None, FIRST_VM)
        hosts = (home / "configs" / "dhcp-hosts").read_text()
        assert f"{mac},set:netboot-http,[{FIRST_VM}],h6" in hosts.splitlines(), hosts
        proc = subprocess.run(
            start_cmd(home, "h6"), capture_output=True, text=True, timeout=600, cwd=REPO
        )
        console = (home / "logs" / "h6.log").read_text(errors="replace")
        assert proc.returncode == 0, proc.stdout + proc.stderr + console[-3000:]
        assert re.search(rf"{MARKER} .*pvmlab\.test=1", console), console[-2000:]
        # the firmware's own words: its HTTPv6 entry, the URL it was handed, the whole file
        assert ">>Start HTTP Boot over IPv6" in console, console[-3000:]
        assert f"URI: http://[{PROVISIONER}]{first_stage}" in console, console[-3000:]
        # no PXE entry; OVMF (x86_64) has no HTTPv4 entry either, while AAVMF ignores the
        # IPv4Support switch and first spends its DHCPv4 retries (~60 s) on HTTP over IPv4
        others = ["UEFI PXEv4", "UEFI PXEv6"]
        if arch == "x86_64":
            others += ["UEFI HTTPv4", "HTTP Boot over IPv4"]
        for other in others:
            assert other not in console, console[-3000:]

        log = dnsmasq_log(home)
        # no IPv4 at all, and no TFTP: nothing asked, nothing sent
        assert not re.search(r"DHCP(DISCOVER|OFFER|ACK)\(", log), log[-3000:]
        assert "dnsmasq-tftp" not in log.split("TFTP root is", 1)[1], log[-3000:]
        # the HTTP Boot client's DHCPv6 (EDK2's enterprise 343, client-arch 16) was recognised
        # and answered with the first stage's URL and the vendor class EDK2 requires
        assert "vendor class: 343" in log and f"client MAC address: {mac}" in log
        assert re.search(rf"tags: .*httpboot6-{tag}", log), log[-3000:]
        assert "option: 16 vendor-class  pv,HTTPClient" in log, log[-3000:]
        assert f"bootfile-url  http://[{PROVISIONER}]{first_stage}" in log, log[-3000:]
        reply = rf"DHCPREPLY\([^)]*\) ({re.escape(PREFIX)}[0-9a-f]*) \S+ h6"
        replied = set(re.findall(reply, log))
        assert FIRST_VM in replied, log[-3000:]
        # iPXE asked again as iPXE and was pointed at the script
        assert f"bootfile-url  http://[{PROVISIONER}]/boot.ipxe" in log, log[-3000:]

        # the HTTP server saw the first stage fetched whole, over IPv6, from an address dnsmasq
        # gave this VM; then iPXE's chain from the reserved address
        fetched = [
            r for r in map(json.loads, (home / "logs" / "http.log").read_text().splitlines())
            if r.get("path") == first_stage and r.get("method") == "GET"
        ]  # fmt: skip
        size = (home / "tftp" / name).stat().st_size
        assert [(r["status"], r["bytes"]) for r in fetched] == [(200, size)], fetched
        assert fetched[0]["client"] in replied, (fetched, replied)
        paths = [(r["path"], r["status"]) for r in http_requests(home, FIRST_VM)]
        images = f"/images/tiny/{arch}/"
        for want in ("/boot.ipxe", "/ipxe", images + "vmlinuz", images + "initrd"):
            assert (want, 200) in paths, paths

        argv = json.loads((home / "vms" / "h6" / "runtime.json").read_text())["argv"]
        for name in ("IPv4PXESupport", "IPv6PXESupport", "IPv4Support"):
            assert f"name=opt/org.tianocore/{name},string=n" in argv, argv

        # the timeline reads the chain from the DHCPv6 and HTTP logs: the same phases as HTTP
        # Boot over IPv4, no TFTP
        tl = json.loads(run_pvmlab("vm", "timeline", "h6", "--json", home=home).stdout)
        assert [p["name"] for p in tl["phases"]] == PHASES, tl["phases"]
        by = {p["name"]: p for p in tl["phases"]}
        assert by["firmware-dhcp"]["ip"] in replied, by["firmware-dhcp"]
        assert f"GET {first_stage} 200" in by["http-first-stage"]["requests"]
        assert by["http-first-stage"]["bytes"] == size
        assert by["ipxe-dhcp"]["ip"] == FIRST_VM
        secs = boot_seconds(proc.stdout)
        record_property(f"boot_seconds_http_{arch}_ipv6_only", secs)
        print(f"\nBOOT {arch} UEFI HTTP Boot over IPv6 (IPv6-only lab): marker after {secs:.1f} s")
