"""GRUB as the first stage, and Secure Boot through Debian's signed shim, with real firmware (TCG):

    firmware DHCP -> TFTP grubx64.efi (signed network GRUB) -> TFTP grub/grub.cfg ->
        TFTP grub/machines/<MAC>.cfg -> TFTP kernel + initrd (tftp/images link) -> marker
    Secure Boot: firmware DHCP -> TFTP shimx64.efi -> shim: TFTP grubx64.efi -> ... (the same)

The Secure Boot guest is the fixture kernel (Debian's signed linux-image package) with an initramfs
whose /init also reports what the kernel found (``secureboot: Secure boot enabled``). The
refusal case serves the lab's unsigned iPXE to a Secure Boot machine: the firmware refuses it and
`vm start --wait` says so at once. Each test has its own lab home and cleans it up.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bootlab import boot_seconds, dhcp_serials, dnsmasq_log, exchange, start_cmd, vm_lab
from conftest import REPO, run_pvmlab
from fixtures.bootassets import INIT_SCRIPT, MARKER, BootAssets, extra_archive

pytestmark = pytest.mark.integration

SB_MARKER = "PVMLAB-SECUREBOOT"
# Runs before the fixture's own /init (which prints MARKER and powers off): the kernel's log
# line on Secure Boot, read with busybox's dmesg, as one marker line on the console.
SB_INIT = f"""#!/bin/sh
/bin/busybox mkdir -p /proc
/bin/busybox mount -t proc proc /proc
bb=/bin/busybox
state=$($bb dmesg | $bb grep -o 'secureboot: Secure boot [a-z]*' | $bb head -n 1)
echo "{SB_MARKER} ${{state:-no secureboot line}}"
/bin/busybox umount /proc
exec /bin/sh /init.fixture
"""


def create(home: Path, name: str, arch: str, *options: str) -> dict[str, Any]:
    out = run_pvmlab(
        "vm", "create", name, "--arch", arch, "--distro", "tiny", *options, "--json", home=home
    ).stdout  # fmt: skip
    return json.loads(out)  # type: ignore[no-any-return]


def start(home: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(start_cmd(home, name), capture_output=True, text=True, timeout=600,
                          cwd=REPO)  # fmt: skip


def check_grub_chain(home: Path, vm: dict[str, str], first: list[str]) -> None:
    """dnsmasq served ``first`` (in order), then GRUB's configuration, the machine's own file,
    the kernel and the initrd, all over TFTP."""
    log = dnsmasq_log(home)
    serials = dhcp_serials(log, vm["mac"])
    assert serials, f"no DHCP from {vm['mac']}"
    assert "user class: iPXE" not in "\n".join(exchange(log, s) for s in serials)
    sent = re.findall(rf"dnsmasq-tftp\[\d+\]: sent {re.escape(str(home))}/tftp/(\S+) to "
                      rf"{re.escape(vm['ip'])}$", log, re.M)  # fmt: skip
    arch = vm["arch"]
    wanted = [*first, "grub/grub.cfg", f"grub/machines/{vm['mac']}.cfg",
              f"images/tiny/{arch}/vmlinuz", f"images/tiny/{arch}/initrd"]  # fmt: skip
    assert [f for f in dict.fromkeys(sent) if f in wanted] == wanted, sent


def test_x86_64_uefi_grub_first_stage(tmp_path: Path, boot_assets: dict[str, BootAssets]) -> None:
    with vm_lab(tmp_path, {"x86_64": boot_assets["x86_64"]}) as home:
        vm = create(home, "grub1", "x86_64", "--loader", "grub")
        assert vm["loader"] == "grub"
        proc = start(home, "grub1")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "first stage: grubx64.efi" in proc.stdout
        check_grub_chain(home, vm, ["grubx64.efi"])
        console = (home / "logs" / "grub1.log").read_text(errors="replace")
        assert "pvmlab: booting grub1 (x86_64 uefi) with tiny" in console
        assert re.search(rf"{MARKER} BOOT_IMAGE=/images/tiny/x86_64/vmlinuz .*pvmlab\.test=1",
                         console), console[-2000:]  # fmt: skip
        print(f"\nBOOT x86_64+uefi GRUB: marker after {boot_seconds(proc.stdout):.1f} s")


def test_aarch64_uefi_grub_first_stage(tmp_path: Path, boot_assets: dict[str, BootAssets]) -> None:
    """The arm64 signed GRUB is not installable on an amd64 host's own package database:
    pvmlab fetches the package into the lab home's cache (cache/loaders/arm64/)."""
    with vm_lab(tmp_path, {"aarch64": boot_assets["aarch64"]}) as home:
        vm = create(home, "grubarm", "aarch64", "--loader", "grub")
        proc = start(home, "grubarm")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "first stage: grubaa64.efi" in proc.stdout
        check_grub_chain(home, vm, ["grubaa64.efi"])
        console = (home / "logs" / "grubarm.log").read_text(errors="replace")
        assert re.search(rf"{MARKER} BOOT_IMAGE=/images/tiny/aarch64/vmlinuz", console)
        print(f"\nBOOT aarch64+uefi GRUB: marker after {boot_seconds(proc.stdout):.1f} s")


def secure_boot_assets(tmp_path: Path, assets: BootAssets) -> BootAssets:
    """The fixture kernel with an initramfs whose /init first reports Secure Boot."""
    initrd = tmp_path / f"sb-initrd-{assets.arch}"
    # the fixture's /init moves aside; ours reports Secure Boot, then runs it
    initrd.write_bytes(assets.initrd.read_bytes() + extra_archive(
        {"init": (SB_INIT.encode(), 0o755), "init.fixture": (INIT_SCRIPT.encode(), 0o755)}, {}
    ))  # fmt: skip
    return BootAssets(arch=assets.arch, kernel=assets.kernel, initrd=initrd,
                      console=assets.console, key=assets.key)  # fmt: skip


@pytest.mark.parametrize(
    ("arch", "shim", "grub"),
    [
        ("x86_64", "shimx64.efi", "grubx64.efi"),
        # AAVMF_CODE.ms.fd + AAVMF_VARS.ms.fd; shim and GRUB fetched for arm64; ~100 s under TCG
        pytest.param("aarch64", "shimaa64.efi", "grubaa64.efi", marks=pytest.mark.slow),
    ],
)
def test_secure_boot_shim_grub_signed_kernel(
    tmp_path: Path, boot_assets: dict[str, BootAssets], arch: str, shim: str, grub: str
) -> None:
    sb = secure_boot_assets(tmp_path, boot_assets[arch])
    with vm_lab(tmp_path, {arch: sb}) as home:
        vm = create(home, "sb1", arch, "--secure-boot")
        assert (vm["loader"], vm["secure_boot"]) == ("grub", True)  # shim and GRUB by default
        proc = start(home, "sb1")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        check_grub_chain(home, vm, [shim, grub])
        console = (home / "logs" / "sb1.log").read_text(errors="replace")
        assert "EFI stub: UEFI Secure Boot is enabled." in console
        assert f"{SB_MARKER} secureboot: Secure boot enabled" in console, console[-3000:]
        secs = boot_seconds(proc.stdout)
        print(f"\nBOOT {arch} Secure Boot shim+GRUB: marker after {secs:.1f} s")


def test_secure_boot_refuses_unsigned_ipxe(
    tmp_path: Path, boot_assets: dict[str, BootAssets]
) -> None:
    with vm_lab(tmp_path, {"x86_64": boot_assets["x86_64"]}) as home:
        vm = create(home, "refused1", "x86_64", "--secure-boot", "--loader", "ipxe")
        proc = start(home, "refused1")
        assert proc.returncode != 0, proc.stdout
        assert "the first stage is iPXE, which is not signed" in proc.stdout
        assert "firmware refused to run its first stage" in proc.stderr, proc.stderr
        assert "Access Denied" in proc.stderr and "Secure Boot" in proc.stderr
        # the chain stopped after the first stage's TFTP fetch: nothing over HTTP, no second DHCP
        log = dnsmasq_log(home)
        assert f"sent {home}/tftp/ipxe-x86_64.efi to {vm['ip']}" in log
        assert "user class: iPXE" not in log
        timeline = run_pvmlab("vm", "timeline", "refused1", home=home).stdout
        assert "TFTP first stage" in timeline and "kernel" not in timeline.split("TFTP")[1]
        assert "first stage refused" in timeline, timeline
        run_pvmlab("vm", "stop", "refused1", "--force", home=home)

