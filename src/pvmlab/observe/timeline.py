"""Where the seconds of a VM's last boot went: phases joined from the console, dnsmasq and HTTP.

Sources (all in the lab home), joined by the VM's MAC (and the IPs it was given) and by the time
of its last start:

    logs/NAME.console.jsonl  the console, one line per record with the time its first byte and
                             its newline were seen (``pvmlab.observe.stamp``; the header holds the
                             VM start). Firmware and iPXE print each step as they take it, so
                             this gives sub-second times for the network steps as well.
    logs/dnsmasq.log         ``log-dhcp`` lines: which client architecture asked, which address
                             was acked, which file went over TFTP (dnsmasq stamps whole seconds
                             only, so its times are a fallback, marked ``clock: dnsmasq``)
    logs/http.log            one JSON record per request with start, duration and bytes

Phases are contiguous: each lasts until the next one starts, so they add up to the total and the
slowest one is where the time went. Transfers also carry their own ``transfer_s``, ``bytes`` and
``mb_per_s`` (the rest of a phase is the client's own work).

    vm-start       QEMU launched -> the firmware's first DHCP (firmware init, NIC driver)
    firmware-dhcp  the firmware's DHCP (client-arch, address) -> TFTP of the first stage
    tftp           the first stage over TFTP (file, bytes)
    ipxe-start     iPXE starting (its device probe, entropy, "Press Ctrl-B" prompt)
    ipxe-dhcp      iPXE's own DHCP
    http-script    boot.ipxe and the per-machine script
    http-kernel    the kernel over HTTP
    http-initrd    the initrd over HTTP
    handover       iPXE starts the kernel (EFI stub, decompression) -> its first console line
    kernel         the kernel's first console line -> the awaited text
    ready          the awaited text (``--wait-for``, default a login prompt)

A boot without some step (legacy BIOS has no firmware DHCP of its own; a direct kernel boot
has no network at all) simply has no such phase. A ``vm start --boot ipxe`` boot starts iPXE
from a local drive: no firmware DHCP, no TFTP, so ``vm-start`` runs until iPXE starts (it is
labelled so) and ``ipxe-start`` says where ``autoexec.ipxe`` came from (``media``: iPXE printed
``file:autoexec.ipxe... ok``; ``tftp``: the lab's TFTP server).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pvmlab.errors import StateError
from pvmlab.home import LabHome
from pvmlab.observe import stacklog

LABELS = {
    "vm-start": "VM start -> firmware DHCP",
    "firmware-dhcp": "firmware DHCP",
    "tftp": "TFTP first stage",
    "ipxe-start": "iPXE start",
    "ipxe-dhcp": "iPXE DHCP",
    "http-script": "HTTP scripts",
    "http-kernel": "HTTP kernel",
    "http-initrd": "HTTP initrd",
    "handover": "kernel handover",
    "kernel": "kernel -> ready",
    "ready": "ready",
}

_FW_DHCP = re.compile(r">>Start PXE over IPv4")
_FW_ACK = re.compile(r"Station IP address is (\S+)")
_NBP_NAME = re.compile(r"NBP filename is (\S+)")
_NBP_SIZE = re.compile(r"NBP filesize is (\d+) Bytes")
_NBP_START = re.compile(r"Downloading NBP file")
_NBP_DONE = re.compile(r"NBP file downloaded successfully")
_IPXE_START = re.compile(r"iPXE initialising devices|^iPXE \(https?://ipxe\.org\)")
_AUTOEXEC = re.compile(r"^(?P<file>file:)?\S*autoexec\.ipxe\.\.\. ok")
_IPXE_DHCP = re.compile(r"Configuring \(net\d")
_KERNEL = re.compile(r"EFI stub: |Linux version \d|Booting Linux on physical CPU|^\[\s*\d+\.\d+\] ")
_DNSMASQ_TIME = re.compile(r"^(?P<stamp>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) ")


@dataclass(frozen=True)
class ConsoleLine:
    t: float
    end: float
    text: str


@dataclass
class Console:
    t0: float  # epoch of the VM start
    lines: list[ConsoleLine]
    exit: float | None = None

    def first(self, pattern: re.Pattern[str], after: float = -1.0) -> ConsoleLine | None:
        for line in self.lines:
            if line.t >= after and pattern.search(line.text):
                return line
        return None


def parse_console(text: str) -> Console:
    """The stamper's JSON lines (see ``pvmlab.observe.stamp``)."""
    t0: float | None = None
    lines: list[ConsoleLine] = []
    exit_t = None
    for raw in text.splitlines():
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict):
            continue
        if rec.get("event") == "start":
            t0, lines, exit_t = float(rec["t"]), [], None
        elif rec.get("event") == "exit":
            exit_t = float(rec["t"])
        elif "line" in rec:
            t = float(rec["t"])
            lines.append(ConsoleLine(t, float(rec.get("end") or t), str(rec["line"])))
    if t0 is None:
        raise StateError(
            "the console record has no start",
            "start the VM again with `pvmlab vm start` to record a timeline",
        )
    return Console(t0=t0, lines=lines, exit=exit_t)


@dataclass
class DhcpSeen:
    t: float  # epoch, whole seconds
    client_arch: int | None
    user_class: str | None
    ip: str | None


@dataclass
class TftpSeen:
    t: float
    file: str
    ip: str


def _dnsmasq_epoch(line: str, year: int) -> float | None:
    m = _DNSMASQ_TIME.match(line)
    if not m:
        return None
    try:
        stamp = time.strptime(f"{year} {m.group('stamp')}", "%Y %b %d %H:%M:%S")
    except ValueError:
        return None
    return time.mktime(stamp)  # dnsmasq writes local time


def dnsmasq_events(
    lines: list[str], mac: str, since: float
) -> tuple[list[DhcpSeen], list[TftpSeen]]:
    """DHCP exchanges of ``mac`` and TFTP transfers to its addresses, logged at ``since`` or
    later (whole seconds: dnsmasq's clock)."""
    year = datetime.fromtimestamp(since).year
    floor = int(since)
    recent: list[str] = []
    for line in lines:
        t = _dnsmasq_epoch(line, year)
        if t is not None and t >= floor:
            recent.append(line)
    first_t: dict[str, float] = {}
    for line in recent:
        m = re.search(r"dnsmasq-dhcp\[\d+\]: (\d+) ", line)
        t = _dnsmasq_epoch(line, year)
        if m and t is not None:
            first_t.setdefault(m.group(1), t)
    dhcp = [
        DhcpSeen(first_t.get(ex.serial, float(floor)), ex.client_arch, ex.user_class, ex.acked_ip)
        for ex in stacklog.dhcp_exchanges(recent, mac)
    ]
    ips = {d.ip for d in dhcp if d.ip}
    tftp: list[TftpSeen] = []
    for line in recent:
        m = re.search(r"dnsmasq-tftp\[\d+\]: sent (\S+) to (\S+)\s*$", line)
        t = _dnsmasq_epoch(line, year)
        if m and t is not None and m.group(2) in ips:
            tftp.append(TftpSeen(t, Path(m.group(1)).name, m.group(2)))
    return dhcp, tftp


def http_events(lines: list[str], mac: str, ips: set[str], since: float) -> list[dict[str, Any]]:
    """The HTTP server's records of this machine's requests that started at ``since`` or later."""
    keys = {mac.lower(), mac.lower().replace(":", "-")}
    out = []
    for raw in lines:
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("start"), int | float):
            continue
        if rec["start"] < since:
            continue
        mine = rec.get("client") in ips or str(rec.get("mac", "")).lower() in keys
        if mine:
            out.append(rec)
    return sorted(out, key=lambda r: float(r["start"]))


@dataclass
class Phase:
    name: str
    start: float  # seconds since the VM start
    duration: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    title: str | None = None  # a label for this boot's variant of the phase

    @property
    def label(self) -> str:
        return self.title or LABELS.get(self.name, self.name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "start": round(self.start, 3),
            "duration": None if self.duration is None else round(self.duration, 3),
            **self.detail,
        }


@dataclass
class Timeline:
    vm: str
    mac: str
    started: float  # epoch
    phases: list[Phase]
    wait_for: str
    total: float | None  # seconds to the awaited text, if seen
    exited: float | None = None

    def phase(self, name: str) -> Phase | None:
        return next((p for p in self.phases if p.name == name), None)

    def slowest(self) -> Phase | None:
        timed = [p for p in self.phases if p.duration is not None]
        return max(timed, key=lambda p: p.duration or 0.0) if timed else None

    def as_dict(self) -> dict[str, Any]:
        slow = self.slowest()
        return {
            "vm": self.vm,
            "mac": self.mac,
            "started": datetime.fromtimestamp(self.started, UTC).isoformat(timespec="milliseconds"),
            "wait_for": self.wait_for,
            "total": None if self.total is None else round(self.total, 3),
            "slowest": slow.name if slow else None,
            "exited": self.exited,
            "phases": [p.as_dict() for p in self.phases],
        }


def _rate(nbytes: int | None, seconds: float | None) -> float | None:
    if not nbytes or not seconds or seconds <= 0:
        return None
    return round(nbytes / seconds / 1e6, 2)


def build(
    console: Console,
    dnsmasq_lines: list[str],
    http_lines: list[str],
    *,
    vm: str,
    mac: str,
    wait_for: re.Pattern[str],
) -> Timeline:
    """Join the three sources into phases (pure: the caller reads the files)."""
    t0 = console.t0
    mac = mac.lower()
    dhcp, tftp = dnsmasq_events(dnsmasq_lines, mac, t0)
    ips = {d.ip for d in dhcp if d.ip}
    fw_ack = console.first(_FW_ACK)
    if fw_ack is not None:
        ips.add(_FW_ACK.search(fw_ack.text).group(1))  # type: ignore[union-attr]
    http = http_events(http_lines, mac, ips, t0 - 0.5)

    found: dict[str, Phase] = {"vm-start": Phase("vm-start", 0.0)}

    fw_ex = next((d for d in dhcp if d.user_class != "iPXE"), None)
    ipxe_ex = next((d for d in dhcp if d.user_class == "iPXE"), None)
    fw_start = console.first(_FW_DHCP)
    if fw_start is not None or fw_ex is not None:
        detail: dict[str, Any] = {}
        if fw_ex is not None:
            detail.update(client_arch=fw_ex.client_arch, ip=fw_ex.ip)
        if fw_start is not None:
            start = fw_start.t
        else:
            start = (fw_ex.t if fw_ex else t0) - t0
            detail["clock"] = "dnsmasq"
        if fw_ack is not None:
            detail["exchange_s"] = round(fw_ack.t - start, 3)
        found["firmware-dhcp"] = Phase("firmware-dhcp", start, detail=detail)

    nbp_start, nbp_done = console.first(_NBP_START), console.first(_NBP_DONE)
    if nbp_start is not None or tftp:
        detail = {}
        nbp_name = console.first(_NBP_NAME)
        size = console.first(_NBP_SIZE)
        if tftp:
            detail["file"] = tftp[0].file
        elif nbp_name is not None:
            detail["file"] = nbp_name.text.rsplit(" ", 1)[-1]
        if size is not None:
            detail["bytes"] = int(_NBP_SIZE.search(size.text).group(1))  # type: ignore[union-attr]
        if nbp_start is not None:
            start = nbp_start.t
            if nbp_done is not None:
                detail["transfer_s"] = round(nbp_done.t - start, 3)
                detail["mb_per_s"] = _rate(detail.get("bytes"), nbp_done.t - start)
        else:
            start = tftp[0].t - t0
            detail["clock"] = "dnsmasq"
        found["tftp"] = Phase("tftp", start, detail=detail)

    ipxe_start = console.first(_IPXE_START)
    if ipxe_start is not None:
        found["ipxe-start"] = Phase("ipxe-start", ipxe_start.t)
        script = console.first(_AUTOEXEC, ipxe_start.t)
        if script is not None:
            from_media = _AUTOEXEC.search(script.text).group("file")  # type: ignore[union-attr]
            found["ipxe-start"].detail["autoexec"] = "media" if from_media else "tftp"
    after = ipxe_start.t if ipxe_start is not None else 0.0
    ipxe_dhcp = console.first(_IPXE_DHCP, after)
    if ipxe_dhcp is not None or ipxe_ex is not None:
        detail = {}
        if ipxe_ex is not None:
            detail.update(client_arch=ipxe_ex.client_arch, ip=ipxe_ex.ip)
        if ipxe_dhcp is not None:
            start = ipxe_dhcp.t
            detail["exchange_s"] = round(ipxe_dhcp.end - ipxe_dhcp.t, 3)
        else:
            start = (ipxe_ex.t if ipxe_ex else t0) - t0
            detail["clock"] = "dnsmasq"
        found["ipxe-dhcp"] = Phase("ipxe-dhcp", start, detail=detail)

    scripts = [r for r in http if not str(r.get("path", "")).startswith("/images/")]
    files = [r for r in http if str(r.get("path", "")).startswith("/images/")]
    if scripts:
        found["http-script"] = Phase(
            "http-script",
            float(scripts[0]["start"]) - t0,
            detail={
                "requests": [f"{r.get('path')} {r.get('status')}" for r in scripts],
                "bytes": sum(int(r.get("bytes") or 0) for r in scripts),
            },
        )
    for kind, rec in zip(("http-kernel", "http-initrd"), files, strict=False):
        secs = float(rec.get("duration") or 0.0)
        found[kind] = Phase(
            kind,
            float(rec["start"]) - t0,
            detail={
                "file": Path(str(rec.get("path"))).name,
                "status": rec.get("status"),
                "bytes": rec.get("bytes"),
                "transfer_s": round(secs, 3),
                "mb_per_s": _rate(rec.get("bytes"), secs),
            },
        )
    started = found.get("ipxe-start")
    if (
        started is not None
        and started.detail.get("autoexec") == "media"
        and "firmware-dhcp" not in found
        and "tftp" not in found
    ):
        found["vm-start"].title = "VM start -> iPXE (local media)"
    last_fetch = max((float(r["end"]) - t0 for r in files if "end" in r), default=None)
    if last_fetch is not None:
        found["handover"] = Phase("handover", last_fetch)

    kernel = console.first(_KERNEL, last_fetch if last_fetch is not None else after)
    if kernel is not None:
        found["kernel"] = Phase("kernel", kernel.t, detail={"line": kernel.text[:120]})
    ready = None
    for line in console.lines:
        if (kernel is None or line.t >= kernel.t) and wait_for.search(line.text):
            ready = line
            break
    if ready is not None:
        found["ready"] = Phase("ready", ready.t, 0.0, {"line": ready.text[:120]})

    # The chain's steps happen in this order; the console is stamped every 20 ms while the
    # HTTP server's times are exact, so a step seen on the console may look a few ms late:
    # keep the real order and let such a start move up to its predecessor's.
    order = list(LABELS)
    phases = sorted(found.values(), key=lambda p: order.index(p.name))
    for prev, cur in itertools.pairwise(phases):
        cur.start = max(cur.start, prev.start)
    end = ready.t if ready is not None else console.exit
    for cur, nxt in itertools.pairwise(phases):
        cur.duration = max(0.0, nxt.start - cur.start)
    if phases and phases[-1].name != "ready":
        phases[-1].duration = None if end is None else max(0.0, end - phases[-1].start)
    return Timeline(
        vm=vm,
        mac=mac,
        started=t0,
        phases=phases,
        wait_for=wait_for.pattern,
        total=ready.t if ready is not None else None,
        exited=console.exit,
    )


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []


def for_vm(home: LabHome, name: str, wait_for: re.Pattern[str]) -> Timeline:
    """The timeline of VM ``name``'s last start, from the files in ``home``."""
    from pvmlab.records import store

    spec = store.load_vm(home, name)
    path = home.vm_console_times(name)
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        raise StateError(
            f"VM {name} has no timed console record",
            f"start it with `pvmlab vm start {name}`, then ask again",
        ) from None
    return build(
        parse_console(text),
        _lines(home.dnsmasq_log),
        _lines(home.http_log),
        vm=name,
        mac=spec.mac,
        wait_for=wait_for,
    )


def wait_for_ready(
    home: LabHome, name: str, wait_for: re.Pattern[str], timeout: float = 2.0
) -> Timeline:
    """Like ``for_vm``, but give the console watcher a moment to stamp the awaited line."""
    deadline = time.monotonic() + timeout
    while True:
        tl = for_vm(home, name, wait_for)
        if tl.total is not None or time.monotonic() >= deadline:
            return tl
        time.sleep(0.05)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def details(p: Phase) -> str:
    d = p.detail
    parts = []
    if d.get("client_arch") is not None:
        parts.append(f"client-arch {d['client_arch']}")
    if d.get("ip"):
        parts.append(str(d["ip"]))
    if d.get("file"):
        parts.append(str(d["file"]))
    if d.get("autoexec"):
        parts.append(f"autoexec.ipxe from {'local media' if d['autoexec'] == 'media' else 'TFTP'}")
    if d.get("requests"):
        parts.append(", ".join(d["requests"]))
    if d.get("bytes") is not None and p.name != "http-script":
        parts.append(f"{d['bytes']:,} B")
    if d.get("transfer_s") is not None:
        parts.append(f"in {d['transfer_s']:.2f} s")
    if d.get("mb_per_s"):
        parts.append(f"{d['mb_per_s']} MB/s")
    if d.get("exchange_s") is not None:
        parts.append(f"exchange {d['exchange_s']:.2f} s")
    if d.get("line"):
        parts.append(repr(d["line"][:60]))
    if d.get("clock"):
        parts.append("(time from dnsmasq: whole seconds)")
    return "; ".join(parts)


def print_table(tl: Timeline) -> None:
    from rich.console import Console as RichConsole
    from rich.table import Table

    table = Table(title=f"boot timeline of {tl.vm} ({tl.mac})", title_justify="left")
    table.add_column("phase")
    table.add_column("start s", justify="right")
    table.add_column("duration s", justify="right")
    table.add_column("details", overflow="fold")
    for p in tl.phases:
        table.add_row(p.label, _fmt(p.start), _fmt(p.duration), details(p))
    out = RichConsole()
    out.print(table)
    slow = tl.slowest()
    if tl.total is not None:
        out.print(
            f"total {tl.total:.2f} s to {tl.wait_for!r}"
            + (f"; slowest phase: {slow.label} ({slow.duration:.2f} s)" if slow else ""),
            highlight=False,
        )
    else:
        out.print(f"{tl.wait_for!r} not seen on the console of this boot", highlight=False)


def summary(tl: Timeline) -> str:
    """One line for `vm start --wait`: the total and the slowest phase."""
    slow = tl.slowest()
    total = f"{tl.total:.1f} s" if tl.total is not None else "not reached"
    text = f"boot timeline: {total} to ready"
    if slow is not None and slow.duration is not None:
        text += f"; slowest phase: {slow.label} {slow.duration:.1f} s"
    return text + f" (details: `pvmlab vm timeline {tl.vm}`)"
