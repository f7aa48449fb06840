#!/usr/bin/env bash
# The README's test command: set the machine up, lint, type-check, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
echo "== ruff"; ruff check .
echo "== mypy"; mypy
echo "== pytest"; python -m pytest "$@"
