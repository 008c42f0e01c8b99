"""Reading ext2/3/4 filesystems held in plain files, with e2fsprogs' ``debugfs``.

``debugfs`` opens a filesystem image read-only as an ordinary user (no mount), follows every
ext4 feature (extents, htree directories, inline data, 64-bit, metadata checksums) because it is
the reference implementation's own library, and is on macOS through Homebrew's ``e2fsprogs``.
A filesystem that starts inside a larger file is opened as ``FILE?offset=N`` (an io option of
e2fsprogs' unix I/O manager), so a partition of a raw disk image is read in place.

Paths are never put into a debugfs request as given: names are checked against a strict
pattern, and files are dumped to a relative name in the working directory of the debugfs
process, so no temporary path (which may contain spaces) is ever parsed by debugfs.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from pvmlab import spawn
from pvmlab.errors import DependencyError, ValidationError

SAFE_NAME = re.compile(r"[A-Za-z0-9._+~@-]+")
SAFE_PATH = re.compile(r"/(?:[A-Za-z0-9._+~@-]+/)*[A-Za-z0-9._+~@-]*")

HOMEBREW = (
    Path("/opt/homebrew/opt/e2fsprogs/sbin/debugfs"),
    Path("/usr/local/opt/e2fsprogs/sbin/debugfs"),
)


def debugfs_path() -> str:
    found = shutil.which("debugfs")
    if found:
        return found
    for p in (Path("/usr/sbin/debugfs"), Path("/sbin/debugfs"), *HOMEBREW):
        if p.is_file():
            return str(p)
    raise DependencyError(
        "debugfs (e2fsprogs) is needed to read ext4 filesystems in disk images",
        "install e2fsprogs (Debian/Ubuntu: apt-get install e2fsprogs; macOS: brew install "
        "e2fsprogs)",
    )


@dataclass(frozen=True)
class Entry:
    name: str
    mode: int
    size: int

    @property
    def is_dir(self) -> bool:
        return (self.mode & 0o170000) == 0o040000

    @property
    def is_file(self) -> bool:
        return (self.mode & 0o170000) == 0o100000

    @property
    def is_symlink(self) -> bool:
        return (self.mode & 0o170000) == 0o120000


class ExtFs:
    """An ext filesystem in ``image`` starting at byte ``offset``."""

    def __init__(self, image: Path, offset: int = 0) -> None:
        if not SAFE_NAME.fullmatch(image.name) or "?" in str(image):
            raise ValueError(f"unsafe image file name {image.name!r}")  # callers use plain names
        self.image = image
        self.offset = offset
        self.debugfs = debugfs_path()

    @property
    def _spec(self) -> str:
        return self.image.name if self.offset == 0 else f"{self.image.name}?offset={self.offset}"

    def _run(self, request: str, timeout: float = 600) -> str:
        proc = spawn.run(
            [self.debugfs, "-c", "-R", request, self._spec],
            cwd=self.image.parent,
            timeout=timeout,
            check=False,
        )
        failed = ("while trying to open", "Filesystem not open", "Bad magic number")
        if proc.returncode != 0 or any(f in proc.stderr for f in failed):
            raise ValidationError(
                f"cannot read the ext filesystem in {self.image.name}: "
                f"{_last(proc.stderr) or f'debugfs exit {proc.returncode}'}",
                "the image is damaged or truncated",
            )
        return proc.stdout

    def listdir(self, path: str) -> dict[str, Entry] | None:
        """Entries of directory ``path`` (None when it does not exist or is not a directory)."""
        _check_path(path)
        out = self._run(f"ls -p {path}")
        entries: dict[str, Entry] = {}
        for line in out.splitlines():
            # /inode/mode/uid/gid/name/size/
            parts = line.strip().split("/")
            if len(parts) < 8 or parts[0] != "":
                continue
            name, mode, size = "/".join(parts[5:-2]), parts[2], parts[6]
            if name in (".", "..") or not mode.isdigit():
                continue
            entries[name] = Entry(name, int(mode, 8), int(size) if size.isdigit() else 0)
        return entries if out.strip() else None

    def readlink(self, path: str) -> str:
        _check_path(path)
        out = self._run(f"stat {path}")
        m = re.search(r'Fast link dest: "(.*)"', out)
        if m:
            return m.group(1)
        return self._run(f"cat {path}")  # a slow symlink keeps its target in a data block

    def dump(self, path: str, dest_name: str, timeout: float = 600) -> Path:
        """Copy file ``path`` out of the filesystem to ``dest_name`` beside the image."""
        _check_path(path)
        if not SAFE_NAME.fullmatch(dest_name):
            raise ValueError(f"unsafe output name {dest_name!r}")
        out = self.image.parent / dest_name
        out.unlink(missing_ok=True)
        self._run(f"dump {path} {dest_name}", timeout=timeout)
        if not out.is_file():
            raise ValidationError(
                f"could not copy {path} out of the filesystem in {self.image.name}",
                "the image is damaged or truncated",
            )
        return out


def _check_path(path: str) -> None:
    if not SAFE_PATH.fullmatch(path) or "/../" in f"{path}/":
        raise ValidationError(
            f"refusing to read unusual path {path!r} from the image",
            "kernel and initrd names are expected to be plain file names",
        )


def _last(text: str) -> str:
    lines = [
        ln.strip()
        for ln in text.splitlines()
        if ln.strip() and not ln.startswith("debugfs ") and "catastrophic mode" not in ln
    ]
    return lines[-1] if lines else ""
