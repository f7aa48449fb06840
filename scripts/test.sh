#!/usr/bin/env bash
# The README's test command: set the machine up, lint, type-check, run every test.
#   bash scripts/test.sh            everything (what CI runs, .ci/run)
#   bash scripts/test.sh --fast     the inner loop: unit, property and the quick
#                                   integration tests (no end-to-end processes, no
#                                   test marked slow, the single Redis only)
# Other arguments go to pytest, e.g. `bash scripts/test.sh -x tests/unit`.
set -euo pipefail
cd "$(dirname "$0")/.."
fast=0
if [ "${1:-}" = "--fast" ]; then
  fast=1
  shift
fi
bash scripts/setup.sh
. .venv/bin/activate
echo "== ruff"; ruff check .
echo "== mypy"; mypy
echo "== pytest"
if [ "$fast" = 1 ]; then
  export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}  # CI's example counts
  exec python -m pytest tests/unit tests/property tests/integration -m "not slow" -k "not cluster" "$@"
fi
exec python -m pytest "$@"
