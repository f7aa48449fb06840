"""A store that refuses writes is never the message's fault.

A real read-only database: the test creates its own database, runs the worker
on it, sets ``default_transaction_read_only = on`` on that database and ends
its sessions (``pg_terminate_backend``) so the pool reconnects read-only, as
after a failover to a standby. Valid messages then must not be dead-lettered
or committed; once the database is writable again every batch completes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from psycopg import sql

from infrastructure import metrics
from infrastructure.bootstrap import Bootstrap
from infrastructure.kafka.clients import client_kwargs, ensure_topics
from infrastructure.kafka.local_broker import LocalBroker
from infrastructure.postgres.store import conninfo
from infrastructure.processes.worker import Worker
from infrastructure.settings import Settings, load_settings
from infrastructure.transient import is_transient, store_writable
from tests.conftest import TEST_DATABASE_URL, drop_redis_prefix
from tests.e2e.conftest import consume, eventually, kafka_settings, produce, running
from tests.support.scenario import Message, content, registration


def admin_connect() -> psycopg.Connection[Any]:
    """A connection to the server's ``postgres`` database (to create and alter ours)."""
    base = conninfo(load_settings({"DATABASE_URL": TEST_DATABASE_URL}))
    return psycopg.connect(**{**base, "dbname": "postgres"}, autocommit=True)


def set_read_only(dbname: str, on: bool) -> None:
    """Flip the database's default and end its sessions, so every pool reconnects."""
    with admin_connect() as conn:
        value = sql.SQL("on" if on else "off")
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = {}").format(
                sql.Identifier(dbname), value
            )
        )
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )


@pytest.fixture
def own_database(broker: LocalBroker) -> Iterator[Settings]:
    """Settings on a database of this test's own (dropped afterwards)."""
    dbname = f"bs_ro_{uuid.uuid4().hex[:10]}"
    with admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    url = TEST_DATABASE_URL.rsplit("/", 1)[0] + f"/{dbname}"
    settings = kafka_settings(broker, DATABASE_URL=url)
    asyncio.run(ensure_topics(settings))
    try:
        yield settings
    finally:
        with admin_connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )
        drop_redis_prefix(settings)


def counter(c: Any, *labels: str) -> float:
    return float(c.labels(*labels)._value.get())


async def committed(settings: Settings) -> dict[TopicPartition, int | None]:
    """The worker group's committed offsets (read without joining the group)."""
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings), group_id=settings.kafka_consumer_group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        out: dict[TopicPartition, int | None] = {}
        for topic in settings.topics.inbound:
            for p in consumer.partitions_for_topic(topic) or ():
                tp = TopicPartition(topic, p)
                out[tp] = await consumer.committed(tp)
        return out
    finally:
        await consumer.stop()


def test_a_read_only_store_dead_letters_nothing_and_commits_nothing(
    own_database: Settings,
) -> None:
    settings = own_database
    dbname = settings.database_url.get_secret_value().rsplit("/", 1)[1]
    service = Bootstrap(settings).batch_service()
    before: list[Message] = [registration("ro-0", ["e1"]), content("ro-0", "t0", "f0")]
    during: list[Message] = []
    for n in range(1, 6):
        b = f"ro-{n}"
        during += [registration(b, [f"{b}-e1", f"{b}-e2"]), content(b, f"{b}-t1", "f1")]
        during.append(content(b, f"{b}-t2", "f2"))

    def completed(batch_id: str) -> bool:
        b = service.get_batch(batch_id)
        return b is not None and b.status == "completed"

    async def scenario() -> None:
        async with running(Worker(settings, service).run):
            await produce(settings, before)
            await eventually(lambda: completed("ro-0"), timeout=60)
            offsets_before = await committed(settings)

            await asyncio.to_thread(set_read_only, dbname, True)
            assert not await asyncio.to_thread(store_writable, service)
            retried = counter(metrics.TRANSIENT, "execute")
            blamed = counter(metrics.DLQ, "PROCESSING_ERROR")
            await produce(settings, during)
            # The worker has met the read-only store several times (or, the old
            # bug, has blamed the messages).
            await eventually(
                lambda: (
                    counter(metrics.TRANSIENT, "execute") >= retried + 3
                    or counter(metrics.DLQ, "PROCESSING_ERROR") > blamed
                ),
                timeout=60,
            )
            assert counter(metrics.DLQ, "PROCESSING_ERROR") == blamed
            assert await committed(settings) == offsets_before  # nothing committed
            assert not any(service.get_batch(f"ro-{n}") for n in range(1, 6))  # nothing stored

            await asyncio.to_thread(set_read_only, dbname, False)
            await eventually(lambda: all(completed(f"ro-{n}") for n in range(1, 6)), timeout=90)
            assert await committed(settings) != offsets_before
        dlq = await consume(settings, settings.topics.dlq, lambda r: False, timeout=2)
        assert dlq == [], [dict(r.headers).get("dlq.reason") for r in dlq]

    try:
        asyncio.run(scenario())
    finally:
        service.close()


def test_read_only_and_shutdown_errors_are_transient(own_database: Settings) -> None:
    """The library's InternalError for SQLSTATE 25006 and an admin shutdown are transient."""
    settings = own_database
    dbname = settings.database_url.get_secret_value().rsplit("/", 1)[1]
    service = Bootstrap(settings).batch_service()
    try:
        set_read_only(dbname, True)
        errors: list[BaseException] = []
        for _ in range(3):  # the first may meet the terminated session (57P01)
            try:
                service.execute([registration_command("ro-x")])
            except Exception as e:
                errors.append(e)
        assert len(errors) == 3
        assert all(is_transient(e) for e in errors), [repr(e) for e in errors]
        assert any("read-only" in str(e) for e in errors)
    finally:
        service.close()


def registration_command(batch_id: str) -> Any:
    from application.commands import RegisterBatch

    return RegisterBatch(batch_id=batch_id, essay_ids=["e1"], correlation_id=str(uuid.uuid4()))
