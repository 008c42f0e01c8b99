"""What the stack saw of one machine: its DHCP exchanges, lease, TFTP and HTTP fetches.

Sources, all in the lab home:

    logs/dnsmasq.log     (after dnsmasq.log.1: both logs are bounded and rotated, and each is
                         read with its newest rotated file, ``stack.logfiles.read_lines``)
                         dnsmasq with ``log-dhcp``: every line of one DHCP transaction carries
                         the same serial number, e.g.
                         ``dnsmasq-dhcp[7]: 1234 DHCPACK(br) 192.168.105.10 0e:..:.. t1`` and
                         ``dnsmasq-dhcp[7]: 1234 vendor class: PXEClient:Arch:00011:UNDI:003000``;
                         TFTP lines name the client's IP: ``dnsmasq-tftp[7]: sent /…/f to IP``
    stack/dnsmasq.leases ``expiry mac ip hostname client-id`` per line
    logs/http.log        one JSON object per request

Used for ``vm start --wait`` failures ("did it get a lease, which files did it fetch") and by
the tests. The logs are read by ``pvmlab.observe.dnsmasqlog`` and ``pvmlab.observe.httplog``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pvmlab.home import LabHome
from pvmlab.observe import dnsmasqlog, httplog
from pvmlab.observe.dnsmasqlog import DhcpTransaction
from pvmlab.stack.logfiles import read_lines


@dataclass
class StackView:
    mac: str
    exchanges: list[DhcpTransaction] = field(default_factory=list)
    lease_ip: str | None = None
    tftp: list[str] = field(default_factory=list)  # "sent FILE" per request of this client's IPs
    http: list[str] = field(default_factory=list)  # "GET /path 200"

    @property
    def ips(self) -> list[str]:
        out: list[str] = []
        for ex in self.exchanges:
            for msg in ex.messages:
                if msg.ip and msg.ip not in out:
                    out.append(msg.ip)
        return out

    def summary_lines(self) -> list[str]:
        lines = [f"stack's view of {self.mac}:"]
        if not self.exchanges:
            lines.append("  DHCP: no request from this MAC in logs/dnsmasq.log")
        for ex in self.exchanges:
            kinds = " ".join(f"{m.kind}{'(' + m.ip + ')' if m.ip else ''}" for m in ex.messages)
            extra = []
            if ex.client_arch is not None:
                extra.append(f"client-arch {ex.client_arch}")
            if ex.user_class:
                extra.append(f"user-class {ex.user_class}")
            if ex.bootfile:
                extra.append(f"boot file {ex.bootfile}")
            lines.append(f"  DHCP: {kinds}" + (f" [{', '.join(extra)}]" if extra else ""))
        lines.append(f"  lease: {self.lease_ip or 'none'}")
        lines.append("  TFTP: " + (", ".join(self.tftp) if self.tftp else "nothing fetched"))
        lines.append("  HTTP: " + (", ".join(self.http) if self.http else "nothing fetched"))
        return lines


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []


def tftp_outcomes(events: list[dnsmasqlog.DnsmasqEvent], ips: list[str]) -> list[str]:
    """``sent FILE`` / ``not found FILE`` per request of one of ``ips`` (else dnsmasq's words)."""
    out: list[str] = []
    for ev in dnsmasqlog.tftp_events_for(events, ips):
        if ev.outcome == "sent":
            out.append(f"sent {ev.file}")
        elif ev.outcome == "not-found":
            out.append(f"not found {ev.file}")
        else:  # e.g. "error 8 User aborted the transfer received from" (a size probe)
            out.append(ev.text)
    return out


def lease_of(leases: list[str], mac: str) -> str | None:
    for line in leases:
        parts = line.split()
        if len(parts) >= 3 and parts[1].lower() == mac.lower():
            return parts[2]
    return None


def stack_view(home: LabHome, mac: str, ip: str | None = None) -> StackView:
    """What dnsmasq and the HTTP server logged of ``mac`` (and of ``ip``, its reserved address)."""
    events = dnsmasqlog.parse_dnsmasq_log(read_lines(home.dnsmasq_log), datetime.now().year)
    sv = StackView(mac=mac, exchanges=dnsmasqlog.dhcp_transactions(events, mac))
    sv.lease_ip = lease_of(_read_lines(home.dnsmasq_leases), mac)
    ips = sv.ips + [x for x in (ip, sv.lease_ip) if x and x not in sv.ips]
    sv.tftp = tftp_outcomes(events, ips)
    requests = httplog.parse_http_log(read_lines(home.http_log))
    sv.http = [r.as_line() for r in httplog.requests_of_machine(requests, mac, ips)]
    return sv
