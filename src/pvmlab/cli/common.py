"""Helpers shared by the command modules: the lab home, JSON output, tables."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from pvmlab.home import LabHome


def home() -> LabHome:
    """The lab home, refused when another user could tamper with it (``check_ownership``)."""
    lab_home = LabHome.from_env()
    lab_home.check_ownership()
    return lab_home


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def table(
    title: str | None, columns: list[str], rows: list[list[str]], *, plain: bool = False
) -> None:
    """Print a table with rich (imported here, only by commands that print tables).

    Cells fold to fit the terminal. ``plain``: borderless and never folded instead, and as wide
    as a row needs when not on a terminal, so each row stays one line for grep.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    # cells are data, printed as they are: a MAC's ":cd:" is no emoji code, "[x]" no markup
    console = Console(file=sys.stdout, soft_wrap=False, emoji=False, markup=False)
    if plain and not console.is_terminal:
        console = Console(file=sys.stdout, soft_wrap=False, width=400, emoji=False, markup=False)
    if plain:
        t = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    else:
        t = Table(title=title, header_style="bold")
    for c in columns:
        if plain:
            t.add_column(c, no_wrap=True)
        else:
            t.add_column(c, overflow="fold")
    from rich.text import Text

    for r in rows:  # cells are data, never rich markup: "http://[fd00::1]/" must stay whole
        t.add_row(*(Text(cell) for cell in r))
    console.print(t)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
