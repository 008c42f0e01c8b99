"""The lab home: layout, names derived from it, the state lock and atomic writes."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from pvmlab.errors import StateError
from pvmlab.home import SUBDIRS, LabHome, default_root, read_json, write_atomic, write_json

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
