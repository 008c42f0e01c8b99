"""iPXE first stages: search order, machine-type checks, staging into the TFTP root.

The binaries are the real ones from the system (/usr/local/lib/ipxe holds Debian 13's builds,
put there by scripts/install-system-deps.sh); the search directories are temporary ones the
tests fill, so the result does not depend on what else the machine has.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pvmlab.assets import ipxe
from pvmlab.errors import DependencyError, ValidationError
from pvmlab.home import LabHome

REAL = Path("/usr/local/lib/ipxe")
needs_real = pytest.mark.skipif(
    not (REAL / "ipxe-arm64.efi").is_file(), reason="run scripts/install-system-deps.sh first"
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LabHome:
    monkeypatch.delenv("PVMLAB_IPXE_DIR", raising=False)
    h = LabHome(tmp_path / "home")
    h.ensure()
    return h


def _sysdir(tmp_path: Path, files: dict[str, str]) -> Path:
    d = tmp_path / "sys"
    d.mkdir(exist_ok=True)
    for dst, src in files.items():
        (d / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REAL / src, d / dst)
    return d


def test_first_stage_names() -> None:
    assert ipxe.FIRST_STAGES == {
        "bios": "undionly.kpxe",
        "efi-x86_64": "ipxe-x86_64.efi",
        "efi-arm64": "ipxe-arm64.efi",
    }


@needs_real
def test_pe_machine_of_real_builds() -> None:
    assert ipxe.pe_machine(REAL / "ipxe-amd64.efi") == 0x8664
    assert ipxe.pe_machine(REAL / "ipxe-arm64.efi") == 0xAA64
    assert ipxe.pe_machine(REAL / "undionly.kpxe") is None


def test_pe_machine_rejects_garbage(tmp_path: Path) -> None:
    f = tmp_path / "x.efi"
    f.write_bytes(b"MZ" + b"\0" * 58 + b"\xff\xff\x00\x00")  # PE offset beyond the file
    assert ipxe.pe_machine(f) is None
    f.write_bytes(b"")
    assert ipxe.pe_machine(f) is None


@needs_real
def test_wrong_machine_is_never_served(tmp_path: Path, home: LabHome) -> None:
    # An arm64 build under the x86_64 names, and an x86_64 build under the arm64 name.
    d = _sysdir(
        tmp_path,
        {
            "ipxe-amd64.efi": "ipxe-arm64.efi",
            "ipxe.efi": "ipxe-arm64.efi",
            "ipxe-arm64.efi": "ipxe-amd64.efi",
            "undionly.kpxe": "ipxe-amd64.efi",
        },
    )
    found = ipxe.find_binaries(home, system_dirs=(d,))
    assert found["efi-x86_64"] is None
    assert found["bios"] is None
    # ipxe.efi here is an arm64 build, so it can serve arm64; the mislabelled file cannot.
    arm = found["efi-arm64"]
    assert arm is not None and arm.path.name == "ipxe.efi"


@needs_real
def test_preferred_names_beat_generic_ones(tmp_path: Path, home: LabHome) -> None:
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(REAL / "snponly.efi", old / "ipxe.efi")  # a valid x86_64 EFI, generic name
    new = _sysdir(tmp_path, {"ipxe-amd64.efi": "ipxe-amd64.efi"})
    found = ipxe.find_binary("efi-x86_64", home, system_dirs=(old, new))
    assert found is not None
    assert found.path == (new / "ipxe-amd64.efi").resolve()
    assert found.source == "system"


@needs_real
def test_user_dir_first_then_env(
    tmp_path: Path, home: LabHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    sysd = _sysdir(tmp_path, {"undionly.kpxe": "undionly.kpxe"})
    user = tmp_path / "user"
    user.mkdir()
    (user / "undionly.kpxe").write_bytes(b"\xfa" + b"user build" * 10)
    assert ipxe.set_user_dir(home, user) == user.resolve()
    b = ipxe.find_binary("bios", home, system_dirs=(sysd,))
    assert b is not None and b.source == "user-dir" and b.path == (user / "undionly.kpxe")

    env = tmp_path / "env"
    env.mkdir()
    (env / "undionly.kpxe").write_bytes(b"\xfa" + b"env build" * 10)
    monkeypatch.setenv("PVMLAB_IPXE_DIR", str(env))
    b = ipxe.find_binary("bios", home, system_dirs=(sysd,))
    assert b is not None and b.path == (env / "undionly.kpxe").resolve()

    monkeypatch.delenv("PVMLAB_IPXE_DIR")
    ipxe.set_user_dir(home, None)
    b = ipxe.find_binary("bios", home, system_dirs=(sysd,))
    assert b is not None and b.source == "system"


def test_set_user_dir_refuses_useless_dirs(tmp_path: Path, home: LabHome) -> None:
    with pytest.raises(ValidationError, match="not a directory"):
        ipxe.set_user_dir(home, tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValidationError, match="no usable iPXE binary"):
        ipxe.set_user_dir(home, empty)
    assert not (home.root / "ipxe.json").exists()


@needs_real
def test_stage_into_copies_once_and_names_missing(tmp_path: Path, home: LabHome) -> None:
    d = _sysdir(
        tmp_path,
        {
            "undionly.kpxe": "undionly.kpxe",
            "ipxe-amd64.efi": "ipxe-amd64.efi",
            "ipxe-arm64.efi": "ipxe-arm64.efi",
        },
    )
    staged = ipxe.stage_into(home, system_dirs=(d,))
    assert sorted(b.tftp_name for b in staged) == sorted(ipxe.FIRST_STAGES.values())
    for b in staged:
        assert b.path.parent == home.tftp
        assert (
            b.path.read_bytes()
            == (
                REAL
                / {
                    "bios": "undionly.kpxe",
                    "efi-x86_64": "ipxe-amd64.efi",
                    "efi-arm64": "ipxe-arm64.efi",
                }[b.role]
            ).read_bytes()
        )
    inodes = {p.name: p.stat().st_ino for p in home.tftp.iterdir()}
    ipxe.stage_into(home, system_dirs=(d,))
    assert {p.name: p.stat().st_ino for p in home.tftp.iterdir()} == inodes  # unchanged: no copy

    (d / "ipxe-arm64.efi").unlink()
    before = sorted(p.name for p in home.tftp.iterdir())
    with pytest.raises(DependencyError) as err:
        ipxe.stage_into(LabHome(tmp_path / "other"), system_dirs=(d,))
    assert "efi-arm64 (ipxe-arm64.efi)" in err.value.problem
    assert "apt-get install ipxe" in (err.value.hint or "")
    assert sorted(p.name for p in home.tftp.iterdir()) == before
    # Narrowed to the roles a lab needs, the missing arm64 build does not matter.
    assert len(ipxe.stage_into(home, ("bios", "efi-x86_64"), system_dirs=(d,))) == 2
