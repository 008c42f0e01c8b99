"""The KVM probe on this host, for real: it reaches a definite verdict, and `vm start` without
``--accel`` then boots an x86_64 target under the accelerator that verdict allows.

Whether KVM works here is not assumed either way (on this project's CI host /dev/kvm opens but
guests die): the test guest is first run under TCG, where it must run to its end, so a failure
under KVM is KVM's and not the guest's.
"""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path

import pytest

from bootlab import cleaned_lab, import_distro
from conftest import needs, run_pvmlab
from fixtures.bootassets import MARKER, BootAssets
from pvmlab.qemu import accel, kvmprobe

pytestmark = [
    pytest.mark.integration,
    needs("qemu-system-x86_64"),
    pytest.mark.skipif(platform.machine() != "x86_64", reason="an x86_64 host's KVM"),
]


def test_probe_gives_a_definite_verdict(tmp_path: Path) -> None:
    sound = kvmprobe.run_test_guest("x86_64", "tcg")
    assert sound.works, f"the test guest itself is broken: {sound.reason}"

    v = kvmprobe.verdict("x86_64", cache_dir=tmp_path / "run", refresh=True)
    print(f"\nKVM verdict here: works={v.works} after {v.seconds:.2f} s: {v.reason}")
    assert not v.cached
    if v.works:
        assert v.reason == "a test guest ran to its end under KVM"
    else:  # QEMU's own words, or the deadline that passed
        assert re.match(
            r"QEMU (exited with code|was killed by signal) -?\d+|QEMU's run state became "
            r"internal-error|the test guest had not finished after \d+ s",
            v.reason,
        ), v.reason
    # the guest got its deadline and was then stopped, not left running (margin: a loaded host)
    assert v.seconds < kvmprobe.DEADLINE + 30
    again = kvmprobe.verdict("x86_64", cache_dir=tmp_path / "run")
    assert again.cached and (again.works, again.reason) == (v.works, v.reason)


def test_vm_start_without_accel_boots_under_what_the_probe_allows(
    tmp_path: Path, boot_assets: dict[str, BootAssets], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PVMLAB_ACCEL", raising=False)
    device_ok, _ = accel.kvm_usable()
    verdict = kvmprobe.verdict("x86_64") if device_ok else None  # the one `vm start` reads
    expected = "kvm" if verdict is not None and verdict.works else "tcg"

    a = boot_assets["x86_64"]
    home = (tmp_path / "home").absolute()
    with cleaned_lab(home):  # a QEMU left after `pvmlab clean` fails the test
        import_distro(home, "tiny", a, a.cmdline)
        run_pvmlab(
            "vm", "create", "auto1", "--arch", "x86_64", "--firmware", "bios",
            "--distro", "tiny", home=home,
        )  # fmt: skip
        proc = run_pvmlab(
            "vm", "start", "auto1", "--wait", "--wait-for", MARKER, "--timeout", "300",
            home=home, timeout=400,
        )  # fmt: skip
        said = next(ln for ln in proc.stdout.splitlines() if ln.startswith("accelerator:"))
        print(f"\n{said}")
        assert said.startswith(f"accelerator: {expected} (")
        if device_ok and expected == "tcg":
            assert verdict is not None
            assert said == (
                f"accelerator: tcg (KVM is present but failed a test guest: {verdict.reason}"
                " (tested earlier in this boot of the host); using TCG)"
            )
        console = (home / "logs" / "auto1.log").read_text(errors="replace")
        assert MARKER in console, console[-2000:]
        rows = json.loads(run_pvmlab("vm", "list", "--json", home=home).stdout)
        assert [(r["name"], r["accel"]) for r in rows] == [("auto1", expected)]
