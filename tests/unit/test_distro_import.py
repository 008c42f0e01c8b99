"""`distro import` / `ls` / `rm`: files copied with their SHA-256, atomically, and bad input refused
with one line and the lab untouched."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from conftest import run_pvmlab
from pvmlab.assets import distro
from pvmlab.errors import StateError, ValidationError
from pvmlab.home import LabHome
from pvmlab.records import store


def _files(tmp_path: Path, tag: str = "a") -> tuple[Path, Path]:
    k, i = tmp_path / f"vmlinuz-{tag}", tmp_path / f"initrd-{tag}"
    k.write_bytes(os.urandom(300_000) + tag.encode())
    i.write_bytes(os.urandom(200_000) + tag.encode())
    return k, i


def _tree(root: Path) -> dict[str, bytes]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_import_copies_and_records(tmp_path: Path) -> None:
    h = LabHome(tmp_path / "home")
    k, i = _files(tmp_path)
    a = distro.import_result(h, "demo", "arm64", k, i, "console=ttyAMA0 quiet").assets
    d = h.images / "demo" / "aarch64"
    assert (d / "vmlinuz").read_bytes() == k.read_bytes()
    assert (d / "initrd").read_bytes() == i.read_bytes()
    assert a.kernel_sha256 == hashlib.sha256(k.read_bytes()).hexdigest()
    assert a.initrd_sha256 == hashlib.sha256(i.read_bytes()).hexdigest()
    assert (a.kernel_size, a.initrd_size) == (k.stat().st_size, i.stat().st_size)
    assert store.load_distro(h, "demo", "aarch64") == a
    assert sorted(p.name for p in d.iterdir()) == ["distro.json", "initrd", "vmlinuz"]
    assert distro.verify(h, a)
    (d / "initrd").write_bytes(b"tampered")
    assert not distro.verify(h, a)


def test_reimport_replaces(tmp_path: Path) -> None:
    h = LabHome(tmp_path / "home")
    k1, i1 = _files(tmp_path, "one")
    k2, i2 = _files(tmp_path, "two")
    distro.import_result(h, "demo", "x86_64", k1, i1, None)
    res = distro.import_result(h, "demo", "x86_64", k2, i2, "console=ttyS0")
    assert res.replaced is not None
    assert (h.images / "demo/x86_64/vmlinuz").read_bytes() == k2.read_bytes()
    assert [d.cmdline for d in distro.list_assets(h)] == ["console=ttyS0"]


@pytest.mark.parametrize("name", ["../x", "a/b", "UPPER", "", "-x", "a..b", "x\ny"])
def test_unsafe_names_refused(tmp_path: Path, name: str) -> None:
    h = LabHome(tmp_path / "home")
    k, i = _files(tmp_path)
    with pytest.raises(ValidationError):
        distro.import_result(h, name, "x86_64", k, i, None)
    assert not h.images.exists()


def test_failure_leaves_previous_import(tmp_path: Path) -> None:
    h = LabHome(tmp_path / "home")
    k, i = _files(tmp_path)
    distro.import_result(h, "demo", "x86_64", k, i, None)
    before = _tree(h.root)
    k2, _ = _files(tmp_path, "new")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    for bad in (empty, tmp_path / "missing", tmp_path):
        with pytest.raises(ValidationError):
            distro.import_result(h, "demo", "x86_64", k2, bad, None)
    with pytest.raises(ValidationError):
        distro.import_result(h, "demo", "x86_64", k2, i, "two\nlines")
    with pytest.raises(ValidationError):
        distro.import_result(h, "demo", "riscv64", k2, i, None)
    assert _tree(h.root) == before


def test_copy_error_midway_keeps_nothing_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An I/O error while copying the initrd (simulated: a disk cannot be filled on demand here)
    leaves no temporary file and the previous import intact."""
    h = LabHome(tmp_path / "home")
    k, i = _files(tmp_path)
    distro.import_result(h, "demo", "x86_64", k, i, None)
    before = _tree(h.root)
    real = distro.copy_hashed
    calls = {"n": 0}

    def failing(src: Path, tmp: Path, mode: int = 0o644) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real(src, tmp, mode)

    monkeypatch.setattr(distro, "copy_hashed", failing)
    k2, i2 = _files(tmp_path, "new")
    with pytest.raises(OSError):
        distro.import_result(h, "demo", "x86_64", k2, i2, None)
    assert _tree(h.root) == before


def test_remove(tmp_path: Path) -> None:
    h = LabHome(tmp_path / "home")
    k, i = _files(tmp_path)
    distro.import_result(h, "demo", "x86_64", k, i, None)
    distro.import_result(h, "demo", "aarch64", k, i, None)
    distro.remove(h, "demo", "x86_64")
    assert [(d.name, d.arch) for d in distro.list_assets(h)] == [("demo", "aarch64")]
    distro.remove(h, "demo", "aarch64")
    assert not (h.images / "demo").exists()
    with pytest.raises(StateError):
        distro.remove(h, "demo", "aarch64")


# --- the CLI, as a user runs it ------------------------------------------------------------


def test_cli_import_ls_rm(tmp_path: Path) -> None:
    home = tmp_path / "home"
    k, i = _files(tmp_path)
    out = run_pvmlab(
        "distro",
        "import",
        "demo",
        "--arch",
        "x86_64",
        "--kernel",
        str(k),
        "--initrd",
        str(i),
        "--cmdline",
        "console=ttyS0",
        home=home,
    ).stdout
    assert out.startswith("imported demo (x86_64)")
    assert hashlib.sha256(k.read_bytes()).hexdigest() in out
    again = run_pvmlab(
        "distro",
        "import",
        "demo",
        "--arch",
        "amd64",
        "--kernel",
        str(k),
        "--initrd",
        str(i),
        home=home,
    ).stdout
    assert again.startswith("replaced demo (x86_64)")
    rows = json.loads(run_pvmlab("distro", "ls", "--json", home=home).stdout)
    mine = [r for r in rows if r["name"] == "demo"]
    assert len(mine) == 1 and mine[0]["status"] == "imported"
    assert mine[0]["kernel_sha256"] == hashlib.sha256(k.read_bytes()).hexdigest()
    # catalog entries not pulled are listed as available
    assert {"ubuntu-24.04", "debian-12"} <= {r["name"] for r in rows if r["status"] == "available"}
    table = run_pvmlab("distro", "ls", home=home).stdout
    assert "demo" in table and "imported" in table
    installed = json.loads(run_pvmlab("distro", "ls", "--installed", "--json", home=home).stdout)
    assert [r["name"] for r in installed] == ["demo"]
    run_pvmlab("distro", "rm", "demo", "--arch", "x86_64", home=home)
    assert json.loads(run_pvmlab("distro", "ls", "--installed", "--json", home=home).stdout) == []


@pytest.mark.parametrize(
    "args",
    [
        ["distro", "import", "../x", "--arch", "x86_64", "--kernel", "K", "--initrd", "I"],
        ["distro", "import", "a/b", "--arch", "x86_64", "--kernel", "K", "--initrd", "I"],
        ["distro", "import", "ok", "--arch", "sparc", "--kernel", "K", "--initrd", "I"],
        ["distro", "import", "ok", "--arch", "x86_64", "--kernel", "MISSING", "--initrd", "I"],
        ["distro", "import", "ok", "--arch", "x86_64", "--kernel", "K"],
        ["distro", "import", "ok", "--arch", "x86_64", "--kernel", "K", "--initrd", "EMPTY"],
        ["distro", "rm", "nothere", "--arch", "x86_64"],
        ["distro", "ipxe", "--dir", "MISSING"],
        ["distro", "ipxe", "--dir", "EMPTYDIR"],
        ["distro", "ipxe", "--role", "bios"],
    ],
)
def test_cli_bad_input_one_line(tmp_path: Path, args: list[str]) -> None:
    home = tmp_path / "home"
    k, i = _files(tmp_path)
    (tmp_path / "empty").write_bytes(b"")
    subst = {
        "K": str(k),
        "I": str(i),
        "MISSING": str(tmp_path / "nope"),
        "EMPTY": str(tmp_path / "empty"),
        "EMPTYDIR": str(tmp_path),
    }
    proc = run_pvmlab(*[subst.get(a, a) for a in args], home=home, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert not home.exists(), "bad input must leave the lab untouched (here: not even created)"
    assert lines[0].startswith("pvmlab: error:")
    assert "Traceback" not in proc.stderr
    assert _tree(home / "images") == {}
