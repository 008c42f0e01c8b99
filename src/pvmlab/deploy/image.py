"""The image a VM is deployed from: checked at ``vm create``, converted to raw once, cached.

``prepare(home, path)`` opens the image with ``pvmlab.assets.diskimage.DiskImage`` (format from
its header and ``qemu-img info``; a qcow2 is refused at once when ``qemu-img check`` finds it
damaged or truncated), converts it to a raw file (``qemu-img convert -O raw``; a raw image is
copied), hashes the result and keeps it as ``LabHome.deploy_image(<sha256>)``. A second VM of
the same image finds it there. Any failure happens before the VM or its disk exist, so nothing is
written for a bad image. The raw file is what the lab streams (``GET /deploy/<mac>/image``) and
what the ramdisk's SHA-256 is compared with.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvmlab import spawn
from pvmlab.assets.diskimage import DiskImage
from pvmlab.errors import ProcessError, PvmlabError, ValidationError
from pvmlab.home import LabHome, write_atomic
from pvmlab.records.models import VMSpec
from pvmlab.stack.installcfg import read_user_template

# Room at the disk's end for the cloud-init seed partition (CIDATA) the ramdisk adds; the
# default disk size is the image's virtual size plus this.
SEED_ROOM = 4 * 1024 * 1024


class DeployError(PvmlabError):
    """The deploy machinery itself cannot be made ready (its ramdisk)."""


@dataclass(frozen=True)
class PreparedImage:
    source: Path
    format: str
    virtual_size: int
    sha256: str
    raw: Path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def sources_index(home: LabHome) -> dict[str, str]:
    """``deploy/images/sources.json``: which source file (path|size|mtime) gave which raw
    image (by SHA-256); {} when absent or unreadable."""
    try:
        index: Any = json.loads(home.deploy_sources.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(index, dict):
        return {}
    return {k: v for k, v in index.items() if isinstance(k, str) and isinstance(v, str)}


def _source_id(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def prepare(home: LabHome, path: Path) -> PreparedImage:
    """Check ``path`` and have its raw form in the lab home (see the module's docstring)."""
    path = path.expanduser()
    if not path.is_file():
        raise ValidationError(
            f"no image file {str(path)!r}", "give the path of a qcow2 or raw image"
        )
    disk = DiskImage(path)  # ValidationError for a damaged qcow2 or an unreadable image
    if disk.format not in ("raw", "qcow2"):
        raise ValidationError(f"{path} is a {disk.format} image", "give a qcow2 or raw image")
    home.deploy_images.mkdir(parents=True, exist_ok=True)
    index = sources_index(home)
    known = index.get(_source_id(path))
    if known is not None and home.deploy_image(known).is_file():
        return PreparedImage(path, disk.format, disk.size, known, home.deploy_image(known))
    tmp = home.deploy_images / f".convert-{os.getpid()}.raw"
    try:
        try:
            spawn.run(
                ["qemu-img", "convert", "-f", disk.format, "-O", "raw", "--", str(path), str(tmp)],
                timeout=3600,
            )
        except ProcessError as exc:
            raise ValidationError(
                f"{path} cannot be read to its end: {exc.problem}", "is the image damaged?"
            ) from None
        if tmp.stat().st_size != disk.size:
            raise ValidationError(
                f"{path}: converting gave {tmp.stat().st_size} bytes, not {disk.size}",
                "is the image damaged?",
            )
        sha = _sha256(tmp)
        tmp.rename(home.deploy_image(sha))
    finally:
        tmp.unlink(missing_ok=True)
    index[_source_id(path)] = sha
    write_atomic(home.deploy_sources, json.dumps(index, indent=2) + "\n")
    return PreparedImage(path, disk.format, disk.size, sha, home.deploy_image(sha))


def resolve(home: LabHome, value: Path, arch: str) -> Path:
    """What ``--image`` names: a file, else an image ``pvmlab image build`` made (``image ls``),
    else a cloud image ``distro pull`` fetched for ``arch`` (``--method cloud-image``; its file
    in the download cache)."""
    path = value.expanduser()
    if path.is_file() or len(path.parts) != 1:
        return path
    from pvmlab.assets import pull
    from pvmlab.image import find_image
    from pvmlab.records import store as records

    try:
        built = find_image(home, str(value))
    except PvmlabError:
        built = None
    if built is not None:
        if built.arch != arch:
            raise ValidationError(
                f"image {built.name} is for {built.arch}, the VM is {arch}",
                f"give --arch {built.arch}, or build the image for {arch}",
            )
        return built.path

    try:
        distro = records.load_distro(home, str(value), arch)
    except PvmlabError:
        distro = None
    if distro is not None and distro.source == "cloud-image" and distro.origin:
        pulled = pull.cache_dir(home, distro.name, arch, "cloud-image") / Path(distro.origin).name
        if pulled.is_file():
            return pulled
    raise ValidationError(
        f"no image file {str(value)!r}, no built image and no cloud image of that name "
        f"pulled for {arch}",
        "give the path of a qcow2 or raw image, a name from `pvmlab image ls`, or `pvmlab "
        f"distro pull NAME --arch {arch} --method cloud-image` first",
    )


def default_disk_size(virtual_size: int) -> int:
    """The image's size rounded up to MiB, plus room for the seed partition."""
    mib = 1024 * 1024
    return (virtual_size + mib - 1) // mib * mib + SEED_ROOM


def configure(
    home: LabHome,
    vm: VMSpec,
    image: Path,
    disk_size: int | None,
    install: str | None,
    template: Path | None,
) -> tuple[VMSpec, str | None]:
    """``vm create --image``: the VM with its image, disk size and cloud-init configuration set
    (the user's --user-data template, else the shipped cloud-image one), and the user's text."""
    if vm.distro is not None:
        raise ValidationError(
            "a VM made from an image boots no distro", "give either --image or --distro"
        )
    if install not in (None, "user-data"):
        raise ValidationError(
            f"a VM made from an image is configured by cloud-init, not by {install}",
            "give --user-data FILE (or nothing: the lab's default user-data)",
        )
    prepared = prepare(home, resolve(home, image, vm.arch))
    if disk_size is None:
        disk_size = default_disk_size(prepared.virtual_size)
    elif disk_size < prepared.virtual_size:
        raise ValidationError(
            f"the disk ({disk_size} bytes) is smaller than the image {image} "
            f"({prepared.virtual_size} bytes)",
            "give a larger --disk-size, or leave it out (default: the image's size + "
            f"{SEED_ROOM // 1024 // 1024} MiB for the cloud-init seed)",
        )
    text = read_user_template(template) if template is not None else None
    configured = vm.model_copy(update={
        "image": str(prepared.source.resolve()),
        "image_sha256": prepared.sha256,
        "image_bytes": prepared.virtual_size,
        "disk_bytes": disk_size,
        "install": "user-data",
        "install_template": str(template.absolute()) if template is not None else None,
    })  # fmt: skip
    return type(vm).model_validate(configured.model_dump()), text


def ramdisk_for(home: LabHome, vm: VMSpec) -> None:
    """Have the deploy ramdisk of the VM's arch in the lab home (built once, cached)."""
    from pvmlab.deploy import ramdisk

    try:
        ramdisk.ensure(home, vm.arch)
    except (RuntimeError, OSError, ProcessError) as exc:
        problem = exc.problem if isinstance(exc, ProcessError) else str(exc)
        raise DeployError(
            f"cannot build the deploy ramdisk for {vm.arch}: {problem.splitlines()[0]}",
            "it is made from Debian packages: check that the Debian archive is reachable "
            "(PVMLAB_DEBIAN_MIRROR), then run `pvmlab vm reinstall NAME`",
        ) from None
