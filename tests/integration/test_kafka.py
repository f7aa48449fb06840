"""ensure_topics against the real broker: creates what is missing, idempotent."""

from __future__ import annotations

import asyncio

from aiokafka.admin import AIOKafkaAdminClient

from infrastructure.kafka.clients import (
    MAX_POLL_RECORDS,
    KafkaClients,
    client_kwargs,
    ensure_topics,
    make_consumer,
)
from infrastructure.kafka.local_broker import LocalBroker
from infrastructure.settings import load_settings
from tests.conftest import make_settings
from tests.support.scratch import new_tag, topic_env


def test_ensure_topics_is_idempotent(broker: LocalBroker) -> None:
    settings = make_settings(
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        KAFKA_TOPIC_PARTITIONS="5",
        **topic_env(new_tag(8), sep="."),
    )

    async def scenario() -> None:
        assert sorted(await ensure_topics(settings)) == sorted(settings.topics.all)
        assert await ensure_topics(settings) == []
        admin = AIOKafkaAdminClient(**client_kwargs(settings))
        await admin.start()
        try:
            described = await admin.describe_topics([settings.topics.events])
        finally:
            await admin.close()
        assert len(described[0]["partitions"]) == 5

    asyncio.run(scenario())


def test_fetch_settings_reach_every_consumer(broker: LocalBroker) -> None:
    """KAFKA_FETCH_MAX_WAIT_MS reaches the fetcher of a started consumer (the worker's
    and the DLQ tools' consumers are all built by KafkaClients/make_consumer)."""
    settings = make_settings(
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        KAFKA_FETCH_MAX_WAIT_MS="37",
        **topic_env(new_tag(8), sep="."),
    )
    assert load_settings({}).kafka_fetch_max_wait_ms == 10  # the default

    async def scenario() -> tuple[int, int, int | None, int]:
        await ensure_topics(settings)
        consumer = KafkaClients(settings).consumer(settings.topics.dlq, group_id=None)
        await consumer.start()
        try:
            await consumer.getmany(timeout_ms=100)
            fetcher = consumer._fetcher
            return (
                fetcher._fetch_max_wait_ms,
                fetcher._fetch_min_bytes,
                consumer._max_poll_records,
                # an explicit override still wins (none of the service's consumers uses one)
                make_consumer(settings, group_id=None, fetch_max_wait_ms=3)._fetch_max_wait_ms,
            )
        finally:
            await consumer.stop()

    assert asyncio.run(scenario()) == (37, 1, MAX_POLL_RECORDS, 3)
