"""What a MAC boots: the VM that owns it, its distro's kernel and initrd, and the command line.

``boot_config(home, lab, mac)`` reads the records fresh on every call (VM and distro records
change while the stack runs; they are small JSON files), so a VM defined a second ago is served.
It returns None for a MAC no VM owns. A VM that cannot boot from the network (no distro, distro
missing for its arch, a file gone) still gets a config: ``problem`` says why, and the iPXE script
built from it prints that and exits to the next boot device.

The kernel command line is the VM's own when set, else the distro's, plus:
  - ``initrd=<name>`` naming the initrd as iPXE loads it (``initrd --name``); old iPXE builds
    under EFI do not hand the initrd to the kernel without it (lab-facts, "NIC ROM trap");
  - a serial console when none is given (``ttyAMA0`` on aarch64, ``ttyS0`` on x86_64);
  - for an unattended install, the pointer to the machine's install configuration
    (``pvmlab.stack.installcfg.kernel_args``).

Once such a machine has reported itself installed, its config says ``local_boot``: the iPXE
script then leaves the network boot for the local disk (until ``vm reinstall``). A VM made from
an image (``vm create --image``) boots the deploy ramdisk until its deploy is verified, then its
disk the same way (``pvmlab.deploy``).
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict

from pvmlab.arch import architecture
from pvmlab.errors import PvmlabError
from pvmlab.home import LabHome
from pvmlab.records import store, validate
from pvmlab.records.models import Arch, DistroAssets, Firmware, LabSpec, VMSpec
from pvmlab.stack import installcfg
from pvmlab.stack.endpoint import lab_endpoint

log = logging.getLogger(__name__)

# A file name we are willing to put into a URL and serve: no separators, no dot-dot.
_SAFE_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


class BootConfig(BaseModel):
    """One machine's network boot, as the per-MAC iPXE script and ``/config/<mac>`` show it."""

    model_config = ConfigDict(frozen=True)

    vm: str
    mac: str
    ip: str
    arch: Arch
    firmware: Firmware
    distro: str | None = None
    kernel_url: str | None = None
    initrd_url: str | None = None
    kernel_path: str | None = None  # the same files as paths below the server root (GRUB: TFTP)
    initrd_path: str | None = None
    initrd_name: str | None = None
    cmdline: str | None = None
    kernel_sha256: str | None = None
    initrd_sha256: str | None = None
    problem: str | None = None  # why this machine cannot boot from the network (None: it can)
    install: str | None = None  # unattended install kind (installcfg), when the VM has one
    local_boot: bool = False  # installed: the script boots the local disk, not the installer

    @property
    def bootable(self) -> bool:
        return self.problem is None


def find_vm(home: LabHome, mac: str) -> VMSpec | None:
    """The VM whose NIC has this (normalised) MAC; unreadable VM files are skipped and logged."""
    for name in store.vm_names(home):
        try:
            vm = store.load_vm(home, name)
        except PvmlabError as exc:  # one broken file must not stop every other machine booting
            log.warning("skipping VM %s: %s", name, exc)
            continue
        if vm.mac == mac:
            return vm
    return None


def compose_cmdline(base: str, arch: Arch, initrd_name: str) -> str:
    """The final kernel command line: ``base`` plus initrd= and a console when missing."""
    tokens = base.split()
    if not any(t.startswith("initrd=") for t in tokens):
        tokens.append(f"initrd={initrd_name}")
    if not any(t.startswith("console=") for t in tokens):
        tokens.append(f"console={architecture(arch).serial_console}")
    return " ".join(tokens)


def _file_path(distro: DistroAssets, filename: str) -> str:
    """``/images/NAME/ARCH/FILE``: the path the HTTP server serves it at, and the TFTP path
    through the TFTP root's ``images`` link (``LabHome.tftp_images``)."""
    parts = (distro.name, distro.arch, filename)
    # Names are validated plain names; "+" stays literal (a path is not a form field), so no
    # percent sign ever appears (the server refuses percent-encoded paths).
    return "/images/" + "/".join(quote(p, safe="+") for p in parts)


def _file_url(base_url: str, distro: DistroAssets, filename: str) -> str:
    return base_url.rstrip("/") + _file_path(distro, filename)


def _distro_problem(home: LabHome, vm: VMSpec) -> tuple[DistroAssets | None, str | None]:
    if vm.distro is None:
        return None, (
            f"VM {vm.name} has no distro to boot "
            f"(give it one with --distro, see `pvmlab distro ls`)"
        )
    try:
        distro = store.load_distro(home, vm.distro, vm.arch)
    except PvmlabError as exc:
        return None, f"distro {vm.distro} ({vm.arch}) has an unreadable record: {exc.problem}"
    if distro is None:
        return None, (
            f"distro {vm.distro} is not present for {vm.arch} "
            f"(import or pull it: `pvmlab distro ls` shows what is there)"
        )
    folder = store.distro_dir(home, distro.name, distro.arch)
    for role, filename in (("kernel", distro.kernel), ("initrd", distro.initrd)):
        if not _SAFE_FILE.fullmatch(filename) or ".." in filename:
            return None, f"distro {distro.name} ({distro.arch}) names an unsafe {role} file"
        if not (folder / filename).is_file():
            return None, f"the {role} of distro {distro.name} ({distro.arch}) is missing"
    return distro, None


def build(home: LabHome, vm: VMSpec, base_url: str) -> BootConfig:
    """The boot configuration of one VM (``problem`` set when it cannot boot)."""
    head = BootConfig(
        vm=vm.name, mac=vm.mac, ip=vm.address, arch=vm.arch, firmware=vm.firmware, distro=vm.distro,
        install=vm.install,
    )
    if vm.image_sha256 is not None:
        return _deploy(home, vm, head, base_url)
    if vm.install is not None and installcfg.is_installed(home, vm.name):
        return head.model_copy(update={"local_boot": True})
    distro, problem = _distro_problem(home, vm)
    if distro is None:
        return head.model_copy(update={"problem": problem})
    base = vm.cmdline if vm.cmdline is not None else distro.cmdline
    base = " ".join([base, *installcfg.kernel_args(vm, base_url)])
    cmdline = compose_cmdline(base, vm.arch, distro.initrd)
    try:
        validate.cmdline(cmdline)
    except PvmlabError as exc:
        return head.model_copy(update={"problem": f"kernel command line refused: {exc.problem}"})
    return head.model_copy(
        update={
            "kernel_url": _file_url(base_url, distro, distro.kernel),
            "initrd_url": _file_url(base_url, distro, distro.initrd),
            "kernel_path": _file_path(distro, distro.kernel),
            "initrd_path": _file_path(distro, distro.initrd),
            "initrd_name": distro.initrd,
            "cmdline": cmdline,
            "kernel_sha256": distro.kernel_sha256,
            "initrd_sha256": distro.initrd_sha256,
        }
    )


def _deploy(home: LabHome, vm: VMSpec, head: BootConfig, base_url: str) -> BootConfig:
    """An image VM: its disk once deployed, else the deploy ramdisk (``pvmlab.deploy``)."""
    from pvmlab.deploy import state

    head = head.model_copy(update={"distro": "deploy"})
    if state.is_deployed(home, vm.name):
        return head.model_copy(update={"local_boot": True})
    folder = home.deploy_ramdisk(vm.arch)
    if not (folder / "vmlinuz").is_file() or not (folder / "initrd").is_file():
        return head.model_copy(update={"problem": (
            f"the deploy ramdisk for {vm.arch} is not in the lab home "
            f"(`pvmlab vm reinstall {vm.name}` builds it)"
        )})  # fmt: skip
    base = base_url.rstrip("/") + "/deploy/ramdisk/" + vm.arch
    cmdline = compose_cmdline(state.ramdisk_cmdline(vm, base_url), vm.arch, "initrd")
    return head.model_copy(
        update={"kernel_url": f"{base}/vmlinuz", "initrd_url": f"{base}/initrd",
                "initrd_name": "initrd", "cmdline": cmdline}
    )  # fmt: skip


def boot_config(
    home: LabHome, lab: LabSpec, mac: str, *, base_url: str | None = None
) -> BootConfig | None:
    """What ``mac`` boots, or None when no VM has that MAC.

    ``mac`` is validated (any of the usual spellings; ValidationError when it is not a MAC).
    ``base_url`` is where targets reach the HTTP server (default: ``stack.endpoint``'s for the
    lab; the server passes its own, which differs only when bound elsewhere).
    """
    normalised = validate.mac(mac)
    vm = find_vm(home, normalised)
    if vm is None:
        return None
    return build(home, vm, base_url or lab_endpoint(lab).base_url)
