"""End-to-end fixtures: per-test topics on the real broker, a running worker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from infrastructure.kafka.clients import client_kwargs, ensure_topics, make_consumer, make_producer
from infrastructure.kafka.local_broker import LocalBroker
from infrastructure.settings import Settings
from tests.conftest import drop_redis_prefix, drop_schema, make_settings
from tests.support.poll import eventually_async
from tests.support.scenario import Message
from tests.support.scratch import new_tag, topic_env


def kafka_settings(broker: LocalBroker, **extra: str) -> Settings:
    return make_settings(
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers, **topic_env(new_tag(8)), **extra
    )


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a service process (``batchctl ...``) run on ``settings``: its
    database schema, Redis prefix, broker, group and topics, none of them inherited
    from the caller's environment; ``extra`` adds or overrides (a proxied URL, bounds)."""
    servers = ("DATABASE_", "REDIS_", "KAFKA_", "TOPIC_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(servers)}
    t = settings.topics
    env.update(
        DATABASE_URL=settings.database_url.get_secret_value(),
        DATABASE_SCHEMA=settings.database_schema,
        REDIS_URL=settings.redis_url.get_secret_value(),
        REDIS_KEY_PREFIX=settings.redis_key_prefix,
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        KAFKA_CONSUMER_GROUP=settings.kafka_consumer_group,
        TOPIC_BATCH_REGISTERED=t.registered,
        TOPIC_CONTENT_PROVISIONED=t.provisioned,
        TOPIC_VALIDATION_FAILED=t.failed,
        TOPIC_BATCH_EVENTS=t.events,
        TOPIC_DLQ=t.dlq,
        METRICS_PORT="0",  # `batchctl run` would take 9100: a free port, tests run side by side
    )
    env.update(extra)
    return env


@pytest.fixture
def e2e_settings(broker: LocalBroker) -> Iterator[Settings]:
    s = kafka_settings(broker)
    asyncio.run(ensure_topics(s))
    yield s
    drop_schema(s)
    drop_redis_prefix(s)


def topic_of(settings: Settings, message: Message) -> str:
    return settings.topics.by_kind[message.kind]


async def produce(settings: Settings, messages: Iterable[Message]) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        pending = [
            await producer.send(topic_of(settings, m), value=m.value, key=m.key.encode())
            for m in messages
        ]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def consume(
    settings: Settings, topic: str, until: Callable[[list[Any]], bool], timeout: float = 30.0
) -> list[Any]:
    """Read a topic from the beginning (no group) until ``until(records)`` or timeout."""
    consumer = make_consumer(settings, topic, group_id=None)
    await consumer.start()
    records: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not until(records) and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                records.extend(messages)
    finally:
        await consumer.stop()
    return records


@asynccontextmanager
async def running(coro_factory: Callable[[asyncio.Event], Any]) -> AsyncIterator[asyncio.Event]:
    """Run a service loop in a task for the duration of the block, then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(coro_factory(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    await eventually_async(check, timeout, every=0.1)


def terminate(proc: subprocess.Popen[Any], timeout: float = 30.0) -> int:
    """SIGTERM a service process and wait for it; kill it if it outlives ``timeout``."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def end_offsets(settings: Settings, topics: Iterable[str]) -> dict[TopicPartition, int]:
    """The end (next) offset of every partition of ``topics``, as the broker has them now."""
    consumer = AIOKafkaConsumer(**client_kwargs(settings))
    await consumer.start()
    try:
        partitions = []
        for topic in topics:
            numbers = consumer.partitions_for_topic(topic)
            assert numbers, f"no partitions known for {topic}"  # never wait on nothing
            partitions += [TopicPartition(topic, p) for p in numbers]
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


async def committed_offsets(
    settings: Settings, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """The worker group's committed offsets (a consumer of the group that joins nothing)."""
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings), group_id=settings.kafka_consumer_group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return {tp: await consumer.committed(tp) for tp in partitions}
    finally:
        await consumer.stop()


async def drained(settings: Settings, timeout: float = 30.0) -> None:
    """Wait until the worker group has committed every inbound record produced so far.

    The worker commits an offset only after its command is recorded (or is a
    no-op, or dead-lettered), so afterwards nothing produced before this call is
    still in hand.
    """
    ends = await end_offsets(settings, settings.topics.inbound)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        committed = await committed_offsets(settings, ends)
        behind = {
            tp: (committed[tp], end) for tp, end in ends.items() if (committed[tp] or 0) < end
        }
        if not behind:
            return
        if loop.time() > deadline:
            raise AssertionError(f"the worker group did not commit up to the end: {behind}")
        await asyncio.sleep(0.1)
