"""Debian's signed network GRUB and shim: found, fetched when the host lacks them, staged.

A machine with ``--loader grub`` is served GRUB; under Secure Boot it is served shim, which loads
GRUB from its own TFTP directory. Both come from Debian packages (``pvmlab.arch.SIGNED_GRUBS``):

    x86_64   grub-efi-amd64-signed  usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed
             shim-signed            usr/lib/shim/shimx64.efi.signed
    aarch64  grub-efi-arm64-signed  usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed
             shim-signed (arm64)    usr/lib/shim/shimaa64.efi.signed

Where a file is looked for, in order: the host's installed package (``/`` + the path above),
then ``cache/loaders/<debian arch>/<package>/`` in the lab home. When neither has it, the
package is fetched with apt's ordinary client into that cache, with its own lists and state
(``pvmlab.deploy.debs.DebianArchive``: the host's sources and package database are not
touched), from the host's Debian release (``/etc/os-release``) on the mirror
``PVMLAB_DEBIAN_MIRROR`` (default deb.debian.org). apt checks the archive's signature with
Debian's keyring when it is installed.

Staged under the names the chain asks for: ``grubx64.efi`` / ``grubaa64.efi`` (shim loads that
name from the directory it came from) and ``shimx64.efi`` / ``shimaa64.efi``, each checked to be
a PE image of the right machine type before it is copied.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pvmlab.arch import Arch, SignedGrub, architecture, signed_grub
from pvmlab.assets.files import copy_atomic, sha256_file
from pvmlab.assets.ipxe import pe_machine
from pvmlab.deploy.debs import DebianArchive, mirror
from pvmlab.errors import DependencyError, PvmlabError
from pvmlab.home import LabHome, file_lock

log = logging.getLogger(__name__)

SYSTEM_ROOT = Path("/")


@dataclass(frozen=True)
class Staged:
    tftp_name: str
    source: Path
    sha256: str


def _release() -> str:
    """The host's Debian codename (the suite the packages are fetched from)."""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                value = line.split("=", 1)[1].strip().strip('"')
                if value:
                    return value
    except OSError:
        pass
    return "bookworm"


def _cache(home: LabHome, grub: SignedGrub, package: str) -> Path:
    return home.loader_cache / grub.debian_arch / package


def _fits(path: Path, arch: Arch) -> bool:
    return path.is_file() and pe_machine(path) == architecture(arch).pe_machine


def find(
    home: LabHome, arch: Arch, package: str, relpath: str, *, system_root: Path = SYSTEM_ROOT
) -> Path | None:
    """The installed or cached file of ``package``, or None."""
    grub = signed_grub(arch)
    for candidate in (system_root / relpath, _cache(home, grub, package) / relpath):
        if _fits(candidate, arch):
            return candidate
    return None


def fetch(home: LabHome, arch: Arch, package: str) -> Path:
    """Download ``package`` for ``arch``'s Debian architecture and unpack it into the cache."""
    grub = signed_grub(arch)
    dest = _cache(home, grub, package)
    archive = DebianArchive(home.loader_cache / grub.debian_arch, grub.debian_arch, _release())
    log.info("fetching %s (%s) from %s", package, grub.debian_arch, mirror())
    try:
        archive.update()
        with tempfile.TemporaryDirectory(dir=archive.root) as tmp:
            unpacked = Path(tmp) / "root"
            archive.download_and_extract(package, unpacked)
            if dest.exists():
                shutil.rmtree(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            unpacked.rename(dest)
    except (PvmlabError, RuntimeError) as exc:
        problem = exc.problem if isinstance(exc, PvmlabError) else str(exc)
        raise DependencyError(
            f"cannot fetch {package} for {grub.debian_arch}: {problem}",
            f"install it on the host (apt-get install {package}:{grub.debian_arch}) or make "
            "the Debian archive reachable (PVMLAB_DEBIAN_MIRROR names another mirror)",
        ) from exc
    return dest


def _locate(
    home: LabHome, arch: Arch, package: str, relpath: str, *, system_root: Path
) -> Path:
    found = find(home, arch, package, relpath, system_root=system_root)
    if found is not None:
        return found
    with file_lock(home.loader_cache / f".{package}.lock"):
        found = find(home, arch, package, relpath, system_root=system_root)
        if found is None:
            fetch(home, arch, package)
            found = find(home, arch, package, relpath, system_root=system_root)
    if found is None:
        raise DependencyError(
            f"{package} ({signed_grub(arch).debian_arch}) has no {relpath} for {arch}",
            f"install {package} on the host",
        )
    return found


def stage(
    home: LabHome, arch: Arch, *, secure_boot: bool, system_root: Path = SYSTEM_ROOT
) -> list[Staged]:
    """Copy GRUB (and shim under Secure Boot) into the TFTP root, only when changed."""
    grub = signed_grub(arch)
    wanted = [(grub.grub_tftp_name, grub.grub_package, grub.grub_file)]
    if secure_boot:
        wanted.append((grub.shim_tftp_name, grub.shim_package, grub.shim_file))
    home.tftp.mkdir(parents=True, exist_ok=True)
    out: list[Staged] = []
    for name, package, relpath in wanted:
        src = _locate(home, arch, package, relpath, system_root=system_root)
        digest = sha256_file(src)
        dst = home.tftp_file(name)
        if not (dst.is_file() and sha256_file(dst) == digest):
            copy_atomic(src, dst)
        out.append(Staged(tftp_name=name, source=src, sha256=digest))
    return out
