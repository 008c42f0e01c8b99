"""Labs as code, for real: `pvmlab test` boots the example lab file's machines (aarch64 UEFI,
x86_64 UEFI, x86_64 BIOS) through real dnsmasq, iPXE and firmware; `up` reconciles; `down`
removes; the HTML report is opened in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

import netlab
from conftest import REPO, run_pvmlab
from fixtures.bootassets import BootAssets, export
from pvmlab.home import LabHome

pytestmark = pytest.mark.integration

EXAMPLE = REPO / "examples" / "boot-matrix.toml"


def _lab_dir(tmp_path: Path, assets: dict[str, BootAssets], text: str) -> Path:
    for a in assets.values():
        export(a, tmp_path / "assets")
    lab = tmp_path / "lab.toml"
    lab.write_text(text)
    return lab


class _Bars(HTMLParser):
    """Phase bars per machine section of the report, as the browser's DOM has them."""

    def __init__(self) -> None:
        super().__init__()
        self.section: str | None = None
        self.bars: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section" and a.get("class") == "machine":
            self.section = (a.get("id") or "").removeprefix("m-")
        if tag == "rect" and a.get("class") == "phase" and self.section:
            self.bars[self.section] = self.bars.get(self.section, 0) + 1


def _dom(page: Path, profile: Path) -> str:
    chromium = shutil.which("chromium")
    assert chromium is not None, "chromium is installed by scripts/install-system-deps.sh"
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_example_lab_passes_with_reports(
    tmp_path: Path, labs: Path, boot_assets: dict[str, BootAssets]
) -> None:
    lab = _lab_dir(tmp_path, boot_assets, EXAMPLE.read_text())
    out = tmp_path / "out"
    out.mkdir()
    proc = run_pvmlab(
        "test", "-f", str(lab), "--junit", str(out / "junit.xml"), "--json",
        str(out / "result.json"), "--report", str(out / "report"), "--parallel", "2",
        check=False, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "3 passed, 0 failed"

    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert sorted(cases) == ["arm-uefi", "x86-bios", "x86-uefi"]
    assert all(c.find("failure") is None for c in cases.values())

    result = json.loads((out / "result.json").read_text())
    phases = {m["name"]: [p["name"] for p in m["timeline"]["phases"]] for m in result["machines"]}
    assert phases["arm-uefi"][:2] == ["vm-start", "firmware-dhcp"]  # firmware PXE, not direct
    assert "tftp" in phases["x86-uefi"]
    assert all("ready" in p for p in phases.values()), phases
    assert all("PVMLAB-BOOT-OK" in "\n".join(m["console_tail"]) for m in result["machines"])

    dom = _dom(out / "report" / "index.html", tmp_path / "chromium")
    bars = _Bars()
    bars.feed(dom)
    assert bars.bars == {name: len(p) for name, p in phases.items()}

    down = run_pvmlab("down", "-f", str(lab))
    assert "remove home" in down.stdout
    assert not (labs / "boot-matrix").exists()


def test_unmet_expectation_fails_its_case_with_evidence(
    tmp_path: Path, labs: Path, boot_assets: dict[str, BootAssets]
) -> None:
    text = """\
name = "unmet"

[provisioner]
address = "192.168.121.1/24"

[[distros]]
name = "tiny"
arch = "x86_64"
kernel = "assets/x86_64/vmlinuz"
initrd = "assets/x86_64/initrd"
cmdline = "console=ttyS0"

[[machines]]
name = "good"
arch = "x86_64"
firmware = "bios"
distro = "tiny"
ready = { console = "PVMLAB-BOOT-OK", timeout = 120 }

[[machines]]
name = "never"
arch = "x86_64"
firmware = "bios"
distro = "tiny"
ready = { console = "THIS-IS-NEVER-PRINTED", timeout = 120 }
"""
    lab = _lab_dir(tmp_path, boot_assets, text)
    junit, report = tmp_path / "junit.xml", tmp_path / "report"
    proc = run_pvmlab(
        "test", "-f", str(lab), "--junit", str(junit), "--report", str(report), check=False,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "1 passed, 1 failed"
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert cases["good"].find("failure") is None
    failure = cases["never"].find("failure")
    assert failure is not None
    # The guest printed its marker and powered off: the reason says it stopped, the evidence
    # holds the console and the stack's view of its MAC.
    assert "stopped after" in (failure.get("message") or "")
    assert "THIS-IS-NEVER-PRINTED" in (failure.get("message") or "")
    assert "PVMLAB-BOOT-OK" in (failure.text or "")
    assert "stack's view of" in (failure.text or "")
    html = (report / "index.html").read_text()
    assert 'data-outcome="failed"' in html and "1 passed, 1 failed" in html
    run_pvmlab("down", "-f", str(lab))


def _records(home: Path) -> dict[str, dict[str, object]]:
    """The VM records of a home, as `vm create` wrote them."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((home / "vms").glob("*.json"))}


def test_up_is_idempotent_and_reconciles_edits(
    tmp_path: Path, labs: Path, boot_assets: dict[str, BootAssets]
) -> None:
    text = EXAMPLE.read_text().replace('name = "boot-matrix"', 'name = "reconcile"')
    lab = _lab_dir(tmp_path, boot_assets, text)
    first = json.loads(run_pvmlab("up", "-f", str(lab), "--no-start", "--json").stdout)
    home = Path(first["home"])
    assert home == labs / "reconcile"
    made = {(c["action"], c["name"]) for c in first["changes"] if c["kind"] == "machine"}
    assert made == {("create", "arm-uefi"), ("create", "x86-uefi"), ("create", "x86-bios")}
    before = _records(home)

    second = run_pvmlab("up", "-f", str(lab), "--no-start")
    assert "up to date, nothing to change" in second.stdout
    assert _records(home) == before

    # One machine more (count = 2), one less (x86-bios), one changed (x86-uefi's memory).
    uefi = 'name = "x86-uefi"\narch = "x86_64"\nfirmware = "uefi"\ndistro = "tiny"\n'
    edited = (
        text.replace(uefi + "memory = 512", uefi + "memory = 768")
        .split('[[machines]]\nname = "x86-bios"')[0]
        + '[[machines]]\nname = "extra"\ncount = 2\narch = "x86_64"\nfirmware = "bios"\n'
        'distro = "tiny"\n'
    )
    lab.write_text(edited)
    mac_before = {name: vm["mac"] for name, vm in _records(home).items()}
    third = json.loads(run_pvmlab("up", "-f", str(lab), "--no-start", "--json").stdout)
    got = {(c["action"], c["name"]) for c in third["changes"] if c["kind"] == "machine"}
    assert got == {
        ("remove", "x86-bios"), ("recreate", "x86-uefi"), ("create", "extra-1"),
        ("create", "extra-2"),
    }  # fmt: skip
    after = _records(home)
    assert {name: vm["memory_mib"] for name, vm in after.items()} == {
        "arm-uefi": 512, "x86-uefi": 768, "extra-1": 1024, "extra-2": 1024,  # the default
    }  # fmt: skip
    assert after["x86-uefi"]["mac"] == mac_before["x86-uefi"]  # made again, same reservation
    assert "up to date" in run_pvmlab("up", "-f", str(lab), "--no-start").stdout

    listed = json.loads(run_pvmlab("ls", "--json").stdout)
    assert [(x["name"], x["machines"], x["stack"]) for x in listed] == [("reconcile", 4, "running")]

    run_pvmlab("down", "-f", str(lab))
    assert not home.exists()
    assert not netlab.netns_exists(LabHome(home).netns)
    assert json.loads(run_pvmlab("ls", "--json").stdout) == []


def test_a_distro_pulled_from_a_mirror_and_bad_files_create_nothing(
    tmp_path: Path, labs: Path, boot_assets: dict[str, BootAssets]
) -> None:
    """`pull` fetches a catalog entry (a local mirror in Debian's layout stands in for the real
    site, which these machines cannot reach), verified; a bad file is one line naming the line,
    and nothing is made."""
    from mirror import trees
    from mirror.server import serve

    x86 = boot_assets["x86_64"]
    srv = tmp_path / "srv"
    trees.debian_netboot(srv, "x86_64", x86.kernel.read_bytes(), x86.initrd.read_bytes())
    with serve(srv) as (url, state):
        lab = tmp_path / "pulled.toml"
        lab.write_text(f"""\
[provisioner]
address = "192.168.122.1/24"

[[distros]]
name = "debian-12"
arch = "x86_64"
pull = "netboot"
mirror = "{url}/debian"

[[machines]]
name = "d1"
arch = "x86_64"
distro = "debian-12"
""")
        made = json.loads(run_pvmlab("up", "-f", str(lab), "--no-start", "--json").stdout)
        assert {(c["action"], c["kind"], c["name"]) for c in made["changes"]} >= {
            ("import", "distro", "debian-12 (x86_64)"), ("create", "machine", "d1"),
        }  # fmt: skip
        home = Path(made["home"])
        assert (home / "images" / "debian-12" / "x86_64" / "vmlinuz").read_bytes() == (
            x86.kernel.read_bytes()
        )
        fetched = len(state.requests)
        assert "up to date" in run_pvmlab("up", "-f", str(lab), "--no-start").stdout
        assert len(state.requests) == fetched  # nothing fetched again
        run_pvmlab("down", "-f", str(lab))

    homes_before = sorted(labs.iterdir()) if labs.exists() else []
    bad = tmp_path / "bad.toml"
    for text, where in (
        ('[provisioner]\naddres = "10.1.0.1/24"\n', "bad.toml:2: provisioner.addres: unknown key"),
        ('[[machines]]\nname = "a"\narch = "x86_64"\nmemory = 1\n',
         "bad.toml:4: machines[0].memory:"),
        ('[[machines]]\nname = "a"\narch = "x86_64"\n[[machines]]\nname = "a"\narch = "x86_64"\n',
         "bad.toml:5: machines[1].name: machine 'a' is also made by machines[0]"),
        ('[provisioner]\naddress = "10.1.0.1/29"\n[[machines]]\nname = "n"\ncount = 9\n'
         'arch = "x86_64"\n', "bad.toml:5: machines[0].count: 9 machines need"),
    ):  # fmt: skip
        bad.write_text(text)
        proc = run_pvmlab("up", "-f", str(bad), check=False)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"pvmlab: error: {where}"), proc.stderr
        assert proc.stderr.count("\n") == 1
    # nothing was made for any of them
    assert (sorted(labs.iterdir()) if labs.exists() else []) == homes_before
