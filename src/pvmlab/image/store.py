"""The lab's disk images: ``diskimages/NAME/{disk.raw,image.json}`` (paths from ``LabHome``).

``image.json`` is the record ``build`` writes last, after the image file is complete: an image
without a readable record is not an image (a build that died half way leaves none).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticError

from pvmlab.arch import Arch
from pvmlab.errors import StateError, ValidationError
from pvmlab.home import LabHome, file_lock, read_json, write_json
from pvmlab.records import validate


class PartitionInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    number: int
    role: Literal["esp", "root"]
    start: int = Field(description="first sector (512 bytes)")
    sectors: int
    type_guid: str
    partuuid: str
    filesystem: Literal["vfat", "ext4"]
    fs_uuid: str = Field(description="ext4 UUID, or the FAT volume id as XXXX-XXXX")
    label: str


class ImageInfo(BaseModel):
    """What a built image is; ``path`` is where the lab keeps it (never taken from the file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    arch: Arch
    path: Path
    format: Literal["raw"] = "raw"
    virtual_size: int = Field(description="bytes")
    sha256: str
    created: str = Field(description="ISO 8601, UTC")
    distro: str
    suite: str
    mirror: str
    packages: tuple[str, ...] = Field(description="the packages asked for beyond the base set")
    recipe_key: str = Field(description="the root filesystem's cache key")
    partitions: tuple[PartitionInfo, ...]
    disk_guid: str
    root_partition: int
    root_fs_uuid: str
    root_partuuid: str
    esp_partuuid: str
    kernel_version: str
    cmdline: str = Field(description="the loader entry's kernel command line")
    loader_entry: str = Field(description="the loader entry's path on the ESP")
    cloud_init: str = Field(description="how cloud-init finds its data in this image")
    build_seconds: float


def image_name(value: str) -> str:
    """An image name: the rules of distro names (a safe path component)."""
    try:
        return validate.distro_name(value)
    except ValidationError:
        raise ValidationError(
            f"invalid image name {value!r}",
            "use 1-63 lowercase letters, digits, '.', '_' and '-', starting with a letter or "
            "digit (e.g. debian-12-base)",
        ) from None


def save(home: LabHome, info: ImageInfo) -> None:
    data = info.model_dump(mode="json")
    data.pop("path")
    write_json(home.disk_image_record(info.name), data)


def _load(home: LabHome, name: str) -> ImageInfo | None:
    data = read_json(home.disk_image_record(name))
    if not data or data.get("name") != name:
        return None
    try:
        return ImageInfo.model_validate({**data, "path": home.disk_image_file(name)})
    except PydanticError:
        return None


def list_images(home: LabHome) -> list[ImageInfo]:
    """Every complete image of the lab, by name."""
    if not home.disk_images.is_dir():
        return []
    found = []
    for entry in sorted(home.disk_images.iterdir()):
        if entry.is_dir() and not entry.is_symlink() and not entry.name.startswith("."):
            info = _load(home, entry.name)
            if info is not None and info.path.is_file():
                found.append(info)
    return found


def find_image(home: LabHome, name: str) -> ImageInfo:
    name = image_name(name)
    info = _load(home, name)
    if info is None or not info.path.is_file():
        raise StateError(
            f"no disk image named {name}", "`pvmlab image ls` lists them; `image build` makes one"
        )
    return info


def remove_image(home: LabHome, name: str) -> None:
    """Remove image NAME (its file and record). The rootfs cache stays for the next build."""
    name = image_name(name)
    directory = home.disk_image_dir(name)
    if not directory.is_dir() or directory.is_symlink():
        raise StateError(f"no disk image named {name}", "`pvmlab image ls` lists them")
    with file_lock(home.disk_images_lock):
        shutil.rmtree(directory)
