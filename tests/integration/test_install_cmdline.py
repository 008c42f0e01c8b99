"""End to end: the NoCloud pointer ``ds=nocloud-net;s=URL`` goes through real iPXE builds (the
2019 NIC ROM under SeaBIOS, the lab's first stage under OVMF) into the guest kernel's command
line unchanged: iPXE treats ``;`` as a command separator only as a word of its own.

The guest is the test fixture's busybox initramfs, which prints its ``/proc/cmdline`` after the
boot marker and powers off.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootlab import cleaned_lab, import_distro
from conftest import REPO, run_pvmlab
from fixtures.bootassets import MARKER, BootAssets

pytestmark = pytest.mark.integration


@pytest.fixture
def lab(tmp_path: Path, boot_assets: dict[str, BootAssets]) -> Iterator[Path]:
    home = (tmp_path / "home").absolute()
    a = boot_assets["x86_64"]
    with cleaned_lab(home):
        import_distro(home, "tiny", a, a.cmdline)
        yield home


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_nocloud_pointer_reaches_the_guest_kernel(
    tmp_path: Path, lab: Path, firmware: str
) -> None:
    user_data = tmp_path / "user-data"
    user_data.write_text("#cloud-config\nhostname: {{ name }}\n")
    vm = json.loads(run_pvmlab(
        "vm", "create", "nc1", "--arch", "x86_64", "--firmware", firmware, "--distro", "tiny",
        "--user-data", str(user_data), "--json", home=lab,
    ).stdout)  # fmt: skip
    proc = subprocess.run(
        [
            sys.executable, "-m", "pvmlab.cli.main", "--home", str(lab),
            "vm", "start", "nc1", "--accel", "tcg", "--wait", "--wait-for", MARKER,
            "--timeout", "300",
        ],
        capture_output=True, text=True, timeout=400, cwd=REPO,
    )  # fmt: skip
    console = (lab / "logs" / "nc1.log").read_text(errors="replace")
    assert proc.returncode == 0, proc.stdout + proc.stderr + console[-3000:]
    line = next(ln for ln in console.splitlines() if ln.startswith(MARKER))
    mac = vm["mac"].replace(":", "-")
    image = ["vmlinuz"] if firmware == "uefi" else []  # an EFI image gets its name as argv[0]
    assert line.split() == [
        MARKER, *image, "console=ttyS0", f"ds=nocloud-net;s=http://192.168.105.1/nocloud/{mac}/",
        "initrd=initrd",
    ], line  # fmt: skip
