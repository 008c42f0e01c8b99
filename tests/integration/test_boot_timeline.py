"""`pvmlab vm timeline` after a real PXE boot (x86_64 UEFI, TCG), driven through the CLI.

The guest is the fixture kernel + busybox initramfs (tests/fixtures). No timing thresholds:
the phases must all be there, in order, contiguous, with the sizes of the files really served.
Also checks the mechanism of the boot-overhead fixes: iPXE ran the lab's ``autoexec.ipxe`` (so
it showed no Ctrl-B prompt) and the VM has a virtio RNG.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from bootlab import cleaned_lab, import_distro
from conftest import run_pvmlab
from fixtures.bootassets import MARKER, BootAssets

pytestmark = pytest.mark.integration

PHASES = [
    "vm-start", "firmware-dhcp", "tftp", "ipxe-start", "ipxe-dhcp", "http-script",
    "http-kernel", "http-initrd", "handover", "kernel", "ready",
]  # fmt: skip


def test_timeline_after_real_pxe_boot(tmp_path: Path, boot_assets: dict[str, BootAssets]) -> None:
    a = boot_assets["x86_64"]
    home = (tmp_path / "home").absolute()
    with cleaned_lab(home):
        import_distro(home, "tiny", a, a.cmdline)
        created = run_pvmlab(
            "vm", "create", "tl1", "--arch", "x86_64", "--firmware", "uefi",
            "--distro", "tiny", "--json", home=home,
        )  # fmt: skip
        vm = json.loads(created.stdout)
        start = run_pvmlab(
            "vm", "start", "tl1", "--accel", "tcg", "--wait-for", MARKER, "--timeout", "300",
            home=home,
        )  # fmt: skip
        assert "boot timeline:" in start.stdout and "slowest phase:" in start.stdout

        out = run_pvmlab("vm", "timeline", "tl1", "--wait-for", MARKER, "--json", home=home)
        tl = json.loads(out.stdout)
        phases = tl["phases"]
        assert [p["name"] for p in phases] == PHASES, phases
        starts = [p["start"] for p in phases]
        assert starts == sorted(starts) and starts[0] == 0.0
        for cur, nxt in itertools.pairwise(phases):
            assert cur["duration"] == pytest.approx(nxt["start"] - cur["start"], abs=0.002)
        assert tl["total"] == phases[-1]["start"] > 0
        assert tl["slowest"] in PHASES and tl["mac"] == vm["mac"]
        by = {p["name"]: p for p in phases}
        assert by["firmware-dhcp"]["client_arch"] == 7
        assert by["firmware-dhcp"]["ip"] == vm["ip"]
        served = home / "tftp" / "ipxe-x86_64.efi"
        assert by["tftp"]["file"] == served.name
        assert by["tftp"]["bytes"] == served.stat().st_size
        assert by["ipxe-dhcp"]["ip"] == vm["ip"]
        assert by["http-script"]["requests"] == ["/boot.ipxe 200", "/ipxe 200"]
        assert by["http-kernel"]["bytes"] == a.kernel.stat().st_size
        assert by["http-initrd"]["bytes"] == a.initrd.stat().st_size
        for name in ("tftp", "http-kernel", "http-initrd"):
            assert by[name]["transfer_s"] >= 0
        assert MARKER in by["ready"]["line"]

        # the table for people; without --wait-for it uses the pattern the start waited for
        table = run_pvmlab("vm", "timeline", "tl1", home=home).stdout
        assert "iPXE DHCP" in table and "HTTP kernel" in table and "total" in table
        assert "not seen on the console" not in table
        again = json.loads(run_pvmlab("vm", "timeline", "tl1", "--json", home=home).stdout)
        assert [p["name"] for p in again["phases"]] == PHASES

        # the mechanism of the fixes (see docs/performance.md, "Boot overhead")
        console = (home / "logs" / "tl1.log").read_text(errors="replace")
        assert "autoexec.ipxe... ok" in console and "Press Ctrl-B" not in console
        listed = json.loads(run_pvmlab("vm", "list", "--json", home=home).stdout)
        assert listed[0]["name"] == "tl1"
        argv = json.loads((home / "vms" / "tl1" / "runtime.json").read_text())["argv"]
        assert "virtio-rng-pci" in argv

        # the console record goes with the VM
        assert (home / "logs" / "tl1.console.jsonl").exists()
        run_pvmlab("vm", "clean", "tl1", home=home)
        assert not list((home / "logs").glob("tl1.*"))


def test_timeline_errors(tmp_path: Path) -> None:
    """A bad name and a VM never started: one line, exit != 0, no traceback."""
    home = (tmp_path / "home").absolute()
    run_pvmlab("provisioner", "create", home=home)
    run_pvmlab("vm", "create", "never", "--arch", "x86_64", home=home)
    for name in ("../x", "never"):
        bad = run_pvmlab("vm", "timeline", name, home=home, check=False)
        assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "no timed console record" in bad.stderr
