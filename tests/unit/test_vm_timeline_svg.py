"""`pvmlab vm timeline NAME --svg FILE`: the boot of one VM as a Gantt chart, from the files a
real PXE boot left in a lab home (``data/timeline/x86_64-uefi``, see test_timeline.py)."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner
from samples import BOOT_MARKER
from samples import TIMELINE_DATA as DATA

from conftest import run_pvmlab
from pvmlab.cli.main import cli
from pvmlab.home import LabHome
from pvmlab.records import store
from pvmlab.records.models import VMSpec

pytestmark = pytest.mark.usefixtures("utc")  # tests/conftest.py

SVG = "{http://www.w3.org/2000/svg}"


def lab_with_recorded_boot(root: Path, case: str) -> str:
    """A lab home holding what the real boot of ``case`` left: VM record, console, logs."""
    home = LabHome(root)
    home.ensure()
    d = DATA / case
    vm = json.loads((d / "vm.json").read_text())
    store.save_vm(
        home,
        VMSpec(name=vm["name"], arch=vm["arch"], firmware=vm["firmware"], mac=vm["mac"],
               ip=vm["ip"]),
    )  # fmt: skip
    shutil.copyfile(d / "console.jsonl", home.vm_console_times(vm["name"]))
    shutil.copyfile(d / "dnsmasq.log", home.dnsmasq_log)
    shutil.copyfile(d / "http.log", home.http_log)
    return str(vm["name"])


def test_svg_has_one_phase_bar_per_phase(tmp_path: Path) -> None:
    root = tmp_path / "home"
    name = lab_with_recorded_boot(root, "x86_64-uefi")
    chart = tmp_path / "boot.svg"
    runner = CliRunner()
    env = {"PVMLAB_HOME": str(root)}
    args = ["vm", "timeline", name, "--wait-for", BOOT_MARKER.pattern]
    res = runner.invoke(cli, [*args, "--svg", str(chart), "--json"], env=env)
    assert res.exit_code == 0, res.output
    tl = json.loads(res.output)
    phases = [p["name"] for p in tl["phases"]]
    assert phases[0] == "vm-start" and phases[-1] == "ready" and "tftp" in phases

    root_el = ET.parse(chart).getroot()  # well-formed XML
    assert root_el.tag == f"{SVG}svg"
    bars = [r for r in root_el.iter(f"{SVG}rect") if r.get("class") == "phase"]
    assert [b.get("data-phase") for b in bars] == phases
    title = root_el.find(f"{SVG}title")
    assert title is not None and title.text == f"{name}: ready after {tl['total']:.2f} s"

    # Without --json the table is printed and the chart written all the same.
    chart.unlink()
    res = runner.invoke(cli, [*args, "--svg", str(chart)], env=env)
    assert res.exit_code == 0, res.output
    assert chart.exists() and "ready" in res.output


def test_svg_into_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    root = tmp_path / "home"
    name = lab_with_recorded_boot(root, "x86_64-uefi")
    proc = run_pvmlab(
        "vm", "timeline", name, "--wait-for", BOOT_MARKER.pattern, "--svg",
        str(tmp_path / "nowhere" / "boot.svg"), home=root, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.startswith("pvmlab: error: cannot write the chart to ")
    assert len(proc.stderr.splitlines()) == 1
