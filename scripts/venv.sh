#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv with pvmlab installed
# editable, plus the test tools. Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

py=${PYTHON:-python3}
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "venv: pvmlab needs Python >= 3.11; '$py' is $("$py" --version 2>&1 || echo missing)." >&2
  echo "  hint: install a newer python3 (Debian 12 and Ubuntu 24.04 ship one) or set PYTHON=..." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
