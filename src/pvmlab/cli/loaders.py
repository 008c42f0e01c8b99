"""`pvmlab loaders`: what first stage each client type gets, and from where (``pvmlab.bootpaths``).

Read-only. Where the files come from (a directory, the system's iPXE package, the official
builds) is still `pvmlab distro ipxe`'s business (``--dir``, ``--download``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pvmlab.cli.common import emit_json, home, json_option, table


def _yes_no(value: object, yes: str, no: str) -> str:
    return "-" if value is None else (yes if value else no)


@click.command("loaders")
@click.option("--served", is_flag=True, help="Only the client types the lab serves today.")
@json_option
def loaders(served: bool, as_json: bool) -> None:
    """Show what each client type is served, and from where.

    \b
    One row per client type (arch x firmware x PXE/HTTP Boot x IPv4/IPv6 x Secure Boot): the
    DHCP client-arch values and vendor class it sends, its first stage, the TFTP name or URL it
    gets, the file in the lab's TFTP root (present once `provisioner start` staged it), and
    whether the lab serves it (rows not served say why) and which test proves it.
    """
    from pvmlab import bootpaths
    from pvmlab.arch import signed_grub
    from pvmlab.assets import ipxe, signedboot
    from pvmlab.records import store
    from pvmlab.stack.endpoint import lab_endpoint

    h = home()
    base_url = lab_endpoint(store.load_lab(h)).base_url if h.lab_file.exists() else None
    tftp_root = h.tftp if h.root.exists() else None
    rows: list[dict[str, Any]] = []
    for path in bootpaths.boot_paths():
        if served and not path.served:
            continue
        row = path.as_dict(base_url, tftp_root)
        stage = path.first_stage
        source: Path | None = None
        if stage is not None and path.client.secure_boot:  # Debian's signed shim
            g = signed_grub(path.client.arch)
            source = signedboot.find(h, g.arch, g.shim_package, g.shim_file)
        elif stage is not None:
            found = ipxe.find_binary(stage.role, h)
            source = None if found is None else found.path
        row["source"] = None if source is None else str(source)
        rows.append(row)
    if as_json:
        emit_json(rows)
        return
    table(
        None,
        ["CLIENT", "DHCP", "FIRST STAGE", "FROM", "IN LAB", "SOURCE", "SERVED", "PROVEN BY"],
        [
            [
                f"{r['arch']} {r['firmware']} {r['net_boot']} IPv{r['ip_version']}"
                + (" secure-boot" if r["secure_boot"] else ""),
                f"{r['vendor_class']} arch {','.join(str(c) for c in r['client_arches'])}",
                r["first_stage"] or "-",
                f"{r['transport']} {r['location']}" if r["location"] else "-",
                _yes_no(r["present"], "present", "missing"),
                r["source"] or ("MISSING" if r["first_stage"] else "-"),
                "yes" if r["served"] else f"no: {r['reason']}",
                r["proven_by"] or "-",
            ]
            for r in rows
        ],
        plain=True,
    )
