"""A lab file's SSH readiness, for real: ``ready = { console, ssh, expect }`` with the dropbear
network initramfs (tests/fixtures/bootassets.py) taking the lab's key. `pvmlab test` passes the
machine whose command prints what ``expect`` asks and fails, in JUnit, the one whose does not,
naming the SSH step; `pvmlab up --wait` waits the same way (``labfile.run.boot_until_ready``).
Booting the same machines again (up after test) also proves a new host key per boot is taken.
SeaBIOS under TCG; the timeouts only bound a failure."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import run_pvmlab
from fixtures.bootassets import NET_MARKERS, BootAssets, export, with_authorized_key
from pvmlab.home import LabHome
from pvmlab.vm import ssh

pytestmark = pytest.mark.integration

LAB = "sshready"
HEAD = f"""\
name = "{LAB}"

[provisioner]
address = "192.168.123.1/24"

[[distros]]
name = "net"
arch = "x86_64"
kernel = "assets/x86_64/vmlinuz"
initrd = "assets/x86_64/initrd"
cmdline = "{{cmdline}} pvmlab.quiet"
"""


def machine(name: str, expect: str) -> str:
    """A machine of the network variant, ready once ``cat /etc/hostname`` prints ``expect``."""
    return f"""
[[machines]]
name = "{name}"
arch = "x86_64"
firmware = "bios"
distro = "net"
memory = 512
ready.console = "{NET_MARKERS['net']}"
ready.ssh = "cat /etc/hostname"
ready.expect = "{expect}"
ready.timeout = 300
"""


def lab_file(cmdline: str, bad_expects: str) -> str:
    return HEAD.format(cmdline=cmdline) + machine("good", "^good$") + machine("bad", bad_expects)


def test_ssh_readiness_of_a_lab_file(
    tmp_path: Path, labs: Path, net_boot_assets: BootAssets
) -> None:
    # the lab's key first (the home a lab file gets), so the guests' initramfs can accept it
    home = LabHome(labs / LAB)
    ssh.ensure_key(home)
    keyed = with_authorized_key(
        net_boot_assets, home.ssh_public_key.read_text(), tmp_path / "keyed"
    )
    lab_dir = tmp_path / "lab"
    export(keyed, lab_dir / "assets")
    lab = lab_dir / "lab.toml"
    lab.write_text(lab_file(keyed.cmdline, "NEVER"))

    junit = tmp_path / "junit.xml"
    proc = run_pvmlab("test", "-f", str(lab), "--junit", str(junit), check=False, timeout=900)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "1 passed, 1 failed", proc.stdout
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert cases["good"].find("failure") is None
    failure = cases["bad"].find("failure")
    assert failure is not None
    message = failure.get("message") or ""
    assert message == "bad: SSH step: ssh 'cat /etc/hostname' printed 'bad', not /NEVER/"
    assert "then ssh 'cat /etc/hostname' printing /NEVER/" in (failure.text or "")

    # up --wait: the same condition; the machines come up again (new host keys) and the one
    # whose output does not match is named in one error line
    up = run_pvmlab("up", "-f", str(lab), "--wait", check=False, timeout=900)
    assert up.returncode == 1, up.stdout + up.stderr
    errors = [ln for ln in up.stderr.splitlines() if ln.startswith("pvmlab: error: ")]
    assert len(errors) == 1, up.stderr
    assert errors[0].startswith(
        "pvmlab: error: not ready: bad: SSH step: ssh 'cat /etc/hostname' printed 'bad', "
        "not /NEVER/ (hint: "
    ), up.stderr
    assert "machine good: ready after " in up.stderr
    answer = run_pvmlab("vm", "ssh", "good", "--", "cat", "/etc/hostname", home=home.root).stdout
    assert answer == "good\n"

    # once the file asks for what the guest prints, up --wait succeeds (both running: nothing
    # to start, so nothing to wait for) and test passes both
    lab.write_text(lab_file(keyed.cmdline, "^bad$"))
    proc = run_pvmlab("test", "-f", str(lab), "--junit", str(junit), check=False, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "2 passed, 0 failed"
    run_pvmlab("down", "-f", str(lab))
