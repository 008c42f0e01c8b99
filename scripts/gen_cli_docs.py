"""Write docs/cli.md from the CLI's own help text, so the reference never drifts from the code.

Usage: .venv/bin/python scripts/gen_cli_docs.py [--check]
  --check  exit 1 (and say so) when docs/cli.md differs from what the CLI says now
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pvmlab.cli.main import cli

OUT = Path(__file__).resolve().parent.parent / "docs" / "cli.md"

INTRO = """# pvmlab command reference

Generated from the commands' own help by `scripts/gen_cli_docs.py`; do not edit by hand.
Every command accepts `-h/--help`. Global options (`--home DIR`, `--debug`) come before the
command: `pvmlab --home /tmp/lab2 vm list`.

Exit codes: 0 success; 1 a problem pvmlab explains on one line (with a hint); 2 bad input or
usage; 70 an internal error (rerun with `--debug` and report it).
"""


def _walk(cmd: click.Command, path: list[str], parent: click.Context | None) -> list[str]:
    ctx = click.Context(
        cmd,
        info_name=" ".join(path),
        parent=None,
        max_content_width=96,
        terminal_width=96,
        help_option_names=["-h", "--help"],
    )
    del parent
    text = cmd.get_help(ctx)
    level = "#" * min(len(path) + 1, 4)
    parts = [f"{level} `{' '.join(path)}`\n", "```text", text.rstrip(), "```\n"]
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                parts.extend(_walk(sub, [*path, name], ctx))
    return parts


def render() -> str:
    return INTRO + "\n" + "\n".join(_walk(cli, ["pvmlab"], None)) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not OUT.exists() or OUT.read_text() != text:
            print("docs/cli.md is out of date: run scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
