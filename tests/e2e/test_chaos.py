"""The fault run, CI-sized: ``scripts/chaos.py --quick`` as a real process.

It starts its own broker, two workers, a projector and an outbox, and injects
one of each fault kind: SIGKILL of a worker, the outbox and the projector,
SIGSTOP of a worker past its session timeout, a restart of this machine's
PostgreSQL and Redis, a flush of the run's Redis keys, and a broker restart
once all input was consumed. The script waits for every server to come back
and leaves PostgreSQL and Redis running; this test checks that too.

About two minutes. It restarts the machine's PostgreSQL and Redis, so it must
not run in parallel with other tests (the suite runs serially).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import redis

from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL

ROOT = Path(__file__).resolve().parents[2]
KINDS = {
    "kill_worker",
    "kill_projector",
    "kill_outbox",
    "stop_worker",
    "restart_postgres",
    "flush_redis",
    "restart_redis",
    "restart_broker",
}


@pytest.mark.slow
@pytest.mark.timeout(290)
def test_quick_fault_run_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    report_path = tmp_path / "chaos.json"
    result = subprocess.run(
        [sys.executable, "scripts/chaos.py", "--quick", "--seed", "11",
         "--json-out", str(report_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )  # fmt: skip
    output = result.stdout[-6000:] + result.stderr[-3000:]
    # The servers are up again, whatever the outcome.
    with psycopg.connect(TEST_DATABASE_URL.rsplit("/", 1)[0] + "/postgres") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert redis.Redis.from_url(TEST_REDIS_URL).ping()
    assert report_path.exists(), output
    report = json.loads(report_path.read_text())
    assert result.returncode == 0, output
    assert report["ok"] is True
    assert all(n == 0 for n in report["violations"].values()), report["violations"]
    assert {f["kind"] for f in report["faults"]} == KINDS, report["faults"]
    assert all(f["recovery_seconds"] is not None for f in report["faults"]), report["faults"]
    assert report["republished_after_broker_restart"] == 0
    assert report["stored_events"] > 100 and report["divergence"] == 0
    assert report["dead_lettered"] >= report["invalid_sent"] - report["dead_letter_duplicates"]
    assert report["recorded"] > 0 and report["noop"] > 0  # duplicates were really sent
