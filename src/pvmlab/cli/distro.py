"""`pvmlab distro`: the kernels and initrds the lab serves, and the iPXE first stages."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from pvmlab.arch import ARCHES, CLI_CHOICES, FIRST_STAGES, LOADER_NAMES, parse_loader
from pvmlab.cli.common import emit_json, home, json_option, table
from pvmlab.errors import ValidationError
from pvmlab.records import validate


def _arch(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else validate.arch(value)


def _name(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    return validate.distro_name(value)


arch_option = click.option(
    "--arch",
    required=True,
    metavar="ARCH",
    callback=_arch,
    help=f"Architecture: {' or '.join(ARCHES)} ({' and '.join(CLI_CHOICES[len(ARCHES):])} are "
    "accepted).",
)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@click.group()
def distro() -> None:
    """Import, pull and list the kernels and initrds the lab boots.

    Files live in the lab home under images/NAME/ARCH/ (vmlinuz, initrd, distro.json) and are
    served by the stack at /images/NAME/ARCH/.
    """


@distro.command("import")
@click.argument("name", callback=_name)
@arch_option
@click.option(
    "--kernel",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Kernel file to copy (with --initrd).",
)
@click.option(
    "--initrd",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Initial ramdisk to copy (with --kernel).",
)
@click.option(
    "--from-image",
    "image",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Extract the newest kernel and its initrd from a disk image (qcow2 or raw; GPT or "
    "MBR; ext2/3/4), without root: a file, or the name of an image `pvmlab image build` made.",
)
@click.option("--cmdline", metavar="LINE", help="Kernel command line to boot it with (one line).")
@click.option(
    "--loader",
    type=click.Choice(LOADER_NAMES),
    help="The first stage its machines get unless `vm create --loader` says (distros whose "
    "netboot is GRUB: grub).",
)
@json_option
def import_(
    name: str,
    arch: str,
    kernel: Path | None,
    initrd: Path | None,
    image: Path | None,
    cmdline: str | None,
    loader: str | None,
    as_json: bool,
) -> None:
    """Copy a kernel and initrd into the lab as distro NAME.

    Either give --kernel and --initrd, or --from-image IMAGE to take them out of a cloud image.
    Importing over an existing NAME/ARCH replaces it.
    """
    from pvmlab.assets import distro as assets

    h = home()
    note = ""
    if image is not None:
        if kernel is not None or initrd is not None:
            raise ValidationError(
                "--from-image cannot be combined with --kernel/--initrd", "give one or the other"
            )
        from pvmlab.assets import extract

        if not image.exists() and len(image.parts) == 1:  # a built image's name (image ls)
            from pvmlab.image import find_image

            image = find_image(h, str(image)).path
        result = extract.import_from_image(h, name, arch, image, cmdline)  # checks its input
        note = result.note
        res = result.imported
    else:
        if kernel is None or initrd is None:
            raise ValidationError(
                "distro import needs --kernel and --initrd (or --from-image)",
                "e.g. pvmlab distro import demo --arch x86_64 --kernel vmlinuz --initrd initrd.img",
            )
        res = assets.import_result(h, name, arch, kernel, initrd, cmdline)
    a = res.assets
    if loader is not None:
        from pvmlab.records import store

        a = a.model_copy(update={"loader": parse_loader(loader)})
        store.save_distro(h, a)
    if as_json:
        emit_json({**a.model_dump(mode="json"), "replaced": res.replaced is not None})
        return
    if note:
        click.echo(note)
    verb = "replaced" if res.replaced is not None else "imported"
    click.echo(
        f"{verb} {a.name} ({a.arch}): vmlinuz {_size(a.kernel_size)} sha256 {a.kernel_sha256}, "
        f"initrd {_size(a.initrd_size)} sha256 {a.initrd_sha256}"
    )


def _rows(h: Any, show_available: bool) -> list[dict[str, Any]]:
    from pvmlab.assets import catalog
    from pvmlab.assets import distro as assets

    present = {(a.name, a.arch): a for a in assets.list_assets(h)}
    rows: list[dict[str, Any]] = []
    for a in present.values():
        pulled = (a.origin or "").startswith(("http://", "https://"))
        status = "pulled" if pulled else "imported"
        rows.append({"status": status, **a.model_dump(mode="json")})
    if show_available:
        for entry in catalog.load(h).values():
            for arch in entry.arches:
                if (entry.name, arch) in present:
                    continue
                rows.append(
                    {
                        "status": "available",
                        "name": entry.name,
                        "arch": arch,
                        "source": None,
                        "methods": entry.methods_for(arch),
                        "version": entry.version,
                    }
                )
    rows.sort(key=lambda r: (r["name"], r["arch"]))
    return rows


@distro.command("ls")
@click.option(
    "--installed", is_flag=True, help="Only what is in the lab (hide catalog entries not pulled)."
)
@json_option
def ls(installed: bool, as_json: bool) -> None:
    """List distros: those in the lab (imported or pulled) and the catalog's others."""
    h = home()
    rows = _rows(h, not installed)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no distros (see `pvmlab distro import` and `pvmlab distro pull`)")
        return
    table(
        None,
        ["NAME", "ARCH", "STATUS", "METHOD", "VERSION", "KERNEL", "INITRD", "SHA-256 (kernel)"],
        [
            [
                r["name"],
                r["arch"],
                r["status"],
                r.get("source") or ",".join(r.get("methods", [])),
                r.get("version") or "-",
                _size(r.get("kernel_size")),
                _size(r.get("initrd_size")),
                r.get("kernel_sha256") or "-",
            ]
            for r in rows
        ],
        plain=True,
    )


@distro.command("pull")
@click.argument("name", callback=_name)
@arch_option
@click.option(
    "--method",
    metavar="METHOD",
    help="How to get the files: cloud-image (extract from the cloud image), netboot (the "
    "distro's network installer), kernel (Ubuntu's published cloud kernel); default: the "
    "catalog's first method for that distro.",
)
@click.option(
    "--mirror",
    metavar="URL",
    help="Base URL replacing the catalog's mirror for this method (also: "
    "PVMLAB_MIRROR_<NAME>_<METHOD> or PVMLAB_MIRROR_<NAME>, e.g. PVMLAB_MIRROR_DEBIAN_12).",
)
@click.option(
    "--cmdline", metavar="LINE", help="Kernel command line instead of the catalog's default."
)
@click.option(
    "--refresh", is_flag=True, help="Fetch the checksum list again even when the cache is complete."
)
@json_option
def pull(
    name: str,
    arch: str,
    method: str | None,
    mirror: str | None,
    cmdline: str | None,
    refresh: bool,
    as_json: bool,
) -> None:
    """Download distro NAME for ARCH from the catalog, verify it and add it to the lab.

    Downloads resume where they stopped, are checked against the distro's published checksum
    list and are cached in the lab home: pulling again fetches nothing.
    """
    from pvmlab.assets import pull as puller

    h = home()
    res = puller.pull(
        h,
        name,
        arch,
        method,
        mirror,
        cmdline=cmdline,
        progress=not as_json and sys.stderr.isatty(),
        refresh=refresh,
    )
    a = res.imported.assets
    if as_json:
        emit_json(
            {
                **a.model_dump(mode="json"),
                "method": res.resolved.method,
                "downloaded": res.downloaded,
                "cached": res.cached,
                "note": res.note,
                "replaced": res.imported.replaced is not None,
            }
        )
        return
    if res.note:
        click.echo(res.note)
    fetched = f"{len(res.downloaded)} downloaded, {len(res.cached)} from cache"
    click.echo(
        f"pulled {a.name} ({a.arch}) by {res.resolved.method} [{fetched}]: "
        f"vmlinuz {_size(a.kernel_size)} sha256 {a.kernel_sha256}, "
        f"initrd {_size(a.initrd_size)} sha256 {a.initrd_sha256}"
    )
    if res.resolved.spec.note:
        click.echo(f"note: {res.resolved.spec.note}")


@distro.command("rm")
@click.argument("name", callback=_name)
@arch_option
@click.option("--force", is_flag=True, help="Remove it even when a VM is defined to boot it.")
def rm(name: str, arch: str, force: bool) -> None:
    """Remove distro NAME for ARCH from the lab (the download cache is kept)."""
    from pvmlab.assets import distro as assets
    from pvmlab.errors import StateError
    from pvmlab.records import store

    h = home()
    if not force:
        users = [vm.name for vm in store.load_vms(h) if vm.distro == name and vm.arch == arch]
        if users:
            raise StateError(
                f"distro {name!r} ({arch}) is used by VM(s) {', '.join(users)}",
                "remove or redefine those VMs first, or pass --force",
            )
    a = assets.remove(h, name, arch)
    click.echo(f"removed {a.name} ({a.arch})")


@distro.command("ipxe")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    help="Remember DIR as the first place to take iPXE binaries from.",
)
@click.option("--forget-dir", is_flag=True, help="Forget the directory set with --dir.")
@click.option(
    "--download",
    is_flag=True,
    help="Fetch the official builds (boot.ipxe.org, or PVMLAB_IPXE_URL) into the lab's cache.",
)
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice([stage.role for stage in FIRST_STAGES]),
    help="Limit --download to this role (repeatable).",
)
@json_option
def ipxe(
    directory: Path | None,
    forget_dir: bool,
    download: bool,
    roles: tuple[str, ...],
    as_json: bool,
) -> None:
    """Show which iPXE binary each role uses, and where it comes from.

    `pvmlab loaders` shows the whole picture: per client type (arch, firmware, PXE or HTTP
    Boot, IPv4/IPv6, Secure Boot) the first stage, the TFTP name or URL and whether it is served.
    """
    from pvmlab.assets import ipxe as ip

    h = home()
    if directory is not None and forget_dir:
        raise ValidationError("--dir and --forget-dir exclude each other", "give one of them")
    if roles and not download:
        raise ValidationError("--role only narrows --download", "add --download, or drop --role")
    if directory is not None or forget_dir:
        ip.set_user_dir(h, None if forget_dir else directory)  # checks DIR before writing
        h.ensure()
    if download:
        h.ensure()
        ip.download_official(h, roles or None, progress=not as_json and sys.stderr.isatty())
    found = ip.find_binaries(h)
    if as_json:
        emit_json({r: (b.as_json() if b else None) for r, b in found.items()})
        return
    table(
        None,
        ["ROLE", "TFTP NAME", "SOURCE", "PATH", "SHA-256"],
        [
            [
                r,
                ip.FIRST_STAGES[r],
                b.source if b else "MISSING",
                str(b.path) if b else "-",
                b.sha256 if b else "-",
            ]
            for r, b in found.items()
        ],
        plain=True,
    )
    missing = [r for r, b in found.items() if b is None]
    if missing:
        click.echo(f"hint: {ip.INSTALL_HINT}", err=True)
