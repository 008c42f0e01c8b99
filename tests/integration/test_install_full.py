"""A whole unattended install, end to end (slow: tens of minutes under TCG; opt-in with
``-m slow``, see README "Unattended installs").

Debian 12 from the real archive (``deb.debian.org``, reached through the lab's uplink). The
archive's ``installer-amd64`` image tree is not served to these machines (404), so `distro pull`
takes the netboot installer from the package ``debian-installer-12-netboot-amd64`` (apt's client,
cached as in test_distro_installer.py) served in the mirror layout from 127.0.0.1; everything
the installer fetches itself comes from deb.debian.org. `vm create --unattended` gives the
shipped preseed, the
machine (x86_64, UEFI, TCG, a disk) PXE-boots the installer, which installs a minimal system with
openssh-server, posts ``installed`` to the lab's status URL from its late_command and reboots; the
next PXE boot's per-MAC script hands over to the disk, and `vm ssh NAME -- cat /etc/hostname`
prints the VM's name (the lab's key, put in root's authorized_keys by the preseed).

The test prints a timeline (console milestones, status posts) for docs/performance.md.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootlab import cleaned_lab, pull_debian_installer, qemu_pids
from conftest import REPO, run_pvmlab
from pvmlab.home import LabHome
from pvmlab.observe import console as pvconsole
from pvmlab.stack import installcfg
from pvmlab.vm import ssh

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "deb1"
INSTALL_TIMEOUT = 3 * 3600  # TCG on a shared 2-core host; the test is opt-in
SSH_TIMEOUT = 900
# What d-i shows on the serial console as it goes (first appearance of each is recorded).
MILESTONES = [
    ("preseed read", re.compile(r"PVMLAB-PRESEED-OK")),
    ("mirror check", re.compile(r"Checking the Debian archive mirror")),
    ("partitioning", re.compile(r"Partitioning disks|Starting up the partitioner")),
    ("base system", re.compile(r"Installing the base system")),
    ("apt setup", re.compile(r"Configuring apt|Configure the package manager")),
    ("software", re.compile(r"Select and install software")),
    ("grub", re.compile(r"Installing GRUB|Install the GRUB boot loader")),
    ("finishing", re.compile(r"Finishing the installation")),
    ("disk handover", re.compile(r"is installed, booting its local disk")),
    ("installed system login", re.compile(r"login:")),
]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Path]:
    home = (tmp_path / "home").absolute()
    run_pvmlab("setup", home=home, check=False)  # the lab's SSH key, which the preseed carries
    with cleaned_lab(home, "--uplink"):
        yield home


class Timeline:
    """Seconds since the start at which each milestone first showed on the console."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.t0 = time.monotonic()
        self.seen: dict[str, float] = {}

    def poll(self) -> str:
        text = pvconsole.clean(self.log.read_text(errors="replace")) if self.log.exists() else ""
        now = round(time.monotonic() - self.t0, 1)
        for label, pattern in MILESTONES:
            if label not in self.seen and pattern.search(text):
                self.seen[label] = now
        return text

    def mark(self, label: str) -> None:
        self.seen.setdefault(label, round(time.monotonic() - self.t0, 1))

    def lines(self) -> list[str]:
        order = sorted(self.seen.items(), key=lambda item: item[1])
        return [f"{t:8.1f} s  {label}" for label, t in order]


def screen(text: str) -> str:
    """The last installer dialog on the console, as plain words (box drawing dropped), and the
    last component d-i was fetching before it."""
    at = text.rfind("[!!]")
    tail = text[at:][:2000] if at >= 0 else text[-2000:]
    words = re.sub(r"\(0[^(]*\(B", " ", tail).split()  # (0..(B: box drawing mode
    said = " ".join(w for w in words if not re.fullmatch(r"\(?[lqkxmjtu]+(\(B)?", w))
    fetched = re.findall(r"Retrieving ([\w.+-]+)", text[: max(at, 0)] or text)
    return said + (f" (last component fetched: {fetched[-1]})" if fetched else "")


def test_debian_12_unattended_install_to_ssh(
    tmp_path: Path,
    lab: Path,
    debian_installer: tuple[bytes, bytes],
    record_property: pytest.RecordProperty,
) -> None:
    home = LabHome(lab)
    pull_debian_installer(lab, debian_installer, tmp_path / "srv")  # tests/fixtures/plugin.py
    vm = json.loads(
        run_pvmlab(
            "vm", "create", NAME, "--arch", "x86_64", "--firmware", "uefi",
            "--distro", "debian-12", "--memory", "1024", "--disk-size", "6G", "--unattended",
            "--json", home=lab,
        ).stdout
    )  # fmt: skip
    assert vm["install"] == "preseed"
    log = lab / "logs" / f"{NAME}.log"
    timeline = Timeline(log)
    proc = subprocess.run(
        [sys.executable, "-m", "pvmlab.cli.main", "--home", str(lab),
         "vm", "start", NAME, "--accel", "tcg"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr

    deadline = time.monotonic() + INSTALL_TIMEOUT
    spec = ssh.target(home, NAME)
    while True:
        text = timeline.poll()
        if installcfg.is_installed(home, NAME):
            timeline.mark("status: installed")
            break
        # priority=critical: any dialog d-i shows ("[!!] ...") is an error it cannot answer
        if "[!!]" in text:
            pytest.fail(
                f"the installer stopped at an error: {screen(text)}\ntimeline:\n"
                + "\n".join(timeline.lines())
            )
        assert qemu_pids(lab), "the VM stopped before it reported installed:\n" + text[-4000:]
        assert time.monotonic() < deadline, "no install within the limit:\n" + text[-4000:]
        time.sleep(5)

    # the reboot into the installed system, until SSH takes the lab key
    ready: bool | str = False
    ssh_deadline = time.monotonic() + SSH_TIMEOUT
    while ready is not True and time.monotonic() < ssh_deadline:
        ready = ssh.ssh_ready(home, spec, timeout=60)
        timeline.poll()
    timeline.mark("ssh ready")
    text = timeline.poll()
    assert ready is True, f"{ready}\n{text[-4000:]}"

    out = run_pvmlab("vm", "ssh", NAME, "--", "cat", "/etc/hostname", home=lab)
    assert out.stdout == f"{NAME}\n"
    total = round(time.monotonic() - timeline.t0, 1)

    status = installcfg.read_status(home, NAME)
    phases = [e["phase"] for e in status.get("history", [])]
    assert phases[0] == "preseed" and phases[-1] == "installed", status
    reqs = [json.loads(ln) for ln in (lab / "logs" / "http.log").read_text().splitlines()]
    mine = [(r["path"], r["status"]) for r in reqs if r.get("client") == vm["ip"]]
    mac = vm["mac"].replace(":", "-")
    assert (f"/preseed/{mac}", 200) in mine
    # two PXE boots: the installer's, then the per-MAC script handing over to the disk
    assert mine.count(("/boot.ipxe", 200)) >= 2, mine
    assert "is installed, booting its local disk" in text

    record_property("unattended_install_seconds", total)
    print("\nUnattended Debian 12 install (x86_64 UEFI, TCG), timeline:")
    print("\n".join(timeline.lines()))
    print(f"status history: {json.dumps(status.get('history', []))}")
    print(f"total to `vm ssh` answering: {total:.1f} s")
