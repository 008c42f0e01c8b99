"""`vm start --wait-ssh`: the boot is ready when a real SSH server in the guest takes the lab's
key (``pvmlab.vm.boot.start_and_wait`` with ``ssh_user``), alone or after a console pattern.

The guest is the fixture's x86_64 network variant (tests/fixtures/bootassets.py): dropbear with
the lab's key as root's authorized_keys, or no SSH server with ``pvmlab.nossh``. SeaBIOS under
TCG. No uplink is needed. Nothing is timed: the timeouts only bound a failure.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootlab import net_lab, qemu_pids
from conftest import run_pvmlab
from fixtures.bootassets import NET_MARKERS, BootAssets

pytestmark = pytest.mark.integration


@pytest.fixture
def lab(tmp_path: Path, net_boot_assets: BootAssets) -> Iterator[Path]:
    """A running lab whose distro ``net`` is the network variant accepting the lab's key."""
    with net_lab(tmp_path, net_boot_assets) as running:
        yield running.home


def create(home: Path, name: str, cmdline: str) -> None:
    run_pvmlab(
        "vm", "create", name, "--arch", "x86_64", "--firmware", "bios", "--distro", "net",
        "--memory", "512", "--cmdline", cmdline, home=home,
    )  # fmt: skip


def test_wait_ssh_alone_and_after_a_console_pattern(lab: Path) -> None:
    create(lab, "s1", "pvmlab.quiet")
    out = run_pvmlab("vm", "start", "s1", "--accel", "tcg", "--wait-ssh", "--timeout", "240",
                     "--json", home=lab)  # fmt: skip
    result = json.loads(out.stdout)
    assert result["outcome"] == "ready", result
    assert result["ssh_user"] == "root" and result["pattern"] == ""
    assert result["console_elapsed"] is None and result["elapsed"] > 0
    # ready means ready: the next command gets in at once
    assert run_pvmlab("vm", "ssh", "s1", "--", "cat", "/etc/hostname", home=lab).stdout == "s1\n"
    run_pvmlab("vm", "stop", "s1", "--force", home=lab)

    # both conditions, in order: the console's marker, then SSH; the human output names both.
    # (Another VM: the fixture's dropbear makes a new host key at every boot, which the lab's
    # known_hosts would rightly refuse for s1.)
    create(lab, "s2", "pvmlab.quiet")
    said = run_pvmlab(
        "vm", "start", "s2", "--accel", "tcg", "--wait-for", NET_MARKERS["net"], "--wait-ssh",
        "--timeout", "240", home=lab,
    )  # fmt: skip
    lines = said.stdout.splitlines() + said.stderr.splitlines()
    saw = [ln for ln in lines if ln.startswith(f"s2: saw '{NET_MARKERS['net']}' after ")]
    answered = [ln for ln in lines if ln.startswith("s2: SSH as root answered after ")]
    assert saw and answered, lines
    console_s = float(saw[0].split(" after ")[1].split(" s")[0])
    ssh_s = float(answered[0].split(" after ")[1].split(" s")[0])
    assert console_s <= ssh_s


def test_wait_ssh_without_an_ssh_server_says_so_in_one_line(lab: Path) -> None:
    create(lab, "q1", "pvmlab.nossh")
    proc = run_pvmlab("vm", "start", "q1", "--accel", "tcg", "--wait-ssh", "--timeout", "60",
                      "--json", home=lab, check=False)  # fmt: skip
    assert proc.returncode == 1, proc
    result = json.loads(proc.stdout)
    assert result["outcome"] == "no_ssh", result
    assert "no SSH server answers" in result["ssh_reason"], result
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("pvmlab: error: ")]
    assert len(errors) == 1, proc.stderr
    assert "did not accept the lab's SSH key for user root within 60 s" in errors[0]
    # the console did come up: the failure is SSH's alone
    assert NET_MARKERS["nossh"] in (lab / "logs" / "q1.log").read_text(errors="replace")
    run_pvmlab("vm", "stop", "q1", "--force", home=lab)

    # a user name that cannot be one is refused before QEMU starts
    bad = run_pvmlab("vm", "start", "q1", "--wait-ssh", "--ssh-user", "Bad User", home=lab,
                     check=False)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("pvmlab: error: invalid user name")
    assert not qemu_pids(lab)
