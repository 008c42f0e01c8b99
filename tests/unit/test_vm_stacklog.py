# ruff: noqa: E501, W291  (log lines kept exactly as dnsmasq wrote them, trailing blanks included)
"""The stack's view of one MAC, from log lines in the exact format dnsmasq 2.90 and the HTTP
server wrote them during a real aarch64 PXE boot in this lab (copied from that run)."""

from __future__ import annotations

import json
from pathlib import Path

from pvmlab.home import LabHome
from pvmlab.observe import stacklog

MAC = "0e:b0:6e:68:e0:92"
DNSMASQ = """\
Nov 27 01:59:22 dnsmasq-dhcp[9783]: 3214431530 available DHCP range: 192.168.105.100 -- 192.168.105.199
Nov 27 01:59:22 dnsmasq-dhcp[9783]: 3214431530 vendor class: PXEClient:Arch:00011:UNDI:003000
Nov 27 01:59:22 dnsmasq-dhcp[9783]: 3214431530 DHCPDISCOVER(pvbrfd412048) 0e:b0:6e:68:e0:92 
Nov 27 01:59:22 dnsmasq-dhcp[9783]: 3214431530 tags: known, efi-arm64, pvbrfd412048
Nov 27 01:59:22 dnsmasq-dhcp[9783]: 3214431530 DHCPOFFER(pvbrfd412048) 192.168.105.2 0e:b0:6e:68:e0:92 
Nov 27 01:59:22 dnsmasq-dhcp[9783]: 3214431530 next server: 192.168.105.1
Nov 27 01:59:22 dnsmasq-dhcp[9783]: 1111111111 DHCPDISCOVER(pvbrfd412048) 0e:00:00:00:00:99 
Nov 27 01:59:26 dnsmasq-dhcp[9783]: 3214431530 DHCPREQUEST(pvbrfd412048) 192.168.105.2 0e:b0:6e:68:e0:92 
Nov 27 01:59:26 dnsmasq-dhcp[9783]: 3214431530 DHCPACK(pvbrfd412048) 192.168.105.2 0e:b0:6e:68:e0:92 a1
Nov 27 01:59:26 dnsmasq-tftp[9783]: error 8 User aborted the transfer received from 192.168.105.2
Nov 27 01:59:26 dnsmasq-tftp[9783]: sent /tmp/e2e-h3/tftp/ipxe-arm64.efi to 192.168.105.2
Nov 27 01:59:26 dnsmasq-tftp[9783]: sent /tmp/e2e-h3/tftp/ipxe-arm64.efi to 192.168.105.9
Nov 27 01:59:26 dnsmasq-tftp[9783]: file /tmp/e2e-h3/tftp/autoexec.ipxe not found for 192.168.105.2
Nov 27 01:59:33 dnsmasq-dhcp[9783]: 3204177007 vendor class: PXEClient:Arch:00011:UNDI:003010
Nov 27 01:59:33 dnsmasq-dhcp[9783]: 3204177007 user class: iPXE
Nov 27 01:59:33 dnsmasq-dhcp[9783]: 3204177007 DHCPDISCOVER(pvbrfd412048) 0e:b0:6e:68:e0:92 
Nov 27 01:59:33 dnsmasq-dhcp[9783]: 3204177007 DHCPACK(pvbrfd412048) 192.168.105.2 0e:b0:6e:68:e0:92 a1
"""
HTTP = [
    {
        "client": "192.168.105.2",
        "method": "GET",
        "path": "/boot.ipxe",
        "query": None,
        "status": 200,
    },
    {
        "client": "192.168.105.2",
        "method": "GET",
        "path": "/ipxe",
        "query": "mac=0e-b0-6e-68-e0-92&arch=arm64&platform=efi",
        "status": 200,
        "mac": MAC,
    },
    {
        "client": "192.168.105.2",
        "method": "GET",
        "path": "/images/tiny/aarch64/vmlinuz",
        "status": 200,
    },
    {
        "client": "192.168.105.7",
        "method": "GET",
        "path": "/images/other/x86_64/vmlinuz",
        "status": 200,
    },
]


def test_view_of_one_mac(tmp_path: Path) -> None:
    home = LabHome(tmp_path)
    home.ensure()
    (home.logs / "dnsmasq.log").write_text(DNSMASQ)
    (home.logs / "http.log").write_text("\n".join(json.dumps(r) for r in HTTP) + "\nnot json\n")
    (home.stack / "dnsmasq.leases").write_text(f"1795787977 {MAC} 192.168.105.2 a1 *\n")

    v = stacklog.stack_view(home, MAC)
    assert [ex.client_arch for ex in v.exchanges] == [11, 11]
    assert [ex.user_class for ex in v.exchanges] == [None, "iPXE"]
    assert [ex.acked_ip for ex in v.exchanges] == ["192.168.105.2", "192.168.105.2"]
    assert v.lease_ip == "192.168.105.2"
    assert v.tftp == [
        "error 8 User aborted the transfer received from",
        "sent ipxe-arm64.efi",
        "not found autoexec.ipxe",
    ]
    assert v.http == [
        "GET /boot.ipxe 200",
        "GET /ipxe?mac=0e-b0-6e-68-e0-92&arch=arm64&platform=efi 200",
        "GET /images/tiny/aarch64/vmlinuz 200",
    ]
    text = "\n".join(v.summary_lines())
    assert "client-arch 11, user-class iPXE" in text


def test_unknown_mac_and_missing_logs(tmp_path: Path) -> None:
    home = LabHome(tmp_path)
    v = stacklog.stack_view(home, "0e:12:34:56:78:9a")
    assert v.exchanges == [] and v.lease_ip is None and v.tftp == [] and v.http == []
    assert "no request from this MAC" in "\n".join(v.summary_lines())
