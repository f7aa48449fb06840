"""The client bounds on every PostgreSQL, Redis and Kafka call come from the environment,
validated at start-up."""

from __future__ import annotations

import asyncio

import pytest

from infrastructure.kafka.clients import client_kwargs, make_consumer
from infrastructure.postgres.timeouts import libpq_bounds
from infrastructure.redis.view import RedisSlotView
from infrastructure.settings import SettingsError, load_settings


def test_postgres_defaults_free_a_dead_connection_within_seconds() -> None:
    s = load_settings({})
    assert libpq_bounds(s) == {
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": 10_000,
        "connect_timeout": 5,
        "options": "-c statement_timeout=30000",
    }
    assert s.database_call_deadline_seconds == 35.0
    assert s.stall_timeout_seconds == 60.0


def test_postgres_bounds_from_the_environment() -> None:
    s = load_settings(
        {
            "DATABASE_STATEMENT_TIMEOUT_SECONDS": "2.5",
            "DATABASE_CALL_TIMEOUT_SECONDS": "4",
            "DATABASE_TCP_USER_TIMEOUT_SECONDS": "0",
        }
    )
    bounds = libpq_bounds(s)
    assert bounds["options"] == "-c statement_timeout=2500"
    assert bounds["tcp_user_timeout"] == 0
    assert s.database_call_deadline_seconds == 4.0


@pytest.mark.parametrize(
    "var",
    [
        "DATABASE_STATEMENT_TIMEOUT_SECONDS",
        "DATABASE_KEEPALIVES_COUNT",
        "REDIS_SOCKET_TIMEOUT_SECONDS",
        "KAFKA_REQUEST_TIMEOUT_MS",
        "STALL_TIMEOUT_SECONDS",
    ],
)
def test_a_bad_bound_names_its_variable(var: str) -> None:
    with pytest.raises(SettingsError, match=f"^{var}: "):
        load_settings({var: "0"})


def test_redis_client_is_bounded() -> None:
    view = RedisSlotView.from_settings(load_settings({"REDIS_SOCKET_TIMEOUT_SECONDS": "1.5"}))
    kwargs = view.client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 1.5
    assert kwargs["socket_connect_timeout"] == 5.0
    assert kwargs["health_check_interval"] == 10
    view.close()


def test_kafka_clients_are_bounded() -> None:
    s = load_settings({"KAFKA_REQUEST_TIMEOUT_MS": "7000", "KAFKA_SESSION_TIMEOUT_MS": "6000"})
    kwargs = client_kwargs(s)
    assert kwargs["request_timeout_ms"] == 7000
    assert kwargs["metadata_max_age_ms"] == 60_000

    async def build() -> tuple[int, int]:
        consumer = make_consumer(s, "t", group_id="g")  # not started: no network
        return consumer._session_timeout_ms, consumer._heartbeat_interval_ms

    assert asyncio.run(build()) == (6000, 2000)
