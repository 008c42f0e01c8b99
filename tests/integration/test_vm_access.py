"""A real target VM on the lab network: its outbound access through the uplink, and `vm ssh` /
`vm cp` to a real SSH server in it.

The guest is the fixture's x86_64 network variant (tests/fixtures/bootassets.py): DHCP on
virtio-net (its hostname from the lab's reservation), ``pvmlab.fetch=URL`` fetches URL with
busybox wget and prints a marker, dropbear serves SSH with the lab's key appended to the
initrd as root's authorized_keys (``pvmlab.nossh``: no SSH server). SeaBIOS under TCG, the
fastest boot here. Nothing is timed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from bootlab import net_lab
from conftest import run_pvmlab
from fixtures.bootassets import NET_MARKERS, BootAssets
from pvmlab.home import LabHome
from pvmlab.vm import ssh

pytestmark = pytest.mark.integration


def boot(home: Path, name: str, cmdline: str, until: str, *create_args: str) -> None:
    run_pvmlab(
        "vm", "create", name, "--arch", "x86_64", "--firmware", "bios", "--distro", "net",
        "--memory", "512", "--cmdline", cmdline, *create_args, home=home,
    )  # fmt: skip
    run_pvmlab(
        "vm", "start", name, "--accel", "tcg", "--wait-for", until, "--timeout", "240", home=home
    )


def console(home: Path, name: str) -> str:
    return (home / "logs" / f"{name}.log").read_text(errors="replace")


def one_line_error(proc: object, needle: str) -> None:
    lines = proc.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert proc.returncode == 1, proc  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("pvmlab: error: "), lines
    assert needle in lines[0], lines[0]


def test_vm_with_uplink_fetches_the_archive_and_is_reached_over_ssh(
    tmp_path: Path, net_boot_assets: BootAssets, archive_release_url: str
) -> None:
    url = archive_release_url
    with net_lab(tmp_path, net_boot_assets, "--uplink") as lab:
        home = lab.home
        boot(home, "n1", f"pvmlab.fetch={url}", NET_MARKERS["ssh"])
        text = console(home, "n1")
        assert f"{NET_MARKERS['fetch_ok']} Origin: Debian" in text, text[-2000:]
        assert NET_MARKERS["fetch_failed"] not in text

        # readiness as `vm start --wait-ssh` will ask for it
        assert ssh.ssh_ready(LabHome(home), "n1", timeout=120) is True

        # a remote command: its output, and its exit code passed through
        out = run_pvmlab("vm", "ssh", "n1", "--", "cat", "/etc/hostname", home=home)
        assert out.stdout == "n1\n"
        assert run_pvmlab("vm", "ssh", "n1", "--", "exit 7", home=home, check=False
                          ).returncode == 7  # fmt: skip
        reservation = lab.refresh()["reservations"][0]
        ip, mac = str(reservation["ip"]), str(reservation["mac"])
        known = (home / "ssh" / "known_hosts").read_text()
        assert known.startswith(f"{ip} ssh-ed25519 "), known

        # vm cp both ways, byte for byte
        blob = tmp_path / "blob"
        blob.write_bytes(os.urandom(200_000) + b"\n:;'\"$(x)\n")
        run_pvmlab("vm", "cp", str(blob), "n1:/tmp/blob", home=home)
        remote_sum = run_pvmlab("vm", "ssh", "n1", "--", "sha256sum", "/tmp/blob", home=home)
        back = tmp_path / "back"
        run_pvmlab("vm", "cp", "n1:/tmp/blob", str(back), home=home)
        assert back.read_bytes() == blob.read_bytes()
        assert remote_sum.stdout.split()[0] == hashlib.sha256(blob.read_bytes()).hexdigest()

        # bad input, each one line
        one_line_error(run_pvmlab("vm", "ssh", "nosuch", "--", "true", home=home, check=False),
                       "no VM named 'nosuch'")  # fmt: skip
        one_line_error(run_pvmlab("vm", "ssh", "-l", "nobody", "n1", "--", "true", home=home,
                                  check=False), "refused the lab's SSH key for user nobody")

        # recreated: the old host key is forgotten, the new machine's is accepted. (Same MAC:
        # dnsmasq keeps the old MAC's lease of the IP after `vm clean`, so a new MAC would get
        # a dynamic address; see the report.)
        run_pvmlab("vm", "clean", "n1", home=home)
        assert ip not in (home / "ssh" / "known_hosts").read_text()
        boot(home, "n1", "pvmlab.quiet", NET_MARKERS["ssh"], "--mac", mac)
        assert run_pvmlab("vm", "ssh", "n1", "--", "hostname", home=home).stdout == "n1\n"
        second = (home / "ssh" / "known_hosts").read_text()
        assert second.startswith(f"{ip} ssh-ed25519 ") and second != known  # a new host key

        run_pvmlab("vm", "stop", "n1", "--force", home=home)
        one_line_error(run_pvmlab("vm", "ssh", "n1", "--", "true", home=home, check=False),
                       "VM n1 is not running")  # fmt: skip


def test_vm_without_uplink_cannot_fetch_and_without_sshd_is_refused(
    tmp_path: Path, net_boot_assets: BootAssets, archive_release_url: str
) -> None:
    url = archive_release_url
    with net_lab(tmp_path, net_boot_assets) as lab:
        home = lab.home
        boot(home, "q1", f"pvmlab.nossh pvmlab.fetch={url}", NET_MARKERS["nossh"])
        text = console(home, "q1")
        assert f"{NET_MARKERS['fetch_failed']} {url}" in text, text[-2000:]
        assert NET_MARKERS["fetch_ok"] not in text
        ip = str(lab.refresh()["reservations"][0]["ip"])
        one_line_error(run_pvmlab("vm", "ssh", "q1", "--", "true", home=home, check=False),
                       f"no SSH server answers on {ip}:22")  # fmt: skip
        one_line_error(run_pvmlab("vm", "cp", "q1:/etc/hostname", str(tmp_path / "h"),
                                  home=home, check=False), f"no SSH server answers on {ip}:22")
        reason = ssh.ssh_ready(LabHome(home), "q1", timeout=3)
        assert isinstance(reason, str) and "connection refused" in reason
