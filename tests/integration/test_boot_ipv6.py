"""Network boot over IPv6 with real OVMF (TCG), driven only through `pvmlab` commands:

    router advertisement -> DHCPv6 (option 59: tftp://[provisioner]/ipxe-x86_64.efi)
    -> TFTP over IPv6 -> iPXE: RA + DHCPv6 as iPXE (option 59: http://[provisioner]/boot.ipxe)
    -> per-MAC script, kernel and initrd over HTTP from the lab's IPv6 address -> marker

An IPv6-only lab (`provisioner create --ipv6 PREFIX/64 --no-ipv4`) must boot this way with no
IPv4 at all; a dual-stack lab must still boot over IPv4 as before, with its HTTP server also
answering on IPv6. The dnsmasq and HTTP logs are read with the tests' own patterns.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from bootlab import boot_seconds, create, dnsmasq_log, http_requests, start_cmd, vm_lab
from conftest import REPO, run_pvmlab
from fixtures.bootassets import MARKER, BootAssets

pytestmark = pytest.mark.integration

PREFIX = "fd00:6e57:1ab::"  # any /64 will do: the lab's namespace is its own
PROVISIONER = PREFIX + "1"
FIRST_VM = PREFIX + "2"  # the lowest free address below the DHCPv6 range (PREFIX::1000)


def boot(home: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        start_cmd(home, name), capture_output=True, text=True, timeout=600, cwd=REPO
    )


def test_x86_uefi_pxe_over_ipv6_in_an_ipv6_only_lab(
    tmp_path: Path, boot_assets: dict[str, BootAssets], record_property: pytest.RecordProperty
) -> None:
    assets = {"x86_64": boot_assets["x86_64"]}
    with vm_lab(tmp_path, assets, "--ipv6", PREFIX + "/64", "--no-ipv4") as home:
        vm = create(home, "v6efi", "x86_64", "uefi")
        assert (vm["ip"], vm["ipv6"]) == (None, FIRST_VM)
        status = json.loads(run_pvmlab("provisioner", "status", "--json", home=home).stdout)
        assert (status["state"], status["address"], status["ipv6"]) == (
            "running", None, PROVISIONER + "/64")
        assert status["dhcp_range"] is None
        assert status["dhcpv6_range"] == [PREFIX + "1000", PREFIX + "1fff"]
        t0 = time.monotonic()
        proc = boot(home, "v6efi")
        wall = time.monotonic() - t0
        assert proc.returncode == 0, proc.stdout + proc.stderr

        mac, log = vm["mac"], dnsmasq_log(home)
        # no IPv4 at all: nothing asked or answered DHCPv4
        assert not re.search(r"DHCP(DISCOVER|OFFER|ACK)\(", log), log[-3000:]
        # the firmware's DHCPv6: its MAC recognised, its reservation and the first stage's URL
        assert f"client MAC address: {mac}" in log
        reply = rf"DHCPREPLY\([^)]*\) ({re.escape(PREFIX)}[0-9a-f]*) \S+ v6efi"
        replied = set(re.findall(reply, log))
        assert FIRST_VM in replied, log[-3000:]
        assert re.search(r"tags: .*efi-x86_64", log), log[-3000:]
        assert f"bootfile-url  tftp://[{PROVISIONER}]/ipxe-x86_64.efi" in log
        # the first stage went over TFTP on IPv6, to an address dnsmasq gave this VM: EDK2 asks
        # DHCPv6 with two IAs (its IPv6 stack's and its PXE's), and while the first holds the
        # reservation the second is given a dynamic address; iPXE and the OS get the reserved one
        sent_to = re.findall(rf"sent {re.escape(str(home))}/tftp/ipxe-x86_64\.efi to (\S+)", log)
        assert sent_to and set(sent_to) <= replied, (sent_to, replied)
        # iPXE asked again as iPXE and was pointed at the script over HTTP on IPv6
        assert re.search(r"tags: .*ipxe", log)
        assert f"bootfile-url  http://[{PROVISIONER}]/boot.ipxe" in log
        # the HTTP server saw the whole chain from the guest's IPv6 address
        reqs = http_requests(home, FIRST_VM)
        paths = [(r["path"], r["status"]) for r in reqs]
        images = "/images/tiny/x86_64/"
        for want in ("/boot.ipxe", "/ipxe", images + "vmlinuz", images + "initrd"):
            assert (want, 200) in paths, paths
        console = (home / "logs" / "v6efi.log").read_text(errors="replace")
        assert re.search(rf"{MARKER} .*pvmlab\.test=1", console), console[-2000:]
        # the timeline reads the DHCPv6 lines: each phase of the chain, with the IPv6 addresses
        tl = json.loads(run_pvmlab("vm", "timeline", "v6efi", "--json", home=home).stdout)
        phases = {p["name"]: p for p in tl["phases"]}
        for name in ("firmware-dhcp", "tftp", "ipxe-dhcp", "http-script", "http-kernel",
                     "http-initrd", "ready"):  # fmt: skip
            assert name in phases, tl["phases"]
        assert phases["firmware-dhcp"]["ip"] in replied
        # DHCPv6 option 61, from the lab's per-code tag in dnsmasq's log (OVMF sends 7)
        assert phases["firmware-dhcp"]["client_arch"] == 7, phases["firmware-dhcp"]
        assert phases["tftp"]["file"] == "ipxe-x86_64.efi"
        assert phases["ipxe-dhcp"]["ip"] == FIRST_VM
        # `vm list` shows the IPv6 address (and no IPv4 one)
        [row] = json.loads(run_pvmlab("vm", "list", "--json", home=home).stdout)
        assert (row["ip"], row["ipv6"], row["state"]) == (None, FIRST_VM, "stopped")
        listing = run_pvmlab("vm", "list", home=home).stdout
        assert "IPV6" in listing and FIRST_VM in listing
        secs = boot_seconds(proc.stdout)
        record_property("boot_seconds_x86_64_uefi_ipv6_only", secs)
        print(f"\nBOOT x86_64+uefi IPv6-only: marker after {secs:.1f} s (CLI {wall:.1f} s)")


def test_dual_stack_lab_still_boots_over_ipv4(
    tmp_path: Path, boot_assets: dict[str, BootAssets]
) -> None:
    assets = {"x86_64": boot_assets["x86_64"]}
    with vm_lab(tmp_path, assets, "--ipv6", PREFIX + "/64") as home:
        vm = create(home, "dual", "x86_64", "uefi")
        assert (vm["ip"], vm["ipv6"]) == ("192.168.105.2", FIRST_VM)
        # the HTTP server listens on both addresses: status probes each of them
        status = json.loads(run_pvmlab("provisioner", "status", "--json", home=home).stdout)
        assert status["state"] == "running", status["problems"]
        assert (status["address"], status["ipv6"]) == ("192.168.105.1/24", PROVISIONER + "/64")
        http = next(s for s in status["services"] if s["name"] == "http")
        assert (http["url"], http["url6"]) == ("http://192.168.105.1/", f"http://[{PROVISIONER}]/")
        hosts = (home / "configs" / "dhcp-hosts").read_text()
        assert f"{vm['mac']},192.168.105.2,[{FIRST_VM}],dual" in hosts.splitlines()
        proc = boot(home, "dual")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        log = dnsmasq_log(home)
        # the firmware's PXE over IPv4 comes first and wins, as in an IPv4 lab
        assert re.search(rf"DHCPACK\([^)]*\) 192\.168\.105\.2 {vm['mac']}", log), log[-3000:]
        assert f"sent {home}/tftp/ipxe-x86_64.efi to 192.168.105.2" in log
        paths = [(r["path"], r["status"]) for r in http_requests(home, "192.168.105.2")]
        assert ("/boot.ipxe", 200) in paths and ("/ipxe", 200) in paths, paths
        console = (home / "logs" / "dual.log").read_text(errors="replace")
        assert re.search(rf"{MARKER} .*pvmlab\.test=1", console), console[-2000:]
