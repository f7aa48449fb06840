#!/usr/bin/env bash
# The README's main-job command: set the machine up, then run scripts/main_job.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python scripts/main_job.py "$@"
