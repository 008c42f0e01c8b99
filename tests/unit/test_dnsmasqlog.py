# ruff: noqa: E501, W291  (log lines kept exactly as dnsmasq wrote them, trailing blanks included)
"""dnsmasq's log turned into events, on lines dnsmasq 2.90 wrote in this lab (copied from the
recorded boots in tests/unit/data/timeline and the aarch64 boot of test_vm_stacklog)."""

from __future__ import annotations

import time

import pytest
from samples import TIMELINE_DATA

from pvmlab.observe import dnsmasqlog
from pvmlab.observe.dnsmasqlog import DhcpClientInfo, DhcpMessage, HostsFileRead, TftpEvent

pytestmark = pytest.mark.usefixtures("utc")  # tests/conftest.py: the stamps are read as UTC

MAC = "0e:ed:4e:52:cc:08"
# 2026-11-27 02:16:14 UTC and the seconds after it
T14, T17, T18 = 1795745774.0, 1795745777.0, 1795745778.0

FIRMWARE_EXCHANGE = """\
Nov 27 02:16:14 dnsmasq-dhcp[8150]: 4136298102 available DHCP range: 192.168.105.100 -- 192.168.105.199
Nov 27 02:16:14 dnsmasq-dhcp[8150]: 4136298102 vendor class: PXEClient:Arch:00007:UNDI:003000
Nov 27 02:16:14 dnsmasq-dhcp[8150]: 4136298102 DHCPDISCOVER(pvbre86da18b) 0e:ed:4e:52:cc:08 
Nov 27 02:16:14 dnsmasq-dhcp[8150]: 4136298102 tags: known, efi-x86_64, pvbre86da18b
Nov 27 02:16:14 dnsmasq-dhcp[8150]: 4136298102 DHCPOFFER(pvbre86da18b) 192.168.105.2 0e:ed:4e:52:cc:08 
Nov 27 02:16:14 dnsmasq-dhcp[8150]: 4136298102 sent size: 16 option: 67 bootfile-name  ipxe-x86_64.efi
Nov 27 02:16:14 dnsmasq-dhcp[8150]: RTR-ADVERT(pvbre86da18b) fd8e:9064:cd3b::
Nov 27 02:16:17 dnsmasq-dhcp[8150]: 4136298102 DHCPREQUEST(pvbre86da18b) 192.168.105.2 0e:ed:4e:52:cc:08 
Nov 27 02:16:17 dnsmasq-dhcp[8150]: 4136298102 DHCPACK(pvbre86da18b) 192.168.105.2 0e:ed:4e:52:cc:08 e1
Nov 27 02:16:17 dnsmasq-tftp[8150]: error 8 User aborted the transfer received from 192.168.105.2
Nov 27 02:16:17 dnsmasq-tftp[8150]: sent /tmp/perf/h1/tftp/ipxe-x86_64.efi to 192.168.105.2
Nov 27 02:16:18 dnsmasq-tftp[8150]: sent /tmp/perf/h1/tftp/autoexec.ipxe to 192.168.105.2
Nov 27 02:16:18 dnsmasq-dhcp[8150]: 2701412103 vendor class: PXEClient:Arch:00007:UNDI:003010
Nov 27 02:16:18 dnsmasq-dhcp[8150]: 2701412103 user class: iPXE
Nov 27 02:16:18 dnsmasq-dhcp[8150]: 2701412103 DHCPDISCOVER(pvbre86da18b) 0e:ed:4e:52:cc:08 
Nov 27 02:16:18 dnsmasq-dhcp[8150]: 2701412103 DHCPDISCOVER(pvbre86da18b) 0e:00:00:00:00:99 
Nov 27 02:16:18 dnsmasq-dhcp[8150]: 2701412103 DHCPACK(pvbre86da18b) 192.168.105.2 0e:ed:4e:52:cc:08 e1
"""


def test_line_epoch_is_local_time_in_the_given_year() -> None:
    assert dnsmasqlog.line_epoch("Nov 27 02:16:14 dnsmasq-dhcp[8150]: read x", 2026) == T14
    assert dnsmasqlog.line_epoch("Feb 29 00:00:00 dnsmasq[1]: x", 2026) is None  # no such day
    assert dnsmasqlog.line_epoch("dnsmasq[1]: started", 2026) is None


@pytest.mark.parametrize(
    ("line", "event"),
    [
        (
            "Nov 27 02:16:14 dnsmasq-dhcp[8150]: 4136298102 DHCPDISCOVER(pvbre86da18b) 0e:ed:4e:52:cc:08 ",
            DhcpMessage(T14, "4136298102", "DHCPDISCOVER", "pvbre86da18b", MAC, None, ""),
        ),
        (
            "Nov 27 02:16:17 dnsmasq-dhcp[8150]: 4136298102 DHCPACK(pvbre86da18b) 192.168.105.2 0e:ed:4e:52:cc:08 e1",
            DhcpMessage(T17, "4136298102", "DHCPACK", "pvbre86da18b", MAC, "192.168.105.2", "e1"),
        ),
        (
            "Nov 27 02:16:14 dnsmasq-dhcp[8150]: 4136298102 vendor class: PXEClient:Arch:00007:UNDI:003000",
            DhcpClientInfo(T14, "4136298102", "vendor class", "PXEClient:Arch:00007:UNDI:003000"),
        ),
        (
            "Nov 27 02:16:14 dnsmasq-dhcp[8150]: 4136298102 tags: known, efi-x86_64, pvbre86da18b",
            DhcpClientInfo(T14, "4136298102", "tags", "known, efi-x86_64, pvbre86da18b"),
        ),
        (
            "Nov 27 02:16:14 dnsmasq-dhcp[8150]: 4136298102 broadcast response",
            DhcpClientInfo(T14, "4136298102", "broadcast response", ""),
        ),
        (
            "Nov 27 02:16:17 dnsmasq-tftp[8150]: sent /tmp/perf/h1/tftp/ipxe-x86_64.efi to 192.168.105.2",
            TftpEvent(T17, "sent", "192.168.105.2", "/tmp/perf/h1/tftp/ipxe-x86_64.efi",
                      "sent /tmp/perf/h1/tftp/ipxe-x86_64.efi to"),
        ),
        (
            "Nov 27 02:13:23 dnsmasq-tftp[8150]: file /tmp/perf/h1/tftp/autoexec.ipxe not found for 192.168.105.2",
            TftpEvent(1795745603.0, "not-found", "192.168.105.2", "/tmp/perf/h1/tftp/autoexec.ipxe",
                      "file /tmp/perf/h1/tftp/autoexec.ipxe not found for"),
        ),
        (
            "Nov 27 02:16:17 dnsmasq-tftp[8150]: error 8 User aborted the transfer received from 192.168.105.2",
            TftpEvent(T17, "other", "192.168.105.2", "", "error 8 User aborted the transfer received from"),
        ),
        (
            "Nov 27 02:13:15 dnsmasq-dhcp[8150]: read /tmp/perf/h1/configs/dhcp-hosts",
            HostsFileRead(1795745595.0, "/tmp/perf/h1/configs/dhcp-hosts"),
        ),
        ("Nov 27 02:13:15 dnsmasq-tftp[8150]: TFTP root is /tmp/perf/h1/tftp  ", None),
        ("Nov 27 02:16:14 dnsmasq-dhcp[8150]: RTR-ADVERT(pvbre86da18b) fd8e:9064:cd3b::", None),
        ("Nov 27 02:13:15 dnsmasq[8150]: started, version 2.90 DNS disabled", None),
        ("Nov 27 02:13:15 dnsmasq-dhcp[8150]: DHCP, IP range 192.168.105.100 -- 192.168.105.199, lease time 12h", None),
    ],
)  # fmt: skip
def test_each_line_becomes_its_event(line: str, event: dnsmasqlog.DnsmasqEvent | None) -> None:
    assert dnsmasqlog.parse_dnsmasq_line(line, 2026) == event


def test_tftp_event_names_the_file_without_its_directory() -> None:
    ev = dnsmasqlog.parse_dnsmasq_line(
        "Nov 27 02:16:18 dnsmasq-tftp[8150]: sent /tmp/perf/h1/tftp/autoexec.ipxe to 192.168.105.2",
        2026,
    )
    assert isinstance(ev, TftpEvent) and ev.file == "autoexec.ipxe"


def test_transactions_of_one_mac_group_by_serial() -> None:
    events = dnsmasqlog.parse_dnsmasq_log(FIRMWARE_EXCHANGE.splitlines(), 2026)
    fw, ipxe = dnsmasqlog.dhcp_transactions(events, MAC.upper())
    assert (fw.serial, fw.t) == ("4136298102", T14)  # its first line: "available DHCP range"
    assert [(m.kind, m.ip) for m in fw.messages] == [
        ("DHCPDISCOVER", None),
        ("DHCPOFFER", "192.168.105.2"),
        ("DHCPREQUEST", "192.168.105.2"),
        ("DHCPACK", "192.168.105.2"),
    ]
    assert fw.vendor_class == "PXEClient:Arch:00007:UNDI:003000" and fw.client_arch == 7
    assert fw.user_class is None and fw.tags == ("known", "efi-x86_64", "pvbre86da18b")
    assert fw.bootfile == "ipxe-x86_64.efi" and fw.acked_ip == "192.168.105.2"
    # the other MAC's DISCOVER under the same serial is not this machine's message
    assert [m.kind for m in ipxe.messages] == ["DHCPDISCOVER", "DHCPACK"]
    assert (ipxe.t, ipxe.user_class, ipxe.client_arch) == (T18, "iPXE", 7)
    assert dnsmasqlog.dhcp_transactions(events, "0e:12:34:56:78:9a") == []


def test_http_boot_vendor_class_gives_the_client_arch() -> None:
    tx = dnsmasqlog.DhcpTransaction("1")
    tx.add(DhcpClientInfo(None, "1", "vendor class", "HTTPClient:Arch:00016:UNDI:003001"))
    assert tx.client_arch == 16
    tx.add(DhcpClientInfo(None, "1", "vendor class", "udhcp 1.35.0"))
    assert tx.client_arch is None


def test_tftp_events_for_some_addresses_and_events_since() -> None:
    events = dnsmasqlog.parse_dnsmasq_log(FIRMWARE_EXCHANGE.splitlines(), 2026)
    mine = dnsmasqlog.tftp_events_for(events, ["192.168.105.2"])
    assert [(e.outcome, e.file, e.t) for e in mine] == [
        ("other", "", T17),
        ("sent", "ipxe-x86_64.efi", T17),
        ("sent", "autoexec.ipxe", T18),
    ]
    assert dnsmasqlog.tftp_events_for(events, ["192.168.105.9"]) == []
    late = dnsmasqlog.events_since(events, T18 + 0.9)  # whole seconds: 02:16:18 counts
    assert {type(e) for e in late} == {TftpEvent, DhcpClientInfo, DhcpMessage}
    assert min(e.t or 0 for e in late) == T18 and len(late) == 6


def test_a_whole_recorded_log() -> None:
    """Every DHCP and TFTP line of a real lab's log is understood (none left as noise)."""
    lines = (TIMELINE_DATA / "x86_64-uefi" / "dnsmasq.log").read_text().splitlines()
    events = dnsmasqlog.parse_dnsmasq_log(lines, 2026)
    reads = [e for e in events if isinstance(e, HostsFileRead)]
    assert [time.strftime("%H:%M:%S", time.gmtime(e.t or 0)) for e in reads] == [
        "02:13:15",
        "02:13:16",
        "02:13:40",
    ]
    serial_lines = [ln for ln in lines if " dnsmasq-dhcp[8150]: " in ln and ln.split()[4].isdigit()]
    assert len([e for e in events if isinstance(e, DhcpMessage | DhcpClientInfo)]) == len(
        serial_lines
    )
    txs = dnsmasqlog.dhcp_transactions(events, MAC)
    assert [tx.user_class for tx in txs] == [None, "iPXE", None, "iPXE"]  # two boots of e1
    assert {tx.acked_ip for tx in txs} == {"192.168.105.2"}
