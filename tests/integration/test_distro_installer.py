"""End to end: the real Debian 12 installer, pulled with `distro pull` from a local mirror, PXE-
boots on an x86_64 UEFI target until its first screen shows on the serial console.

Debian's mirror is on the internet, which tests cannot reach: the installer's kernel and initrd
come from the Debian package ``debian-installer-12-netboot-amd64`` (fetched with apt's ordinary
client into the test asset cache, see tests/fixtures/bootassets.py) and are served by a local
HTTP server on 127.0.0.1 in the mirror's real layout, with a ``SHA256SUMS`` as Debian publishes it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bootlab import pull_debian_installer, wait_console
from conftest import REPO, run_pvmlab

pytestmark = pytest.mark.integration

FIRST_SCREEN = "Select a language"


@pytest.fixture
def lab(running_home: Path) -> Path:
    return running_home  # tests/conftest.py


def test_debian_installer_pxe_boots(
    tmp_path: Path,
    lab: Path,
    debian_installer: tuple[bytes, bytes],
    record_property: pytest.RecordProperty,
) -> None:
    linux, _ = debian_installer  # tests/fixtures/plugin.py
    pulled = json.loads(pull_debian_installer(lab, debian_installer, tmp_path / "srv"))
    assert pulled["kernel_size"] == len(linux) and pulled["cmdline"] == "console=ttyS0"
    vm = json.loads(
        run_pvmlab(
            "vm", "create", "di1", "--arch", "x86_64", "--firmware", "uefi",
            "--distro", "debian-12", "--memory", "1024", "--json", home=lab,
        ).stdout
    )  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable, "-m", "pvmlab.cli.main", "--home", str(lab),
            "vm", "start", "di1", "--accel", "tcg", "--wait", "--wait-for", FIRST_SCREEN,
            "--timeout", "600",
        ],
        capture_output=True, text=True, timeout=700, cwd=REPO,
    )  # fmt: skip
    wall = time.monotonic() - t0
    console = (lab / "logs" / "di1.log").read_text(errors="replace")
    assert proc.returncode == 0, proc.stdout + proc.stderr + console[-3000:]
    assert FIRST_SCREEN in console
    reqs = [json.loads(ln) for ln in (lab / "logs" / "http.log").read_text().splitlines()]
    paths = {(r["path"], r["status"]) for r in reqs if r.get("client") == vm["ip"]}
    assert ("/images/debian-12/x86_64/vmlinuz", 200) in paths
    assert ("/images/debian-12/x86_64/initrd", 200) in paths
    record_property("debian_installer_first_screen_seconds", round(wall, 1))
    print(f"\nDebian installer first screen after {wall:.1f} s (TCG, PXE, UEFI)")


PRESEED_MARK = "PVMLAB-PRESEED-OK"
# Where an unattended install stops without an uplink: the mirror check. The preseed's mirror
# is the lab's own address on a closed port (connection refused at once), so the installer
# reaches it only after its network step passed and fails there fast.
MIRROR_STEP = re.compile(r"Checking the Debian archive mirror")
MIRROR_FAILED = re.compile(r"Bad archive mirror")


def test_debian_installer_runs_unattended_from_its_preseed(
    tmp_path: Path,
    lab: Path,
    debian_installer: tuple[bytes, bytes],
    record_property: pytest.RecordProperty,
) -> None:
    """The shipped preseed, fetched per MAC from the lab, drives the real installer past the
    language, keyboard and network steps to the mirror (which needs the uplink: not here)."""
    from pvmlab.observe import console as pvconsole

    pull_debian_installer(lab, debian_installer, tmp_path / "srv")  # tests/fixtures/plugin.py
    vm = json.loads(
        run_pvmlab(
            "vm", "create", "pre1", "--arch", "x86_64", "--firmware", "uefi",
            "--distro", "debian-12", "--memory", "1024", "--disk-size", "4G", "--unattended",
            "--mirror", "http://192.168.105.1:9/debian", "--json", home=lab,
        ).stdout
    )  # fmt: skip
    assert vm["install"] == "preseed"
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable, "-m", "pvmlab.cli.main", "--home", str(lab),
            "vm", "start", "pre1", "--accel", "tcg", "--wait", "--wait-for", PRESEED_MARK,
            "--timeout", "600",
        ],
        capture_output=True, text=True, timeout=700, cwd=REPO,
    )  # fmt: skip
    log = lab / "logs" / "pre1.log"
    assert proc.returncode == 0, proc.stdout + proc.stderr + log.read_text(errors="replace")[-3000:]
    marked = time.monotonic() - t0
    mirror = wait_console(log, MIRROR_STEP, timeout=600)
    reached = time.monotonic() - t0
    failed = wait_console(log, MIRROR_FAILED, timeout=300)
    console = pvconsole.clean(log.read_text(errors="replace"))
    assert mirror is not None, console[-4000:]
    assert failed is not None, console[-4000:]
    assert FIRST_SCREEN not in console  # no language question: the preseed answered it
    assert f"{PRESEED_MARK} pre1" in console

    reqs = [json.loads(ln) for ln in (lab / "logs" / "http.log").read_text().splitlines()]
    mine = [r for r in reqs if r.get("client") == vm["ip"]]
    fetched = [(r["path"], r["status"], r.get("kind"), r.get("mac")) for r in mine]
    mac = vm["mac"]
    assert (f"/preseed/{mac.replace(':', '-')}", 200, "preseed", mac) in fetched
    # early_command reported through busybox wget's --post-data
    posted = [r for r in mine if r["method"] == "POST"]
    assert [(r["path"], r["status"], r.get("phase")) for r in posted] == [
        (f"/status/{mac.replace(':', '-')}", 200, "preseed")
    ]
    listed = json.loads(run_pvmlab("vm", "list", "--json", home=lab).stdout)
    assert [r["install"] for r in listed if r["name"] == "pre1"] == ["preseed"]
    record_property("preseed_marker_seconds", round(marked, 1))
    record_property("preseed_mirror_step_seconds", round(reached, 1))
    print(f"\nmirror failed line: {failed!r}")
    print(f"\npreseed read after {marked:.1f} s, mirror step after {reached:.1f} s (TCG, UEFI)")
