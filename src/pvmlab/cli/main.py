"""`pvmlab`: the entry point. Subcommand modules are imported only when that command runs,
so `pvmlab --help` and small commands stay fast."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from pvmlab import __version__
from pvmlab.errors import PvmlabError, from_os_error

# command name -> (module, attribute, one-line help shown in `pvmlab --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "setup": ("pvmlab.cli.setup", "setup", "Create the lab home and check every dependency."),
    "provisioner": (
        "pvmlab.cli.provisioner",
        "provisioner",
        "Define, start and stop the lab network and its DHCP/TFTP/HTTP stack.",
    ),
    "vm": ("pvmlab.cli.vm", "vm", "Create, boot, watch and remove target VMs."),
    "distro": (
        "pvmlab.cli.distro",
        "distro",
        "Import, pull and list kernels and initrds to boot.",
    ),
    "image": (
        "pvmlab.cli.image",
        "image",
        "Build, list and remove bootable disk images made from distro packages.",
    ),
    "loaders": (
        "pvmlab.cli.loaders",
        "loaders",
        "Show the first stage each client type (arch, firmware, PXE/HTTP, IPv4/6) gets.",
    ),
    "clean": (
        "pvmlab.cli.vm",
        "clean",
        "Stop and remove every VM (and with --purge, the whole lab).",
    ),
    "up": ("pvmlab.cli.labs", "up_cmd", "Create and start what a lab file declares (reconcile)."),
    "down": ("pvmlab.cli.labs", "down_cmd", "Stop and remove everything a lab file made."),
    "ls": ("pvmlab.cli.labs", "ls_cmd", "List the labs made from lab files."),
    "test": (
        "pvmlab.cli.labs",
        "test_cmd",
        "Boot a lab file's machines, check each is ready; JUnit, JSON and HTML reports.",
    ),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module = importlib.import_module(entry[0])
        cmd = getattr(module, entry[1])
        if not isinstance(cmd, click.Command):  # a packaging bug, not a user error
            raise TypeError(f"{entry[0]}.{entry[1]} is not a click command")
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    help="Lab home directory (default: $PVMLAB_HOME or ~/.pvmlab).",
)
@click.option("--debug", is_flag=True, help="Log every command run and show tracebacks.")
@click.version_option(__version__, prog_name="pvmlab")
def cli(home: Path | None, debug: bool) -> None:
    """pvmlab: a local network-boot lab.

    A provisioner serves DHCP, TFTP and HTTP (iPXE) on a private network inside a network
    namespace; QEMU target VMs (aarch64 and x86_64, UEFI and BIOS) boot from it.

    \b
    Typical session:
      pvmlab setup
      pvmlab provisioner create && pvmlab provisioner start
      pvmlab distro import demo --arch aarch64 --kernel vmlinuz --initrd initrd
      pvmlab vm create t1 --arch aarch64 --distro demo
      pvmlab vm start t1 --wait
    """
    if home is not None:
        os.environ["PVMLAB_HOME"] = str(home.absolute())
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if debug:
        os.environ["PVMLAB_DEBUG"] = "1"


def _one_line(exc: OSError) -> PvmlabError | None:
    from pvmlab.home import default_root  # only on this path: `pvmlab --help` stays small

    return from_os_error(exc, str(default_root()))


def main(argv: list[str] | None = None) -> Any:
    try:
        return cli.main(args=argv, prog_name="pvmlab", standalone_mode=False)
    except PvmlabError as exc:
        click.echo(f"pvmlab: error: {exc}", err=True)
        if os.environ.get("PVMLAB_DEBUG"):
            raise
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("pvmlab: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("pvmlab: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug: say so in one line, traceback only with --debug
        # ... unless it is a full disk, a read-only home or a missing permission: one line too
        known = _one_line(exc) if isinstance(exc, OSError) else None
        if known is not None:
            click.echo(f"pvmlab: error: {known}", err=True)
            if os.environ.get("PVMLAB_DEBUG"):
                raise
            sys.exit(known.exit_code)
        if os.environ.get("PVMLAB_DEBUG"):
            raise
        click.echo(
            f"pvmlab: internal error: {type(exc).__name__}: {exc} "
            "(hint: rerun with --debug for the traceback and report it)",
            err=True,
        )
        sys.exit(70)


if __name__ == "__main__":
    sys.exit(main())  # as the console script does: a returned exit code counts
