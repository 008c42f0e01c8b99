"""The host programs ``pvmlab image build`` runs, in one table, and the up-front check.

``pvmlab setup`` reports each of them (``pvmlab.doctor``), and ``build_image`` refuses before it
does anything when one it needs is missing, with the same install hint: a missing ``sfdisk``
found after minutes of mmdebstrap would leave a cached root filesystem and no image.

Which ones a build needs depends on the build: mmdebstrap (and, for another architecture,
``unshare`` and qemu-user-static with its binfmt rule, ``pvmlab.image.foreign``) only when the
root filesystem of the recipe is not cached yet.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from pvmlab.arch import Arch
from pvmlab.errors import DependencyError, PvmlabError
from pvmlab.image import foreign


@dataclass(frozen=True)
class Tool:
    program: str
    version_args: tuple[str, ...]  # how it tells its version (pvmlab setup shows it)
    package: str  # the Debian package that ships it
    role: str  # what the build uses it for
    rootfs_only: bool = False  # needed only while the root filesystem is being made
    foreign_only: bool = False  # ... and only for another architecture than the host's


TOOLS: tuple[Tool, ...] = (
    Tool("mmdebstrap", ("--version",), "mmdebstrap", "the root filesystem from packages",
         rootfs_only=True),
    Tool("unshare", ("--version",), "util-linux",
         "another arch's package scripts in a namespace of their own",
         rootfs_only=True, foreign_only=True),
    Tool("tar", ("--version",), "tar", "unpacks the root filesystem"),
    Tool("mkfs.ext4", ("-V",), "e2fsprogs", "the ext4 root, filled from a directory"),
    Tool("mkfs.vfat", ("--help",), "dosfstools", "the EFI system partition"),
    Tool("mmd", ("--version",), "mtools", "directories in the ESP, without mounting"),
    Tool("mcopy", ("--version",), "mtools", "files into the ESP, without mounting"),
    Tool("sfdisk", ("--version",), "fdisk", "the GPT, written into a plain file"),
    Tool("dd", ("--version",), "coreutils", "the partitions into the disk"),
)
QEMU_USER_PACKAGE = "qemu-user-static"


def needed(foreign_arch: bool, rootfs_cached: bool) -> list[Tool]:
    """The programs a build runs: all but the root filesystem's when it is cached, and the
    namespace helper only for a foreign architecture."""
    return [
        t for t in TOOLS
        if not (t.rootfs_only and rootfs_cached) and not (t.foreign_only and not foreign_arch)
    ]  # fmt: skip


def missing_problem(tools: list[Tool]) -> tuple[str, list[str]]:
    """The line that names what is missing, and the packages that bring it."""
    names = ", ".join(f"{t.program} ({t.package})" for t in tools)
    packages = sorted({t.package for t in tools})
    return f"image build needs {names}: not found on PATH", packages


def require(arch: Arch, rootfs_cached: bool) -> None:
    """Raise DependencyError (one line, the install command as hint) unless every program
    this build runs is there; for a foreign arch with no cached root, qemu-user too."""
    from pvmlab.doctor import DEPS_SCRIPT, install_hint

    emulated = foreign.needs_emulation(arch)
    missing = [t for t in needed(emulated, rootfs_cached) if shutil.which(t.program) is None]
    if missing:
        problem, packages = missing_problem(missing)
        raise DependencyError(
            problem, install_hint(" ".join(packages), note=f"or {DEPS_SCRIPT} installs all")
        )
    if emulated and not rootfs_cached:
        try:
            foreign.find_rule(arch)
        except PvmlabError as exc:
            raise DependencyError(
                exc.problem, install_hint(QEMU_USER_PACKAGE, note=f"or {DEPS_SCRIPT} installs all")
            ) from None
