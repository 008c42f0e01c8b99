"""The console stamper decides "ready": the first line matching the awaited pattern becomes a
``ready`` event in the stamps file and is handed to the caller, on the stamps' clock."""

from __future__ import annotations

import io
import json
import re
from typing import Any

from pvmlab.observe import stamp


def stamper(pattern: str) -> tuple[stamp.Stamper, io.StringIO, list[dict[str, Any]]]:
    out = io.StringIO()
    events: list[dict[str, Any]] = []
    st = stamp.Stamper(out, t0=100.0, ready=re.compile(pattern), on_event=events.append)
    return st, out, events


def records(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(x) for x in out.getvalue().splitlines()]


def test_first_matching_line_is_the_ready_event() -> None:
    st, out, events = stamper(r"PVMLAB-BOOT-OK")
    st.feed(b"[    0.5] Linux version 6.1\r\n", 102.0)
    st.feed(b"PVMLAB-BOOT-", 103.25)
    st.feed(b"OK console=ttyS0\r\nPVMLAB-BOOT-OK again\n", 103.5)
    st.finish(104.0)
    ready = {
        "event": "ready",
        "t": 3.25,  # the line's first byte, like its stamp
        "line": "PVMLAB-BOOT-OK console=ttyS0",
        "pattern": "PVMLAB-BOOT-OK",
    }
    assert events == [ready]
    assert records(out) == [
        {"t": 2.0, "end": 2.0, "line": "[    0.5] Linux version 6.1"},
        {"t": 3.25, "end": 3.5, "line": "PVMLAB-BOOT-OK console=ttyS0"},
        ready,
        {"t": 3.5, "end": 3.5, "line": "PVMLAB-BOOT-OK again"},
    ]


def test_a_prompt_without_newline_is_ready_at_once() -> None:
    st, out, events = stamper(r"login:")
    st.feed(b"Debian GNU/Linux 12 node1 ttyS0\r\n\r\nnode1 login: ", 110.0)
    assert events == [{"event": "ready", "t": 10.0, "line": "node1 login:", "pattern": "login:"}]
    st.feed(b"\r\n", 111.0)  # the line completes later: no second event
    assert len(events) == 1
    assert [r.get("event") for r in records(out)] == [None, "ready", None]


def test_no_pattern_no_event() -> None:
    out = io.StringIO()
    st = stamp.Stamper(out, t0=0.0)
    st.feed(b"login: \n", 1.0)
    assert records(out) == [{"t": 1.0, "end": 1.0, "line": "login:"}]


def test_escapes_are_removed_before_matching() -> None:
    st, _out, events = stamper(r"^Welcome$")
    st.feed(b"\x1b[2J\x1b[0mWelcome\r\n", 100.5)
    assert [e["line"] for e in events] == ["Welcome"]


def test_firmware_refusing_an_image_is_a_refused_event() -> None:
    """EDK2's boot manager under Secure Boot: LoadImage of an unsigned image is Access Denied."""
    st, out, events = stamper(r"PVMLAB-BOOT-OK")
    st.feed(b"  NBP file downloaded successfully.\r\n", 101.0)
    line = (
        'BdsDxe: failed to load Boot0001 "UEFI PXEv4 (MAC:0E289255B781)" from '
        "PciRoot(0x0)/Pci(0x2,0x0)/MAC(0E289255B781,0x1)/IPv4(0.0.0.0,0x0,DHCP,0.0.0.0,0.0.0.0,"
        "0.0.0.0): Access Denied"
    )
    st.feed(line.encode() + b"\r\n", 102.0)
    # a later option that is merely absent is not a refusal, and one event is enough
    st.feed(b'BdsDxe: failed to load Boot0002 "UEFI PXEv6" from X: Not Found\r\n', 103.0)
    st.feed(line.encode() + b"\r\n", 104.0)
    assert events == [{"event": "refused", "t": 2.0, "line": line}]
    assert [r.get("event") for r in records(out)] == [None, None, "refused", None, None]
