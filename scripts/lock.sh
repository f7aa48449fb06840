#!/usr/bin/env bash
# Regenerate the lock files from pyproject.toml (after changing a dependency there):
#   requirements.lock      the production install (the Dockerfile): [project] dependencies
#   requirements-dev.lock  scripts/setup.sh, CI: + the [dev] and [local] extras, pinned
#                          to the same versions as requirements.lock
# Pins every package with the hashes of all its files on PyPI, for any platform
# (--universal), for the Python the service runs on. Extra arguments go to both
# compiles, e.g. `bash scripts/lock.sh --upgrade` or `--upgrade-package aiokafka`.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
common=(--universal --python-version 3.11 --generate-hashes --quiet
        --custom-compile-command "bash scripts/lock.sh")
"$UV" pip compile pyproject.toml "${common[@]}" "$@" -o requirements.lock
"$UV" pip compile pyproject.toml --extra dev --extra local -c requirements.lock \
  "${common[@]}" "$@" -o requirements-dev.lock
