"""The fault kinds, and what injecting one does to a server or a producer.

The process kinds (kill, stop) act on the ``Fleet``; the run (``run.py``) draws
kinds from a seeded schedule and calls these.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

import psycopg
import redis
from psycopg import sql

from infrastructure.postgres.store import conninfo
from infrastructure.settings import Settings
from tests.support.scenario import Message
from tests.support.scratch import drop_redis_prefix

SESSION_TIMEOUT_S = 10.0  # aiokafka's default session_timeout_ms
# In this order, so that a short run (--quick) still covers the servers.
FAULT_KINDS = (
    "kill_worker",
    "restart_postgres",
    "flush_redis",
    "stop_worker",
    "restart_redis",
    "kill_outbox",
    "kill_projector",
    "compressed_producers",
    "read_only_window",
    "concurrent_start",
)
PARTITION_KINDS = tuple(
    f"partition_{dependency}_{heal}"
    for dependency in ("postgres", "redis", "kafka")
    for heal in ("reset", "stranded")
)
# The fleet's bounds when a partition kind is in the run (seconds, not minutes).
PARTITION_TIMEOUTS = {
    "DATABASE_STATEMENT_TIMEOUT_SECONDS": "5",
    "DATABASE_CALL_TIMEOUT_SECONDS": "6",
    "REDIS_SOCKET_TIMEOUT_SECONDS": "3",
    "KAFKA_REQUEST_TIMEOUT_MS": "6000",
    "KAFKA_METADATA_MAX_AGE_MS": "10000",
    "STALL_TIMEOUT_SECONDS": "10",
}
CODECS = ("gzip", "snappy", "lz4", "zstd")
# fmt: off
REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
    "--logfile", "/var/log/redis/ci.log",
]
# fmt: on


def wait_for(check: Any, timeout: float, what: str) -> float:
    """Poll ``check()`` until true (bounded); return the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if check():
                return time.monotonic() - start
        except Exception:  # the server is coming back
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} not back within {timeout:.0f}s")


def postgres_up(settings: Settings) -> bool:
    with psycopg.connect(**conninfo(settings), connect_timeout=2) as conn:
        return conn.execute("SELECT 1").fetchone() is not None


def pg_ctlcluster(action: str, check: bool) -> None:
    """Start or restart the machine's PostgreSQL cluster."""
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=check,
        capture_output=True,
        timeout=120,
    )


def restart_postgres(settings: Settings) -> None:
    pg_ctlcluster("restart", check=True)
    wait_for(lambda: postgres_up(settings), 90, "PostgreSQL")


def redis_up() -> bool:
    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def restart_redis() -> None:
    """Restart the machine's Redis (it keeps nothing on disk: it comes back empty)."""
    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)
    try:
        client.shutdown(nosave=True)
    except (redis.ConnectionError, redis.ResponseError):
        pass  # shutdown closes the connection under us
    finally:
        client.close()
    wait_for(lambda: not redis_up(), 20, "Redis shutdown")
    subprocess.run(REDIS_START, check=True, capture_output=True, timeout=30)
    wait_for(redis_up, 30, "Redis")


def ensure_servers_running(settings: Settings) -> None:
    """Leave PostgreSQL and Redis running, whatever happened."""
    try:
        wait_for(redis_up, 5, "Redis")
    except TimeoutError:
        subprocess.run(REDIS_START, check=False, capture_output=True, timeout=30)
        wait_for(redis_up, 30, "Redis")
    try:
        wait_for(lambda: postgres_up(settings), 5, "PostgreSQL")
    except TimeoutError:
        pg_ctlcluster("start", check=False)
        wait_for(lambda: postgres_up(settings), 90, "PostgreSQL")


def flush_prefix(settings: Settings) -> int:
    """Delete every key of this run's prefix (the projector must notice)."""
    return drop_redis_prefix(settings)


def admin_connect(settings: Settings) -> psycopg.Connection[Any]:
    """A connection to the server's ``postgres`` database (to alter or drop the run's own)."""
    return psycopg.connect(
        **{**conninfo(settings), "dbname": "postgres"}, autocommit=True, connect_timeout=5
    )


def set_read_only(settings: Settings, on: bool) -> int:
    """Switch the run's OWN database to read-only (or back) and end its sessions."""
    dbname = conninfo(settings)["dbname"]
    assert dbname.startswith("chaos_"), f"refusing to alter {dbname!r}: not the run's own"
    with admin_connect(settings) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = {}").format(
                sql.Identifier(dbname), sql.SQL("on" if on else "off")
            )
        )
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        ).fetchall()
    return len(rows)


def produce_compressed(settings: Settings, messages: list[Message]) -> int:
    """Send ``messages`` with librdkafka, a quarter with each codec; return how many."""
    from confluent_kafka import Producer  # dev extra: the fault run only

    topic = settings.topics.by_kind
    for i, codec in enumerate(CODECS):
        producer = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap_servers,
                "compression.type": codec,
                "enable.idempotence": False,  # Tansu has no idempotent producer
                "acks": "all",
                "linger.ms": 20,
            }
        )
        for m in messages[i :: len(CODECS)]:
            producer.produce(topic[m.kind], key=m.key.encode(), value=m.value)
        if producer.flush(60) != 0:
            raise RuntimeError(f"{codec} producer: messages not acknowledged")
    return len(messages)
