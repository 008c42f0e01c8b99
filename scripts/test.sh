#!/usr/bin/env bash
# The whole test suite, from a fresh Debian/Ubuntu machine: installs the system packages and the
# Python environment, then lint, type check, unit and integration tests (real dnsmasq, QEMU,
# UEFI/BIOS firmware and iPXE, inside network namespaces the tests create; needs root).
#
# Slow tests (a whole OS install, tens of minutes) are left out unless the -m expression names
# them (tests/conftest.py): scripts/test-slow.sh runs them.
#
# Usage: sudo scripts/test.sh [pytest arguments...]   (or without sudo from a root shell)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: the integration tests create network namespaces and need root." >&2
  echo "  hint: run it as: sudo $0 (or from a root shell)" >&2
  exit 1
fi

scripts/install-system-deps.sh --with-test-tools
scripts/venv.sh

echo "== ruff"
.venv/bin/ruff check src tests bench scripts
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
# Boot assets for the tests (kernels + busybox initramfs from Debian packages) are cached in
# /var/cache/pvmlab-test-assets between runs.
exec .venv/bin/pytest "$@"
