"""The run report: SVG charts with one bar per phase, self-contained HTML, JUnit XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import samples

from pvmlab.report import gantt
from pvmlab.report.html import report_html
from pvmlab.report.junit import junit_xml
from pvmlab.report.results import MachineResult, RunResult

SVG = "{http://www.w3.org/2000/svg}"  # ElementTree's prefix for SVG element names
CONSOLE_OK = "PVMLAB-BOOT-OK vmlinuz console=ttyS0"
NEVER_REASON = "bios did not show 'never' on its console within 5 s"


def _machine(name: str, expectation: str, outcome: str, **more: object) -> MachineResult:
    """An x86_64 UEFI network boot's result unless ``more`` says otherwise."""
    fields: dict[str, object] = {"arch": "x86_64", "firmware": "uefi", "boot": "pxe", **more}
    return MachineResult(name=name, expectation=expectation, outcome=outcome, **fields)


def _run() -> RunResult:
    uefi, _ = samples.timeline_case("x86_64-uefi")
    bios, _ = samples.timeline_case("x86_64-bios")
    return RunResult(
        lab="ci",
        lab_file="/src/lab.toml",
        started="2026-11-27T02:16:00+00:00",
        duration=42.5,
        machines=[
            _machine("uefi", "console /PVMLAB-BOOT-OK/ within 120 s", "passed", elapsed=10.554,
                     timeline=uefi.as_dict(), console_tail=[CONSOLE_OK]),
            _machine("bios", "console /never/ within 5 s", "failed", firmware="bios",
                     reason=NEVER_REASON, elapsed=5.0, timeline=bios.as_dict(),
                     console_tail=["<script>alert(1)</script> & more"],
                     stack_view=["dnsmasq: DHCPACK(pvbr) 192.168.105.3 0e:00:00:00:00:02"]),
            _machine("none", "console /login:/ within 300 s", "failed", arch="aarch64",
                     reason="QEMU exited at once"),
        ],
    )


def _svg_phase_rects(svg: str) -> tuple[ET.Element, list[ET.Element]]:
    """The parsed SVG and its phase bars."""
    root = ET.fromstring(svg)
    return root, [r for r in root.iter(f"{SVG}rect") if r.get("class") == "phase"]


class _Collect(HTMLParser):
    """Phase bars per section, and every text node (to check escaping)."""

    def __init__(self) -> None:
        super().__init__()
        self.section: str | None = None
        self.bars: dict[str, list[str]] = {}
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "section":
            self.section = a.get("id")
        if tag == "rect" and a.get("class") == "phase" and self.section:
            self.bars.setdefault(self.section, []).append(a.get("data-phase") or "")


def test_timeline_svg_has_one_bar_per_phase() -> None:
    tl, _ = samples.timeline_case("aarch64-uefi")
    root, bars = _svg_phase_rects(gantt.timeline_svg(tl.as_dict()))
    assert [r.get("data-phase") for r in bars] == [p.name for p in tl.phases]
    assert root.find(f"{SVG}title") is not None


def test_report_html_charts_and_escaping() -> None:
    html = report_html(_run())
    parser = _Collect()
    parser.feed(html)
    uefi, _ = samples.timeline_case("x86_64-uefi")
    bios, _ = samples.timeline_case("x86_64-bios")
    assert parser.bars["m-uefi"] == [p.name for p in uefi.phases]
    assert parser.bars["m-bios"] == [p.name for p in bios.phases]
    assert "m-none" not in parser.bars
    assert "script" not in parser.tags  # the console's <script> is text, not markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html
    assert "1 passed, 2 failed" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_overview_puts_machines_on_one_axis() -> None:
    run = _run()
    root, bars = _svg_phase_rects(gantt.overview_svg([(m.name, m.timeline) for m in run.machines]))
    labels = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "row-label"]
    assert labels == ["uefi", "bios", "none"]
    n_uefi = len(run.machines[0].timeline["phases"])  # type: ignore[index]
    n_bios = len(run.machines[1].timeline["phases"])  # type: ignore[index]
    assert len(bars) == n_uefi + n_bios


def test_junit_one_case_per_machine_with_evidence() -> None:
    root = ET.fromstring(junit_xml(_run()))
    suite = root.find("testsuite")
    assert suite is not None
    assert suite.get("tests") == "3"
    assert suite.get("failures") == "2"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert list(cases) == ["uefi", "bios", "none"]
    assert cases["uefi"].find("failure") is None
    fail = cases["bios"].find("failure")
    assert fail is not None
    assert fail.get("message") == NEVER_REASON
    assert "<script>alert(1)</script> & more" in (fail.text or "")
    assert "DHCPACK(pvbr) 192.168.105.3" in (fail.text or "")
    assert cases["uefi"].get("time") == "10.554"
