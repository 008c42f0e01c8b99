"""Accelerator choice: flag, environment, probing, and clear errors for impossible choices."""

from __future__ import annotations

import pytest

from pvmlab.errors import StateError, ValidationError
from pvmlab.qemu.accel import choose, host_arch, kvm_usable


def ok() -> tuple[bool, str]:
    return True, "/dev/kvm is usable"


def no() -> tuple[bool, str]:
    return False, "/dev/kvm does not exist"


def test_host_arch_normalised() -> None:
    assert host_arch("arm64") == "aarch64"
    assert host_arch("AMD64") == "x86_64"
    assert host_arch("x86_64") == "x86_64"


def test_flag_wins_over_env() -> None:
    a = choose(
        "x86_64", "tcg", env={"PVMLAB_ACCEL": "kvm"}, host="x86_64", system="Linux", probe_kvm=ok
    )
    assert (a.name, a.reason) == ("tcg", "asked for with --accel")


def test_env_used_without_flag() -> None:
    a = choose(
        "x86_64", None, env={"PVMLAB_ACCEL": "TCG"}, host="x86_64", system="Linux", probe_kvm=ok
    )
    assert (a.name, a.reason) == ("tcg", "set by PVMLAB_ACCEL")


def test_kvm_when_usable_and_same_arch() -> None:
    a = choose("x86_64", None, env={}, host="x86_64", system="Linux", probe_kvm=ok)
    assert a.name == "kvm"


def test_tcg_when_kvm_unusable_says_why() -> None:
    a = choose("x86_64", None, env={}, host="x86_64", system="Linux", probe_kvm=no)
    assert str(a) == "accelerator: tcg (/dev/kvm does not exist)"


def test_foreign_arch_is_tcg() -> None:
    a = choose("aarch64", None, env={}, host="x86_64", system="Linux", probe_kvm=ok)
    assert str(a) == "accelerator: tcg (guest aarch64 on x86_64 host)"


def test_hvf_on_macos_same_arch() -> None:
    a = choose("aarch64", None, env={}, host="arm64", system="Darwin", probe_kvm=no)
    assert a.name == "hvf"
    assert choose("x86_64", None, env={}, host="arm64", system="Darwin").name == "tcg"


@pytest.mark.parametrize(
    ("guest", "requested", "system", "probe", "message"),
    [
        ("aarch64", "kvm", "Linux", ok, "kvm cannot run a aarch64 guest on this x86_64 host"),
        ("x86_64", "kvm", "Linux", no, "KVM is not usable: /dev/kvm does not exist"),
        ("x86_64", "hvf", "Linux", ok, "HVF exists only on macOS"),
        ("x86_64", "kvm", "Darwin", ok, "KVM exists only on Linux"),
    ],
)
def test_impossible_explicit_choice_is_an_error(
    guest: str, requested: str, system: str, probe: object, message: str
) -> None:
    with pytest.raises(StateError, match=message):
        choose(guest, requested, env={}, host="x86_64", system=system, probe_kvm=probe)  # type: ignore[arg-type]


@pytest.mark.parametrize(("flag", "env"), [("xen", {}), (None, {"PVMLAB_ACCEL": "fast"})])
def test_unknown_accel_is_validation_error(flag: str | None, env: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="unknown accelerator"):
        choose("x86_64", flag, env=env, host="x86_64", system="Linux", probe_kvm=ok)


def test_kvm_probe_on_missing_device(tmp_path: object) -> None:
    usable, reason = kvm_usable("/nonexistent/kvm")
    assert not usable and "does not exist" in reason
