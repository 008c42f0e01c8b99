"""JUnit XML for CI systems: one test case per machine, the evidence in the failure."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from pvmlab.report.results import MachineResult, RunResult


def _failure_text(m: MachineResult) -> str:
    parts = [m.reason, "", f"expected: {m.expectation}"]
    if m.console_tail:
        parts += ["", "console (last lines):", *m.console_tail]
    if m.stack_view:
        parts += ["", "what the stack saw of this machine:", *m.stack_view]
    return "\n".join(parts)


def junit_xml(run: RunResult) -> str:
    suite = ET.Element(
        "testsuite",
        name=f"pvmlab.{run.lab}",
        tests=str(len(run.machines)),
        failures=str(run.failed),
        errors="0",
        skipped="0",
        time=f"{run.duration:.3f}",
        timestamp=run.started,
    )
    for m in run.machines:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"pvmlab.{run.lab}",
            name=m.name,
            time=f"{(m.elapsed or 0.0):.3f}",
        )
        if not m.passed:
            fail = ET.SubElement(case, "failure", message=m.reason, type="NotReady")
            fail.text = _failure_text(m)
        out = ET.SubElement(case, "system-out")
        out.text = "\n".join(m.console_tail)
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
