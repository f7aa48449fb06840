"""What an operator sees on /metrics: consumer lag per group, topic and partition, and
readiness (the metrics the alert rules in deploy/prometheus/alerts.yml use)."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from infrastructure.settings import Settings
from tests.e2e.conftest import drained, produce, service_env, terminate
from tests.support.scenario import registration

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def samples(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of one metric's samples."""
    found = {}
    for match in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M):
        found[match.group(1) or ""] = float(match.group(2))
    return found


def test_the_worker_exports_consumer_lag_and_readiness(
    e2e_settings: Settings, tmp_path: Path
) -> None:
    s = e2e_settings
    port = free_port()
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "infrastructure.cli.main", "worker"],
            cwd=ROOT,
            env=service_env(s, METRICS_PORT=str(port)),
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        deadline = time.monotonic() + 60
        while "worker started" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        asyncio.run(produce(s, [registration(f"lag-{i}", ["e1"]) for i in range(30)]))
        asyncio.run(drained(s, timeout=60))
        group = s.kafka_consumer_group
        wanted = {
            f'{{group="{group}",partition="{p}",topic="{t}"}}'
            for t in s.topics.inbound
            for p in range(s.kafka_topic_partitions)
        }
        lag: dict[str, float] = {}
        while time.monotonic() < deadline:
            lag = samples(scrape(port), "batchslot_consumer_lag")
            if wanted <= set(lag) and not any(lag.values()):
                break
            time.sleep(0.5)
        assert wanted <= set(lag), (wanted, lag)
        assert all(lag[k] == 0 for k in wanted), lag  # everything produced was handled
        text = scrape(port)
        assert samples(text, "batchslot_ready") == {"": 1.0}, text[-2000:]
        checks = samples(text, "batchslot_readiness_check_ok")
        assert checks and all(v == 1.0 for v in checks.values()), checks
    finally:
        terminate(proc, timeout=20)
