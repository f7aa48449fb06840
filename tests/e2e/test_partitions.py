"""Network partitions of each dependency in turn, healed with a reset or with stranded
connections: the service resumes on its own, nothing is lost or dead-lettered.

``batchctl run`` runs as a process and reaches PostgreSQL, Redis and Kafka each
through its own partition proxy (tests/support/proxy.py); the test's broker
advertises its proxy's address, so every Kafka connection goes through it too.
The test feeds realistic traffic (tests/support/scenario.py), partitions one
dependency for a few seconds mid-run, heals it, sends a probe batch and takes
the time from the heal until the probe is completed, projected to Redis and
published: that is the resume time, bounded by RESUME_BOUND_SECONDS. Short
client timeouts are set through the environment, as an operator would.

Before the client bounds and the stall watchdog, the stranded case never
resumed: the worker or the projector blocked forever on a connection that the
proxy held open and silent.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from infrastructure.kafka.clients import ensure_topics
from infrastructure.kafka.local_broker import LocalBroker
from infrastructure.redis.keys import summary_key
from infrastructure.settings import Settings
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL, drop_redis_prefix, drop_schema
from tests.e2e.conftest import consume, kafka_settings, produce, service_env
from tests.support.proxy import ProxyThread
from tests.support.scenario import Scenario, content, generate, registration

ROOT = Path(__file__).resolve().parents[2]
RESUME_BOUND_SECONDS = 30.0  # heal -> probe batch completed, projected and published
PARTITION_SECONDS = 4.0  # the fault's duration (not a synchronisation)
STALL_TIMEOUT = "4"
# Short bounds so that a stranded call is given up within seconds.
TIMEOUTS = {
    "DATABASE_STATEMENT_TIMEOUT_SECONDS": "3",
    "DATABASE_CALL_TIMEOUT_SECONDS": "4",
    "DATABASE_POOL_TIMEOUT_SECONDS": "5",
    "DATABASE_CONNECT_TIMEOUT_SECONDS": "3",
    "REDIS_SOCKET_TIMEOUT_SECONDS": "2",
    "REDIS_CONNECT_TIMEOUT_SECONDS": "2",
    "KAFKA_REQUEST_TIMEOUT_MS": "4000",
    "KAFKA_SESSION_TIMEOUT_MS": "6000",
    "KAFKA_METADATA_MAX_AGE_MS": "5000",
    "STALL_TIMEOUT_SECONDS": STALL_TIMEOUT,
}
RESULTS = os.environ.get("PARTITION_RESULTS")  # optional JSON-lines file of measurements


def _host_port(url: str, default: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default


@dataclass
class Rig:
    settings: Settings  # direct addresses (for the test's own checks)
    proxies: dict[str, ProxyThread]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start_service(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "infrastructure.cli.main", "run", "--no-local-broker"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def stop_service(self) -> int | None:
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    pg_host, pg_port = _host_port(TEST_DATABASE_URL, 5432)
    redis_host, redis_port = _host_port(TEST_REDIS_URL, 6379)
    broker = LocalBroker()
    proxies = {
        "postgres": ProxyThread(pg_host, pg_port).start(),
        "redis": ProxyThread(redis_host, redis_port).start(),
        "kafka": ProxyThread(broker.host, broker.port).start(),
    }
    broker.advertised = proxies["kafka"].address  # clients come back through the proxy
    broker.start()
    settings = kafka_settings(broker)
    asyncio.run(ensure_topics(settings))
    dbname = urlsplit(TEST_DATABASE_URL).path.lstrip("/")
    redis_db = urlsplit(TEST_REDIS_URL).path.lstrip("/") or "0"
    env = service_env(
        settings,
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{proxies['postgres'].port}/{dbname}",
        REDIS_URL=f"redis://127.0.0.1:{proxies['redis'].port}/{redis_db}",
        KAFKA_BOOTSTRAP_SERVERS=proxies["kafka"].address,
        SWEEP_INTERVAL_SECONDS="2",
        LOG_LEVEL="INFO",
        **TIMEOUTS,
    )
    r = Rig(settings, proxies, env, tmp_path / "service.log")
    try:
        yield r
    finally:
        r.stop_service()
        broker.stop()
        for p in proxies.values():
            p.stop()
        drop_schema(settings)
        drop_redis_prefix(settings)


def _statuses(client: redis.Redis, prefix: str, batch_ids: list[str]) -> list[str | None]:
    pipe = client.pipeline()
    for b in batch_ids:
        pipe.hget(summary_key(prefix, b), "status")
    return [None if v is None else v.decode() for v in pipe.execute()]


def _wait(check: Callable[[], bool], timeout: float, what: str, rig: Rig) -> float:
    """Poll ``check`` until true; return the seconds it took (fail with the service log)."""
    start = time.monotonic()
    while not check():
        assert rig.process is not None
        if rig.process.poll() is not None:
            pytest.fail(f"the service exited {rig.process.returncode}:\n{rig.log_tail()}")
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what} not reached within {timeout:.0f}s:\n{rig.log_tail()}")
        time.sleep(0.1)
    return time.monotonic() - start


def _completions(records: list[Any]) -> set[str]:
    return {
        r.key.decode() for r in records if dict(r.headers).get("event_type") == b"BatchCompleted"
    }


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("heal", ["reset", "stranded"])
@pytest.mark.parametrize("dependency", ["postgres", "redis", "kafka"])
def test_service_resumes_after_a_partition(rig: Rig, dependency: str, heal: str) -> None:
    tag = f"p{uuid.uuid4().hex[:6]}"
    scenario: Scenario = generate(
        tag, batches=16, max_slots=5, excess_batches=1, timeout_batches=0, invalid_messages=0
    )
    batch_ids = sorted(scenario.expected)
    half = len(scenario.messages) // 2
    first, second = scenario.messages[:half], scenario.messages[half:]
    direct = redis.Redis.from_url(TEST_REDIS_URL)
    prefix = rig.settings.redis_key_prefix
    proxy = rig.proxies[dependency]

    rig.start_service()
    asyncio.run(produce(rig.settings, first))
    _wait(
        lambda: "completed" in _statuses(direct, prefix, batch_ids),
        60,
        "a first completed batch",
        rig,
    )

    proxy.partition()
    if dependency != "kafka":  # traffic keeps arriving during the partition
        asyncio.run(produce(rig.settings, second))
    time.sleep(PARTITION_SECONDS)  # the fault lasts this long
    held = proxy.heal(reset=heal == "reset")
    healed_at = time.monotonic()
    assert held > 0, "the partition held no connection: the test would prove nothing"

    probe = f"{tag}-probe"
    probe_messages = [registration(probe, [f"{probe}-e0"]), content(probe, f"{probe}-t", "pf")]
    if dependency == "kafka":
        asyncio.run(produce(rig.settings, second))
    asyncio.run(produce(rig.settings, probe_messages))
    _wait(
        lambda: _statuses(direct, prefix, [probe]) == ["completed"],
        RESUME_BOUND_SECONDS * 2,
        "the probe batch in the read model",
        rig,
    )
    published = asyncio.run(
        consume(
            rig.settings,
            rig.settings.topics.events,
            lambda rs: probe in _completions(rs),
            timeout=RESUME_BOUND_SECONDS * 2,
        )
    )
    resumed_after = time.monotonic() - healed_at
    assert probe in _completions(published), rig.log_tail()

    # Every batch completes; nothing dead-lettered; every completion published.
    _wait(
        lambda: set(_statuses(direct, prefix, batch_ids)) == {"completed"},
        60,
        "every batch completed",
        rig,
    )
    events = asyncio.run(
        consume(
            rig.settings,
            rig.settings.topics.events,
            lambda rs: set(batch_ids) <= _completions(rs),
            timeout=60,
        )
    )
    assert set(batch_ids) <= _completions(events)
    dead = asyncio.run(consume(rig.settings, rig.settings.topics.dlq, bool, timeout=3))
    assert dead == []
    assert rig.process is not None and rig.process.poll() is None, rig.log_tail()
    assert rig.stop_service() == 0, rig.log_tail()
    stalls = rig.log_path.read_text(errors="replace").count('"stalled: ')
    verify = subprocess.run(
        [sys.executable, "-m", "infrastructure.cli.main", "verify"],
        cwd=ROOT,
        env={
            **rig.env,
            "DATABASE_URL": rig.settings.database_url.get_secret_value(),
            "REDIS_URL": rig.settings.redis_url.get_secret_value(),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr

    measured = {
        "dependency": dependency,
        "heal": heal,
        "held_connections": held,
        "resume_seconds": round(resumed_after, 2),
        "stall_log_lines": stalls,
    }
    print(json.dumps(measured))
    if RESULTS:
        with open(RESULTS, "a") as f:
            f.write(json.dumps(measured) + "\n")
    assert resumed_after < RESUME_BOUND_SECONDS, (measured, rig.log_tail())
