"""Accelerator choice: flag, environment, probing, and clear errors for impossible choices.

The device check and the KVM test guest are passed in (``probe_kvm``, ``test_kvm``), so these
tests decide on given facts; tests/unit/test_kvmprobe.py and the integration test run the real
test guest.
"""

from __future__ import annotations

import pytest

from pvmlab.arch import Arch
from pvmlab.errors import DependencyError, StateError, ValidationError
from pvmlab.qemu.accel import choose, host_arch, kvm_usable
from pvmlab.qemu.kvmprobe import Verdict


def ok() -> tuple[bool, str]:
    return True, "/dev/kvm is usable"


def no() -> tuple[bool, str]:
    return False, "/dev/kvm does not exist"


def runs(arch: Arch) -> Verdict:
    return Verdict(arch, "kvm", True, "a test guest ran to its end under KVM", 0.08)


def fails(arch: Arch) -> Verdict:
    return Verdict(arch, "kvm", False, "QEMU's run state became internal-error (x)", 0.9)


def fails_cached(arch: Arch) -> Verdict:
    return Verdict(arch, "kvm", False, "QEMU was killed by signal 6", 0.1, cached=True)


def not_called(arch: Arch) -> Verdict:
    raise AssertionError(f"the KVM test guest must not run here ({arch})")


def test_host_arch_normalised() -> None:
    assert host_arch("arm64") == "aarch64"
    assert host_arch("AMD64") == "x86_64"
    assert host_arch("x86_64") == "x86_64"
    assert host_arch("riscv64") == "riscv64"  # unknown to the table: said as uname says it


def test_riscv_host_runs_every_guest_under_tcg() -> None:
    a = choose("x86_64", None, env={}, host="riscv64", system="Linux", probe_kvm=ok,
               test_kvm=not_called)
    assert str(a) == "accelerator: tcg (guest x86_64 on riscv64 host)"


def test_flag_wins_over_env() -> None:
    a = choose(
        "x86_64", "tcg", env={"PVMLAB_ACCEL": "kvm"}, host="x86_64", system="Linux", probe_kvm=ok,
        test_kvm=not_called,
    )
    assert (a.name, a.reason) == ("tcg", "asked for with --accel")


def test_env_used_without_flag() -> None:
    a = choose(
        "x86_64", None, env={"PVMLAB_ACCEL": "TCG"}, host="x86_64", system="Linux", probe_kvm=ok
    )
    assert (a.name, a.reason) == ("tcg", "set by PVMLAB_ACCEL")


def test_kvm_when_usable_same_arch_and_the_test_guest_runs() -> None:
    a = choose("x86_64", None, env={}, host="x86_64", system="Linux", probe_kvm=ok, test_kvm=runs)
    assert a.name == "kvm"
    assert str(a) == (
        "accelerator: kvm (/dev/kvm is usable, guest arch x86_64 matches the host, "
        "a test guest ran to its end under KVM)"
    )


def test_kvm_that_fails_the_test_guest_is_not_chosen_and_the_reason_is_said() -> None:
    a = choose("x86_64", None, env={}, host="x86_64", system="Linux", probe_kvm=ok, test_kvm=fails)
    assert a.name == "tcg"
    assert a.warning is None
    assert str(a) == (
        "accelerator: tcg (KVM is present but failed a test guest: QEMU's run state became "
        "internal-error (x); using TCG)"
    )


def test_a_verdict_from_this_boot_says_so() -> None:
    a = choose(
        "aarch64", None, env={}, host="arm64", system="Linux", probe_kvm=ok, test_kvm=fails_cached
    )
    assert str(a) == (
        "accelerator: tcg (KVM is present but failed a test guest: QEMU was killed by signal 6 "
        "(tested earlier in this boot of the host); using TCG)"
    )


def test_a_test_guest_that_cannot_run_means_tcg() -> None:
    def missing(arch: Arch) -> Verdict:
        raise DependencyError("program not found: qemu-system-x86_64", "run `pvmlab setup`")

    a = choose("x86_64", None, env={}, host="x86_64", system="Linux", probe_kvm=ok,
               test_kvm=missing)
    assert str(a) == (
        "accelerator: tcg (KVM is present but failed a test guest: the test guest could not "
        "run: program not found: qemu-system-x86_64; using TCG)"
    )


def test_explicit_kvm_is_used_even_when_the_test_guest_failed_with_a_warning() -> None:
    a = choose("x86_64", "kvm", env={}, host="x86_64", system="Linux", probe_kvm=ok,
               test_kvm=fails)
    assert (a.name, a.reason) == ("kvm", "asked for with --accel")
    assert str(a) == (
        "accelerator: kvm (asked for with --accel); warning: KVM failed a test guest on this "
        "host: QEMU's run state became internal-error (x)"
    )
    env = {"PVMLAB_ACCEL": "kvm"}
    quiet = choose("x86_64", None, env=env, host="x86_64", system="Linux", probe_kvm=ok,
                   test_kvm=runs)
    assert str(quiet) == "accelerator: kvm (set by PVMLAB_ACCEL)"


def test_tcg_when_kvm_unusable_says_why() -> None:
    a = choose("x86_64", None, env={}, host="x86_64", system="Linux", probe_kvm=no,
               test_kvm=not_called)
    assert str(a) == "accelerator: tcg (/dev/kvm does not exist)"


def test_foreign_arch_is_tcg() -> None:
    a = choose("aarch64", None, env={}, host="x86_64", system="Linux", probe_kvm=ok,
               test_kvm=not_called)
    assert str(a) == "accelerator: tcg (guest aarch64 on x86_64 host)"


def test_explicit_tcg_never_runs_the_test_guest() -> None:
    a = choose("x86_64", "tcg", env={}, host="x86_64", system="Linux", probe_kvm=ok,
               test_kvm=not_called)
    assert str(a) == "accelerator: tcg (asked for with --accel)"


def test_hvf_on_macos_same_arch() -> None:
    a = choose("aarch64", None, env={}, host="arm64", system="Darwin", probe_kvm=no,
               test_kvm=not_called)
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
        choose(guest, requested, env={}, host="x86_64", system=system, probe_kvm=probe,  # type: ignore[arg-type]
               test_kvm=runs)


@pytest.mark.parametrize(("flag", "env"), [("xen", {}), (None, {"PVMLAB_ACCEL": "fast"})])
def test_unknown_accel_is_validation_error(flag: str | None, env: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="unknown accelerator"):
        choose("x86_64", flag, env=env, host="x86_64", system="Linux", probe_kvm=ok)


def test_kvm_probe_on_missing_device(tmp_path: object) -> None:
    usable, reason = kvm_usable("/nonexistent/kvm")
    assert not usable and "does not exist" in reason
