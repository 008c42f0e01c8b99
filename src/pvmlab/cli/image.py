"""`pvmlab image`: bootable disk images built from distro packages."""

from __future__ import annotations

import sys
import time

import click

from pvmlab.arch import ARCHES, CLI_CHOICES
from pvmlab.cli.common import emit_json, home, json_option, table
from pvmlab.records import validate


def _arch(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    return validate.arch(value)


def _size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    return None if value is None else validate.disk_size(value)


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024 * 1024):.1f} GiB" if n >= 1024**3 else f"{n // (1024 * 1024)} MiB"


@click.group()
def image() -> None:
    """Build, list and remove bootable disk images made from distro packages; prune caches.

    An image is a raw disk in the lab home (diskimages/NAME/disk.raw): GPT, an EFI system
    partition with systemd-boot on the removable-media path, the kernel and initrd, and an ext4
    root with openssh-server and cloud-init (NoCloud). The root filesystem comes from mmdebstrap
    and is cached (cache/rootfs/) by everything that went into it.
    """


@image.command("build")
@click.argument("name")
@click.option(
    "--distro",
    default="debian-12",
    show_default=True,
    help="What to build the image from (Debian 12 packages).",
)
@click.option(
    "--arch",
    required=True,
    metavar="ARCH",
    callback=_arch,
    help=f"Architecture: {' or '.join(ARCHES)} ({' and '.join(CLI_CHOICES[len(ARCHES):])} are "
    "accepted). A foreign one runs its package scripts under qemu-user.",
)
@click.option(
    "--packages",
    metavar="A,B",
    multiple=True,
    help="More packages to install, separated by commas (repeatable).",
)
@click.option(
    "--size",
    callback=_size,
    metavar="SIZE",
    help="The disk's virtual size, e.g. 2G (default: the root's content with room to spare; "
    "the root partition is last and grows to a larger disk at first boot).",
)
@click.option(
    "--mirror",
    metavar="URL",
    help="The Debian archive to use (default: http://deb.debian.org/debian).",
)
@json_option
def build_cmd(
    name: str,
    distro: str,
    arch: str,
    packages: tuple[str, ...],
    size: int | None,
    mirror: str | None,
    as_json: bool,
) -> None:
    """Build disk image NAME (replacing an image of that name). Needs root.

    The programs it runs are checked first (`pvmlab setup` lists them): a missing one is
    refused before anything is built, with the package that brings it.

    The first build of a package set takes minutes (mmdebstrap downloads and installs the
    packages); a rebuild from the same inputs reuses the cached root filesystem.
    """
    from pvmlab.image import build_image

    started = time.monotonic()

    def progress(text: str) -> None:
        click.echo(f"[{time.monotonic() - started:6.1f}s] {text}", err=True)

    info = build_image(
        home(),
        name,
        distro,
        arch=validate.arch(arch),
        packages=packages,
        size=size,
        mirror=mirror,
        progress=progress,
    )
    if as_json:
        emit_json(info.model_dump(mode="json"))
        return
    click.echo(
        f"built {info.name} ({info.arch}, {info.distro}, kernel {info.kernel_version}): "
        f"{info.path}, {_mib(info.virtual_size)}, sha256 {info.sha256} "
        f"in {info.build_seconds:.0f} s"
    )


@image.command("ls")
@json_option
def ls_cmd(as_json: bool) -> None:
    """List the lab's disk images."""
    from pvmlab.image import list_images

    images = list_images(home())
    if as_json:
        emit_json([i.model_dump(mode="json") for i in images])
        return
    if not images:
        click.echo("no disk images (pvmlab image build NAME --arch ARCH makes one)", err=True)
        return
    rows: list[list[str]] = []
    for i in images:
        rows.append(
            [i.name, i.arch, i.distro, i.kernel_version, _mib(i.virtual_size), i.sha256[:16],
             i.created, ",".join(i.packages) or "-"]
        )
    columns: list[str] = ["name", "arch", "distro", "kernel", "size", "sha256", "created",
                          "packages"]
    table(None, columns, rows, plain=not sys.stdout.isatty())


@image.command("rm")
@click.argument("name")
def rm_cmd(name: str) -> None:
    """Remove disk image NAME (the cached root filesystem stays for later builds; `image
    prune` drops it once no image uses it)."""
    from pvmlab.image import remove_image

    remove_image(home(), name)
    click.echo(f"removed {name}")


@image.command("prune")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Only list the cache entries, their sizes and users, and what would be removed.",
)
@json_option
def prune_cmd(dry_run: bool, as_json: bool) -> None:
    """Remove cached files no image or VM uses any more, and list them all with their sizes.

    Two caches grow when inputs change: root filesystems (cache/rootfs/KEY.tar, kept while a
    built image was made from them, for its rebuilds) and images converted to raw for `vm
    create --image` (deploy/images/SHA256.raw, kept while a VM is made from them: its next
    deploy streams it). Leftovers of interrupted builds and conversions go too. Nothing a
    defined VM or a running build needs is removed.
    """
    from pvmlab.image.cache import prune

    report = prune(home(), dry_run=dry_run)
    if as_json:
        emit_json(report.as_dict())
        return
    if not report.entries:
        click.echo("nothing cached", err=True)
        return
    rows: list[list[str]] = []
    for e in report.entries:
        if e.removed:
            action = "removed"
        elif e.unused:
            action = "would remove" if dry_run else "kept"
        else:
            action = "kept"
        rows.append([e.kind, e.name[:16], _mib(e.bytes), "; ".join(e.used_by) or "-",
                     e.about or "-", action])  # fmt: skip
    table(None, ["kind", "name", "size", "used by", "what", "action"], rows,
          plain=not sys.stdout.isatty())  # fmt: skip
    freed = _mib(report.freed_bytes)
    click.echo(
        f"{'would free' if dry_run else 'freed'} {freed}; kept {_mib(report.kept_bytes)} in use"
    )
