"""Bootable disk images built from distro packages (``pvmlab image build/ls/rm``).

    layout   the pure parts: partition arithmetic, sfdisk script, loader entry, recipe + cache key
    build    ``build_image``: mmdebstrap → ext4 (mkfs.ext4 -d) + ESP (mkfs.vfat, mtools) → GPT
    foreign  another arch's maintainer scripts: qemu-user in a private binfmt_misc
    tools    the host programs a build runs (checked up front, and by ``pvmlab setup``)
    store    ``ImageInfo`` records: ``list_images``, ``find_image``, ``remove_image``

The public API is re-exported here; the images live in ``LabHome.disk_images``.
"""

from __future__ import annotations

from pvmlab.image.build import build_image
from pvmlab.image.store import ImageInfo, PartitionInfo, find_image, list_images, remove_image

__all__ = [
    "ImageInfo",
    "PartitionInfo",
    "build_image",
    "find_image",
    "list_images",
    "remove_image",
]
