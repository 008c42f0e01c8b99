"""The lab home: layout, names derived from it, the state lock and atomic writes."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from pvmlab.errors import StateError
from pvmlab.home import (
    SUBDIRS,
    LabHome,
    default_root,
    file_lock,
    open_for_writing,
    open_truncated,
    read_json,
    write_atomic,
    write_json,
)

IFNAMSIZ = 15  # longest interface name Linux accepts


def test_default_root_and_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PVMLAB_HOME", raising=False)
    assert default_root() == Path.home() / ".pvmlab"
    monkeypatch.setenv("PVMLAB_HOME", str(tmp_path / "lab"))
    assert default_root() == tmp_path / "lab"
    assert LabHome.from_env().root == tmp_path / "lab"


def test_ensure_creates_the_layout(tmp_path: Path) -> None:
    home = LabHome(tmp_path / "h")
    assert not home.exists()
    with pytest.raises(StateError, match="no lab home"):
        home.require()
    home.ensure()
    home.ensure()  # idempotent
    home.require()
    for sub in ("images", "vms", "configs", "logs", "pids", "monitors"):
        assert sub in SUBDIRS
        assert (home.root / sub).is_dir()
    assert home.vm_file("t1") == home.root / "vms" / "t1.json"
    assert home.vm_log("t1") == home.root / "logs" / "t1.log"
    assert home.vm_pid("t1").parent == home.pids
    assert home.vm_qmp("t1").parent == home.monitors


def test_names_fit_and_differ_between_homes(tmp_path: Path) -> None:
    a, b = LabHome(tmp_path / "a"), LabHome(tmp_path / "b")
    assert a.lab_id != b.lab_id
    assert a.netns != b.netns and a.bridge != b.bridge
    assert a.tap("t1") != b.tap("t1")
    assert a.tap("t1") != a.tap("t2")
    for name in (a.bridge, a.tap("t1"), a.tap("x" * 63)):
        assert len(name) <= IFNAMSIZ
        assert name.isascii() and name.isalnum()


def test_identity_follows_the_real_path(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    assert LabHome(real).lab_id == LabHome(link).lab_id  # the same lab, reached two ways
    assert LabHome(real).lab_id == LabHome(real).lab_id  # stable


def test_lock_is_exclusive(tmp_path: Path) -> None:
    home = LabHome(tmp_path / "h")
    with home.locked():
        fd = os.open(home.root / ".lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(home.root / ".lock", os.O_RDWR)  # released on the way out
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_lock_released_on_error(tmp_path: Path) -> None:
    home = LabHome(tmp_path / "h")
    with pytest.raises(RuntimeError), home.locked():
        raise RuntimeError("boom")
    with home.locked():
        pass


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.json"
    write_atomic(target, "one")
    write_atomic(target, b"two", mode=0o600)
    assert target.read_bytes() == b"two"
    assert (target.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.json"]
    write_json(target, {"a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2]}
    assert target.read_text().endswith("\n")


def test_write_atomic_failure_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_atomic(target, "old")
    with pytest.raises(TypeError):
        write_atomic(target, 42)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_read_json_gives_an_object_or_nothing(tmp_path: Path) -> None:
    f = tmp_path / "state.json"
    assert read_json(f) == {}  # missing
    write_json(f, {"pid": 7, "name": "x"})
    assert read_json(f) == {"pid": 7, "name": "x"}
    for junk in (b"", b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe"):
        f.write_bytes(junk)
        assert read_json(f) == {}


# --- one owner of the layout ----------------------------------------------------------------

LAYOUT = {
    "lab_file": "lab.json",
    "state_lock": ".lock",
    "user_catalog": "catalog.toml",
    "ipxe_settings": "ipxe.json",
    "ipxe_cache": "cache/ipxe",
    "dnsmasq_conf": "configs/dnsmasq.conf",
    "dhcp_hosts": "configs/dhcp-hosts",
    "render_lock": "configs/.render.lock",
    "dnsmasq_log": "logs/dnsmasq.log",
    "http_log": "logs/http.log",
    "supervisor_log": "logs/supervisor.log",
    "supervisor_pid": "pids/supervisor.pid",
    "stack_state": "stack/state.json",
    "network_record": "stack/network.json",
    "network_lock": "stack/.network.lock",
    "control_lock": "stack/.control.lock",
    "dnsmasq_leases": "stack/dnsmasq.leases",
    "dnsmasq_pid": "stack/dnsmasq.pid",
    "dnsmasq_stderr": "stack/dnsmasq.stderr",
    "supervisor_socket": "stack/supervisor.sock",
}

PER_VM = {
    "vm_file": "vms/t1.json",
    "vm_dir": "vms/t1",
    "vm_runtime": "vms/t1/runtime.json",
    "vm_efivars": "vms/t1/efivars.fd",
    "vm_disk": "vms/t1/disk.qcow2",
    "vm_ipxe_media": "vms/t1/ipxe-media",
    "vm_log": "logs/t1.log",
    "vm_qemu_log": "logs/t1.qemu.log",
    "vm_console_times": "logs/t1.console.jsonl",
    "vm_pid": "pids/t1.pid",
    "vm_qmp": "monitors/t1.qmp",
    "vm_console_socket": "monitors/t1.console",
}


def test_every_path_of_the_layout() -> None:
    home = LabHome(Path("/h"))
    for attr, rel in LAYOUT.items():
        assert getattr(home, attr) == Path("/h") / rel, attr
    for attr, rel in PER_VM.items():
        assert getattr(home, attr)("t1") == Path("/h") / rel, attr
    assert home.distro_images("deb") == Path("/h/images/deb")
    assert home.distro_dir("deb", "x86_64") == Path("/h/images/deb/x86_64")
    assert home.distro_file("deb", "x86_64") == Path("/h/images/deb/x86_64/distro.json")
    assert home.download_cache("deb", "x86_64", "netboot") == Path(
        "/h/cache/downloads/deb/x86_64/netboot"
    )
    assert home.tftp_file("ipxe-amd64.efi") == Path("/h/tftp/ipxe-amd64.efi")
    assert home.own_files == (Path("/h/lab.json"), Path("/h/.lock"))
    for service in ("dnsmasq", "http", "supervisor"):
        assert home.service_log(service) == Path(f"/h/logs/{service}.log")
    assert [p.name for p in home.subdirs] == list(SUBDIRS)


def test_the_stamper_writes_where_the_home_says() -> None:
    from pvmlab.observe import stamp

    home = LabHome(Path("/h"))
    assert stamp.stamps_path(home.vm_log("t1")) == home.vm_console_times("t1")


# --- ownership and modes (sshd StrictModes) --------------------------------------------------

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def test_a_safe_home_passes(tmp_path: Path) -> None:
    home = LabHome(tmp_path / "h")
    home.check_ownership()  # missing: nothing to check yet
    home.ensure()
    home.check_ownership()
    assert (home.root.stat().st_mode & 0o777) == 0o755


@needs_root
def test_a_home_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    home = LabHome(tmp_path / "h")
    home.ensure()
    os.chown(home.root, NOBODY, NOBODY)
    with pytest.raises(StateError) as info:
        home.check_ownership()
    assert info.value.problem.startswith(f"{home.root} is owned by nobody")
    assert info.value.hint is not None and f"chown -R root {home.root}" in info.value.hint
    for call in (home.ensure, home.require, home.locked):
        with pytest.raises(StateError, match="owned by nobody"):
            call()
    assert not home.state_lock.exists()  # refused before anything was written


@needs_root
def test_a_subdirectory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    home = LabHome(tmp_path / "h")
    home.ensure()
    os.chown(home.logs, NOBODY, NOBODY)
    with pytest.raises(StateError, match=f"^{home.logs} is owned by nobody"):
        home.check_ownership()


@pytest.mark.parametrize(("mode", "who"), [(0o775, "its group"), (0o757, "others")])
def test_a_home_writable_by_others_is_refused(tmp_path: Path, mode: int, who: str) -> None:
    home = LabHome(tmp_path / "h")
    home.ensure()
    home.configs.chmod(mode)
    with pytest.raises(StateError) as info:
        home.check_ownership()
    assert info.value.problem == f"{home.configs} in the lab home is writable by {who}"
    assert info.value.hint == f"`chmod go-w {home.configs}`"


def test_an_open_parent_is_refused_unless_sticky(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    home = LabHome(shared / "h")
    with pytest.raises(StateError, match=f"^{shared} is writable by group and others"):
        home.check_ownership()
    shared.chmod(0o1777)  # like /tmp: others cannot rename or remove our entries
    home.ensure()
    home.check_ownership()


def test_a_symlinked_subdirectory_is_refused(tmp_path: Path) -> None:
    home = LabHome(tmp_path / "h")
    home.ensure()
    outside = tmp_path / "outside"
    outside.mkdir()
    home.logs.rmdir()
    home.logs.symlink_to(outside)
    with pytest.raises(StateError, match=f"^{home.logs} in the lab home is a symbolic link"):
        home.check_ownership()


def test_a_home_reached_through_a_symlink_is_checked_at_its_real_place(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o777)
    real.chmod(0o777)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(StateError, match="writable by group and others"):
        LabHome(link).check_ownership()


# --- writes never follow a symlink ------------------------------------------------------------


def test_write_atomic_replaces_a_planted_link_and_leaves_its_target_alone(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    d = tmp_path / "d"
    d.mkdir()
    (d / "dnsmasq.conf").symlink_to(victim)
    write_atomic(d / "dnsmasq.conf", "port=0\n")
    assert victim.read_text() == "precious"
    assert not (d / "dnsmasq.conf").is_symlink()
    assert (d / "dnsmasq.conf").read_text() == "port=0\n"


def test_writes_into_a_symlinked_directory_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "logs").symlink_to(outside)
    with pytest.raises(StateError, match="is a symbolic link"):
        write_atomic(tmp_path / "logs" / "state.json", "{}")
    with pytest.raises(StateError, match="is a symbolic link"):
        os.close(open_for_writing(tmp_path / "logs" / "supervisor.log"))
    with pytest.raises(StateError, match="is a symbolic link"), file_lock(tmp_path / "logs" / "l"):
        pass
    assert list(outside.iterdir()) == []


def test_appends_and_locks_through_a_planted_link_are_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "supervisor.log"
    link.symlink_to(victim)
    with pytest.raises(StateError, match=f"^{link} is a symbolic link"):
        os.close(open_for_writing(link))
    with pytest.raises(StateError, match="is a symbolic link"), file_lock(link):
        pass
    with pytest.raises(StateError, match="is a symbolic link"), open_truncated(link):
        pass
    assert victim.read_text() == "precious"


def test_open_for_writing_appends(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "x.log"
    for text in (b"one\n", b"two\n"):
        fd = open_for_writing(log)
        os.write(fd, text)
        os.close(fd)
    assert log.read_bytes() == b"one\ntwo\n"
    with open_truncated(log) as fh:
        fh.write(b"new\n")
    assert log.read_bytes() == b"new\n"


@needs_root
def test_writes_into_a_directory_of_another_user_are_refused(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    os.chown(d, NOBODY, NOBODY)
    with pytest.raises(StateError, match="owned by nobody or writable by others"):
        write_atomic(d / "f", "x")
    assert list(d.iterdir()) == []
