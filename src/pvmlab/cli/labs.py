"""`pvmlab up`, `down`, `ls`, `test`: labs written as files (see docs/labfile.md)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import click

from pvmlab.cli.common import emit_json, json_option, table

file_option = click.option(
    "-f",
    "--file",
    "lab_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("lab.toml"),
    show_default=True,
    help="The lab file (TOML; schema in docs/lab.schema.json).",
)


def _say(msg: str) -> None:
    click.echo(msg, err=True)


def _load(lab_file: Path) -> Any:
    from pvmlab.labfile.load import read

    return read(lab_file)


def _home(lab: Any) -> Any:
    """The lab's home: --home / PVMLAB_HOME when given, else one of its own per lab name."""
    from pvmlab.labfile.apply import home_for

    explicit = os.environ.get("PVMLAB_HOME")
    return home_for(lab, Path(explicit) if explicit else None)


def _require_root() -> None:
    from pvmlab.network.privilege import require_net_admin

    require_net_admin("running a lab")


@click.command("up")
@file_option
@click.option("--dry-run", is_flag=True, help="Say what would change, change nothing.")
@click.option("--no-start", is_flag=True, help="Define everything and start the stack only.")
@click.option(
    "--wait", is_flag=True,
    help="Wait until each machine started meets its `ready` condition (console, then SSH and "
    "its command when the file has one), as `pvmlab test` does; exit 1 naming those that do not.",
)  # fmt: skip
@json_option
def up_cmd(lab_file: Path, dry_run: bool, no_start: bool, wait: bool, as_json: bool) -> None:
    """Create and start what the lab file declares, and reconcile what changed.

    Missing machines are created, changed ones made again (same MAC and IP), removed ones
    removed; a second run changes nothing. The whole file is checked before the first change.
    """
    from pvmlab.errors import ValidationError
    from pvmlab.labfile import apply

    if wait and no_start:
        raise ValidationError("--wait waits for the machines --no-start does not start",
                         "give one of them")
    lab = _load(lab_file)
    home = _home(lab)
    if not dry_run:
        _require_root()
    changes = apply.up(
        lab, home, start_machines=not no_start, wait=wait, dry_run=dry_run, say=_say
    )
    if as_json:
        emit_json({"lab": lab.name, "home": str(home.root), "dry_run": dry_run,
                   "changes": [c.as_dict() for c in changes]})  # fmt: skip
        return
    verb = "would change" if dry_run else "changed"
    if not changes:
        click.echo(f"lab {lab.name} ({home.root}): up to date, nothing to change")
        return
    click.echo(f"lab {lab.name} ({home.root}): {verb}:")
    for c in changes:
        click.echo(f"  {c.line()}")


@click.command("down")
@file_option
@json_option
def down_cmd(lab_file: Path, as_json: bool) -> None:
    """Stop and remove everything the lab file made (machines, stack, the lab's home)."""
    from pvmlab.labfile import apply

    _require_root()
    lab = _load(lab_file)
    home = _home(lab)
    changes = apply.down(home, say=_say)
    if as_json:
        emit_json({"lab": lab.name, "home": str(home.root),
                   "changes": [c.as_dict() for c in changes]})  # fmt: skip
        return
    if not changes:
        click.echo(f"lab {lab.name}: nothing to remove ({home.root} does not exist)")
        return
    for c in changes:
        click.echo(c.line())


@click.command("ls")
@json_option
def ls_cmd(as_json: bool) -> None:
    """List the labs made from lab files, with their state."""
    from pvmlab.labfile import apply

    labs = apply.list_labs()
    if as_json:
        emit_json(labs)
        return
    if not labs:
        click.echo(f"no labs made from lab files in {apply.labs_root()}")
        return
    table(
        None,
        ["LAB", "STACK", "MACHINES", "RUNNING", "FILE", "HOME"],
        [
            [lab["name"], lab["stack"], str(lab["machines"]), str(lab["running"]), lab["file"],
             lab["home"]]
            for lab in labs
        ],
        plain=True,
    )


class _ProgressView:
    """Which machine is in which phase: a live table on a terminal, else a line per change."""

    def __init__(self, names: list[str]) -> None:
        self.state = dict.fromkeys(names, "waiting")
        self.lock = threading.Lock()
        self.live: Any = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.live import Live

            self.live = Live(self._table(), console=Console(file=sys.stderr, emoji=False),
                             auto_refresh=False)

    def _table(self) -> Any:
        from rich.table import Table

        t = Table(header_style="bold")
        t.add_column("machine")
        t.add_column("now")
        for name, what in self.state.items():
            style = "green" if what == "ready" else "red" if what == "failed" else ""
            t.add_row(name, f"[{style}]{what}[/]" if style else what)
        return t

    def __call__(self, name: str, what: str) -> None:
        with self.lock:
            if self.state.get(name) == what:
                return
            self.state[name] = what
            if self.live is not None:
                self.live.update(self._table(), refresh=True)
            elif not what.startswith("booting:"):
                click.echo(f"{name}: {what}", err=True)

    def __enter__(self) -> _ProgressView:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.live is not None:
            self.live.stop()


@click.command("test")
@file_option
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path),
              help="Write JUnit XML here (one test case per machine).")  # fmt: skip
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the results as JSON here.")  # fmt: skip
@click.option("--report", type=click.Path(file_okay=False, path_type=Path),
              help="Write a self-contained HTML report (index.html) into this directory.")
@click.option("--parallel", type=click.IntRange(1, 64), default=None,
              help="Machines booting at once (default: the number of CPUs).")  # fmt: skip
@click.option("--keep", is_flag=True, help="Leave the machines running afterwards.")
def test_cmd(
    lab_file: Path,
    junit: Path | None,
    json_file: Path | None,
    report: Path | None,
    parallel: int | None,
    keep: bool,
) -> None:
    """Boot every machine of the lab file and check it reaches its ready condition.

    Exits 1 when any machine fails. The reports carry each machine's boot timeline, the tail
    of its console and what DHCP, TFTP and HTTP saw of it.
    """
    import json

    from pvmlab.labfile.run import run_lab_tests
    from pvmlab.report.html import report_html
    from pvmlab.report.junit import junit_xml

    _require_root()
    lab = _load(lab_file)
    home = _home(lab)
    with _ProgressView([p.name for p in lab.machines]) as view:
        run = run_lab_tests(
            lab, home, parallel=parallel or os.cpu_count() or 1, keep=keep, progress=view,
            say=_say,
        )  # fmt: skip
    if junit is not None:
        junit.write_text(junit_xml(run))
    if json_file is not None:
        json_file.write_text(json.dumps(run.as_dict(), indent=2) + "\n")
    if report is not None:
        report.mkdir(parents=True, exist_ok=True)
        (report / "index.html").write_text(report_html(run))
    for m in run.machines:
        mark = "PASS" if m.passed else "FAIL"
        took = f"{m.elapsed:.1f} s" if m.elapsed is not None else "-"
        click.echo(f"{mark} {m.name} ({took})" + (f": {m.reason}" if m.reason else ""))
    click.echo(f"{run.passed} passed, {run.failed} failed")
    if run.failed:
        sys.exit(1)
