"""UEFI firmware discovery through QEMU firmware descriptors (tmp dirs + the real system's)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from pvmlab.errors import DependencyError
from pvmlab.qemu.firmware import descriptor_files, find_uefi, require_secure_boot, search_dirs


def descriptor(
    tmp: Path,
    *,
    arch: str = "x86_64",
    machines: tuple[str, ...] = ("pc-q35-*",),
    features: tuple[str, ...] = (),
    mode: str | None = None,
    device: str = "flash",
    interface: str = "uefi",
    code: str = "CODE.fd",
    nvram: str | None = "VARS.fd",
    make_files: bool = True,
) -> dict[str, Any]:
    mapping: dict[str, Any] = {
        "device": device,
        "executable": {"filename": str(tmp / code), "format": "raw"},
    }
    if nvram is not None:
        mapping["nvram-template"] = {"filename": str(tmp / nvram), "format": "raw"}
    if mode is not None:
        mapping["mode"] = mode
    if make_files:
        (tmp / code).write_bytes(b"code")
        if nvram is not None:
            (tmp / nvram).write_bytes(b"vars")
    return {
        "description": "test",
        "interface-types": [interface],
        "mapping": mapping,
        "targets": [{"architecture": arch, "machines": list(machines)}],
        "features": list(features),
        "tags": [],
    }


def write(d: Path, name: str, doc: dict[str, Any] | str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    path = d / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


@pytest.fixture
def dirs(tmp_path: Path) -> list[Path]:
    return [tmp_path / "usr", tmp_path / "etc", tmp_path / "user"]


def test_first_by_name_wins(tmp_path: Path, dirs: list[Path]) -> None:
    write(dirs[0], "60-b.json", descriptor(tmp_path, code="B.fd", nvram="BV.fd"))
    write(dirs[0], "50-a.json", descriptor(tmp_path, code="A.fd", nvram="AV.fd"))
    fw = find_uefi("x86_64", "q35", dirs=dirs)
    assert fw.code == tmp_path / "A.fd"
    assert fw.vars_template == tmp_path / "AV.fd"
    assert fw.descriptor == dirs[0] / "50-a.json"


def test_later_dir_overrides_same_name(tmp_path: Path, dirs: list[Path]) -> None:
    write(dirs[0], "60-x.json", descriptor(tmp_path, code="SYS.fd"))
    write(dirs[1], "60-x.json", descriptor(tmp_path, code="ETC.fd"))
    write(dirs[2], "60-x.json", descriptor(tmp_path, code="USER.fd"))
    assert find_uefi("x86_64", "q35", dirs=dirs).code == tmp_path / "USER.fd"
    assert descriptor_files(dirs) == [dirs[2] / "60-x.json"]


def test_empty_file_hides_lower_priority(tmp_path: Path, dirs: list[Path]) -> None:
    write(dirs[0], "60-x.json", descriptor(tmp_path, code="SYS.fd"))
    write(dirs[0], "70-y.json", descriptor(tmp_path, code="OTHER.fd"))
    write(dirs[1], "60-x.json", "")
    assert find_uefi("x86_64", "q35", dirs=dirs).code == tmp_path / "OTHER.fd"


def test_secure_boot_skipped_unless_asked(
    tmp_path: Path, dirs: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    sb = ("secure-boot", "enrolled-keys", "requires-smm")
    write(
        dirs[0], "40-secure.json", descriptor(tmp_path, code="SB.fd", nvram="SBV.fd", features=sb)
    )
    write(dirs[0], "60-plain.json", descriptor(tmp_path, code="PLAIN.fd"))
    with caplog.at_level(logging.DEBUG, logger="pvmlab.qemu.firmware"):
        assert find_uefi("x86_64", "q35", dirs=dirs).code == tmp_path / "PLAIN.fd"
    assert "40-secure.json: skipped: has enrolled-keys, requires-smm, secure-boot" in caplog.text
    assert find_uefi("x86_64", "q35", dirs=dirs, secure_boot=True).code == tmp_path / "SB.fd"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"arch": "aarch64", "machines": ("virt-*",)}, "no target for x86_64 machine q35"),
        ({"machines": ("pc-i440fx-*",)}, "no target for x86_64 machine q35"),
        ({"interface": "bios"}, "is not uefi"),
        ({"mode": "combined"}, "flash mode 'combined' is not split"),
        ({"mode": "stateless", "nvram": None}, "flash mode 'stateless' is not split"),
        ({"device": "memory"}, "device 'memory' is not flash"),
        ({"nvram": None}, "no executable or nvram-template"),
        ({"make_files": False}, "is missing"),
    ],
)
def test_unfit_descriptors_are_skipped_with_reason(
    tmp_path: Path,
    dirs: list[Path],
    caplog: pytest.LogCaptureFixture,
    kwargs: dict[str, Any],
    reason: str,
) -> None:
    write(
        dirs[0],
        "10-bad.json",
        descriptor(tmp_path, **{"code": "BAD.fd", "nvram": "BV.fd", **kwargs}),
    )
    write(dirs[0], "90-good.json", descriptor(tmp_path, code="GOOD.fd"))
    with caplog.at_level(logging.DEBUG, logger="pvmlab.qemu.firmware"):
        assert find_uefi("x86_64", "q35", dirs=dirs).code == tmp_path / "GOOD.fd"
    assert reason in caplog.text


def test_invalid_json_is_skipped(tmp_path: Path, dirs: list[Path]) -> None:
    write(dirs[0], "10-broken.json", "{not json")
    write(dirs[0], "90-good.json", descriptor(tmp_path))
    assert find_uefi("x86_64", "q35", dirs=dirs).code == tmp_path / "CODE.fd"


def test_machine_glob_matches_alias_and_concrete(tmp_path: Path, dirs: list[Path]) -> None:
    write(dirs[0], "60.json", descriptor(tmp_path, arch="aarch64", machines=("virt-*",)))
    assert find_uefi("aarch64", "virt", dirs=dirs).code == tmp_path / "CODE.fd"
    assert find_uefi("aarch64", "virt-7.2", dirs=dirs).code == tmp_path / "CODE.fd"


@pytest.mark.parametrize(("arch", "package"), [("x86_64", "ovmf"), ("aarch64", "qemu-efi-aarch64")])
def test_none_found_names_the_package(dirs: list[Path], arch: str, package: str) -> None:
    machine = "q35" if arch == "x86_64" else "virt"
    with pytest.raises(DependencyError) as exc:
        find_uefi(arch, machine, dirs=dirs)
    assert f"apt-get install {package}" in str(exc.value)


def test_search_dirs_order(tmp_path: Path) -> None:
    assert search_dirs({"XDG_CONFIG_HOME": str(tmp_path)}) == [
        Path("/usr/share/qemu/firmware"),
        Path("/etc/qemu/firmware"),
        tmp_path / "qemu" / "firmware",
    ]
    assert search_dirs({"HOME": str(tmp_path)})[-1] == tmp_path / ".config/qemu/firmware"


@pytest.mark.skipif(
    not Path("/usr/share/qemu/firmware").is_dir(), reason="no system firmware descriptors"
)
@pytest.mark.parametrize(("arch", "machine"), [("x86_64", "q35"), ("aarch64", "virt")])
def test_real_system_descriptors(arch: str, machine: str) -> None:
    """Against this machine's packages: a non-secure split-flash build whose files exist."""
    fw = find_uefi(arch, machine)
    assert fw.code.is_file() and fw.vars_template.is_file()
    doc = json.loads(fw.descriptor.read_text())
    assert "secure-boot" not in doc["features"]
    if arch == "aarch64":  # the virt machine's pflash units are 64 MiB each
        assert fw.code.stat().st_size == 64 * 1024 * 1024
        assert fw.vars_template.stat().st_size == 64 * 1024 * 1024


def test_secure_boot_needs_enrolled_keys_and_says_smm(
    tmp_path: Path, dirs: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Secure Boot without enrolled keys would not run Microsoft-signed shim: skipped."""
    write(dirs[0], "40-nokeys.json",
          descriptor(tmp_path, code="NK.fd", nvram="NKV.fd", features=("secure-boot",)))
    write(dirs[0], "50-keys.json", descriptor(
        tmp_path, code="SB.fd", nvram="SBV.fd",
        features=("secure-boot", "enrolled-keys", "requires-smm"),
    ))  # fmt: skip
    with caplog.at_level(logging.DEBUG, logger="pvmlab.qemu.firmware"):
        fw = find_uefi("x86_64", "q35", dirs=dirs, secure_boot=True)
    assert "40-nokeys.json: skipped: no enrolled-keys feature (Secure Boot asked for)" in (
        caplog.text
    )
    assert (fw.code, fw.secure_boot, fw.requires_smm) == (tmp_path / "SB.fd", True, True)


def test_no_secure_boot_firmware_is_a_clear_error(tmp_path: Path, dirs: list[Path]) -> None:
    write(dirs[0], "60-plain.json", descriptor(tmp_path, code="PLAIN.fd"))
    with pytest.raises(DependencyError) as err:
        require_secure_boot("x86_64", "q35", dirs=dirs)
    assert err.value.problem == (
        "no UEFI firmware with Secure Boot and enrolled keys for x86_64 (q35) in QEMU's "
        "firmware descriptors"
    )


@pytest.mark.skipif(
    not Path("/usr/share/qemu/firmware/40-edk2-x86_64-secure-enrolled.json").is_file(),
    reason="no Debian Secure Boot firmware descriptors",
)
@pytest.mark.parametrize(
    ("arch", "machine", "code", "nvram", "smm"),
    [
        ("x86_64", "q35", "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",  # as OVMF_CODE_4M.ms.fd
         "/usr/share/OVMF/OVMF_VARS_4M.ms.fd", True),
        # AAVMF_CODE.ms.fd is the plain build: on aarch64 the enrolled vars turn Secure Boot on
        ("aarch64", "virt", "/usr/share/AAVMF/AAVMF_CODE.fd",
         "/usr/share/AAVMF/AAVMF_VARS.ms.fd", False),
    ],
)  # fmt: skip
def test_real_secure_boot_descriptors(
    arch: str, machine: str, code: str, nvram: str, smm: bool
) -> None:
    fw = find_uefi(arch, machine, secure_boot=True)  # type: ignore[arg-type]
    assert (str(fw.code.resolve()), str(fw.vars_template), fw.requires_smm) == (code, nvram, smm)
