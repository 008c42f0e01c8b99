"""Distro boot assets in the lab home: ``images/NAME/ARCH/{vmlinuz,initrd,distro.json}``.

``import_result`` is the single way files get there (``distro import``, ``distro pull`` and
``distro import --from-image`` all end in it): both files are copied to temporary names in the
target directory and hashed while copied; only when both copies succeeded are they renamed into
place and ``distro.json`` written. An error leaves the previous import (if any) as it was.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from pvmlab.assets.files import copy_hashed, sha256_file, temp_beside
from pvmlab.assets.kernelinfo import kernel_arch
from pvmlab.errors import StateError, ValidationError
from pvmlab.home import LabHome
from pvmlab.records import store, validate
from pvmlab.records.models import Arch, DistroAssets


@dataclass(frozen=True)
class ImportResult:
    assets: DistroAssets
    replaced: DistroAssets | None


def _source_file(path: Path, what: str) -> Path:
    p = validate.existing_file(path, what)
    if p.stat().st_size == 0:
        raise ValidationError(f"{what} {str(path)!r} is empty", "give the real file")
    return p


def import_result(
    home: LabHome,
    name: str,
    arch: str,
    kernel: Path,
    initrd: Path,
    cmdline: str | None,
    *,
    source: str = "import",
    version: str | None = None,
    origin: str | None = None,
) -> ImportResult:
    """Copy a kernel and initrd into the lab home and record them; says what was replaced."""
    name = validate.distro_name(name)
    arch_v: Arch = validate.arch(arch)
    line = validate.cmdline(cmdline.strip()) if cmdline else ""
    kernel_p = _source_file(kernel, "kernel")
    initrd_p = _source_file(initrd, "initrd")
    built_for = kernel_arch(kernel_p)
    if built_for is not None and built_for != arch_v:
        raise ValidationError(
            f"kernel {str(kernel)!r} is built for {built_for}, not {arch_v}",
            f"import it with --arch {built_for}, or give the {arch_v} kernel",
        )
    target = store.distro_dir(home, name, arch_v)
    with home.locked():
        previous = store.load_distro(home, name, arch_v) if target.exists() else None
        target.mkdir(parents=True, exist_ok=True)
        kdst, idst = target / "vmlinuz", target / "initrd"
        with temp_beside(kdst) as ktmp, temp_beside(idst) as itmp:
            k = copy_hashed(kernel_p, ktmp)
            i = copy_hashed(initrd_p, itmp)
            assets = DistroAssets(
                name=name,
                arch=arch_v,
                kernel_sha256=k.sha256,
                initrd_sha256=i.sha256,
                kernel_size=k.size,
                initrd_size=i.size,
                cmdline=line,
                source=source,
                version=version,
                origin=origin if origin is not None else str(kernel_p),
            )
            ktmp.replace(kdst)
            itmp.replace(idst)
            store.save_distro(home, assets)
    return ImportResult(assets, previous)


def list_assets(home: LabHome) -> list[DistroAssets]:
    return store.load_distros(home)


def verify(home: LabHome, assets: DistroAssets) -> bool:
    """Whether the files on disk still have the recorded size and SHA-256."""
    d = store.distro_dir(home, assets.name, assets.arch)
    k, i = d / assets.kernel, d / assets.initrd
    if not (k.is_file() and i.is_file()):
        return False
    if k.stat().st_size != assets.kernel_size or i.stat().st_size != assets.initrd_size:
        return False
    return sha256_file(k) == assets.kernel_sha256 and sha256_file(i) == assets.initrd_sha256


def _not_in_lab(name: str, arch: str) -> StateError:
    return StateError(f"distro {name!r} ({arch}) is not in the lab", "see `pvmlab distro ls`")


def remove(home: LabHome, name: str, arch: str) -> DistroAssets:
    name = validate.distro_name(name)
    arch = validate.arch(arch)
    # Checked before taking the lock too: the lock file would create a home that is not there.
    if store.load_distro(home, name, arch) is None:
        raise _not_in_lab(name, arch)
    with home.locked():
        assets = store.load_distro(home, name, arch)
        if assets is None:
            raise _not_in_lab(name, arch)
        shutil.rmtree(store.distro_dir(home, name, arch))
        parent = home.distro_images(name)
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
    return assets
