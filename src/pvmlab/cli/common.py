"""Helpers shared by the command modules: the lab home, JSON output, tables."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from pvmlab.home import LabHome


def home() -> LabHome:
    return LabHome.from_env()


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def table(title: str | None, columns: list[str], rows: list[list[str]]) -> None:
    """Print a table with rich (imported here, only by commands that print tables)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_lines=False, header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*r)
    Console(file=sys.stdout, soft_wrap=False).print(t)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
