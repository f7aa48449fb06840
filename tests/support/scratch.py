"""Scratch places on the shared servers: a PostgreSQL schema, a Redis key prefix, topics.

One way to make them and one way to drop them, for the tests (``tests/conftest.py``),
the benchmark and the fault run: every run gets names of its own (a random tag), so
parallel runs on one machine never see each other's data.
"""

from __future__ import annotations

import uuid

import psycopg
from psycopg import sql

from infrastructure.postgres.store import conninfo
from infrastructure.redis.client import connect
from infrastructure.settings import Settings, load_settings


def new_tag(length: int = 10) -> str:
    """A random lower-case hex tag for names of this run's own."""
    return uuid.uuid4().hex[:length]


def topic_env(tag: str, sep: str = "-") -> dict[str, str]:
    """Topic names and a consumer group of this run's own."""
    return {
        "KAFKA_CONSUMER_GROUP": f"g{sep}{tag}",
        "TOPIC_BATCH_REGISTERED": f"reg{sep}{tag}",
        "TOPIC_CONTENT_PROVISIONED": f"prov{sep}{tag}",
        "TOPIC_VALIDATION_FAILED": f"fail{sep}{tag}",
        "TOPIC_BATCH_EVENTS": f"events{sep}{tag}",
        "TOPIC_DLQ": f"dlq{sep}{tag}",
    }


def scratch_env(
    database_url: str,
    redis_url: str,
    *,
    schema: str,
    key_prefix: str,
    **extra: str,
) -> dict[str, str]:
    """The environment of a scratch run: its own schema and Redis key prefix."""
    return {
        "DATABASE_URL": database_url,
        "DATABASE_SCHEMA": schema,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": key_prefix,
        **extra,
    }


def scratch_settings(
    database_url: str,
    redis_url: str,
    *,
    schema: str,
    key_prefix: str,
    **extra: str,
) -> Settings:
    return load_settings(
        scratch_env(database_url, redis_url, schema=schema, key_prefix=key_prefix, **extra)
    )


def drop_schema(s: Settings) -> None:
    """Drop the run's schema (the service creates it again on demand)."""
    with psycopg.connect(**conninfo(s), autocommit=True, connect_timeout=5) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(s.database_schema))
        )


def drop_redis_prefix(s: Settings) -> int:
    """Delete every Redis key under the run's prefix; return how many there were."""
    client = connect(s)  # one server or every primary of a cluster (SCAN per node)
    try:
        keys = list(client.scan_iter(match=f"{s.redis_key_prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        return len(keys)
    finally:
        client.close()


def drop_scratch(s: Settings) -> None:
    drop_schema(s)
    drop_redis_prefix(s)
