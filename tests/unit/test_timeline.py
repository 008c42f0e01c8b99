"""The boot timeline parser and the console stamper, on logs captured from real boots.

``tests/unit/data/timeline/<case>/`` holds what one real PXE boot under TCG left in a lab home
(pvmlab's own watcher, dnsmasq and HTTP server wrote them; nothing was written by hand):

    x86_64-uefi   OVMF -> ipxe-x86_64.efi -> HTTP, with tftp/autoexec.ipxe and virtio-rng
                  (the lab's dnsmasq.log also holds an earlier boot of the same VM and a BIOS VM)
    x86_64-bios   SeaBIOS + the NIC's iPXE ROM (no firmware DHCP, no TFTP; same lab as above)
    aarch64-uefi  AAVMF -> ipxe-arm64.efi, before the fixes (Ctrl-B prompt, entropy wait)
    x86_64-uefi-http
                  OVMF's UEFI HTTP Boot (``vm create --net-boot http``): DHCP with vendor class
                  HTTPClient (client-arch 16) -> HEAD and GET of ipxe-x86_64.efi over HTTP ->
                  iPXE fetches autoexec.ipxe beside it over HTTP -> the usual chain; no TFTP
    x86_64-uefi-ready
                  OVMF -> ipxe-x86_64.efi -> HTTP, a guest that stays up at its shell prompt
                  (``pvmlab.hold``), recorded while it was still running (no exit event). Its
                  console record holds one line not written by the stamper of that build: the
                  ``ready`` event of the interface agreed with the stamper, as the stamper that
                  writes it does (pattern ``^/ # ``, the prompt, matched while its line has no
                  newline yet; ``t`` the prompt's first byte, ``line`` its text stripped).

``console.jsonl`` keeps every line except the middle of the kernel's log (the first and last
five kernel lines are kept). ``vm.json`` is the VM's MAC, IP, arch and firmware.
"""

from __future__ import annotations

import io
import itertools
import json
import re
from pathlib import Path

import pytest
from samples import BOOT_MARKER as MARKER
from samples import TIMELINE_DATA as DATA
from samples import timeline_case as load

from pvmlab.errors import StateError
from pvmlab.observe import stamp, timeline
from pvmlab.observe.timeline import Phase

pytestmark = pytest.mark.usefixtures("utc")  # tests/conftest.py


def names(tl: timeline.Timeline) -> list[str]:
    return [p.name for p in tl.phases]


def marker_time(case: str) -> float:
    for raw in (DATA / case / "console.jsonl").read_text().splitlines():
        rec = json.loads(raw)
        if "PVMLAB-BOOT-OK" in rec.get("line", ""):
            return float(rec["t"])
    raise AssertionError("no marker in the fixture")


def check_contiguous(tl: timeline.Timeline) -> None:
    starts = [p.start for p in tl.phases]
    assert starts == sorted(starts)
    assert tl.phases[0].name == "vm-start" and tl.phases[0].start == 0.0
    for cur, nxt in itertools.pairwise(tl.phases):
        assert cur.duration == pytest.approx(nxt.start - cur.start, abs=1e-6)
    assert tl.phases[-1].name == "ready" and tl.phases[-1].duration == 0.0
    assert sum(p.duration or 0.0 for p in tl.phases) == pytest.approx(tl.total, abs=1e-6)


def test_x86_uefi_full_chain() -> None:
    tl, vm = load("x86_64-uefi")
    assert names(tl) == [
        "vm-start", "firmware-dhcp", "tftp", "ipxe-start", "ipxe-dhcp", "http-script",
        "http-kernel", "http-initrd", "handover", "kernel", "ready",
    ]  # fmt: skip
    check_contiguous(tl)
    assert tl.total == marker_time("x86_64-uefi")
    fw = tl.phase("firmware-dhcp")
    assert fw is not None and fw.detail["client_arch"] == 7 and fw.detail["ip"] == vm["ip"]
    assert "clock" not in fw.detail  # timed from the console, not dnsmasq's whole seconds
    tftp = tl.phase("tftp")
    assert tftp is not None
    assert tftp.detail["file"] == "ipxe-x86_64.efi" and tftp.detail["bytes"] == 996864
    assert tftp.duration is not None and 0 < tftp.detail["transfer_s"] <= tftp.duration
    ipxe = tl.phase("ipxe-dhcp")
    assert ipxe is not None and ipxe.detail["client_arch"] == 7
    script = tl.phase("http-script")
    assert script is not None and script.detail["requests"] == ["/boot.ipxe 200", "/ipxe 200"]
    kernel = tl.phase("http-kernel")
    assert kernel is not None and kernel.detail["file"] == "vmlinuz"
    assert kernel.detail["bytes"] == 14149568 and kernel.detail["status"] == 200
    initrd = tl.phase("http-initrd")
    assert initrd is not None and initrd.detail["file"] == "initrd"
    first_kernel = tl.phase("kernel")
    assert first_kernel is not None and first_kernel.detail["line"].startswith("EFI stub:")


def test_only_the_last_start_counts() -> None:
    """The lab's logs hold an earlier boot of e1 and a BIOS VM's boot: neither leaks in."""
    tl, vm = load("x86_64-uefi")
    http = [json.loads(x) for x in (DATA / "x86_64-uefi" / "http.log").read_text().splitlines()]
    mine = [r for r in http if r["client"] == vm["ip"]]
    assert len(mine) > 4  # two boots of e1 in the log
    used = tl.phase("http-kernel")
    assert used is not None
    last_kernel = [r for r in mine if r["path"].endswith("/vmlinuz")][-1]
    assert used.start == pytest.approx(last_kernel["start"] - tl.started)


def test_bios_has_no_firmware_dhcp_and_falls_back_to_dnsmasq_time() -> None:
    tl, vm = load("x86_64-bios")
    assert "firmware-dhcp" not in names(tl) and "tftp" not in names(tl)
    check_contiguous(tl)
    ipxe = tl.phase("ipxe-dhcp")
    assert ipxe is not None and ipxe.detail["client_arch"] == 0 and ipxe.detail["ip"] == vm["ip"]
    assert ipxe.detail["clock"] == "dnsmasq"  # SeaBIOS's iPXE says nothing on the serial line
    assert tl.phase("http-kernel") is not None and tl.phase("kernel") is not None


def test_aarch64_before_the_fixes_shows_the_ipxe_wait() -> None:
    tl, _ = load("aarch64-uefi")
    check_contiguous(tl)
    fw = tl.phase("firmware-dhcp")
    assert fw is not None and fw.detail["client_arch"] == 11
    tftp = tl.phase("tftp")
    assert tftp is not None and tftp.detail["file"] == "ipxe-arm64.efi"
    ipxe_start = tl.phase("ipxe-start")
    assert ipxe_start is not None and ipxe_start.duration is not None
    # this boot still had the Ctrl-B prompt (2 s) and the entropy wait: iPXE's start is long
    assert tl.slowest() in (ipxe_start, tl.phase("vm-start"), tl.phase("kernel"))


def test_json_shape_and_summary() -> None:
    tl, _ = load("x86_64-uefi")
    d = tl.as_dict()
    assert d["total"] == round(marker_time("x86_64-uefi"), 3)
    slow = tl.slowest()
    assert slow is not None and d["slowest"] == slow.name
    assert [p["name"] for p in d["phases"]] == names(tl)
    assert all(isinstance(p["start"], float) for p in d["phases"])
    text = timeline.boot_summary_line(tl)
    assert f"{tl.total:.1f} s" in text and slow.label in text


def test_wait_for_not_seen() -> None:
    d = DATA / "x86_64-uefi"
    tl = timeline.boot_timeline(
        timeline.parse_console((d / "console.jsonl").read_text()),
        [],
        [],
        vm="e1",
        mac="0e:ed:4e:52:cc:08",
        wait_for=re.compile("login:"),
    )
    assert tl.total is None and "ready" not in names(tl)
    assert tl.phases[-1].duration is not None  # runs to QEMU's exit, which was recorded


def test_damaged_console_records_are_skipped() -> None:
    text = (
        '{"event": "start", "t": 100.0, "pid": 7}\n'
        '{"t": 1.0, "end": 1.5, "line": "kept"}\n'
        '{"event": "ready", "t": "soon"}\n'
        '{"t": null, "line": "no time"}\n'
        '{"end": 2.0, "line": "no t"}\n'
        '{"t": 2.0, "end": 2.0, "li'
    )
    console = timeline.parse_console(text)
    assert console.lines == [timeline.ConsoleLine(1.0, 1.5, "kept")] and console.ready is None


def test_console_record_without_start_is_refused() -> None:
    with pytest.raises(StateError):
        timeline.parse_console('{"t": 1.0, "end": 1.0, "line": "x"}\n')


def test_stamper_times_lines_by_their_first_byte() -> None:
    out = io.StringIO()
    st = stamp.Stamper(out, t0=100.0)
    st.feed(b">>Start PXE over IPv4.", 101.0)
    st.feed(b"\r\n  Station IP address is 192.168.105.2\r\n\r\nNBP", 104.5)
    st.feed(b" filename is x\n", 104.6)
    st.feed(b"tail without newline", 105.0)
    st.finish(106.0)
    recs = [json.loads(x) for x in out.getvalue().splitlines()]
    assert recs == [
        {"t": 1.0, "end": 4.5, "line": ">>Start PXE over IPv4."},
        {"t": 4.5, "end": 4.5, "line": "  Station IP address is 192.168.105.2"},
        {"t": 4.5, "end": 4.6, "line": "NBP filename is x"},
        {"t": 5.0, "end": 6.0, "line": "tail without newline"},
    ]


def test_stamps_path() -> None:
    assert stamp.stamps_path(Path("/h/logs/t1.log")) == Path("/h/logs/t1.console.jsonl")


def test_console_stamped_late_keeps_the_chain_order() -> None:
    """The console is read every 20 ms, HTTP times are exact: iPXE's "Configuring" line can
    look later than the first request it led to (seen in a bench run). Here the real x86 log's
    boot.ipxe request is moved to 10 ms before that line; the order must hold."""
    d = DATA / "x86_64-uefi"
    console = timeline.parse_console((d / "console.jsonl").read_text())
    configuring = next(ln for ln in console.lines if ln.text.startswith("Configuring (net0"))
    http = []
    for raw in (d / "http.log").read_text().splitlines():
        rec = json.loads(raw)
        if rec["start"] >= console.t0 and rec["path"] == "/boot.ipxe":
            rec["start"] = console.t0 + configuring.t - 0.010
        http.append(json.dumps(rec))
    tl = timeline.boot_timeline(
        console,
        (d / "dnsmasq.log").read_text().splitlines(),
        http,
        vm="e1",
        mac="0e:ed:4e:52:cc:08",
        wait_for=MARKER,
    )
    assert names(tl).index("ipxe-dhcp") < names(tl).index("http-script")
    check_contiguous(tl)


# --- the steps of boot_timeline, one by one, on the x86_64-uefi boot ------------------------------


def records(case: str, mac: str) -> timeline.BootRecords:
    d = DATA / case
    return timeline.gather_boot_records(
        timeline.parse_console((d / "console.jsonl").read_text()),
        (d / "dnsmasq.log").read_text().splitlines(),
        (d / "http.log").read_text().splitlines(),
        mac,
    )


X86 = "0e:ed:4e:52:cc:08"
BIOS = "0e:80:55:a7:95:6e"


def test_gather_keeps_the_machines_records_of_its_last_start() -> None:
    """The log holds two boots of e1 and one of b1: only e1's second boot is gathered."""
    rec = records("x86_64-uefi", X86)
    assert rec.t0 == 1795745771.0082304  # the console's start event
    assert [(tx.serial, tx.user_class) for tx in rec.dhcp] == [
        ("4136298102", None),
        ("2701412103", "iPXE"),
    ]
    assert [e.file for e in rec.tftp] == ["ipxe-x86_64.efi", "ipxe-x86_64.efi", "autoexec.ipxe"]
    assert [r.path for r in rec.http] == [
        "/boot.ipxe", "/ipxe", "/images/tiny/x86_64/vmlinuz", "/images/tiny/x86_64/initrd",
    ]  # fmt: skip


def test_firmware_dhcp_phase_from_the_console() -> None:
    phase = timeline.firmware_dhcp_phase(records("x86_64-uefi", X86))
    assert phase is not None and phase.start == 3.052  # ">>Start PXE over IPv4."
    assert phase.detail == {"client_arch": 7, "ip": "192.168.105.2", "exchange_s": 3.877}
    assert timeline.firmware_dhcp_phase(records("x86_64-bios", BIOS)) is None


def test_tftp_phase_from_the_firmwares_nbp_lines() -> None:
    phase = timeline.tftp_phase(records("x86_64-uefi", X86))
    assert phase is not None and phase.start == 6.95  # "Downloading NBP file..."
    assert phase.detail == {
        "file": "ipxe-x86_64.efi", "bytes": 996864, "transfer_s": 0.145, "mb_per_s": 6.87,
    }  # fmt: skip
    assert timeline.tftp_phase(records("x86_64-bios", BIOS)) is None


def test_ipxe_start_phase_and_where_autoexec_came_from() -> None:
    phase = timeline.ipxe_start_phase(records("x86_64-uefi", X86))
    assert phase is not None and (phase.start, phase.detail) == (7.115, {"autoexec": "tftp"})
    media = timeline.ipxe_start_phase(records("x86_64-uefi-ipxe", "0e:82:86:a7:07:59"))
    assert media is not None and (media.start, media.detail) == (3.394, {"autoexec": "media"})


def test_ipxe_dhcp_phase_from_the_console_else_from_dnsmasq() -> None:
    phase = timeline.ipxe_dhcp_phase(records("x86_64-uefi", X86), after=7.115)
    assert phase is not None and phase.start == 7.469  # "Configuring (net0 ...)"
    assert phase.detail == {"client_arch": 7, "ip": "192.168.105.2", "exchange_s": 0.024}
    bios = records("x86_64-bios", BIOS)
    phase = timeline.ipxe_dhcp_phase(bios, after=0.0)
    assert phase is not None  # dnsmasq logged b1's DISCOVER at 02:13:43; b1 started 02:13:40.92
    assert phase.start == pytest.approx(1795745623.0 - bios.t0)
    assert phase.detail == {"client_arch": 0, "ip": "192.168.105.3", "clock": "dnsmasq"}


def test_http_phases_and_the_end_of_the_last_fetch() -> None:
    rec = records("x86_64-uefi", X86)
    phases = timeline.http_phases(rec)
    assert [(p.name, round(p.start, 3)) for p in phases] == [
        ("http-script", 7.489), ("http-kernel", 7.501), ("http-initrd", 8.014),
    ]  # fmt: skip
    assert phases[0].detail == {"requests": ["/boot.ipxe 200", "/ipxe 200"], "bytes": 919}
    assert phases[1].detail == {
        "file": "vmlinuz", "status": 200, "bytes": 14149568, "transfer_s": 0.42,
        "mb_per_s": 33.67,
    }  # fmt: skip
    fetched = timeline.last_fetch_end(rec)
    assert fetched is not None and round(fetched, 3) == 8.017  # the initrd's end


def test_kernel_phase_after_the_last_fetch() -> None:
    phase = timeline.kernel_phase(records("x86_64-uefi", X86), after=8.017)
    assert phase is not None and phase.start == 8.307
    assert phase.detail["line"].startswith("EFI stub: Loaded initrd")
    assert timeline.kernel_phase(records("x86_64-uefi", X86), after=11.0) is None


def test_ready_phase_is_the_first_match_after_the_kernel() -> None:
    rec = records("x86_64-uefi", X86)
    phase = timeline.ready_phase(rec, MARKER, after=8.307)
    assert phase is not None and (phase.start, phase.duration) == (10.554, 0.0)
    assert phase.detail == {"line": "PVMLAB-BOOT-OK vmlinuz console=ttyS0 initrd=initrd"}
    assert timeline.ready_phase(rec, re.compile("EFI stub"), after=8.5) is None


def test_chain_phases_keeps_the_order_and_makes_them_contiguous() -> None:
    found = [
        Phase("kernel", 5.0),
        Phase("vm-start", 0.0),
        Phase("http-script", 2.99),  # stamped a little before the DHCP that led to it
        Phase("ipxe-dhcp", 3.0),
    ]
    chained = timeline.chain_phases(found, end=9.0)
    assert [(p.name, p.start, p.duration) for p in chained] == [
        ("vm-start", 0.0, 3.0),
        ("ipxe-dhcp", 3.0, 0.0),
        ("http-script", 3.0, 2.0),
        ("kernel", 5.0, 4.0),  # until the end given (QEMU's exit)
    ]
    assert timeline.chain_phases([Phase("vm-start", 0.0)], end=None)[0].duration is None
    ready = timeline.chain_phases([Phase("vm-start", 0.0), Phase("ready", 7.0, 0.0)], end=9.0)
    assert [(p.start, p.duration) for p in ready] == [(0.0, 7.0), (7.0, 0.0)]


def test_boot_phases_of_a_local_media_ipxe_boot_say_so() -> None:
    found = timeline.boot_phases(records("x86_64-uefi-ipxe", "0e:82:86:a7:07:59"), MARKER)
    assert "firmware-dhcp" not in found and "tftp" not in found
    assert found["vm-start"].label == "VM start -> iPXE (local media)"


# --- the ready event of the console stamper -------------------------------------------------------

PROMPT = re.compile("^/ # ")
HOLD = ("h1", "0e:f3:7e:eb:da:65")


def ready_case(console_text: str, wait_for: re.Pattern[str]) -> timeline.Timeline:
    d = DATA / "x86_64-uefi-ready"
    return timeline.boot_timeline(
        timeline.parse_console(console_text),
        (d / "dnsmasq.log").read_text().splitlines(),
        (d / "http.log").read_text().splitlines(),
        vm=HOLD[0],
        mac=HOLD[1],
        wait_for=wait_for,
    )


def ready_console(*, with_event: bool = True, until_event: bool = False) -> str:
    """The case's console record; ``until_event``: as it stood when the stamper wrote the event
    (the prompt has no newline, so the stamper had not written its line yet)."""
    kept = []
    for raw in (DATA / "x86_64-uefi-ready" / "console.jsonl").read_text().splitlines():
        is_event = json.loads(raw).get("event") == "ready"
        if not is_event or with_event:
            kept.append(raw)
        if is_event and until_event:
            break
    return "\n".join(kept) + "\n"


def test_parse_console_keeps_the_first_ready_event_of_the_last_start() -> None:
    console = timeline.parse_console(ready_console())
    assert console.ready == timeline.ReadyEvent(9.753, "/ #", "^/ # ")
    assert console.exit is None  # recorded while the guest was still up
    restarted = ready_console() + '{"event": "start", "t": 1.0, "pid": 1}\n'
    assert timeline.parse_console(restarted).ready is None
    twice = ready_console() + '{"event": "ready", "t": 12.0, "line": "/ #", "pattern": "^/ # "}\n'
    ready = timeline.parse_console(twice).ready
    assert ready is not None and ready.t == 9.753


def test_the_ready_event_ends_the_boot() -> None:
    tl = ready_case(ready_console(), PROMPT)
    assert names(tl) == [
        "vm-start", "firmware-dhcp", "tftp", "ipxe-start", "ipxe-dhcp", "http-script",
        "http-kernel", "http-initrd", "handover", "kernel", "ready",
    ]  # fmt: skip
    check_contiguous(tl)
    assert tl.total == 9.753
    ready = tl.phase("ready")
    assert ready is not None and ready.detail == {"line": "/ #", "seen_by": "stamper"}
    assert timeline.phase_details(ready) == "'/ #'; (seen by the console stamper)"
    assert tl.as_dict()["phases"][-1]["seen_by"] == "stamper"


def test_the_ready_event_before_the_prompts_line_was_written() -> None:
    """While the guest sits at its prompt, the console record has no line holding it: only the
    event says the boot is over; without it the boot has not reached ready."""
    tl = ready_case(ready_console(until_event=True), PROMPT)
    assert tl.total == 9.753 and names(tl)[-1] == "ready"
    check_contiguous(tl)
    older = ready_case(ready_console(with_event=False, until_event=True), PROMPT)
    assert older.total is None and "ready" not in names(older)
    assert older.phases[-1].name == "kernel" and older.phases[-1].duration is None  # still up


def test_without_the_event_the_console_lines_decide() -> None:
    """Older records (no event) fall back to the first console line that matches."""
    tl = ready_case(ready_console(with_event=False), PROMPT)
    assert tl.total == 9.753
    ready = tl.phase("ready")
    assert ready is not None and "seen_by" not in ready.detail
    assert ready.detail["line"].startswith("/ # [    1.759415] tsc:")  # a kernel line ran on


def test_a_ready_event_for_another_pattern_is_not_the_end_asked_for() -> None:
    tl = ready_case(ready_console(), re.compile("pvmlab: holding"))
    ready = tl.phase("ready")
    assert ready is not None and ready.detail == {"line": "pvmlab: holding (pvmlab.hold)"}
    assert tl.wait_for == "pvmlab: holding"


def test_an_installers_config_fetch_is_its_own_phase() -> None:
    """A request logged with a ``kind`` (the install routes) ends the kernel phase and is not an
    iPXE script."""
    d = DATA / "x86_64-uefi"
    console = timeline.parse_console((d / "console.jsonl").read_text())
    t0 = console.t0
    peer = "192.168.105.2"
    extra = [
        json.dumps({"start": t0 + 9.0, "end": t0 + 9.01, "duration": 0.01, "client": peer,
                    "method": "GET", "path": "/preseed/0e-ed-4e-52-cc-08", "query": None,
                    "status": 200, "bytes": 2100, "kind": "preseed", "mac": X86}),
        json.dumps({"start": t0 + 9.5, "end": t0 + 9.51, "duration": 0.01, "client": peer,
                    "method": "POST", "path": "/status/0e-ed-4e-52-cc-08", "query": None,
                    "status": 200, "bytes": 60, "kind": "status", "mac": X86}),
    ]  # fmt: skip
    rec = timeline.gather_boot_records(
        console,
        (d / "dnsmasq.log").read_text().splitlines(),
        (d / "http.log").read_text().splitlines() + extra,
        X86,
    )
    scripts = timeline.http_phases(rec)[0]
    assert scripts.detail["requests"] == ["/boot.ipxe 200", "/ipxe 200"]
    phase = timeline.install_config_phase(rec)
    assert phase is not None and round(phase.start, 3) == 9.0
    assert phase.detail == {
        "requests": ["preseed GET /preseed/0e-ed-4e-52-cc-08 200",
                     "status POST /status/0e-ed-4e-52-cc-08 200"],
    }  # fmt: skip
    found = timeline.boot_phases(rec, re.compile("PVMLAB-BOOT-OK"))
    chained = timeline.chain_phases(found.values(), None)
    names = [p.name for p in chained]
    assert names[-3:] == ["kernel", "install-config", "ready"]
    assert found["kernel"].label == "kernel -> installer config"
    assert timeline.install_config_phase(records("x86_64-uefi", X86)) is None


def test_uefi_http_boot_has_an_http_first_stage_and_no_tftp() -> None:
    tl, vm = load("x86_64-uefi-http")
    assert names(tl) == [
        "vm-start", "firmware-dhcp", "http-first-stage", "ipxe-start", "ipxe-dhcp",
        "http-script", "http-kernel", "http-initrd", "handover", "kernel", "ready",
    ]  # fmt: skip
    check_contiguous(tl)
    assert tl.total == marker_time("x86_64-uefi-http")
    fw = tl.phase("firmware-dhcp")
    assert fw is not None and fw.detail["client_arch"] == 16 and fw.detail["ip"] == vm["ip"]
    assert "clock" not in fw.detail  # from OVMF's ">>Start HTTP Boot over IPv4" line
    first = tl.phase("http-first-stage")
    assert first is not None and first.label == "HTTP first stage"
    assert first.detail["requests"] == [
        "HEAD /tftp/ipxe-x86_64.efi 200",
        "GET /tftp/ipxe-x86_64.efi 200",
    ]
    assert first.detail["file"] == "ipxe-x86_64.efi" and first.detail["bytes"] == 996864
    ipxe = tl.phase("ipxe-start")
    assert ipxe is not None and ipxe.detail["autoexec"] == "http"
    assert "autoexec.ipxe from HTTP" in timeline.phase_details(ipxe)
    script = tl.phase("http-script")
    assert script is not None and script.detail["requests"] == ["/boot.ipxe 200", "/ipxe 200"]


def test_secure_boot_refusal_ends_the_chain() -> None:
    """The firmware fetched the unsigned first stage and refused it: the timeline says so."""
    refused = 'BdsDxe: failed to load Boot0001 "UEFI PXEv4 (MAC:0E2892)" from X: Access Denied'
    text = "\n".join(json.dumps(r) for r in (
        {"event": "start", "t": 1000.0, "pid": 7},
        {"t": 10.6, "end": 15.0, "line": ">>Start PXE over IPv4."},
        {"t": 15.0, "end": 15.0, "line": "  Station IP address is 192.168.105.4"},
        {"t": 15.2, "end": 15.2, "line": "  NBP filename is ipxe-x86_64.efi"},
        {"t": 15.2, "end": 15.2, "line": "  NBP filesize is 996864 Bytes"},
        {"t": 15.3, "end": 16.7, "line": " Downloading NBP file..."},
        {"t": 16.7, "end": 16.7, "line": "  NBP file downloaded successfully."},
        {"t": 16.8, "end": 16.8, "line": refused},
        {"event": "refused", "t": 16.8, "line": refused},
        {"event": "exit", "t": 70.0},
    ))  # fmt: skip
    tl = timeline.boot_timeline(
        timeline.parse_console(text), [], [], vm="r1", mac="0e:28:92:55:b7:81",
        wait_for=re.compile(MARKER),
    )  # fmt: skip
    assert names(tl)[-2:] == ["tftp", "refused"]
    last = tl.phases[-1]
    assert (last.label, last.start, last.duration) == (
        "first stage refused (Secure Boot)", 16.8, pytest.approx(53.2)
    )
    assert last.detail == {"line": refused}
    assert tl.total is None


def test_grub_first_stage_phase() -> None:
    """GRUB's banner starts its phase (config, kernel and initrd over TFTP), the kernel ends it."""
    home = "/lab/home"
    text = "\n".join(json.dumps(r) for r in (
        {"event": "start", "t": 1000.0, "pid": 7},
        {"t": 8.0, "end": 12.0, "line": ">>Start PXE over IPv4."},
        {"t": 12.0, "end": 12.0, "line": "  Station IP address is 192.168.105.2"},
        {"t": 12.1, "end": 12.1, "line": "  NBP filename is grubx64.efi"},
        {"t": 12.2, "end": 14.0, "line": " Downloading NBP file..."},
        {"t": 14.0, "end": 14.0, "line": "  NBP file downloaded successfully."},
        {"t": 15.0, "end": 15.0, "line": "Welcome to GRUB!"},
        {"t": 15.5, "end": 15.5, "line": "pvmlab: booting g1 (x86_64 uefi) with tiny"},
        # GRUB's screen escapes open the kernel's first line before the kernel runs
        {"t": 15.6, "end": 24.0, "line": "EFI stub: Loaded initrd from LINUX_EFI_INITRD"},
        {"t": 30.0, "end": 30.0, "line": f"{MARKER} BOOT_IMAGE=/images/tiny/x86_64/vmlinuz"},
        {"event": "exit", "t": 31.0},
    ))  # fmt: skip
    dnsmasq = [
        f"Dec  1 00:16:54 dnsmasq-tftp[5]: sent {home}/tftp/grubx64.efi to 192.168.105.2",
        f"Dec  1 00:16:55 dnsmasq-tftp[5]: sent {home}/tftp/grub/grub.cfg to 192.168.105.2",
        f"Dec  1 00:17:00 dnsmasq-tftp[5]: sent {home}/tftp/images/tiny/x86_64/vmlinuz to "
        "192.168.105.2",
        f"Dec  1 00:17:01 dnsmasq-tftp[5]: sent {home}/tftp/images/tiny/x86_64/initrd to "
        "192.168.105.2",
    ]
    tl = timeline.boot_timeline(
        timeline.parse_console(text), dnsmasq, [], vm="g1", mac="0e:00:00:00:00:01",
        wait_for=re.compile(MARKER),
    )  # fmt: skip
    assert names(tl) == ["vm-start", "firmware-dhcp", "tftp", "grub", "kernel", "ready"]
    grub = tl.phase("grub")
    assert grub is not None
    assert (grub.label, grub.start, grub.duration) == (
        "GRUB: config, kernel, initrd (TFTP)", 15.0, pytest.approx(9.0)
    )
