"""The boot fixtures boot: each arch's kernel + busybox initramfs, started directly (no network)
by real QEMU under TCG with the argv pvmlab builds, prints the marker with its command line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fixtures.bootassets import MARKER, BootAssets
from pvmlab import spawn
from pvmlab.qemu.argv import QemuConfig, build_argv, machine_type
from pvmlab.qemu.firmware import find_uefi

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("arch", "firmware"), [("x86_64", "bios"), ("aarch64", "uefi")])
def test_fixture_kernel_boots_directly(
    tmp_path: Path, boot_assets: dict[str, BootAssets], arch: str, firmware: str
) -> None:
    a = boot_assets[arch]
    code = vars_copy = None
    if firmware == "uefi":
        fw = find_uefi(arch, machine_type(arch, firmware))
        code, vars_copy = fw.code, tmp_path / "vars.fd"
        shutil.copyfile(fw.vars_template, vars_copy)
    cfg = QemuConfig(
        name=f"fixture-{arch}",
        arch=arch,  # type: ignore[arg-type]
        firmware=firmware,  # type: ignore[arg-type]
        accel="tcg",
        mac="0e:00:00:00:00:01",
        tap=None,
        serial_log=tmp_path / "console.log",
        qmp_socket=tmp_path / "qmp.sock",
        pid_file=tmp_path / "qemu.pid",
        console_socket=None,
        memory_mib=512,
        uefi_code=code,
        uefi_vars=vars_copy,
        kernel=a.kernel,
        initrd=a.initrd,
        append=f"{a.cmdline} fixture-check={arch}",
    )
    spawn.run(build_argv(cfg), timeout=240)  # the guest powers off: QEMU exits by itself
    console = (tmp_path / "console.log").read_text(errors="replace")
    assert f"{MARKER} {a.cmdline} fixture-check={arch}" in console, console[-3000:]
