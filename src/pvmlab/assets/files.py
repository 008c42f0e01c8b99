"""File helpers for boot assets: hashing, and copies that are never seen half-written.

A copy goes to a hidden temporary name in the destination directory, is hashed while it is
written, fsynced, then renamed over the final name. On any error the temporary file is removed
and the final name keeps whatever it had before.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Hashed:
    path: Path
    sha256: str
    size: int


def digests(path: Path, algorithm: str = "sha256") -> tuple[str, str, int]:
    """``path``'s SHA-256, its ``algorithm`` digest (the same when that is sha256) and its size,
    from one read of the file."""
    sha = hashlib.sha256()
    other = hashlib.new(algorithm) if algorithm != "sha256" else None
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
            if other is not None:
                other.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), (other.hexdigest() if other else sha.hexdigest()), size


def sha256_file(path: Path) -> str:
    return digests(path)[0]


@contextlib.contextmanager
def temp_beside(final: Path) -> Iterator[Path]:
    """A temporary path in ``final``'s directory, removed on the way out unless renamed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def copy_hashed(src: Path, tmp: Path, mode: int = 0o644) -> Hashed:
    """Copy ``src`` to ``tmp`` (an existing temporary file), returning its SHA-256 and size."""
    digest = hashlib.sha256()
    size = 0
    with src.open("rb") as fin, tmp.open("wb") as fout:
        while chunk := fin.read(CHUNK):
            digest.update(chunk)
            fout.write(chunk)
            size += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    tmp.chmod(mode)
    return Hashed(tmp, digest.hexdigest(), size)


def copy_atomic(src: Path, dst: Path, mode: int = 0o644) -> Hashed:
    """Copy ``src`` to ``dst`` atomically; returns the hash and size of what was written."""
    with temp_beside(dst) as tmp:
        h = copy_hashed(src, tmp, mode)
        tmp.replace(dst)
    return Hashed(dst, h.sha256, h.size)
