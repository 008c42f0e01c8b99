"""`pvmlab setup`: create the lab home and check every dependency."""

from __future__ import annotations

import shutil
import sys

import click

from pvmlab.cli import common


@click.command(
    "setup",
    help=(
        "Create the lab home (images/, vms/, configs/, logs/, ...) and the lab's SSH key "
        "(ssh/id_ed25519, for `vm ssh`), and check every dependency: "
        "QEMU per architecture, qemu-img, dnsmasq, iproute2, debugfs (e2fsprogs, for cloud "
        "images), UEFI firmware, SeaBIOS, iPXE binaries, privileges, /dev/kvm and /dev/net/tun; "
        "and, as optional, the programs of `image build` (mmdebstrap, e2fsprogs, dosfstools, "
        "mtools, fdisk; qemu-user-static for another architecture) and other features. "
        "Each missing one is printed with the "
        "command that installs it. Exits 0 when everything needed is there, 1 otherwise."
    ),
)
@common.json_option
def setup(as_json: bool) -> None:
    from pvmlab import doctor
    from pvmlab.vm import ssh

    home = common.home()
    home.ensure()
    checks = doctor.run_checks(home)
    if shutil.which("ssh-keygen") is not None:
        ssh.ensure_key(home)  # the lab's SSH key pair (`vm ssh`, `vm cp`, installs)
    ok = doctor.all_required_ok(checks)
    if as_json:
        common.emit_json(
            {"home": str(home.root), "ok": ok, "checks": [c.as_dict() for c in checks]}
        )
    else:
        rows = []
        for c in checks:
            status = "ok" if c.ok else ("MISSING" if c.required else "missing (optional)")
            rows.append([c.name, status, c.detail])
        click.echo(f"lab home: {home.root}")
        common.table(None, ["check", "status", "found"], rows)
        broken = [c for c in checks if not c.ok]
        if broken:
            click.echo("to install or fix:")
            for c in broken:
                click.echo(f"  {c.name}: {c.fix or c.detail}")
            if doctor.package_family() == "apt":
                click.echo(f"  (or everything at once: {doctor.DEPS_SCRIPT})")
        missing = [c.name for c in checks if c.required and not c.ok]
        if missing:
            click.echo(f"missing: {', '.join(missing)}")
        else:
            click.echo("everything needed is there")
    if not ok:
        sys.exit(1)  # SystemExit passes through click and the entry point unchanged
