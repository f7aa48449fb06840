"""ensure_topics against the real broker: creates what is missing, idempotent."""

from __future__ import annotations

import asyncio

import pytest
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


@pytest.mark.slow
def test_one_worker_owns_all_of_a_batchs_partitions(broker: LocalBroker) -> None:
    """Two members of the workers' group over the three inbound topics: each gets the
    same partition numbers on every topic, so a batch (keyed by its id, partition i on
    each topic) is decided by one worker only."""
    settings = make_settings(
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        KAFKA_TOPIC_PARTITIONS="3",
        **topic_env(new_tag(8), sep="."),
    )
    inbound = list(settings.topics.by_kind.values())

    async def scenario() -> list[dict[str, set[int]]]:
        await ensure_topics(settings)
        kafka = KafkaClients(settings)
        members = [kafka.consumer(group_id=settings.kafka_consumer_group) for _ in range(2)]
        for m in members:
            m.subscribe(inbound)
            await m.start()
        try:
            for _ in range(200):  # until the group has settled with both members
                await asyncio.gather(*(m.getmany(timeout_ms=50) for m in members))
                if all(m.assignment() for m in members) and sum(
                    len(m.assignment()) for m in members
                ) == 3 * len(inbound):
                    break
            out = []
            for m in members:
                by_topic: dict[str, set[int]] = {t: set() for t in inbound}
                for tp in m.assignment():
                    by_topic[tp.topic].add(tp.partition)
                out.append(by_topic)
            return out
        finally:
            for m in members:
                await m.stop()

    owned = asyncio.run(scenario())
    for by_topic in owned:
        assert all(parts for parts in by_topic.values()), owned
        assert len({frozenset(p) for p in by_topic.values()}) == 1, owned
