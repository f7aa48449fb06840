"""ensure_topics against the real broker: creates what is missing, idempotent."""

from __future__ import annotations

import asyncio

from aiokafka.admin import AIOKafkaAdminClient

from infrastructure.kafka.clients import client_kwargs, ensure_topics
from infrastructure.kafka.local_broker import LocalBroker
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
