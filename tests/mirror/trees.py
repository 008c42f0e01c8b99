"""Mirror trees in the distros' real directory layouts, with their real checksum list formats.

ubuntu/noble/current/                      noble-server-cloudimg-<darch>.img, SHA256SUMS
                     unpacked/             noble-server-cloudimg-<darch>-{vmlinuz,initrd}-generic,
                                           SHA256SUMS
debian/dists/bookworm/main/installer-<darch>/current/images/
                     SHA256SUMS            "<hex>  ./netboot/debian-installer/<darch>/linux"
                     netboot/debian-installer/<darch>/{linux,initrd.gz}
debian-cloud/bookworm/latest/              debian-12-genericcloud-<darch>.qcow2, SHA512SUMS
fedora/releases/42/Everything/<arch>/os/   .treeinfo ([checksums] sha256:…),
                     images/pxeboot/{vmlinuz,initrd.img}
fedora/releases/42/Cloud/<arch>/images/    Fedora-Cloud-Base-Generic-42-1.1.<arch>.qcow2,
                                           Fedora-Cloud-42-1.1-<arch>-CHECKSUM (BSD style,
                                           PGP-signed wrapper)
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from mirror import images

DARCH = {"x86_64": "amd64", "aarch64": "arm64"}


@dataclass
class Tree:
    root: Path
    files: dict[str, bytes] = field(default_factory=dict)  # what a pull must yield, by label


def _sha(data: bytes, algo: str = "sha256") -> str:
    return hashlib.new(algo, data).hexdigest()


def ubuntu(root: Path, arch: str, work: Path) -> dict[str, bytes]:
    d = DARCH[arch]
    cur = root / "ubuntu/noble/current"
    (cur / "unpacked").mkdir(parents=True, exist_ok=True)
    built = images.ubuntu_noble(work, arch)
    img_name = f"noble-server-cloudimg-{d}.img"
    shutil.copy(built.image, cur / img_name)
    noise = os.urandom(1000)
    (cur / f"noble-server-cloudimg-{d}.tar.gz").write_bytes(noise)
    (cur / "SHA256SUMS").write_text(
        f"{_sha(noise)} *noble-server-cloudimg-{d}.tar.gz\n"
        f"{_sha((cur / img_name).read_bytes())} *{img_name}\n"
    )
    k, i = built.kernel, built.initrd
    (cur / f"unpacked/noble-server-cloudimg-{d}-vmlinuz-generic").write_bytes(k)
    (cur / f"unpacked/noble-server-cloudimg-{d}-initrd-generic").write_bytes(i)
    (cur / "unpacked/SHA256SUMS").write_text(
        f"{_sha(i)} *noble-server-cloudimg-{d}-initrd-generic\n"
        f"{_sha(k)} *noble-server-cloudimg-{d}-vmlinuz-generic\n"
    )
    return {"kernel": k, "initrd": i}


def debian_netboot(root: Path, arch: str, kernel: bytes, initrd: bytes) -> Path:
    d = DARCH[arch]
    images_dir = root / f"debian/dists/bookworm/main/installer-{d}/current/images"
    nb = images_dir / f"netboot/debian-installer/{d}"
    nb.mkdir(parents=True, exist_ok=True)
    (nb / "linux").write_bytes(kernel)
    (nb / "initrd.gz").write_bytes(initrd)
    tarball = os.urandom(2000)
    (images_dir / "netboot/netboot.tar.gz").write_bytes(tarball)
    (images_dir / "SHA256SUMS").write_text(
        f"{_sha(os.urandom(8))}  ./cdrom/initrd.gz\n"
        f"{_sha(kernel)}  ./netboot/debian-installer/{d}/linux\n"
        f"{_sha(initrd)}  ./netboot/debian-installer/{d}/initrd.gz\n"
        f"{_sha(tarball)}  ./netboot/netboot.tar.gz\n"
    )
    return images_dir


def debian_cloud(root: Path, arch: str, work: Path) -> dict[str, bytes]:
    d = DARCH[arch]
    latest = root / "debian-cloud/bookworm/latest"
    latest.mkdir(parents=True, exist_ok=True)
    built = images.debian_rootboot(work, arch)
    name = f"debian-12-genericcloud-{d}.qcow2"
    shutil.copy(built.image, latest / name)
    (latest / "SHA512SUMS").write_text(f"{_sha((latest / name).read_bytes(), 'sha512')}  {name}\n")
    return {"kernel": built.kernel, "initrd": built.initrd}


def fedora_netboot(root: Path, arch: str, kernel: bytes, initrd: bytes) -> Path:
    os_dir = root / f"fedora/releases/42/Everything/{arch}/os"
    px = os_dir / "images/pxeboot"
    px.mkdir(parents=True, exist_ok=True)
    (px / "vmlinuz").write_bytes(kernel)
    (px / "initrd.img").write_bytes(initrd)
    (os_dir / ".treeinfo").write_text(
        "[checksums]\n"
        f"images/efiboot.img = sha256:{_sha(b'efiboot')}\n"
        f"images/pxeboot/initrd.img = sha256:{_sha(initrd)}\n"
        f"images/pxeboot/vmlinuz = sha256:{_sha(kernel)}\n\n"
        "[general]\nfamily = Fedora\nversion = 42\n"
        f"arch = {arch}\n\n"
        f"[images-{arch}]\nkernel = images/pxeboot/vmlinuz\ninitrd = images/pxeboot/initrd.img\n"
    )
    return os_dir


def fedora_cloud(root: Path, arch: str, work: Path) -> dict[str, bytes]:
    d = root / f"fedora/releases/42/Cloud/{arch}/images"
    d.mkdir(parents=True, exist_ok=True)
    built = images.mbr_logical(work, arch)
    qcow = images.to_qcow2(built.raw, work / "fedora.qcow2")
    name = f"Fedora-Cloud-Base-Generic-42-1.1.{arch}.qcow2"
    shutil.copy(qcow, d / name)
    (d / f"Fedora-Cloud-42-1.1-{arch}-CHECKSUM").write_text(
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n"
        f"# Fedora-Cloud-Base-Generic-42-1.1.{arch}.raw.xz: 1 bytes\n"
        f"SHA256 (Fedora-Cloud-Base-Generic-42-1.1.{arch}.raw.xz) = {_sha(b'x')}\n"
        f"# {name}: {(d / name).stat().st_size} bytes\n"
        f"SHA256 ({name}) = {_sha((d / name).read_bytes())}\n"
        "-----BEGIN PGP SIGNATURE-----\n\nabc\n-----END PGP SIGNATURE-----\n"
    )
    return {"kernel": built.kernel, "initrd": built.initrd}
