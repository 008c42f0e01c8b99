"""dnsmasq's log (``logs/dnsmasq.log``), read in one place: each line becomes a typed event.

The lab runs dnsmasq with ``log-dhcp``, so one DHCP transaction is several lines that share a
serial number: the message itself and what dnsmasq learnt about the client on the way::

    Nov 27 01:59:22 dnsmasq-dhcp[9783]: 3214431530 vendor class: PXEClient:Arch:00011:UNDI:003000
    Nov 27 01:59:22 dnsmasq-dhcp[9783]: 3214431530 DHCPDISCOVER(pvbr…) 0e:b0:6e:68:e0:92
    Nov 27 01:59:22 dnsmasq-dhcp[9783]: 3214431530 tags: known, efi-arm64, pvbr…
    Nov 27 01:59:26 dnsmasq-dhcp[9783]: 3214431530 DHCPACK(pvbr…) 192.168.105.2 0e:b0:… a1
    Nov 27 01:59:26 dnsmasq-tftp[9783]: sent /home/tftp/ipxe-arm64.efi to 192.168.105.2
    Nov 27 01:59:20 dnsmasq-dhcp[9783]: read /home/configs/dhcp-hosts

DHCPv6 messages name the client by its DUID, not its MAC; dnsmasq logs the MAC it learnt (from
the link-local source address) on a line of the same serial, which ``parse_dnsmasq_log`` puts
into the messages::

    Dec  1 03:15:14 dnsmasq-dhcp[8562]: 12501742 client MAC address: 0e:38:96:66:74:68
    Dec  1 03:15:14 dnsmasq-dhcp[8562]: 12501742 DHCPSOLICIT(pvbr…) 00:01:00:01:31:e7:…
    Dec  1 03:15:14 dnsmasq-dhcp[8562]: 12501742 DHCPREPLY(pvbr…) fd00:6e57:1ab::2 00:01:… v6efi
    Dec  1 03:15:29 dnsmasq-tftp[8562]: sent /home/tftp/ipxe-x86_64.efi to fd00:6e57:1ab::150f

``parse_dnsmasq_log`` turns lines into events (`DhcpMessage`, `DhcpClientInfo`, `TftpEvent`,
`HostsFileRead`); ``dhcp_transactions`` groups a MAC's DHCP events by serial, and
``tftp_events_for`` picks the transfers to some addresses. dnsmasq stamps lines in local time,
whole seconds, without a year: the caller says which year (the year of the VM start).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal

_STAMP = re.compile(r"^(?P<stamp>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) ")
_DHCP = re.compile(r"dnsmasq-dhcp\[\d+\]: (?:(?P<serial>\d+) )?(?P<rest>.*?)\s*$")
_TFTP = re.compile(r"dnsmasq-tftp\[\d+\]: (?P<rest>.*?)\s*$")
_MESSAGE = re.compile(
    r"^(?P<kind>DHCP[A-Z]+)\((?P<interface>[^)]*)\) "
    r"(?:(?P<ip>\d+\.\d+\.\d+\.\d+) )?(?P<mac>[0-9a-f]{2}(?::[0-9a-f]{2}){5})(?: (?P<rest>.*))?$"
)
# DHCPv6: an optional address, then the client's DUID (hex bytes), then a hostname
_MESSAGE6 = re.compile(
    r"^(?P<kind>DHCP[A-Z-]+)\((?P<interface>[^)]*)\) "
    r"(?:(?P<ip>[0-9a-f]*:[0-9a-f:]*) )?(?P<duid>[0-9a-f]{2}(?::[0-9a-f]{2})+)(?: (?P<rest>.*))?$"
)
_CLIENT_MAC = "client MAC address"  # log-dhcp's line naming a DHCPv6 client's MAC
IPXE_TAG = "ipxe"  # the tag dnsmasq.conf.j2 sets for user class "iPXE"
_CLIENT_ARCH = re.compile(r"^(?:PXEClient|HTTPClient):Arch:(\d+)")
# DHCPv6: dnsmasq's log-dhcp names no client architecture (option 61; of option 16 it logs only
# the enterprise number), so the lab's dnsmasq.conf sets a tag per architecture code, which the
# transaction's "tags:" line then shows (``pvmlab.stack.dnsmasq`` renders them from this).
CLIENT_ARCH6_TAG = "client-arch-"
_CLIENT_ARCH6_TAG = re.compile(rf"^{CLIENT_ARCH6_TAG}(\d{{1,5}})$")


def client_arch6_tag(code: int) -> str:
    return f"{CLIENT_ARCH6_TAG}{code}"
# "sent size: …": option 67 (DHCPv4) or 59 (DHCPv6, a URL)
_BOOTFILE_SENT = re.compile(r"^\d+ option:\s*(?:67 bootfile-name|59 bootfile-url)\s+(?P<file>.+)$")
_HOSTS_READ = re.compile(r"^read (?P<path>/\S+)$")
_IP = r"(?P<ip>\d+\.\d+\.\d+\.\d+|[0-9a-f]*:[0-9a-f:.]*)"  # IPv4, or IPv6 (has a colon)
_SENT = re.compile(rf"^sent (?P<file>.+) to {_IP}$")
_NOT_FOUND = re.compile(rf"^file (?P<file>.+) not found for {_IP}$")
_OTHER_TFTP = re.compile(rf"^(?P<text>.*?) {_IP}$")


@dataclass(frozen=True)
class DhcpMessage:
    """One DHCP message (DHCPDISCOVER, DHCPOFFER, DHCPREQUEST, DHCPACK, DHCPNAK, ...; DHCPv6's
    DHCPSOLICIT, DHCPADVERTISE, DHCPREPLY, ... with the client's ``duid``)."""

    t: float | None  # epoch seconds (whole seconds, dnsmasq's clock)
    serial: str | None  # the transaction; None without ``log-dhcp``
    kind: str
    interface: str
    mac: str
    ip: str | None
    text: str = ""  # what follows the MAC: a hostname, or dnsmasq's reason for a NAK
    duid: str | None = None  # DHCPv6: the client's DUID (``mac`` from its "client MAC" line)


@dataclass(frozen=True)
class DhcpClientInfo:
    """Any other line of a transaction: what ``log-dhcp`` says about its client (vendor class,
    user class, tags, ...) and about the answer (next server, options sent)."""

    t: float | None
    serial: str
    key: str  # the words before ": ", e.g. "vendor class" (the whole line when there is none)
    value: str


@dataclass(frozen=True)
class TftpEvent:
    """A TFTP request's outcome for one client address."""

    t: float | None
    outcome: Literal["sent", "not-found", "other"]
    client: str  # the client's IP
    path: str  # the file as dnsmasq named it ("" when its words name none)
    text: str  # dnsmasq's words without the address, e.g. "error 8 User aborted ... from"

    @property
    def file(self) -> str:
        return PurePosixPath(self.path).name


@dataclass(frozen=True)
class HostsFileRead:
    """dnsmasq (re-)read a file of DHCP reservations (at start and after SIGHUP)."""

    t: float | None
    path: str


DnsmasqEvent = DhcpMessage | DhcpClientInfo | TftpEvent | HostsFileRead


def line_epoch(line: str, year: int) -> float | None:
    """The epoch of a line's local-time stamp (``Nov 27 01:59:22``), in ``year``."""
    m = _STAMP.match(line)
    if not m:
        return None
    try:
        stamp = time.strptime(f"{year} {m.group('stamp')}", "%Y %b %d %H:%M:%S")
    except ValueError:
        return None
    return time.mktime(stamp)


def parse_dnsmasq_line(line: str, year: int) -> DnsmasqEvent | None:
    """The event one log line records, or None for lines that say nothing about clients."""
    if (m := _DHCP.search(line)) is not None:
        return _dhcp_event(line_epoch(line, year), m.group("serial"), m.group("rest"))
    if (m := _TFTP.search(line)) is not None:
        return _tftp_event(line_epoch(line, year), m.group("rest"))
    return None


def _dhcp_event(t: float | None, serial: str | None, rest: str) -> DnsmasqEvent | None:
    if (msg := _MESSAGE.match(rest)) is not None:
        return DhcpMessage(
            t, serial, msg.group("kind"), msg.group("interface"), msg.group("mac"),
            msg.group("ip"), (msg.group("rest") or "").strip(),
        )  # fmt: skip
    if (msg := _MESSAGE6.match(rest)) is not None:
        return DhcpMessage(
            t, serial, msg.group("kind"), msg.group("interface"), "", msg.group("ip"),
            (msg.group("rest") or "").strip(), msg.group("duid"),
        )  # fmt: skip
    if serial is not None:
        key, _, value = rest.partition(": ")
        return DhcpClientInfo(t, serial, key, value.strip())
    if (read := _HOSTS_READ.match(rest)) is not None:
        return HostsFileRead(t, read.group("path"))
    return None


def _tftp_event(t: float | None, rest: str) -> TftpEvent | None:
    if (m := _SENT.match(rest)) is not None:
        return TftpEvent(t, "sent", m.group("ip"), m.group("file"), f"sent {m.group('file')} to")
    if (m := _NOT_FOUND.match(rest)) is not None:
        text = f"file {m.group('file')} not found for"
        return TftpEvent(t, "not-found", m.group("ip"), m.group("file"), text)
    if (m := _OTHER_TFTP.match(rest)) is not None:  # e.g. a size probe the client aborted
        return TftpEvent(t, "other", m.group("ip"), "", m.group("text"))
    return None


def parse_dnsmasq_log(lines: Iterable[str], year: int) -> list[DnsmasqEvent]:
    """The events of ``lines``, in log order; a DHCPv6 message carries the MAC its
    transaction's "client MAC address" line named."""
    out: list[DnsmasqEvent] = []
    macs: dict[str, str] = {}  # serial -> MAC, from DHCPv6 transactions
    for line in lines:
        event = parse_dnsmasq_line(line, year)
        if isinstance(event, DhcpClientInfo) and event.key == _CLIENT_MAC:
            macs[event.serial] = event.value.lower()
        elif isinstance(event, DhcpMessage) and event.duid is not None and event.serial:
            event = dataclasses.replace(event, mac=macs.get(event.serial, ""))
        if event is not None:
            out.append(event)
    return out


@dataclass
class DhcpTransaction:
    """One DHCP transaction (one serial) of one client: its messages and what it said."""

    serial: str
    t: float | None = None  # the transaction's first line
    messages: list[DhcpMessage] = field(default_factory=list)
    vendor_class: str | None = None
    user_class: str | None = None
    tags: tuple[str, ...] = ()
    bootfile: str | None = None

    @property
    def client_arch(self) -> int | None:
        """Option 93 as dnsmasq shows it in a PXE or HTTP-boot vendor class; for DHCPv6
        (option 61), the lab's client-architecture tag among the transaction's tags."""
        m = _CLIENT_ARCH.match(self.vendor_class or "")
        if m:
            return int(m.group(1))
        for tag in self.tags:
            if (m6 := _CLIENT_ARCH6_TAG.match(tag)) is not None:
                return int(m6.group(1))
        return None

    @property
    def is_ipxe(self) -> bool:
        """Sent by iPXE: its user class (DHCPv4), or the tag the lab's configuration gives that
        user class (dnsmasq logs no user class for DHCPv6)."""
        return self.user_class == "iPXE" or IPXE_TAG in self.tags

    @property
    def acked_ip(self) -> str | None:
        return next(
            (m.ip for m in self.messages if m.kind in ("DHCPACK", "DHCPREPLY") and m.ip), None
        )

    def add(self, event: DhcpMessage | DhcpClientInfo) -> None:
        if self.t is None:
            self.t = event.t
        if isinstance(event, DhcpMessage):
            self.messages.append(event)
        elif event.key == "vendor class":
            self.vendor_class = event.value
        elif event.key == "user class":
            self.user_class = event.value
        elif event.key == "tags":
            self.tags = tuple(tag.strip() for tag in event.value.split(","))
        elif event.key == "bootfile name":  # the BOOTP header's file field
            self.bootfile = event.value
        elif event.key == "sent size" and (m := _BOOTFILE_SENT.match(event.value)) is not None:
            self.bootfile = m.group("file")  # option 67


def dhcp_transactions(events: Iterable[DnsmasqEvent], mac: str) -> list[DhcpTransaction]:
    """The DHCP transactions holding a message from or to ``mac``, in log order.

    A transaction's messages are ``mac``'s only; its client info is whatever ``log-dhcp``
    logged under the serial.
    """
    mac = mac.lower()
    by_serial: dict[str, DhcpTransaction] = {}
    mine: dict[str, None] = {}
    for event in events:
        if isinstance(event, DhcpMessage | DhcpClientInfo) and event.serial is not None:
            tx = by_serial.setdefault(event.serial, DhcpTransaction(event.serial))
            if isinstance(event, DhcpClientInfo):
                tx.add(event)
            elif event.mac == mac:
                mine[event.serial] = None
                tx.add(event)
            elif tx.t is None:
                tx.t = event.t
    return [by_serial[s] for s in mine]


def tftp_events_for(events: Iterable[DnsmasqEvent], ips: Iterable[str]) -> list[TftpEvent]:
    """TFTP outcomes for requests from one of ``ips``, in log order."""
    wanted = set(ips)
    return [e for e in events if isinstance(e, TftpEvent) and e.client in wanted]


def events_since(events: Iterable[DnsmasqEvent], since: float) -> list[DnsmasqEvent]:
    """The events logged at ``since`` or later (whole seconds: dnsmasq's clock)."""
    floor = int(since)
    return [e for e in events if e.t is not None and e.t >= floor]
