"""Method 1 as an ordinary user: `pvmlab distro import --from-image` run under uid/gid 65534
(nobody) through setpriv extracts byte-identical kernels from cloud-image layouts, with no
mount, loop device, FUSE or guestmount. Needs root only to switch to that user."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NOBODY, as_nobody
from mirror import images

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)"),
]


def _as_nobody(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PVMLAB_HOME": str(home),
        "HOME": str(home.parent),
        "TMPDIR": str(home.parent),
    }
    return subprocess.run(
        as_nobody([sys.executable, "-m", "pvmlab.cli.main", *args]),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("layout", ["ubuntu_noble", "debian_rootboot"])
def test_extraction_as_nobody(shared_dir: Path, layout: str) -> None:
    built: images.Built = getattr(images, layout)(shared_dir / "build")
    for p in [shared_dir, *shared_dir.rglob("*")]:
        os.chown(p, 0, 0)
        p.chmod(0o755 if p.is_dir() else 0o644)  # readable, not writable, by nobody
    home = shared_dir / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)

    who = _as_nobody(home, "--help")
    assert who.returncode == 0, who.stderr
    proc = _as_nobody(
        home, "distro", "import", "cloud", "--arch", "x86_64", "--from-image", str(built.image)
    )
    assert proc.returncode == 0, proc.stderr
    assert f"found kernel {built.version}" in proc.stdout

    d = home / "images" / "cloud" / "x86_64"
    assert (d / "vmlinuz").read_bytes() == built.kernel
    assert (d / "initrd").read_bytes() == built.initrd
    for f in ("vmlinuz", "initrd", "distro.json"):
        st = (d / f).stat()
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)  # written by the unprivileged user
    meta = json.loads((d / "distro.json").read_text())
    assert meta["version"] == built.version and meta["source"] == "cloud-image"
    assert not list(shared_dir.glob("pvmlab-extract-*"))  # the work directory is gone


def test_bad_images_as_nobody(shared_dir: Path) -> None:
    work = shared_dir / "build"
    nokernel = images.no_kernel(work)
    noble = images.ubuntu_noble(work / "noble")
    cut = work / "cut.img"
    data = noble.image.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    for p in [shared_dir, *shared_dir.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    home = shared_dir / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    for image, needle in (
        (nokernel, "no kernel with a matching initrd"),
        (cut, "damaged or truncated"),
    ):
        proc = _as_nobody(
            home, "distro", "import", "x", "--arch", "x86_64", "--from-image", str(image)
        )
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert not (home / "images").exists() or not any((home / "images").iterdir())
