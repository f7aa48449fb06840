"""Shared fixtures: real PostgreSQL, Redis and a real Kafka-protocol broker.

Every test gets its own PostgreSQL schema and Redis key prefix, so tests (and
parallel runs) never see each other's data. The read-model tests run twice: on
the single Redis and on a local Redis Cluster (``read_model_settings``).
Hypothesis profiles: ``ci`` (the default under CI=true) and ``local``; choose
with HYPOTHESIS_PROFILE.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings

from application.service import BatchService
from infrastructure.bootstrap import Bootstrap
from infrastructure.kafka.local_broker import LocalBroker
from infrastructure.postgres.store import ensure_database
from infrastructure.settings import Settings
from tests.support.redis_cluster import LocalRedisCluster
from tests.support.scratch import drop_redis_prefix, drop_schema, new_tag, scratch_settings

__all__ = ["drop_redis_prefix", "drop_schema"]  # re-exported for the tests

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "local", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "local")
)

TEST_DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/batchslot_test"
)
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session", autouse=True)
def test_database() -> None:
    """The tests' database exists before any test runs (on a fresh machine it does not):
    a test that connects without creating anything (a lease keeper, a CLI command that
    refuses a missing store) must not depend on an earlier test having created it."""
    ensure_database(
        scratch_settings(TEST_DATABASE_URL, TEST_REDIS_URL, schema="public", key_prefix="test:")
    )


def make_settings(**extra: str) -> Settings:
    """Settings for one test: a fresh schema and Redis key prefix."""
    tag = new_tag()
    return scratch_settings(
        TEST_DATABASE_URL, TEST_REDIS_URL, schema=f"t_{tag}", key_prefix=f"test:{tag}:", **extra
    )


@pytest.fixture
def test_settings() -> Iterator[Settings]:
    s = make_settings()
    yield s
    drop_schema(s)
    drop_redis_prefix(s)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalRedisCluster]:
    """A real Redis Cluster (3 primaries, 3 replicas) on free loopback ports, started
    on first use and removed at the end of the session (tests/support/redis_cluster.py)."""
    cluster = LocalRedisCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["single", "cluster"])
def read_model_settings(request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Settings for one test, once on the single Redis and once on the Redis Cluster:
    the read-model tests take ``test_settings`` from here (``test_settings = ...``)."""
    if request.param == "cluster":
        cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
        s = make_settings(REDIS_URL=cluster.url)
    else:
        s = make_settings()
    yield s
    drop_schema(s)
    drop_redis_prefix(s)


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    """A real Kafka-protocol broker (Tansu) on a free loopback port."""
    b = LocalBroker().start()
    yield b
    b.stop()


@pytest.fixture
def service(test_settings: Settings) -> Iterator[BatchService]:
    svc = Bootstrap(test_settings).batch_service()
    yield svc
    svc.close()


class ManualClock:
    """Time as an input: tests move it explicitly."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
