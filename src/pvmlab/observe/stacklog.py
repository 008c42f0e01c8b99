"""What the stack saw of one machine: its DHCP exchanges, lease, TFTP and HTTP fetches.

Sources, all in the lab home:

    logs/dnsmasq.log     dnsmasq with ``log-dhcp``: every line of one DHCP transaction carries
                         the same serial number, e.g.
                         ``dnsmasq-dhcp[7]: 1234 DHCPACK(br) 192.168.105.10 0e:..:.. t1`` and
                         ``dnsmasq-dhcp[7]: 1234 vendor class: PXEClient:Arch:00011:UNDI:003000``;
                         TFTP lines name the client's IP: ``dnsmasq-tftp[7]: sent /…/f to IP``
    stack/dnsmasq.leases ``expiry mac ip hostname client-id`` per line
    logs/http.log        one JSON object per request

Used for ``vm start --wait`` failures ("did it get a lease, which files did it fetch") and by
the tests.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pvmlab.home import LabHome

_DHCP = re.compile(r"dnsmasq-dhcp\[\d+\]: (?P<serial>\d+) (?P<rest>.*)$")
_MSG = re.compile(
    r"(?P<type>DHCP[A-Z]+)\([^)]*\) (?:(?P<ip>\d+\.\d+\.\d+\.\d+) )?(?P<mac>[0-9a-f:]{17})"
)
_ARCH = re.compile(r"vendor class: PXEClient:Arch:(\d+)")
_USER = re.compile(r"user class: (.*)$")
_BOOTFILE = re.compile(r"bootfile name: (.*)$")
_TFTP = re.compile(r"dnsmasq-tftp\[\d+\]: (?P<msg>.*?) (?P<ip>\d+\.\d+\.\d+\.\d+)\s*$")


@dataclass
class DhcpExchange:
    serial: str
    messages: list[tuple[str, str | None]] = field(default_factory=list)  # (type, ip)
    client_arch: int | None = None
    user_class: str | None = None
    bootfile: str | None = None

    @property
    def acked_ip(self) -> str | None:
        for kind, ip in self.messages:
            if kind == "DHCPACK" and ip:
                return ip
        return None


@dataclass
class StackView:
    mac: str
    exchanges: list[DhcpExchange] = field(default_factory=list)
    lease_ip: str | None = None
    tftp: list[str] = field(default_factory=list)  # "sent /path" lines for this client's IPs
    http: list[str] = field(default_factory=list)  # "GET /path 200"

    @property
    def ips(self) -> list[str]:
        out: list[str] = []
        for ex in self.exchanges:
            for _, ip in ex.messages:
                if ip and ip not in out:
                    out.append(ip)
        return out

    def summary(self) -> list[str]:
        lines = [f"stack's view of {self.mac}:"]
        if not self.exchanges:
            lines.append("  DHCP: no request from this MAC in logs/dnsmasq.log")
        for ex in self.exchanges:
            kinds = " ".join(f"{k}{'(' + ip + ')' if ip else ''}" for k, ip in ex.messages)
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


def dhcp_exchanges(log_lines: list[str], mac: str) -> list[DhcpExchange]:
    """DHCP transactions of ``mac``, in log order."""
    mac = mac.lower()
    by_serial: dict[str, DhcpExchange] = {}
    mine: list[str] = []
    for line in log_lines:
        m = _DHCP.search(line)
        if not m:
            continue
        serial, rest = m.group("serial"), m.group("rest")
        ex = by_serial.setdefault(serial, DhcpExchange(serial))
        if (msg := _MSG.search(rest)) is not None:
            if msg.group("mac") == mac:
                if serial not in mine:
                    mine.append(serial)
                ex.messages.append((msg.group("type"), msg.group("ip")))
        elif (a := _ARCH.search(rest)) is not None:
            ex.client_arch = int(a.group(1))
        elif (u := _USER.search(rest)) is not None:
            ex.user_class = u.group(1).strip()
        elif (b := _BOOTFILE.search(rest)) is not None:
            ex.bootfile = b.group(1).strip()
    return [by_serial[s] for s in mine]


def tftp_sent(log_lines: list[str], ips: list[str]) -> list[str]:
    """``sent FILE`` / ``not found FILE`` per request of one of ``ips`` (else dnsmasq's words)."""
    out: list[str] = []
    for line in log_lines:
        m = _TFTP.search(line)
        if not m or m.group("ip") not in ips:
            continue
        msg = m.group("msg")
        if msg.startswith("sent ") and msg.endswith(" to"):
            out.append(f"sent {Path(msg[5:-3]).name}")
        elif msg.startswith("file ") and msg.endswith(" not found for"):
            out.append(f"not found {Path(msg[5:-14]).name}")
        else:  # e.g. "error 8 User aborted the transfer received from" (a size probe)
            out.append(msg)
    return out


def lease_of(leases: list[str], mac: str) -> str | None:
    for line in leases:
        parts = line.split()
        if len(parts) >= 3 and parts[1].lower() == mac.lower():
            return parts[2]
    return None


def http_requests(log_lines: list[str], mac: str, ips: list[str]) -> list[str]:
    """Requests that name the MAC (either spelling) or come from one of its IPs."""
    keys = {mac.lower(), mac.lower().replace(":", "-")}
    out = []
    for line in log_lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict):
            continue
        values = [str(v) for v in rec.values()]
        if not any(k in v.lower() for v in values for k in keys) and not any(
            v in ips or v.split(":")[0] in ips for v in values
        ):
            continue
        method = rec.get("method", "GET")
        path = rec.get("path") or rec.get("url") or rec.get("target") or "?"
        if rec.get("query"):
            path = f"{path}?{rec['query']}"
        status = rec.get("status", "")
        out.append(f"{method} {path} {status}".strip())
    return out


def view(home: LabHome, mac: str, ip: str | None = None) -> StackView:
    dns = _read_lines(home.dnsmasq_log)
    exchanges = dhcp_exchanges(dns, mac)
    sv = StackView(mac=mac, exchanges=exchanges)
    sv.lease_ip = lease_of(_read_lines(home.dnsmasq_leases), mac)
    ips = sv.ips + [x for x in (ip, sv.lease_ip) if x and x not in sv.ips]
    sv.tftp = tftp_sent(dns, ips)
    sv.http = http_requests(_read_lines(home.http_log), mac, ips)
    return sv
