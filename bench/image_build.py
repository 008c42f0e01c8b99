"""`pvmlab image build`: a cold build (empty rootfs cache) against a rebuild from the cached
root filesystem, side by side in one run, with the time of each step and the image's size.

    sudo .venv/bin/python -m bench.image_build [--arch x86_64] [--packages a,b] [--json]

Runs in a temporary lab home (``--workdir DIR`` keeps it); needs root and the Debian archive.
Steps are timed from ``build_image``'s progress messages: mmdebstrap (download + install),
unpack (tar), ESP (mkfs.vfat + mtools), root (mkfs.ext4 -d), disk (sfdisk + dd), sha256.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pvmlab.arch import parse_arch
from pvmlab.cli.common import emit_json, table
from pvmlab.home import LabHome
from pvmlab.image import build_image

STEPS = (
    ("mmdebstrap", "mmdebstrap "),
    ("unpack", "unpacking"),
    ("esp", "ESP:"),
    ("root", "root:"),
    ("disk", "disk: GPT"),
    ("sha256", "disk: sha256"),
)


def _timed_build(home: LabHome, name: str, arch: str, packages: list[str]) -> dict[str, Any]:
    marks: list[tuple[float, str]] = []
    start = time.monotonic()
    info = build_image(
        home, name, arch=parse_arch(arch), packages=packages,
        progress=lambda text: marks.append((time.monotonic() - start, text)),
    )
    total = time.monotonic() - start
    starts: dict[str, float] = {}
    for step, prefix in STEPS:
        for t, text in marks:
            if text.startswith(prefix) and step not in starts:
                starts[step] = t
    order = [s for s, _ in STEPS if s in starts]
    steps = {
        s: round((starts[order[i + 1]] if i + 1 < len(order) else total) - starts[s], 1)
        for i, s in enumerate(order)
    }
    return {
        "seconds": round(total, 1),
        "steps": steps,
        "virtual_size": info.virtual_size,
        "allocated": info.path.stat().st_blocks * 512,
    }


def run(arch: str, packages: list[str], workdir: Path | None) -> dict[str, Any]:
    root = workdir or Path(tempfile.mkdtemp(prefix="pvmlab-bench-image-"))
    root.chmod(0o755)
    home = LabHome(root / "home")
    try:
        cold = _timed_build(home, "bench-cold", arch, packages)
        cached = _timed_build(home, "bench-cached", arch, packages)
        tarballs = list(home.rootfs_cache.glob("*.tar"))
        tar_size = sum(t.stat().st_size for t in tarballs)
    finally:
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return {
        "arch": arch,
        "packages": packages,
        "cold": cold,
        "cached": cached,
        "cold_over_cached": round(cold["seconds"] / cached["seconds"], 1),
        "rootfs_tarball": tar_size,
        "cpus": os.cpu_count(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", default="x86_64", help="image architecture (default x86_64)")
    p.add_argument("--packages", default="", help="extra packages, comma-separated")
    p.add_argument("--workdir", type=Path, help="keep the lab home here")
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args()
    packages = [x for x in args.packages.split(",") if x]
    res = run(args.arch, packages, args.workdir)
    if args.json:
        emit_json(res)
        return 0
    mib = 1024 * 1024
    rows = []
    for label in ("cold", "cached"):
        r = res[label]
        steps = r["steps"]
        rows.append(
            [label, f"{r['seconds']:.1f}", *(f"{steps.get(s, 0):.1f}" for s, _ in STEPS),
             f"{r['virtual_size'] // mib}", f"{r['allocated'] // mib}"]
        )
    table(
        f"image build {res['arch']}: cold / cached = {res['cold_over_cached']}x; rootfs "
        f"tarball {res['rootfs_tarball'] // mib} MiB",
        ["build", "total s", *(s for s, _ in STEPS), "size MiB", "allocated MiB"],
        rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
