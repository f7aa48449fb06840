"""The e2e scenario on a real Redis Cluster, with a primary killed mid-run.

``batchctl run`` runs as a process with REDIS_URL naming a local six-node
Redis Cluster (tests/support/redis_cluster.py). Realistic traffic
(tests/support/scenario.py) goes in through the real broker; mid-run the
primary that holds the projection position is killed (SIGKILL): its replica
takes over, the killed node is started again and rejoins as a replica, while
the second half of the traffic arrives. Every batch must reach its expected
outcome in the read model, and ``batchctl verify`` must find nothing; a
``batchctl rebuild`` (across every node) must leave it so.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from infrastructure.bootstrap import Bootstrap
from infrastructure.kafka.clients import ensure_topics
from infrastructure.kafka.local_broker import LocalBroker
from infrastructure.redis.keys import tracking_key
from infrastructure.redis.view import APPLICATION_NAME, RedisSlotView
from infrastructure.settings import Settings
from tests.conftest import drop_redis_prefix, drop_schema
from tests.e2e.conftest import consume, kafka_settings, produce, service_env
from tests.support.redis_cluster import LocalRedisCluster
from tests.support.scenario import Scenario, generate

ROOT = Path(__file__).resolve().parents[2]


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    # Short bounds: a call to the killed primary is given up within seconds.
    bounds = {"REDIS_SOCKET_TIMEOUT_SECONDS": "2", "REDIS_CONNECT_TIMEOUT_SECONDS": "1"}
    return service_env(settings, **{**bounds, "LOG_LEVEL": "INFO", **extra})


def _batchctl(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infrastructure.cli.main", *args],
        cwd=ROOT,
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def cluster_settings(broker: LocalBroker, redis_cluster: LocalRedisCluster) -> Iterator[Settings]:
    s = kafka_settings(broker, REDIS_URL=redis_cluster.url)
    asyncio.run(ensure_topics(s))
    yield s
    drop_schema(s)
    drop_redis_prefix(s)


def _statuses(view: RedisSlotView, batch_ids: list[str]) -> dict[str, str | None]:
    found = {}
    for batch_id in batch_ids:
        model = view.read_batch(batch_id)
        found[batch_id] = None if model is None else model.summary.get("status")
    return found


def _wait(check: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            pytest.fail(f"{what} not reached within {timeout:.0f}s:\n{tail}")
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_scenario_on_a_redis_cluster_survives_a_primary_killed_mid_run(
    cluster_settings: Settings, redis_cluster: LocalRedisCluster, tmp_path: Path
) -> None:
    s = cluster_settings
    scenario: Scenario = generate(
        f"c{uuid.uuid4().hex[:6]}", batches=24, max_slots=5, timeout_batches=0, invalid_messages=2
    )
    batch_ids = sorted(scenario.expected)
    half = len(scenario.messages) // 2
    view = RedisSlotView.from_settings(s)
    log_path = tmp_path / "service.log"
    with open(log_path, "ab") as log:
        service = subprocess.Popen(
            [sys.executable, "-m", "infrastructure.cli.main", "run", "--no-local-broker"],
            cwd=ROOT,
            env=_env(s),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    victim: int | None = None
    try:
        asyncio.run(produce(s, scenario.messages[:half]))
        _wait(
            lambda: "completed" in _statuses(view, batch_ids).values(),
            60,
            "a first completed batch",
            log_path,
        )
        # The primary that holds the position (and about a third of the batches).
        victim = redis_cluster.primary_of(tracking_key(s.redis_key_prefix, APPLICATION_NAME))
        redis_cluster.kill(victim)
        asyncio.run(produce(s, scenario.messages[half:]))  # traffic goes on meanwhile
        redis_cluster.wait_ok(60, primaries=3)  # its replica took over
        assert victim not in redis_cluster.primaries()
        redis_cluster.restart(victim)  # it rejoins, as a replica now
        victim = None
        redis_cluster.wait_ok(60)

        _wait(
            lambda: set(_statuses(view, batch_ids).values()) == {"completed"},
            90,
            "every batch completed in the read model",
            log_path,
        )
        head = _head(s)
        _wait(lambda: (view.position() or 0) >= head, 60, "the projector caught up", log_path)
        dead = asyncio.run(
            consume(s, s.topics.dlq, lambda rs: len(rs) >= scenario.invalid, timeout=30)
        )
        assert len(dead) == scenario.invalid
        assert service.poll() is None, log_path.read_text(errors="replace")[-4000:]
    finally:
        if victim is not None:
            redis_cluster.restart(victim)
            redis_cluster.wait_ok(60)
        if service.poll() is None:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                service.kill()
                service.wait(10)
        view.close()
    text = log_path.read_text(errors="replace")
    assert service.returncode == 0, text[-4000:]
    # The kill reached the projector mid-run (else this test would prove nothing).
    assert "slot projector: " in text, text[-4000:]

    after = RedisSlotView.from_settings(s)
    try:
        for batch_id, exp in scenario.expected.items():
            model = after.read_batch(batch_id)
            assert model is not None
            assert model.summary["assigned"] == str(exp.assigned), batch_id
            assert model.summary["excess"] == str(exp.excess), batch_id
    finally:
        after.close()
    verified = _batchctl(s, "verify", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    doc = json.loads(verified.stdout)
    assert doc["agrees"] is True and doc["batches"] == len(batch_ids)
    rebuilt = _batchctl(s, "rebuild", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads(rebuilt.stdout)["batches"] == len(batch_ids)
    again = _batchctl(s, "verify")
    assert again.returncode == 0, again.stdout + again.stderr


def _head(s: Settings) -> int:
    with Bootstrap(s) as built:
        return built.service.recorder.max_notification_id() or 0
