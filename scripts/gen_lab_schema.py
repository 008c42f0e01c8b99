"""Writes docs/lab.schema.json, the JSON Schema of lab files, from pvmlab.labfile.model."""

from __future__ import annotations

import json
from pathlib import Path

from pvmlab.labfile.model import json_schema


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "docs" / "lab.schema.json"
    out.write_text(json.dumps(json_schema(), indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
