"""``tftp/autoexec.ipxe``: the script iPXE runs first when UEFI firmware started it.

iPXE built for UEFI (``ipxe-x86_64.efi``, ``ipxe-arm64.efi``, official builds since 1.21) asks
the TFTP server it was loaded from for ``autoexec.ipxe`` before anything else. When the file is
there iPXE runs it straight away; when it is not, iPXE first shows "Press Ctrl-B for the iPXE
command line..." for 2 s and only then does DHCP and the boot file it is handed. Serving this
file removes those 2 s from every UEFI network boot (measured: docs/performance.md, "Boot
overhead"). The script does what iPXE would have done: DHCP, then chain to ``boot.ipxe``, so
the rest of the chain (per-machine script, kernel, initrd) is unchanged. Legacy BIOS boots are
not affected (the NIC ROM's iPXE goes straight to DHCP and never asks for this file).

So UEFI targets no longer offer iPXE's Ctrl-B prompt (nobody sits at a lab VM's console at that
moment); a failing script returns to the firmware (``exit 1``), which tries the next device.
"""

from __future__ import annotations

from pathlib import Path

from pvmlab.home import LabHome, write_atomic
from pvmlab.records.models import LabSpec
from pvmlab.stack import render as render_env
from pvmlab.stack.endpoint import lab_endpoint

NAME = "autoexec.ipxe"


def render(lab: LabSpec) -> str:
    return (
        render_env.environment()
        .get_template("autoexec.ipxe.j2")
        .render(boot_url=lab_endpoint(lab).boot_url)
    )


def write(home: LabHome, lab: LabSpec) -> Path:
    """Write ``tftp/autoexec.ipxe`` for the lab (atomically)."""
    dest = home.tftp_file(NAME)
    home.tftp.mkdir(parents=True, exist_ok=True)
    write_atomic(dest, render(lab))
    return dest
