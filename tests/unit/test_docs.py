"""The command reference in docs/cli.md is generated from the CLI's help: it must be current."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_cli_reference_is_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_cli_docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr + "\n(run: .venv/bin/python scripts/gen_cli_docs.py)"
