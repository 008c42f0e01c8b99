"""Where the seconds of a VM's last boot went: phases joined from the console, dnsmasq and HTTP.

Sources (all in the lab home), joined by the VM's MAC (and the IPs it was given) and by the time
of its last start:

    logs/NAME.console.jsonl  the console, one line per record with the time its first byte and
                             its newline were seen (``pvmlab.observe.stamp``; the header holds the
                             VM start; a ``ready`` event, when the start waited for a
                             pattern). Firmware and iPXE print each step as they take it,
                             so this gives sub-second times for the network steps as well.
    logs/dnsmasq.log         ``log-dhcp`` lines: which client architecture asked, which address
                             was acked, which file went over TFTP (dnsmasq stamps whole seconds
                             only, so its times are a fallback, marked ``clock: dnsmasq``)
    logs/http.log            one JSON record per request with start, duration and bytes

``boot_timeline`` works in steps, each a function of its own: ``gather_boot_records`` (each
source's records of the machine since its last start), ``boot_phases`` (one function per phase:
``firmware_dhcp_phase``, ``tftp_phase``, ...), ``chain_phases`` (order and durations), then the
`Timeline` with its total and slowest phase.

Phases are contiguous: each lasts until the next one starts, so they add up to the total and the
slowest one is where the time went. Transfers also carry their own ``transfer_s``, ``bytes`` and
``mb_per_s`` (the rest of a phase is the client's own work).

    vm-start       QEMU launched -> the firmware's first DHCP (firmware init, NIC driver)
    firmware-dhcp  the firmware's DHCP (client-arch, address) -> TFTP of the first stage
    tftp           the first stage over TFTP (file, bytes)
    http-first-stage  UEFI HTTP Boot: the first stage over HTTP (the URL DHCP handed the
                   firmware; requests, bytes), instead of ``tftp``
    refused        the firmware refused the first stage (Secure Boot, an unsigned image): the
                   chain ends here
    shim           Secure Boot: shim fetches GRUB over TFTP and verifies it
    grub           GRUB as the first stage: its banner -> the kernel's first line (its config,
                   the kernel and the initrd over TFTP; GRUB's screen escapes start that line
                   early, so the kernel's phase starts at the line's end)
    ipxe-start     iPXE starting (its device probe, entropy, "Press Ctrl-B" prompt)
    ipxe-dhcp      iPXE's own DHCP
    http-script    boot.ipxe and the per-machine script
    http-kernel    the kernel over HTTP
    http-initrd    the initrd over HTTP
    handover       iPXE starts the kernel (EFI stub, decompression) -> its first console line
    kernel         the kernel's first console line -> the awaited text
    deploy-…       a VM made from an image (``pvmlab.deploy``), after the ramdisk's kernel:
                   ``deploy-instructions`` (its lease and instructions), ``deploy-stream``
                   (bytes, seconds and MB/s of the image's chunks, from http.log),
                   ``deploy-verify`` (read back, SHA-256), ``deploy-grow`` (partition, file
                   system, seed), ``reboot`` (to the firmware's PXE again, whose script now
                   exits to the disk), ``disk-kernel`` (the disk's kernel), ``cloud-init``
                   (its phone-home), then ``ready``
    ready          the awaited text (``--wait-for``, default a login prompt): the stamper's
                   ``ready`` event when it was watching for that pattern (it sees a prompt that
                   has no newline yet), else the first console line after the kernel's that
                   matches (older records, starts without ``--wait``)

A boot without some step (legacy BIOS has no firmware DHCP of its own; a direct kernel boot
has no network at all) simply has no such phase. A ``vm start --boot ipxe`` boot starts iPXE
from a local drive: no firmware DHCP, no TFTP, so ``vm-start`` runs until iPXE starts (it is
labelled so) and ``ipxe-start`` says where ``autoexec.ipxe`` came from (``media``: iPXE printed
``file:autoexec.ipxe... ok``; ``tftp``: the lab's TFTP server; ``http``: beside the first stage
on the HTTP server, after UEFI HTTP Boot). A ``--net-boot http`` boot has ``http-first-stage``
(the firmware's HEAD and GET of iPXE) where a PXE boot has ``tftp``; its ``firmware-dhcp``
starts at the firmware's ``>>Start HTTP Boot over IPv4`` and shows client-arch 16 or 19.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pvmlab.errors import StateError
from pvmlab.home import LabHome
from pvmlab.observe import dnsmasqlog, httplog
from pvmlab.observe.dnsmasqlog import DhcpTransaction, TftpEvent
from pvmlab.observe.httplog import HttpRequest
from pvmlab.stack import logfiles

LABELS = {
    "vm-start": "VM start -> firmware DHCP",
    "firmware-dhcp": "firmware DHCP",
    "tftp": "TFTP first stage",
    "http-first-stage": "HTTP first stage",
    "refused": "first stage refused (Secure Boot)",
    "shim": "shim: GRUB over TFTP, verified",
    "grub": "GRUB: config, kernel, initrd (TFTP)",
    "ipxe-start": "iPXE start",
    "ipxe-dhcp": "iPXE DHCP",
    "http-script": "HTTP scripts",
    "http-kernel": "HTTP kernel",
    "http-initrd": "HTTP initrd",
    "handover": "kernel handover",
    "kernel": "kernel -> ready",
    "deploy-instructions": "deploy: lease + instructions",
    "deploy-stream": "deploy: image stream to disk",
    "deploy-verify": "deploy: read back + SHA-256",
    "deploy-grow": "deploy: grow partition, seed",
    "deploy-failed": "deploy FAILED (reported, halted)",
    "reboot": "reboot -> PXE -> local disk",
    "disk-kernel": "disk's kernel -> ready",
    "cloud-init": "cloud-init done (phone-home)",
    "install-config": "installer config (HTTP) -> ready",
    "ready": "ready",
}

_FW_DHCP = re.compile(r">>Start (?:PXE|HTTP Boot) over IPv[46]")
_FW_ACK = re.compile(r"Station IP address is (\S+)")
_NBP_NAME = re.compile(r"NBP filename is (\S+)")
_NBP_SIZE = re.compile(r"NBP filesize is (\d+) Bytes")
_NBP_START = re.compile(r"Downloading NBP file")
_NBP_DONE = re.compile(r"NBP file downloaded successfully")
_IPXE_START = re.compile(r"iPXE initialising devices|^iPXE \(https?://ipxe\.org\)")
_AUTOEXEC = re.compile(r"^(?P<file>file:)?\S*autoexec\.ipxe\.\.\. ok")
_IPXE_DHCP = re.compile(r"Configuring \(net\d")
_GRUB_START = re.compile(r"Welcome to GRUB!")
_SHIM_FETCH = re.compile(r"Fetching Netboot Image (\S+)")
_KERNEL = re.compile(r"EFI stub: |Linux version \d|Booting Linux on physical CPU|^\[\s*\d+\.\d+\] ")


# --- the console record --------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsoleLine:
    t: float
    end: float
    text: str


@dataclass(frozen=True)
class ReadyEvent:
    """The stamper saw the awaited text (``--wait-for``) at ``t`` (seconds after the start)."""

    t: float
    line: str
    pattern: str


@dataclass(frozen=True)
class RefusedEvent:
    """The firmware refused to run a boot image (the stamper's ``refused`` event)."""

    t: float
    line: str


@dataclass
class ConsoleRecord:
    t0: float  # epoch of the VM start
    lines: list[ConsoleLine]
    exit: float | None = None
    ready: ReadyEvent | None = None
    refused: RefusedEvent | None = None

    def first(self, pattern: re.Pattern[str], after: float = -1.0) -> ConsoleLine | None:
        for line in self.lines:
            if line.t >= after and pattern.search(line.text):
                return line
        return None


def parse_console(text: str) -> ConsoleRecord:
    """The stamper's JSON lines (see ``pvmlab.observe.stamp``) of the last start they hold; a
    line that is not such a record (cut short by a crash, say) is skipped."""
    t0: float | None = None
    lines: list[ConsoleLine] = []
    exit_t = None
    ready = None
    refused = None
    for raw in text.splitlines():
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict):
            continue
        try:
            event = rec.get("event")
            if event == "start":
                t0, lines, exit_t, ready, refused = float(rec["t"]), [], None, None, None
            elif event == "exit":
                exit_t = float(rec["t"])
            elif event == "refused":
                if refused is None:
                    refused = RefusedEvent(float(rec["t"]), str(rec["line"]))
            elif event == "ready":
                if ready is None:
                    ready = ReadyEvent(float(rec["t"]), str(rec["line"]), str(rec["pattern"]))
            elif "line" in rec:
                t = float(rec["t"])
                lines.append(ConsoleLine(t, float(rec.get("end") or t), str(rec["line"])))
        except (KeyError, TypeError, ValueError):
            continue
    if t0 is None:
        raise StateError(
            "the console record has no start",
            "start the VM again with `pvmlab vm start` to record a timeline",
        )
    return ConsoleRecord(t0=t0, lines=lines, exit=exit_t, ready=ready, refused=refused)


# --- step 1: what each source recorded of the machine's last boot --------------------------------


@dataclass
class BootRecords:
    """One machine's last start as each source saw it: the console, and what dnsmasq and the
    HTTP server logged of the machine from that start on."""

    console: ConsoleRecord
    dhcp: list[DhcpTransaction]
    tftp: list[TftpEvent]  # files sent to the machine
    http: list[HttpRequest]  # by start time

    @property
    def t0(self) -> float:
        return self.console.t0


def dnsmasq_records_of_boot(
    dnsmasq_lines: Iterable[str], mac: str, t0: float
) -> tuple[list[DhcpTransaction], list[TftpEvent]]:
    """DHCP transactions of ``mac`` and TFTP files sent to the addresses they acked, logged at
    ``t0`` or later (dnsmasq's whole seconds, in the year of ``t0``)."""
    events = dnsmasqlog.events_since(
        dnsmasqlog.parse_dnsmasq_log(dnsmasq_lines, datetime.fromtimestamp(t0).year), t0
    )
    dhcp = dnsmasqlog.dhcp_transactions(events, mac)
    ips = {tx.acked_ip for tx in dhcp if tx.acked_ip}
    sent = [e for e in dnsmasqlog.tftp_events_for(events, ips) if e.outcome == "sent"]
    return dhcp, sent


def http_records_of_boot(
    http_lines: Iterable[str], mac: str, ips: Iterable[str], t0: float
) -> list[HttpRequest]:
    """The machine's requests that started at ``t0`` or later (half a second of slack: the
    server's clock and the start's are read in different processes)."""
    requests = httplog.requests_since(httplog.parse_http_log(http_lines), t0 - 0.5)
    return httplog.requests_of_machine(requests, mac, ips)


def _address(text: str) -> str:
    """An address as the logs write it: EDK2 prints IPv6 upper case and uncompressed."""
    try:
        return str(ipaddress.ip_address(text.lower()))
    except ValueError:
        return text


def gather_boot_records(
    console: ConsoleRecord, dnsmasq_lines: Iterable[str], http_lines: Iterable[str], mac: str
) -> BootRecords:
    """Each source's records of ``mac`` since the console's start."""
    dhcp, tftp = dnsmasq_records_of_boot(dnsmasq_lines, mac, console.t0)
    ips = {tx.acked_ip for tx in dhcp if tx.acked_ip}
    fw_ack = console.first(_FW_ACK)
    if fw_ack is not None:
        ips.add(_address(_FW_ACK.search(fw_ack.text).group(1)))  # type: ignore[union-attr]
    return BootRecords(console, dhcp, tftp, http_records_of_boot(http_lines, mac, ips, console.t0))


# --- step 2: the phases the records show ---------------------------------------------------------


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


def _rate(nbytes: int | None, seconds: float | None) -> float | None:
    if not nbytes or not seconds or seconds <= 0:
        return None
    return round(nbytes / seconds / 1e6, 2)


def _firmware_dhcp(records: BootRecords) -> DhcpTransaction | None:
    firmware = [tx for tx in records.dhcp if not tx.is_ipxe]
    # EDK2's IPv6 stack asks DHCPv6 before its PXE does: the PXE one is the one given a file,
    # and DHCPv6 logs its SOLICIT/ADVERTISE and REQUEST/REPLY as two transactions
    given = [tx for tx in firmware if tx.bootfile]
    fallback = given[0] if given else firmware[0] if firmware else None
    return next((tx for tx in given if tx.acked_ip), fallback)


def _ipxe_dhcp(records: BootRecords) -> DhcpTransaction | None:
    return next((tx for tx in records.dhcp if tx.is_ipxe), None)


def _dhcp_detail(tx: DhcpTransaction | None) -> dict[str, Any]:
    return {} if tx is None else {"client_arch": tx.client_arch, "ip": tx.acked_ip}


def _dnsmasq_start(tx: DhcpTransaction | None, t0: float) -> float:
    """Seconds after the start of a transaction dnsmasq logged (the start itself if unknown)."""
    return (tx.t if tx is not None and tx.t is not None else t0) - t0


def firmware_dhcp_phase(records: BootRecords) -> Phase | None:
    """The firmware's own DHCP: from its ``>>Start PXE`` line, else from dnsmasq's clock."""
    console = records.console
    tx = _firmware_dhcp(records)
    begun = console.first(_FW_DHCP)
    if begun is None and tx is None:
        return None
    detail = _dhcp_detail(tx)
    if begun is not None:
        start = begun.t
    else:
        start = _dnsmasq_start(tx, records.t0)
        detail["clock"] = "dnsmasq"
    acked = console.first(_FW_ACK)
    if acked is not None:
        detail["exchange_s"] = round(acked.t - start, 3)
    return Phase("firmware-dhcp", start, detail=detail)


def tftp_phase(records: BootRecords) -> Phase | None:
    """The first stage over TFTP, timed by the firmware's NBP lines, else by dnsmasq."""
    console = records.console
    begun, done = console.first(_NBP_START), console.first(_NBP_DONE)
    if begun is None and not records.tftp:
        return None
    detail: dict[str, Any] = {}
    name, size = console.first(_NBP_NAME), console.first(_NBP_SIZE)
    if records.tftp:
        detail["file"] = records.tftp[0].file
    elif name is not None:
        detail["file"] = name.text.rsplit(" ", 1)[-1]
    if size is not None:
        detail["bytes"] = int(_NBP_SIZE.search(size.text).group(1))  # type: ignore[union-attr]
    if begun is not None:
        start = begun.t
        if done is not None:
            detail["transfer_s"] = round(done.t - start, 3)
            detail["mb_per_s"] = _rate(detail.get("bytes"), done.t - start)
    else:
        start = (records.tftp[0].t or records.t0) - records.t0
        detail["clock"] = "dnsmasq"
    return Phase("tftp", start, detail=detail)


def shim_phase(records: BootRecords) -> Phase | None:
    """Secure Boot's first stage, shim, fetching the next stage (GRUB) from its TFTP directory."""
    line = records.console.first(_SHIM_FETCH)
    if line is None:
        return None
    found = _SHIM_FETCH.search(line.text)
    return Phase("shim", line.t, detail={"file": found.group(1) if found else ""})


def grub_phase(records: BootRecords) -> Phase | None:
    """GRUB as the first stage: from its banner, it reads its configuration and loads the
    kernel and initrd over TFTP (Debian's signed image has no HTTP), until the kernel speaks."""
    begun = records.console.first(_GRUB_START)
    if begun is None:
        return None
    phase = Phase("grub", begun.t)
    loaded = [e.file for e in records.tftp if "/tftp/images/" in e.path]
    if loaded:
        phase.detail["tftp"] = ", ".join(loaded)
    return phase


def ipxe_start_phase(records: BootRecords) -> Phase | None:
    """iPXE's banner, and where its ``autoexec.ipxe`` came from (local media, TFTP or HTTP)."""
    begun = records.console.first(_IPXE_START)
    if begun is None:
        return None
    phase = Phase("ipxe-start", begun.t)
    script = records.console.first(_AUTOEXEC, begun.t)
    if script is not None:
        from_media = _AUTOEXEC.search(script.text).group("file")  # type: ignore[union-attr]
        # iPXE started by UEFI HTTP Boot fetches it beside itself, over HTTP
        over_http = any(r.in_tftp_root and r.path.endswith("/autoexec.ipxe") for r in records.http)
        phase.detail["autoexec"] = "media" if from_media else "http" if over_http else "tftp"
    return phase


def ipxe_dhcp_phase(records: BootRecords, after: float) -> Phase | None:
    """iPXE's ``Configuring (net0 …)`` line from ``after`` on, else dnsmasq's iPXE exchange."""
    tx = _ipxe_dhcp(records)
    configuring = records.console.first(_IPXE_DHCP, after)
    if configuring is None and tx is None:
        return None
    detail = _dhcp_detail(tx)
    if configuring is not None:
        start = configuring.t
        detail["exchange_s"] = round(configuring.end - configuring.t, 3)
    else:
        start = _dnsmasq_start(tx, records.t0)
        detail["clock"] = "dnsmasq"
    return Phase("ipxe-dhcp", start, detail=detail)


def http_phases(records: BootRecords) -> list[Phase]:
    """The scripts (one phase), then the first two boot files: kernel and initrd."""
    t0 = records.t0
    scripts = [
        r
        for r in records.http
        if not r.is_boot_file and not r.in_tftp_root and not _is_install_config(r)
    ]
    files = [r for r in records.http if r.is_boot_file]
    phases = []
    if scripts:
        phases.append(
            Phase(
                "http-script",
                (scripts[0].start or t0) - t0,
                detail={
                    "requests": [f"{r.path} {r.status}" for r in scripts],
                    "bytes": sum(r.bytes or 0 for r in scripts),
                },
            )
        )
    for kind, req in zip(("http-kernel", "http-initrd"), files, strict=False):
        secs = req.duration or 0.0
        phases.append(
            Phase(
                kind,
                (req.start or t0) - t0,
                detail={
                    "file": Path(req.path).name,
                    "status": req.status,
                    "bytes": req.bytes,
                    "transfer_s": round(secs, 3),
                    "mb_per_s": _rate(req.bytes, secs),
                },
            )
        )
    return phases


def http_first_stage_phase(records: BootRecords) -> Phase | None:
    """UEFI HTTP Boot: the firmware's requests for its first stage, timed by the HTTP server
    (EDK2 asks twice: HEAD for the size, then GET)."""
    fetched = [r for r in records.http if r.is_first_stage]
    if not fetched:
        return None
    t0 = records.t0
    start = (fetched[0].start or t0) - t0
    last = fetched[-1]
    end = (last.end if last.end is not None else last.start or t0) - t0
    nbytes = max((r.bytes or 0 for r in fetched), default=0)
    return Phase(
        "http-first-stage",
        start,
        detail={
            "file": Path(last.path).name,
            "requests": [f"{r.method} {r.path} {r.status}" for r in fetched],
            "bytes": nbytes,
            "transfer_s": round(end - start, 3),
            "mb_per_s": _rate(nbytes, end - start),
        },
    )


def _is_install_config(req: HttpRequest) -> bool:
    """A request of an installer for its configuration or reporting its status (the install
    routes log the document's ``kind``)."""
    return bool(req.record.get("kind"))


# --- image deployment (pvmlab.deploy): the ramdisk's own console lines and requests -------------

_DEPLOY_KINDS = ("deploy", "image", "seed")
_DEPLOY_LEASE = re.compile(r"^pvmlab-deploy: lease on ")
_DEPLOY_STREAM = re.compile(r"^pvmlab-deploy: streaming ")
_DEPLOY_WROTE = re.compile(r"^pvmlab-deploy: wrote \d+ of ")
_DEPLOY_VERIFIED = re.compile(r"^pvmlab-deploy: verified")
_DEPLOY_REBOOT = re.compile(r"^pvmlab-deploy: deployed; rebooting")
_DEPLOY_FAILED = re.compile(r"^pvmlab-deploy: FAILED: ")
# a kernel starting (the ramdisk's own last lines before the reboot carry kernel time stamps)
_KERNEL_START = re.compile(r"EFI stub: |Linux version \d|Booting Linux on physical CPU")


def is_deploy(records: BootRecords) -> bool:
    return any(r.record.get("kind") in _DEPLOY_KINDS for r in records.http)


def deploy_phases(records: BootRecords) -> list[Phase]:
    """The deploy ramdisk's steps, from its ``pvmlab-deploy:`` console lines; the stream's bytes
    and rate from the HTTP server's records of the image's chunks; then the reboot into the disk
    and the disk's own kernel, and cloud-init's phone-home when it came."""
    console = records.console
    phases: list[Phase] = []
    lease = console.first(_DEPLOY_LEASE)
    if lease is not None:
        phases.append(Phase("deploy-instructions", lease.t))
    stream = console.first(_DEPLOY_STREAM)
    if stream is not None:
        chunks = [r for r in records.http if r.record.get("kind") == "image"]
        detail: dict[str, Any] = {"requests": [f"{len(chunks)} image chunks"]}
        if chunks:
            first, last = chunks[0].start, chunks[-1].end
            nbytes = sum(r.bytes or 0 for r in chunks)
            detail["bytes"] = nbytes
            if first is not None and last is not None:
                detail["transfer_s"] = round(last - first, 3)
                detail["mb_per_s"] = _rate(nbytes, last - first)
        phases.append(Phase("deploy-stream", stream.t, detail=detail))
    wrote = [line for line in console.lines if _DEPLOY_WROTE.search(line.text)]
    if wrote:
        phases.append(Phase("deploy-verify", wrote[-1].t))
    verified = console.first(_DEPLOY_VERIFIED)
    if verified is not None:
        phases.append(Phase("deploy-grow", verified.t))
    failed = console.first(_DEPLOY_FAILED)
    if failed is not None:
        phases.append(Phase("deploy-failed", failed.t, detail={"line": failed.text[:120]}))
    reboot = console.first(_DEPLOY_REBOOT)
    if reboot is not None:
        phases.append(Phase("reboot", reboot.t))
        disk = console.first(_KERNEL_START, reboot.end)
        if disk is not None:
            phases.append(Phase("disk-kernel", disk.t, detail={"line": disk.text[:120]}))
    home_call = [r for r in records.http
                 if r.record.get("kind") == "status" and r.record.get("phase") == "installed"]
    if home_call and home_call[0].start is not None:
        phases.append(Phase("cloud-init", home_call[0].start - records.t0))
    return phases


def install_config_phase(records: BootRecords) -> Phase | None:
    """From the installer's first request for its configuration (preseed, kickstart, NoCloud…)
    on; its detail lists every such request and status report."""
    fetched = [r for r in records.http if _is_install_config(r)]
    if not fetched:
        return None
    return Phase(
        "install-config",
        (fetched[0].start or records.t0) - records.t0,
        detail={
            "requests": [f"{r.record['kind']} {r.method} {r.path} {r.status}" for r in fetched]
        },
    )


def last_fetch_end(records: BootRecords) -> float | None:
    """When the last boot file was served (seconds after the start): iPXE's handover begins."""
    ends = [r.end - records.t0 for r in records.http if r.is_boot_file and r.end is not None]
    return max(ends, default=None)


def kernel_phase(records: BootRecords, after: float, *, at_end: bool = False) -> Phase | None:
    """The kernel's first console line from ``after`` on (``at_end``: its newline's time)."""
    line = records.console.first(_KERNEL, after)
    if line is None:
        return None
    return Phase("kernel", line.end if at_end else line.t, detail={"line": line.text[:120]})


def ready_phase(
    records: BootRecords, wait_for: re.Pattern[str], after: float | None
) -> Phase | None:
    """The awaited text: the stamper's ``ready`` event when it was looking for ``wait_for``,
    else the first console line from ``after`` (the kernel's first line) on that matches."""
    event = records.console.ready
    if event is not None and event.pattern == wait_for.pattern:
        return Phase("ready", event.t, 0.0, {"line": event.line[:120], "seen_by": "stamper"})
    for line in records.console.lines:
        if (after is None or line.t >= after) and wait_for.search(line.text):
            return Phase("ready", line.t, 0.0, {"line": line.text[:120]})
    return None


def boot_phases(records: BootRecords, wait_for: re.Pattern[str]) -> dict[str, Phase]:
    """Every phase the records show, by name (starts as seen; not yet chained)."""
    found: dict[str, Phase] = {"vm-start": Phase("vm-start", 0.0)}

    def add(phase: Phase | None) -> Phase | None:
        if phase is not None:
            found[phase.name] = phase
        return phase

    add(firmware_dhcp_phase(records))
    add(tftp_phase(records))
    add(http_first_stage_phase(records))
    refused = records.console.refused
    if refused is not None:  # the chain ends here: the firmware would not run the first stage
        add(Phase("refused", refused.t, detail={"line": refused.line[:160]}))
    add(shim_phase(records))
    grub = add(grub_phase(records))
    ipxe_start = add(ipxe_start_phase(records))
    after_ipxe = ipxe_start.start if ipxe_start is not None else 0.0
    add(ipxe_dhcp_phase(records, after_ipxe))
    for phase in http_phases(records):
        add(phase)
    if (
        ipxe_start is not None
        and ipxe_start.detail.get("autoexec") == "media"
        and "firmware-dhcp" not in found
        and "tftp" not in found
    ):
        found["vm-start"].title = "VM start -> iPXE (local media)"
    fetched = last_fetch_end(records)
    if fetched is not None:
        add(Phase("handover", fetched))
    if fetched is None and grub is not None:
        after_ipxe = grub.start
    kernel = add(
        kernel_phase(
            records, fetched if fetched is not None else after_ipxe, at_end=grub is not None
        )
    )
    if is_deploy(records):
        if kernel is not None:
            kernel.title = "deploy ramdisk kernel -> lease"
        for phase in deploy_phases(records):
            add(phase)
        disk = found.get("disk-kernel")
        if disk is not None:
            add(ready_phase(records, wait_for, disk.start))
        return found
    if kernel is not None and add(install_config_phase(records)) is not None:
        kernel.title = "kernel -> installer config"
    add(ready_phase(records, wait_for, kernel.start if kernel is not None else None))
    return found


# --- step 3: phases chained end to end -----------------------------------------------------------


def chain_phases(found: Iterable[Phase], end: float | None) -> list[Phase]:
    """The phases in the chain's order, each lasting until the next starts; the last one (unless
    it is ``ready``, which lasts 0) until ``end`` (QEMU's exit), if known.

    The console is stamped every 20 ms while the HTTP server's times are exact, so a step seen
    on the console may look a few ms late: the real order is kept and such a start moves up to
    its predecessor's.
    """
    order = list(LABELS)
    phases = sorted(found, key=lambda p: order.index(p.name))
    for prev, cur in itertools.pairwise(phases):
        cur.start = max(cur.start, prev.start)
    for cur, nxt in itertools.pairwise(phases):
        cur.duration = max(0.0, nxt.start - cur.start)
    if phases and phases[-1].name != "ready":
        phases[-1].duration = None if end is None else max(0.0, end - phases[-1].start)
    return phases


# --- step 4: the timeline and its summary --------------------------------------------------------


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
            "slowest": slow.name if slow is not None else None,
            "exited": self.exited,
            "phases": [p.as_dict() for p in self.phases],
        }


def boot_timeline(
    console: ConsoleRecord,
    dnsmasq_lines: Iterable[str],
    http_lines: Iterable[str],
    *,
    vm: str,
    mac: str,
    wait_for: re.Pattern[str],
) -> Timeline:
    """Join the three sources into phases (pure: the caller reads the files)."""
    mac = mac.lower()
    records = gather_boot_records(console, dnsmasq_lines, http_lines, mac)
    found = boot_phases(records, wait_for)
    ready = found.get("ready")
    total = ready.start if ready is not None else None  # before chaining moves any start
    return Timeline(
        vm=vm,
        mac=mac,
        started=console.t0,
        phases=chain_phases(found.values(), total if total is not None else console.exit),
        wait_for=wait_for.pattern,
        total=total,
        exited=console.exit,
    )


def _lines(path: Path) -> list[str]:
    """A stack log with its newest rotated file before it: a boot across a rotation is whole."""
    return logfiles.read_lines(path)


def timeline_of_vm(home: LabHome, name: str, wait_for: re.Pattern[str]) -> Timeline:
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
    return boot_timeline(
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
    """Like ``timeline_of_vm``, but give the console watcher a moment to stamp the awaited line."""
    deadline = time.monotonic() + timeout
    while True:
        tl = timeline_of_vm(home, name, wait_for)
        if tl.total is not None or time.monotonic() >= deadline:
            return tl
        time.sleep(0.05)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def phase_details(p: Phase) -> str:
    d = p.detail
    parts = []
    if d.get("client_arch") is not None:
        parts.append(f"client-arch {d['client_arch']}")
    if d.get("ip"):
        parts.append(str(d["ip"]))
    if d.get("file"):
        parts.append(str(d["file"]))
    if d.get("autoexec"):
        where = {"media": "local media", "http": "HTTP"}.get(d["autoexec"], "TFTP")
        parts.append(f"autoexec.ipxe from {where}")
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
    if d.get("seen_by") == "stamper":
        parts.append("(seen by the console stamper)")
    return "; ".join(parts)


def print_timeline_table(tl: Timeline) -> None:
    from rich.console import Console as RichConsole
    from rich.table import Table

    table = Table(title=f"boot timeline of {tl.vm} ({tl.mac})", title_justify="left")
    table.add_column("phase")
    table.add_column("start s", justify="right")
    table.add_column("duration s", justify="right")
    table.add_column("details", overflow="fold")
    for p in tl.phases:
        table.add_row(p.label, _fmt(p.start), _fmt(p.duration), phase_details(p))
    out = RichConsole(emoji=False, markup=False)  # a MAC's ":cd:" is no emoji, "[x]" no markup
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


def boot_summary_line(tl: Timeline) -> str:
    """One line for `vm start --wait`: the total and the slowest phase."""
    slow = tl.slowest()
    total = f"{tl.total:.1f} s" if tl.total is not None else "not reached"
    text = f"boot timeline: {total} to ready"
    if slow is not None and slow.duration is not None:
        text += f"; slowest phase: {slow.label} {slow.duration:.1f} s"
    return text + f" (details: `pvmlab vm timeline {tl.vm}`)"
