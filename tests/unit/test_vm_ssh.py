"""The lab's SSH key, its known_hosts, and how `vm ssh` / `vm cp` arguments become ssh and scp
command lines (real ssh-keygen; no VM, no namespace)."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from pvmlab.errors import StateError, ValidationError
from pvmlab.home import LabHome
from pvmlab.records import store
from pvmlab.records.models import LabSpec, VMSpec
from pvmlab.vm import ssh

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="no openssh-client")

VM = VMSpec(name="t1", arch="x86_64", mac="52:54:00:00:00:01", ip="192.168.105.10")


@pytest.fixture
def home(tmp_path: Path) -> LabHome:
    h = LabHome(tmp_path / "home")
    h.ensure()
    store.save_lab(h, LabSpec(address="192.168.105.1/24", dhcp_start="192.168.105.100",
                              dhcp_end="192.168.105.199"))
    store.save_vm(h, VM)
    return h


def test_the_lab_key_is_ed25519_private_to_its_owner_and_made_once(home: LabHome) -> None:
    key = ssh.ensure_key(home)
    assert key == home.ssh_key == home.root / "ssh" / "id_ed25519"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.ssh_dir.stat().st_mode) == 0o700
    pub = ssh.public_key(home)
    assert pub.startswith("ssh-ed25519 ") and pub.endswith(f" pvmlab-{home.lab_id}")
    before = key.read_bytes()
    ssh.ensure_key(home)
    assert key.read_bytes() == before


def test_forget_host_drops_only_that_address(home: LabHome) -> None:
    ssh.ensure_key(home)
    keyline = " ".join(ssh.public_key(home).split()[:2])
    home.ssh_known_hosts.write_text(f"192.168.105.10 {keyline}\n192.168.105.11 {keyline}\n")
    assert ssh.forget_host(home, "192.168.105.10") is True
    assert home.ssh_known_hosts.read_text() == f"192.168.105.11 {keyline}\n"
    assert ssh.forget_host(home, "192.168.105.10") is False
    assert not home.ssh_known_hosts.with_name("known_hosts.old").exists()


def test_forget_host_without_known_hosts_is_a_no_op(home: LabHome) -> None:
    assert ssh.forget_host(home, "192.168.105.10") is False
    assert not home.ssh_known_hosts.exists()


def test_ssh_uses_only_the_lab_key_and_known_hosts_and_checks_host_keys(home: LabHome) -> None:
    argv = ssh.ssh_argv(home, VM, "debian", ["cat", "/etc/hostname"])
    assert argv[0] == "ssh" and argv[-3:] == ["192.168.105.10", "cat", "/etc/hostname"]
    assert argv[argv.index("-l") + 1] == "debian"
    assert argv[argv.index("-F") + 1] == "/dev/null"
    assert argv[argv.index("-i") + 1] == str(home.ssh_key)
    opts = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    assert f'UserKnownHostsFile="{home.ssh_known_hosts}"' in opts
    assert "StrictHostKeyChecking=accept-new" in opts
    assert "IdentitiesOnly=yes" in opts and "BatchMode=yes" in opts
    assert not [o for o in opts if o.startswith("StrictHostKeyChecking=no")]


def test_bad_user_is_refused(home: LabHome) -> None:
    with pytest.raises(ValidationError):
        ssh.ssh_argv(home, VM, "root; rm -rf /", [])


@pytest.mark.parametrize(
    ("src", "dst", "tail"),
    [
        ("./file", "t1:/tmp/", ["./file", "root@192.168.105.10:/tmp/"]),
        ("t1:/etc/hostname", ".", ["root@192.168.105.10:/etc/hostname", "."]),
        ("t1:", "out", ["root@192.168.105.10:.", "out"]),
        ("./a:b", "t1:x", ["./a:b", "root@192.168.105.10:x"]),
    ],
)
def test_cp_marks_the_vm_side(home: LabHome, src: str, dst: str, tail: list[str]) -> None:
    plan = ssh.scp_argv(home, src, dst, "root", recursive=False)
    assert plan.vm.name == "t1"
    assert plan.argv[0] == "scp" and plan.argv[-2:] == tail
    assert "-r" not in plan.argv
    assert "-r" in ssh.scp_argv(home, src, dst, "root", recursive=True).argv


@pytest.mark.parametrize(("src", "dst"), [("a", "b"), ("t1:/a", "t1:/b")])
def test_cp_needs_exactly_one_vm_side(home: LabHome, src: str, dst: str) -> None:
    with pytest.raises(ValidationError, match="exactly one side"):
        ssh.scp_argv(home, src, dst, "root", recursive=False)


def test_cp_to_an_unknown_vm_says_so(home: LabHome) -> None:
    with pytest.raises(StateError, match="no VM named 'nosuch'"):
        ssh.scp_argv(home, "./f", "nosuch:/tmp", "root", recursive=False)


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("ssh: connect to host 192.168.105.10 port 22: Connection refused", "refused"),
        ("ssh: connect to host 192.168.105.10 port 22: No route to host", "unreachable"),
        ("ssh: connect to host 192.168.105.10 port 22: Connection timed out", "unreachable"),
        ("root@192.168.105.10: Permission denied (publickey).", "denied"),
        ("Host key verification failed.", "hostkey"),
        ("@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @", "hostkey"),
        ("Offending ED25519 key in /h/ssh/known_hosts:1", "hostkey"),
        ("cat: /nope: No such file or directory", None),
        ("Connection refused by the remote command's own peer", None),
    ],
)
def test_ssh_diagnostics_are_told_apart_from_remote_output(line: str, kind: str | None) -> None:
    assert ssh.classify(line) == kind


def test_each_failure_is_one_line_with_a_hint(home: LabHome) -> None:
    refused = ssh.failure(home, VM, "root", ["refused"], "")
    assert refused.problem == "no SSH server answers on 192.168.105.10:22 (connection refused)"
    denied = ssh.failure(home, VM, "debian", ["denied"], "")
    assert "refused the lab's SSH key for user debian" in denied.problem
    assert denied.hint is not None and "~debian/.ssh/authorized_keys" in denied.hint
    for err in (refused, denied, ssh.failure(home, VM, "root", ["hostkey"], "")):
        assert "\n" not in str(err)


def test_ssh_to_a_stopped_vm_is_refused_before_connecting(home: LabHome) -> None:
    with pytest.raises(StateError, match="VM t1 is not running") as err:
        ssh.target(home, "t1")
    assert err.value.hint is not None and "pvmlab vm start t1" in err.value.hint


def test_ssh_ready_says_why_a_stopped_vm_is_not_ready(home: LabHome) -> None:
    assert ssh.ssh_ready(home, "t1", timeout=5) == "VM t1 is not running"
