"""Compressed and undecodable inbound record batches.

Real producers compress: librdkafka (confluent-kafka) here sends gzip, snappy,
lz4 and zstd record batches to the real broker, and the worker must decode
them all. A batch nobody can decode (a corrupt gzip or zstd payload with a
valid CRC, written with a raw produce request; or a codec whose library the
worker process lacks) is dead-lettered as one UNDECODABLE_BATCH letter, the
worker stays up, and every other message completes, including the records
fetched together with the bad batch.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record._crc32c import crc as crc32c
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from confluent_kafka import Producer

from application.service import BatchService
from infrastructure import metrics
from infrastructure.bootstrap import Bootstrap
from infrastructure.kafka.clients import client_kwargs
from infrastructure.processes.worker import Worker
from infrastructure.settings import Settings
from tests.e2e.conftest import consume, eventually, running, topic_of
from tests.support.scenario import Message, content, registration

ROOT = Path(__file__).resolve().parents[2]
CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def batch_messages(batch_id: str, slots: int = 3) -> list[Message]:
    essays = [f"{batch_id}-e{i}" for i in range(slots)]
    out = [registration(batch_id, essays)]
    out += [content(batch_id, f"{batch_id}-t{i}", f"f{i}") for i in range(slots)]
    return out


def produce_compressed(
    settings: Settings, codec: str, messages: list[Message], partition: int | None = None
) -> None:
    """Produce with librdkafka, lingering so that the messages share compressed batches."""
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "compression.type": codec,
            "enable.idempotence": False,  # Tansu has no idempotent producer
            "acks": "all",
            "linger.ms": 100,
        }
    )
    for m in messages:
        kwargs: dict[str, Any] = {} if partition is None else {"partition": partition}
        producer.produce(topic_of(settings, m), key=m.key.encode(), value=m.value, **kwargs)
    assert producer.flush(30) == 0


async def stored_codecs(settings: Settings) -> Counter[int]:
    """The codec ids of the record batches stored in the inbound topics (raw fetch)."""
    producer = AIOKafkaProducer(**client_kwargs(settings))
    await producer.start()
    found: Counter[int] = Counter()
    try:
        client = producer.client
        await client.force_metadata_update()
        for topic in settings.topics.inbound:
            for p in client.cluster.partitions_for_topic(topic) or ():
                node = client.cluster.leader_for_partition(TopicPartition(topic, p))
                request = FetchRequest(100, 1, 1 << 22, 0, [(topic, [(p, 0, 1 << 22)])])
                response = await client.send(node, request)
                for _, partitions in response.topics:
                    for _, _, _, *data in partitions:
                        records = MemoryRecords(data[-1])
                        while records.has_next():
                            found[records.next_batch().compression_type] += 1
    finally:
        await producer.stop()
    return found


def completed(service: BatchService, batch_id: str) -> bool:
    b = service.get_batch(batch_id)
    return b is not None and b.status == "completed"


def test_every_codec_is_decoded_and_its_batches_complete(e2e_settings: Settings) -> None:
    service = Bootstrap(e2e_settings).batch_service()
    batches = {codec: [f"{codec}-{n}" for n in range(4)] for codec in CODECS}
    for codec, ids in batches.items():
        produce_compressed(e2e_settings, codec, [m for b in ids for m in batch_messages(b)])
    codecs = asyncio.run(stored_codecs(e2e_settings))
    assert set(CODECS.values()) <= set(codecs), codecs  # really stored compressed

    async def scenario() -> None:
        async with running(Worker(e2e_settings, service).run):
            await eventually(
                lambda: all(completed(service, b) for ids in batches.values() for b in ids),
                timeout=60,
            )
        dlq = await consume(e2e_settings, e2e_settings.topics.dlq, lambda r: False, timeout=2)
        assert dlq == []

    try:
        asyncio.run(scenario())
    finally:
        service.close()


def corrupt_batch(codec: int, base_values: list[bytes]) -> bytes:
    """A v2 record batch whose header says ``codec`` but whose payload is garbage (valid CRC)."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for i, value in enumerate(base_values):
        builder.append(i, timestamp=None, key=b"k", value=value, headers=[])
    buf = bytearray(builder.build())
    buf[61:] = b"\x00not a compressed payload" * 2  # records start after the 61-byte header
    buf[8:12] = (len(buf) - 12).to_bytes(4, "big")  # batch length
    attributes = int.from_bytes(buf[21:23], "big")
    buf[21:23] = ((attributes & ~0x07) | codec).to_bytes(2, "big")
    buf[17:21] = crc32c(bytes(buf[21:])).to_bytes(4, "big")  # CRC-32C from the attributes on
    return bytes(buf)


async def produce_raw(settings: Settings, topic: str, partition: int, batch: bytes) -> None:
    producer = AIOKafkaProducer(**client_kwargs(settings))
    await producer.start()
    try:
        client = producer.client
        await client.force_metadata_update()
        node = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        response = await client.send(
            node, ProduceRequest(None, -1, 10_000, [(topic, [(partition, batch)])])
        )
        [(_, [(_, error_code, *_)])] = response.topics
        assert error_code == 0, response
    finally:
        await producer.stop()


def test_undecodable_batches_are_dead_lettered_and_nothing_else_is_lost(
    e2e_settings: Settings,
) -> None:
    """Good records before, between and after two corrupt batches, all in one partition."""
    service = Bootstrap(e2e_settings).batch_service()
    topic = e2e_settings.topics.provisioned
    before, between, after = batch_messages("u-1"), batch_messages("u-2"), batch_messages("u-3")
    bad_gzip = corrupt_batch(CODECS["gzip"], [b"lost-1", b"lost-2", b"lost-3"])
    bad_zstd = corrupt_batch(CODECS["zstd"], [b"lost-4", b"lost-5"])
    # Every message in partition 0 of its topic; registrations go first, so that the
    # contents' topic holds: u-1 contents, bad gzip, u-2 contents, bad zstd, u-3 contents.
    for group in (before, between, after):
        produce_compressed(e2e_settings, "none", [m for m in group if m.kind == "registered"], 0)
    undecodable = metrics.UNDECODABLE.labels(topic)._value.get()

    async def feed() -> None:
        contents = [[m for m in g if m.kind == "provisioned"] for g in (before, between, after)]
        await asyncio.to_thread(produce_compressed, e2e_settings, "none", contents[0], 0)
        await produce_raw(e2e_settings, topic, 0, bad_gzip)
        await asyncio.to_thread(produce_compressed, e2e_settings, "lz4", contents[1], 0)
        await produce_raw(e2e_settings, topic, 0, bad_zstd)
        await asyncio.to_thread(produce_compressed, e2e_settings, "none", contents[2], 0)

    async def scenario() -> list[Any]:
        await feed()  # all stored before the worker's first fetch: one fetch holds them all
        worker = Worker(e2e_settings, service)
        async with running(worker.run):
            await eventually(
                lambda: all(completed(service, b) for b in ("u-1", "u-2", "u-3")), timeout=60
            )
        return await consume(e2e_settings, e2e_settings.topics.dlq, lambda r: len(r) >= 2)

    try:
        dlq = asyncio.run(scenario())
    finally:
        service.close()
    # The letters may sit in different DLQ partitions: read them in source order.
    dlq.sort(key=lambda r: int(dict(r.headers)["dlq.source.offset"]))
    assert [dict(r.headers)["dlq.reason"] for r in dlq] == [b"UNDECODABLE_BATCH"] * 2
    # The stored batch as it was (the broker set its base offset, the first 8 bytes).
    assert [r.value[8:] for r in dlq] == [bad_gzip[8:], bad_zstd[8:]]
    offsets = [
        (int(dict(r.headers)["dlq.source.offset"]), int(dict(r.headers)["dlq.source.end_offset"]))
        for r in dlq
    ]
    assert offsets == [(3, 6), (9, 11)]
    assert {dict(r.headers)["dlq.source.topic"] for r in dlq} == {topic.encode()}
    assert metrics.UNDECODABLE.labels(topic)._value.get() == undecodable + 2


@pytest.mark.timeout(240)
def test_a_worker_without_a_codec_library_stays_up_and_the_group_moves_on(
    e2e_settings: Settings, tmp_path: Path
) -> None:
    """The issue's crash: a worker process that cannot load snappy (cramjam) meets snappy."""
    from tests.e2e.test_secrets import process_env

    env = {
        "DATABASE_URL": e2e_settings.database_url.get_secret_value(),
        "DATABASE_SCHEMA": e2e_settings.database_schema,
        "REDIS_URL": e2e_settings.redis_url.get_secret_value(),
        "REDIS_KEY_PREFIX": e2e_settings.redis_key_prefix,
        "KAFKA_BOOTSTRAP_SERVERS": e2e_settings.kafka_bootstrap_servers,
        "KAFKA_CONSUMER_GROUP": e2e_settings.kafka_consumer_group,
        "TOPIC_BATCH_REGISTERED": e2e_settings.topics.registered,
        "TOPIC_CONTENT_PROVISIONED": e2e_settings.topics.provisioned,
        "TOPIC_VALIDATION_FAILED": e2e_settings.topics.failed,
        "TOPIC_BATCH_EVENTS": e2e_settings.topics.events,
        "TOPIC_DLQ": e2e_settings.topics.dlq,
    }
    service = Bootstrap(e2e_settings).batch_service()
    snappy, gzip = batch_messages("s-1"), batch_messages("g-1")
    produce_compressed(e2e_settings, "gzip", [m for m in snappy if m.kind == "registered"], 0)
    produce_compressed(e2e_settings, "snappy", [m for m in snappy if m.kind != "registered"], 0)
    produce_compressed(e2e_settings, "gzip", gzip, 0)
    code = (
        "import sys; sys.modules['cramjam'] = None\n"  # the codec library is missing
        "from infrastructure.cli.main import app; app(['worker'])"
    )
    log_path = tmp_path / "worker.err"
    with log_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-c", code],
            env=process_env(env),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:

        async def scenario() -> list[Any]:
            await eventually(lambda: completed(service, "g-1") or process.poll() is not None, 120)
            assert process.poll() is None, log_path.read_text()[-3000:]
            return await consume(e2e_settings, e2e_settings.topics.dlq, lambda r: len(r) >= 1)

        dlq = asyncio.run(scenario())
        assert process.poll() is None  # still up
    finally:
        process.terminate()
        process.wait(timeout=60)
        service.close()
    reasons = {dict(r.headers)["dlq.reason"] for r in dlq}
    assert reasons == {b"UNDECODABLE_BATCH"}, reasons
    assert b"snappy" in dict(dlq[0].headers)["dlq.detail"]
    assert "cannot be decoded" in log_path.read_text()
