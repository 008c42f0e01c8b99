"""The KVM probe: its test guests really run (under TCG, which works everywhere), its verdicts
are judged from what QEMU says, and a verdict is kept for one boot of the host only.

Whether KVM itself works here is the integration test's business
(tests/integration/test_kvm_probe.py).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import needs
from pvmlab import arch
from pvmlab.qemu import kvmprobe

SOURCE = Path(kvmprobe.__file__).parent / "testguest-x86_64.S"

# What QEMU 7.2 printed on this project's CI host, whose KVM is broken two ways.
STDERR_INTERNAL_ERROR = """\
qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.01H:ECX.pni [bit 0]
KVM internal error. Suberror: 1
extra data[0]: 0x0000000000000001
emulation failure
EAX=00000000 EBX=00807000 ECX=00000001 EDX=00807154
"""
STDERR_ABORT = """\
qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69
qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion failed.
"""


@needs("as", "ld")
def test_the_x86_64_guest_is_its_assembly_source(tmp_path: Path) -> None:
    obj, image = tmp_path / "g.o", tmp_path / "g.bin"
    subprocess.run(["as", "--64", "-o", str(obj), str(SOURCE)], check=True)
    subprocess.run(
        ["ld", "-m", "elf_x86_64", "-e", "0xFFFF0000", "-Ttext=0xFFFF0000", "--oformat",
         "binary", "-o", str(image), str(obj)],
        check=True,
    )
    assert image.read_bytes() == arch.architecture("x86_64").test_guest.image


@needs("qemu-system-x86_64")
def test_x86_64_guest_runs_to_its_end_under_tcg() -> None:
    v = kvmprobe.run_test_guest("x86_64", "tcg")
    assert (v.works, v.reason) == (True, "a test guest ran to its end under TCG")
    assert not v.cached


@needs("qemu-system-aarch64")
def test_aarch64_guest_powers_off_under_tcg() -> None:
    v = kvmprobe.run_test_guest("aarch64", "tcg")
    assert (v.works, v.reason) == (True, "a test guest ran to its end under TCG")


@needs("qemu-system-x86_64")
def test_a_guest_that_has_not_finished_by_the_deadline_is_a_failure() -> None:
    v = kvmprobe.run_test_guest("x86_64", "tcg", deadline=0)
    assert not v.works
    assert v.reason.startswith("the test guest had not finished after 0 s (QEMU run state: ")


def test_argv_of_the_x86_64_guest_under_kvm(tmp_path: Path) -> None:
    assert kvmprobe.argv("x86_64", "kvm", tmp_path / "g.bin", tmp_path / "q.sock") == [
        "qemu-system-x86_64",
        "-accel", "kvm",
        "-machine", "pc",
        "-cpu", "host",
        "-m", "64",
        "-nodefaults",
        "-display", "none",
        "-bios", f"{tmp_path}/g.bin",
        "-qmp", f"unix:{tmp_path}/q.sock,server=on,wait=off",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=0x01",
    ]  # fmt: skip


def test_argv_of_the_aarch64_guest_under_tcg(tmp_path: Path) -> None:
    assert kvmprobe.argv("aarch64", "tcg", tmp_path / "g.bin", tmp_path / "q.sock") == [
        "qemu-system-aarch64",
        "-accel", "tcg",
        "-machine", "virt",
        "-cpu", "max",
        "-m", "64",
        "-nodefaults",
        "-display", "none",
        "-bios", f"{tmp_path}/g.bin",
        "-qmp", f"unix:{tmp_path}/q.sock,server=on,wait=off",
    ]  # fmt: skip


def test_qemus_complaint_is_its_error_lines_without_warnings() -> None:
    assert kvmprobe._complaint(STDERR_INTERNAL_ERROR, "qemu-system-x86_64") == (
        "KVM internal error. Suberror: 1; emulation failure"
    )
    assert kvmprobe._complaint(STDERR_ABORT, "qemu-system-x86_64") == (
        "error: failed to set MSR 0x10a to 0x69; ../../target/i386/kvm/kvm.c:3183: "
        "kvm_buf_set_msrs: Assertion failed."
    )


# --- the cache -------------------------------------------------------------------------------

KEY = {"boot_id": "b1", "qemu": "/usr/bin/qemu-system-x86_64", "qemu_size": 1, "qemu_mtime_ns": 2}
BROKEN = kvmprobe.Verdict("x86_64", "kvm", False, "QEMU was killed by signal 6", 0.05)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "run-pvmlab"


def test_a_kept_verdict_is_believed_for_the_same_boot_and_qemu(cache: Path) -> None:
    kvmprobe.save(cache, BROKEN, KEY)
    assert cache.stat().st_mode & 0o777 == 0o700
    got = kvmprobe.load(cache, "x86_64", KEY)
    assert got == kvmprobe.Verdict("x86_64", "kvm", False, "QEMU was killed by signal 6", 0.05,
                                   cached=True)
    assert kvmprobe.load(cache, "x86_64", {**KEY, "boot_id": "b2"}) is None  # rebooted
    assert kvmprobe.load(cache, "x86_64", {**KEY, "qemu_mtime_ns": 3}) is None  # QEMU updated
    assert kvmprobe.load(cache, "aarch64", KEY) is None


def test_a_cache_others_can_write_is_not_believed(cache: Path) -> None:
    kvmprobe.save(cache, BROKEN, KEY)
    cache.chmod(0o777)
    assert kvmprobe.load(cache, "x86_64", KEY) is None
    kvmprobe.save(cache, BROKEN, {**KEY, "boot_id": "b2"})  # and nothing is written into it
    cache.chmod(0o700)
    assert kvmprobe.load(cache, "x86_64", KEY) is not None


def test_a_symlinked_or_damaged_verdict_is_not_believed(cache: Path, tmp_path: Path) -> None:
    kvmprobe.save(cache, BROKEN, KEY)
    target = cache / "kvm-x86_64.json"
    elsewhere = tmp_path / "planted.json"
    elsewhere.write_text(target.read_text())
    target.unlink()
    target.symlink_to(elsewhere)
    assert kvmprobe.load(cache, "x86_64", KEY) is None
    target.unlink()
    target.write_text("{not json")
    assert kvmprobe.load(cache, "x86_64", KEY) is None
    target.write_text(json.dumps({"key": KEY, "verdict": {"works": "yes"}}))
    assert kvmprobe.load(cache, "x86_64", KEY) is None


def test_boot_id_is_read_from_the_kernel() -> None:
    bid = kvmprobe.boot_id()
    assert bid is not None and len(bid) == 36  # a UUID, new at every boot
    assert kvmprobe.boot_id(Path("/nonexistent")) is None


@needs("qemu-system-x86_64")
def test_verdict_is_tested_once_then_recalled(cache: Path) -> None:
    first = kvmprobe.verdict("x86_64", cache_dir=cache)
    assert not first.cached and first.reason
    again = kvmprobe.verdict("x86_64", cache_dir=cache)
    assert again.cached
    assert (again.works, again.reason) == (first.works, first.reason)
    fresh = kvmprobe.verdict("x86_64", cache_dir=cache, refresh=True)
    assert not fresh.cached and fresh.works == first.works
