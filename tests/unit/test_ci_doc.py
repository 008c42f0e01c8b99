"""docs/ci.md's workflow is valid YAML and runs what the repository really has."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest

from conftest import REPO

yaml = pytest.importorskip("yaml")


def workflow() -> dict[Any, Any]:
    text = (REPO / "docs" / "ci.md").read_text()
    [block] = re.findall(r"```yaml\n(.*?)```", text, re.S)
    parsed: dict[Any, Any] = yaml.safe_load(block)
    return parsed


def test_workflow_steps_name_real_files_and_commands() -> None:
    flow = workflow()
    [job] = flow["jobs"].values()
    runs = [" ".join(str(s["run"]).split()) for s in job["steps"] if "run" in s]
    for script in ("scripts/install-system-deps.sh", "scripts/venv.sh"):
        assert any(script in r for r in runs) and (REPO / script).exists()
    build = next(r for r in runs if "tests.fixtures.bootassets" in r)
    assert "--out examples/assets" in build
    assert (REPO / "tests" / "fixtures" / "bootassets.py").exists()
    test = next(r for r in runs if "pvmlab test" in r)
    assert "-f examples/boot-matrix.toml --junit junit.xml --report report/" in test
    tomllib.loads((REPO / "examples" / "boot-matrix.toml").read_text())
    uploads = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/upload")]
    [upload] = uploads
    assert upload["if"] == "always()"
    assert set(upload["with"]["path"].split()) == {"junit.xml", "report/"}
