"""Kafka: the one place that builds aiokafka clients from Settings.

Security (CONTRACT §5): the SASL password is read from its ``SecretStr`` only
here, handed straight to aiokafka and never logged; ``client_kwargs`` is not
meant for printing.

Ordering without an idempotent producer (read from aiokafka 0.14's source,
``producer/sender.py`` and ``producer/message_accumulator.py``):

- ``Sender._sender_routine`` drains the accumulator with
  ``ignore_nodes=self._in_flight`` and adds every partition of a produce
  request to ``_muted_partitions`` until that request finishes: at most ONE
  produce request per broker, hence at most one batch per partition, is in
  flight. That is Java's ``max.in.flight.requests.per.connection=1``, hard
  wired; there is no setting for it.
- A retriable failure re-enqueues the batch with ``appendleft`` (the head of
  its partition's queue), so a retry cannot overtake later batches.
- Without idempotence a batch is *expired* after ``request_timeout_ms`` and
  failed, and the partition's next batch may then be sent. The outbox closes
  that last gap itself: it keeps at most one batch per partition outstanding
  and republishes the whole page after any failure (see ``infrastructure/processes/outbox.py``).

With ``acks="all"`` a send is acknowledged only once every in-sync replica has
it. ``KAFKA_ENABLE_IDEMPOTENCE=true`` (for brokers that support it; Tansu does
not) additionally makes aiokafka retry forever with sequence numbers, so
broker-side retries introduce no duplicates.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context

from infrastructure.settings import Settings

log = logging.getLogger(__name__)

MAX_REPLICATION_FACTOR = 3
# A record batch holds many envelopes; one envelope (at most 1 MiB, CONTRACT §3)
# always fits, because aiokafka accepts the first record of any batch.
MAX_BATCH_BYTES = 256 * 1024
MAX_REQUEST_BYTES = 2 * 1024 * 1024
# Records one ``getmany`` hands over: the worker decides them in one transaction
# (docs/benchmarks.md: larger polls add latency, smaller ones lose the batching).
MAX_POLL_RECORDS = 1000


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Connection and security arguments shared by every aiokafka client."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
        "client_id": settings.source_service,
        # Every request bounded: a broker that stops answering (or a connection
        # stranded by a failover) fails the request after KAFKA_REQUEST_TIMEOUT_MS,
        # the connection is closed and the client reconnects (docs/faults.md).
        "request_timeout_ms": settings.kafka_request_timeout_ms,
        "metadata_max_age_ms": settings.kafka_metadata_max_age_ms,
        "connections_max_idle_ms": settings.kafka_connections_max_idle_ms,
    }
    if settings.kafka_security_protocol.startswith("SASL_"):
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        kwargs["sasl_plain_password"] = password.get_secret_value() if password else None
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile)
    return kwargs


def producer_kwargs(settings: Settings) -> dict[str, Any]:
    """The producer settings that keep per-partition order (see module docstring)."""
    return {
        "acks": "all",
        "enable_idempotence": settings.kafka_enable_idempotence,
        # No lingering: the outbox builds whole record batches itself (send_batch), and
        # aiokafka holds even a ready-made batch for linger_ms before sending it; other
        # records still share a request while one is in flight.
        "linger_ms": 0,
        "max_batch_size": MAX_BATCH_BYTES,
        "max_request_size": MAX_REQUEST_BYTES,
        "retry_backoff_ms": 200,
    }


def make_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """A producer (not started): ``await producer.start()`` connects it."""
    return AIOKafkaProducer(**{**client_kwargs(settings), **producer_kwargs(settings), **overrides})


def make_consumer(
    settings: Settings, *topics: str, group_id: str | None, **overrides: Any
) -> AIOKafkaConsumer:
    """A consumer (not started) with manual commits, from the earliest offset."""
    kwargs: dict[str, Any] = {
        **client_kwargs(settings),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        # A member that stops heartbeating (stuck, or cut off) leaves the group after
        # KAFKA_SESSION_TIMEOUT_MS and its partitions move to another worker.
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        "heartbeat_interval_ms": max(100, settings.kafka_session_timeout_ms // 3),
        # Fetch for latency (docs/benchmarks.md, "Consumer fetch settings"): the broker
        # answers once it has fetch_min_bytes (1: any record) or after
        # KAFKA_FETCH_MAX_WAIT_MS. Apache Kafka answers as soon as a record arrives, so
        # a short wait only costs idle fetch requests; the local Tansu broker holds every
        # fetch for the full wait even when data arrives, so the wait is added to each
        # hop (aiokafka's default of 500 ms made p50 244 ms end to end; 10 ms: 33 ms).
        "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
        "fetch_min_bytes": 1,
        "max_poll_records": MAX_POLL_RECORDS,
        # Co-partitioned topics: a batch's messages carry its id as key, so with equal
        # partition counts they land on partition i of every inbound topic. The range
        # assignor hands partition i of every topic to the same member, so one worker
        # owns a batch; aiokafka's default (round robin over all topic-partitions) split
        # a batch's registration and contents between workers, which then contended on
        # its stream (version conflicts, reloads). Range alone: listing round robin too
        # (for a rollout next to members of an older release) doubled the local
        # broker's join time (5 -> 10 s); stop the old workers before starting new ones.
        "partition_assignment_strategy": (RangePartitionAssignor,),
        **overrides,
    }
    return AIOKafkaConsumer(*topics, **kwargs)


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop ``consumer``; a cancellation that is not this task's own is not passed on.

    aiokafka 0.14's ``Fetcher.close`` cancels its pending fetch tasks and awaits them
    without catching their ``CancelledError``: a fetch that was backing off after a
    lost connection (a broker restart) makes ``stop()`` raise it, although nobody
    cancelled the caller. Seen in the fault run's broker restart.
    """
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # the caller itself is being cancelled
        log.debug("consumer stopped; a fetch task's cancellation was swallowed")


async def ensure_topics(settings: Settings) -> list[str]:
    """Create every missing topic of ``settings.all_topics``; return those created.

    Idempotent: existing topics are left as they are (partition counts are not
    changed). Replication factor: the number of brokers, at most 3.
    """
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in settings.all_topics if t not in existing]
        if not missing:
            return []
        brokers = len((await admin.describe_cluster())["brokers"])
        replication = max(1, min(MAX_REPLICATION_FACTOR, brokers))
        new = [NewTopic(t, settings.kafka_topic_partitions, replication) for t in missing]
        response = await admin.create_topics(new)
        created = []
        for topic, code, *_ in response.topic_errors:
            if code == 0:
                created.append(topic)
            elif code != TopicAlreadyExistsError.errno:  # a concurrent creator won
                raise RuntimeError(f"cannot create Kafka topic {topic!r}: error code {code}")
        if created:
            log.info("created Kafka topics %s", created)
        return created
    finally:
        await admin.close()


@dataclass(frozen=True)
class KafkaClients:
    """The builders above bound to the settings: what the container hands to a process."""

    settings: Settings

    def producer(self, **overrides: Any) -> AIOKafkaProducer:
        return make_producer(self.settings, **overrides)

    def consumer(self, *topics: str, group_id: str | None, **overrides: Any) -> AIOKafkaConsumer:
        return make_consumer(self.settings, *topics, group_id=group_id, **overrides)

    async def ensure_topics(self) -> list[str]:
        return await ensure_topics(self.settings)
