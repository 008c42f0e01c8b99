"""The timeline of a deploy boot (``pvmlab.deploy``), on the logs one real boot left.

``data/timeline/x86_64-uefi-deploy/`` is what ``bench.deploy --workdir`` kept of the first start
of its VM (x86_64 UEFI, TCG): OVMF PXE -> iPXE -> the deploy ramdisk -> the 50 MiB test image
streamed, verified, grown, seeded -> reboot -> PXE again, local boot -> the disk's systemd-boot
-> its kernel and initramfs (``PVMLAB-BOOT-OK … pvmlab.fromdisk``). The console record was cut
before the VM's next start, the dnsmasq and HTTP logs at the same moment; nothing was edited.
"""

from __future__ import annotations

import itertools

import pytest
from samples import timeline_case

pytestmark = pytest.mark.usefixtures("utc")  # tests/conftest.py


def test_deploy_boot_has_the_deploy_phases_in_order() -> None:
    tl, _vm = timeline_case("x86_64-uefi-deploy")
    assert [p.name for p in tl.phases] == [
        "vm-start", "firmware-dhcp", "tftp", "ipxe-start", "ipxe-dhcp", "http-script",
        "http-kernel", "http-initrd", "handover", "kernel", "deploy-instructions",
        "deploy-stream", "deploy-verify", "deploy-grow", "reboot", "disk-kernel", "ready",
    ]  # fmt: skip
    for cur, nxt in itertools.pairwise(tl.phases):
        assert cur.duration == pytest.approx(nxt.start - cur.start, abs=1e-6)
    assert tl.total == tl.phases[-1].start
    kernel = tl.phase("http-kernel")
    assert kernel is not None and kernel.detail["file"] == "vmlinuz"
    assert tl.phase("kernel").label == "deploy ramdisk kernel -> lease"  # type: ignore[union-attr]
    stream = tl.phase("deploy-stream")
    assert stream is not None and stream.detail["bytes"] == 50 * 1024 * 1024
    assert stream.detail["requests"] == ["7 image chunks"] and stream.detail["mb_per_s"] > 0
    ready = tl.phase("ready")
    assert ready is not None and "pvmlab.fromdisk" in ready.detail["line"]
    disk = tl.phase("disk-kernel")
    assert disk is not None and disk.start > tl.phase("reboot").start  # type: ignore[union-attr]
