"""The boot timeline parser and the console stamper, on logs captured from real boots.

``tests/unit/data/timeline/<case>/`` holds what one real PXE boot under TCG left in a lab home
(pvmlab's own watcher, dnsmasq and HTTP server wrote them; nothing was written by hand):

    x86_64-uefi   OVMF -> ipxe-x86_64.efi -> HTTP, with tftp/autoexec.ipxe and virtio-rng
                  (the lab's dnsmasq.log also holds an earlier boot of the same VM and a BIOS VM)
    x86_64-bios   SeaBIOS + the NIC's iPXE ROM (no firmware DHCP, no TFTP; same lab as above)
    aarch64-uefi  AAVMF -> ipxe-arm64.efi, before the fixes (Ctrl-B prompt, entropy wait)

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
