"""/healthz, /readyz and the new metrics of a real ``batchctl run`` process,
and the message ids on its log lines.

The process reaches PostgreSQL through a partition proxy (tests/support/proxy.py)
that the test controls: the shared server is never stopped. Redis and the test's
broker are reached directly.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from infrastructure.kafka.local_broker import free_port
from infrastructure.settings import Settings
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL
from tests.e2e.conftest import produce, service_env
from tests.support.proxy import ProxyThread
from tests.support.scenario import Message, content, envelope, registration

ROOT = Path(__file__).resolve().parents[2]
BOUND = 60.0  # seconds for any awaited condition (a bound, not a synchronisation)


@dataclass
class Process:
    settings: Settings
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes]

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except (urllib.error.URLError, ConnectionError):
            return 0, ""  # not serving yet

    def readyz(self) -> tuple[int, dict[str, Any]]:
        status, body = self.get("/readyz")
        return status, json.loads(body) if body else {}

    def wait(self, check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + BOUND
        while not check():
            if self.proc.poll() is not None:
                pytest.fail(f"the service exited {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what} not reached within {BOUND:.0f}s:\n{self.tail()}")
            time.sleep(0.2)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_lines(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
        return found


@pytest.fixture
def pg_proxy() -> Iterator[ProxyThread]:
    parts = urlsplit(TEST_DATABASE_URL)
    proxy = ProxyThread(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    yield proxy
    proxy.stop()


def start(
    settings: Settings, tmp_path: Path, database_url: str, **extra: str
) -> Process:
    port = free_port()
    env = service_env(
        settings,
        **{
            "DATABASE_URL": database_url,
            "REDIS_URL": TEST_REDIS_URL,
            "METRICS_PORT": str(port),
            "LOG_LEVEL": "INFO",
            "DATABASE_CONNECT_TIMEOUT_SECONDS": "2",
            "DATABASE_STATEMENT_TIMEOUT_SECONDS": "3",
            "DATABASE_CALL_TIMEOUT_SECONDS": "4",
            "READYZ_PROBE_TIMEOUT_SECONDS": "1",
            "READYZ_CACHE_SECONDS": "0.5",
            **extra,
        },
    )
    log_path = tmp_path / "service.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "infrastructure.cli.main", "run", "--no-local-broker"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Process(settings, port, log_path, proc)


def stop(p: Process) -> None:
    if p.proc.poll() is None:
        p.proc.send_signal(signal.SIGTERM)
        try:
            p.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait(10)


def direct_url() -> str:
    return TEST_DATABASE_URL


@pytest.mark.timeout(240)
def test_readyz_answers_503_naming_postgres_while_it_is_unreachable_then_200(
    e2e_settings: Settings, pg_proxy: ProxyThread, tmp_path: Path
) -> None:
    dbname = urlsplit(TEST_DATABASE_URL).path.lstrip("/")
    url = f"postgresql://postgres@127.0.0.1:{pg_proxy.port}/{dbname}"
    p = start(e2e_settings, tmp_path, url)
    try:
        p.wait(lambda: p.readyz()[0] == 200, "/readyz 200")
        status, body = p.readyz()
        assert body["status"] == "ready" and body["failing"] == []
        assert set(body["checks"]) == {
            "loop", "postgres", "redis", "kafka", "consumer", "projection_lag", "outbox_lag",
        }, body
        assert all(c["ok"] for c in body["checks"].values()), body
        assert p.get("/healthz")[0] == 200
        assert p.get("/nothing-here")[0] == 404
        status, metrics = p.get("/metrics")
        assert status == 200 and "batchslot_build_info{" in metrics

        pg_proxy.partition()  # PostgreSQL stops answering (new connections too)
        p.wait(lambda: p.readyz()[0] == 503, "/readyz 503")
        status, body = p.readyz()
        assert status == 503 and body["status"] == "not ready", body
        assert "postgres" in body["failing"], body
        assert not body["checks"]["postgres"]["ok"]
        assert body["checks"]["redis"]["ok"] and body["checks"]["kafka"]["ok"], body
        # The process itself is alive: only readiness fails.
        assert p.get("/healthz")[0] == 200

        pg_proxy.heal(reset=True)
        p.wait(lambda: p.readyz()[0] == 200, "/readyz 200 after the heal")
    finally:
        stop(p)


def _samples(text: str, name: str) -> list[float]:
    return [
        float(m.group(1))
        for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.MULTILINE)
    ]


@pytest.mark.timeout(240)
def test_traffic_is_timed_and_dead_letter_log_lines_name_the_message(
    e2e_settings: Settings, tmp_path: Path
) -> None:
    p = start(e2e_settings, tmp_path, direct_url(), PENDING_AGE_INTERVAL_SECONDS="1")
    tag = uuid.uuid4().hex[:6]
    batch, early = f"b-{tag}", f"early-{tag}"
    conflict_cid = uuid.uuid4()
    conflict = Message(  # the same batch with other slots: REGISTRATION_CONFLICT
        "registered",
        batch,
        envelope(
            "registered",
            {"batch_id": batch, "essay_ids": ["x1"], "expected_essay_count": 1},
            conflict_cid,
        ),
    )
    try:
        p.wait(lambda: p.readyz()[0] == 200, "/readyz 200")
        asyncio.run(
            produce(
                e2e_settings,
                [
                    registration(batch, ["e1", "e2"]),
                    content(batch, f"t1-{tag}", "f1"),
                    content(early, f"t2-{tag}", "f2"),  # held: its batch is not registered
                ],
            )
        )
        asyncio.run(produce(e2e_settings, [conflict]))

        def dead_lettered() -> list[dict[str, Any]]:
            return [line for line in p.log_lines() if line.get("msg") == "dead-lettered"]

        p.wait(lambda: bool(dead_lettered()), "the dead-lettered log line")
        (line,) = dead_lettered()
        assert line["level"] == "WARNING"
        assert line["reason"] == "REGISTRATION_CONFLICT", line
        assert line["correlation_id"] == str(conflict_cid), line
        assert line["batch_id"] == batch, line

        def observed() -> dict[str, float]:
            text = p.get("/metrics")[1]
            return {
                name: sum(_samples(text, name))
                for name in (
                    "batchslot_command_seconds_count",
                    "batchslot_produce_to_record_seconds_count",
                    "batchslot_outbox_publish_seconds_count",
                    "batchslot_projection_apply_seconds_count",
                    "batchslot_pending_content_age_seconds",
                    "batchslot_build_info",
                )
            }

        p.wait(lambda: all(v > 0 for v in observed().values()), f"observations {observed()}")
        text = p.get("/metrics")[1]
        (info,) = re.findall(r"^batchslot_build_info\{([^}]*)\} 1\.0$", text, re.MULTILINE)
        assert 'version="' in info and f'python="{sys.version_info.major}.' in info
    finally:
        stop(p)
