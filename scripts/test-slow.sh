#!/usr/bin/env bash
# The slow tests only (a whole unattended Debian 12 install over the lab's uplink, tens of minutes
# under TCG); `scripts/test.sh` and `pytest -m integration` leave them out.
#
# Usage: sudo scripts/test-slow.sh [pytest arguments...]
#        scripts/test-slow.sh [pytest arguments...]    (from a root shell: no sudo needed)
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/test.sh -m slow -s "$@"
