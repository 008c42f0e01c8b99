"""GRUB as the first stage: its configuration files in the TFTP root.

Debian's signed network GRUB (``pvmlab.assets.signedboot``) reads ``$prefix/grub.cfg`` with the
prefix ``(tftp,SERVER)/grub`` built in, and has no HTTP module (``insmod http`` would need an
unsigned module, which Secure Boot forbids), so everything after the firmware comes over TFTP:

    tftp/grub/grub.cfg                  the same for every machine: sources the machine's file
    tftp/grub/machines/<MAC>.cfg        per machine: kernel, initrd, command line (or exit)
    tftp/images -> ../images            kernels and initrds at the HTTP server's paths

The per-machine file is rendered from ``templates/grub/machine.cfg.j2`` with the same facts as
the per-machine iPXE script (``pvmlab.stack.bootconfig.build``: kernel, initrd, command line,
local boot once installed, or the problem that stops the boot). TFTP serves files, not
answers, so it is written when the machine starts (``vm start``), and again when an
unattended install reports the machine installed; ``vm clean`` removes it.

Every word is single-quoted for GRUB's script parser (like sh: nothing inside single quotes is
special), so no value can add a command to the file.
"""

from __future__ import annotations

import contextlib
import re

from pvmlab.home import LabHome, write_atomic
from pvmlab.records import validate
from pvmlab.records.models import LabSpec, VMSpec
from pvmlab.stack import bootconfig, render
from pvmlab.stack.bootconfig import BootConfig
from pvmlab.stack.endpoint import lab_endpoint

_PLAIN = re.compile(r"[A-Za-z0-9_./:=,+@%-]+")

_ENV = render.environment(trim_blocks=True, lstrip_blocks=True)


def quote(word: str) -> str:
    """One word for GRUB's script parser: as it is when plain, else single-quoted."""
    if _PLAIN.fullmatch(word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def render_prefix() -> str:
    return _ENV.get_template("grub/prefix.cfg.j2").render()


def render_machine(cfg: BootConfig) -> str:
    words = (cfg.cmdline or "").split()
    return _ENV.get_template("grub/machine.cfg.j2").render(cfg=cfg, words=words, q=quote)


def write_prefix(home: LabHome) -> None:
    """``tftp/grub/grub.cfg`` and the ``tftp/images`` link (made once, kept)."""
    home.grub_prefix.mkdir(parents=True, exist_ok=True)
    write_atomic(home.grub_prefix / "grub.cfg", render_prefix())
    link = home.tftp_images
    if not link.is_symlink():
        link.symlink_to("../images")


def write_machine(
    home: LabHome, lab: LabSpec, vm: VMSpec, *, base_url: str | None = None
) -> None:
    """Render ``vm``'s own GRUB configuration into the TFTP root (with the shared parts);
    ``base_url``: the HTTP server's, for install pointers on the command line."""
    write_prefix(home)
    cfg = bootconfig.build(home, vm, base_url or lab_endpoint(lab).base_url)
    path = home.grub_machine_cfg(validate.mac(vm.mac))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, render_machine(cfg))


def remove_machine(home: LabHome, mac: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        home.grub_machine_cfg(validate.mac(mac)).unlink()
