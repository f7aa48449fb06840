"""Reading and redriving the dead-letter topic (``batchctl dlq``); the audit trail is
kept in PostgreSQL by ``infrastructure/postgres/redrives.py``.

Reading: a consumer without a group (nothing is committed, no worker is
disturbed) is assigned every partition of the DLQ topic, reads from the
beginning and stops at the end offsets it saw at start, so a listing always
ends, even while the worker keeps dead-lettering.

Redriving: the dead letter's original key, value and headers (the ``dlq.*``
headers removed, ``dlq.redriven.from: <dlq topic>/<partition>/<offset>``
added) are sent back to its ``dlq.source.topic``, which must be one of the
configured inbound topics. Every redrive is recorded in the table
``dlq_redrives`` of the service's schema (``DATABASE_SCHEMA``): a letter is
*claimed* there before it is sent (a unique key on dlq topic, partition,
offset and attempt), so the same dead letter is never redriven twice, not even
by two operators at once, unless ``--force`` asks for a further attempt. The
claim is completed with the produced partition and offset once the broker has
acknowledged the record, and withdrawn if the send fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import TopicPartition

from infrastructure.cli.errors import DependencyUnavailable
from infrastructure.kafka.clients import make_consumer, make_producer, stop_consumer
from infrastructure.kafka.dlq import DLQ_MAX_REQUEST_BYTES
from infrastructure.postgres.redrives import Redrive, RedriveLog
from infrastructure.settings import Settings

REDRIVEN_FROM = "dlq.redriven.from"
DLQ_PREFIX = "dlq."
STALL_SECONDS = 30.0  # no progress towards the end offsets for this long: give up


@dataclass(frozen=True)
class Letter:
    """One record of the DLQ topic, decoded for an operator."""

    topic: str
    partition: int
    offset: int
    timestamp: datetime | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, record: Any) -> Letter:
        ts = record.timestamp
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp=datetime.fromtimestamp(ts / 1000, UTC) if ts and ts > 0 else None,
            key=record.key,
            value=record.value,
            headers=tuple((str(k), bytes(v or b"")) for k, v in (record.headers or ())),
        )

    def header(self, name: str) -> str | None:
        found = [v for k, v in self.headers if k == name]
        return found[-1].decode("utf-8", "replace") if found else None

    @property
    def where(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    @property
    def reason(self) -> str:
        return self.header("dlq.reason") or ""

    @property
    def detail(self) -> str:
        return self.header("dlq.detail") or ""

    @property
    def source_topic(self) -> str | None:
        return self.header("dlq.source.topic")

    @property
    def source_partition(self) -> int | None:
        return _int(self.header("dlq.source.partition"))

    @property
    def source_offset(self) -> int | None:
        return _int(self.header("dlq.source.offset"))

    @property
    def redriven_from(self) -> str | None:
        """Set when this letter is itself a redriven message that failed again."""
        return self.header(REDRIVEN_FROM)

    @property
    def envelope(self) -> dict[str, Any] | None:
        try:
            document = json.loads(self.value or b"")
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        return document if isinstance(document, dict) else None

    @property
    def batch_id(self) -> str | None:
        """The envelope's ``data.batch_id`` when readable, else the record key."""
        envelope = self.envelope or {}
        data = envelope.get("data")
        if isinstance(data, dict) and isinstance(data.get("batch_id"), str):
            return str(data["batch_id"])
        if self.key is not None:
            return self.key.decode("utf-8", "replace")
        return None

    def redrive_headers(self) -> list[tuple[str, bytes]]:
        """The original headers without any ``dlq.*`` header, plus where it came from."""
        kept = [(k, v) for k, v in self.headers if not k.startswith(DLQ_PREFIX)]
        return [*kept, (REDRIVEN_FROM, self.where.encode())]


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


# ------------------------------------------------------------------ reading


@dataclass
class Scan:
    """What a read of the DLQ saw: the end offsets at start, by partition."""

    topic: str
    end_offsets: dict[int, int] = field(default_factory=dict)
    start_offsets: dict[int, int] = field(default_factory=dict)
    missing_ok: bool = False  # a topic the broker does not have is empty (``dlq list``)
    missing: bool = False  # ... and it was missing


async def _start(consumer: Any, settings: Settings) -> None:
    """Start the consumer, bounded: a listener that accepts and never answers is given
    up on within STARTUP_TIMEOUT_SECONDS (at most a Kafka request timeout)."""
    bound = min(settings.startup_timeout_seconds, settings.kafka_request_timeout_ms / 1000)
    try:
        await asyncio.wait_for(consumer.start(), max(1.0, bound))
    except BaseException as e:
        with contextlib.suppress(BaseException):  # no "Unclosed AIOKafkaConsumer" noise
            await asyncio.wait_for(stop_consumer(consumer), 2.0)
        if not isinstance(e, TimeoutError):
            raise
        raise DependencyUnavailable(
            f"Kafka at {settings.kafka_bootstrap_servers} (KAFKA_BOOTSTRAP_SERVERS) did not "
            f"answer within {max(1.0, bound):g} s (STARTUP_TIMEOUT_SECONDS): is Kafka "
            "running there?"
        ) from None


async def read_letters(
    settings: Settings,
    scan: Scan,
    *,
    partition: int | None = None,
    from_offset: int | None = None,
    to_offset: int | None = None,
) -> AsyncIterator[Letter]:
    """Every dead letter up to the end offsets at start, partition by partition, in
    offset order. ``partition``/``from_offset``/``to_offset`` narrow the read (the
    consumer seeks to ``from_offset`` instead of reading from the beginning)."""
    consumer = make_consumer(
        settings,
        group_id=None,
        max_partition_fetch_bytes=DLQ_MAX_REQUEST_BYTES,
        fetch_max_bytes=DLQ_MAX_REQUEST_BYTES,
    )
    await _start(consumer, settings)
    try:
        if scan.topic not in await consumer.topics():
            if scan.missing_ok:  # nothing was ever dead-lettered on this broker
                scan.missing = True
                return
            raise DependencyUnavailable(
                f"the dead-letter topic {scan.topic!r} does not exist on the broker "
                "(TOPIC_DLQ, KAFKA_BOOTSTRAP_SERVERS)"
            )
        partitions = sorted(consumer.partitions_for_topic(scan.topic) or ())
        if partition is not None:
            if partition not in partitions:
                raise DependencyUnavailable(
                    f"the dead-letter topic {scan.topic!r} has no partition {partition} "
                    f"(partitions: {', '.join(map(str, partitions))})"
                )
            partitions = [partition]
        tps = [TopicPartition(scan.topic, p) for p in partitions]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        scan.end_offsets = {tp.partition: ends[tp] for tp in tps}
        scan.start_offsets = {tp.partition: starts[tp] for tp in tps}
        for tp in tps:
            first = max(starts[tp], from_offset or 0)
            limit = None if to_offset is None else to_offset + 1
            if limit is not None and first >= limit:
                continue
            consumer.seek(tp, first)
            async for letter in _read_partition(consumer, tp, ends[tp], limit, scan):
                yield letter
    finally:
        await stop_consumer(consumer)


async def _read_partition(
    consumer: Any, tp: TopicPartition, end: int, limit: int | None, scan: Scan
) -> AsyncIterator[Letter]:
    """Read ``tp`` up to its end at start (never past ``limit``).

    The end is the larger of ListOffsets' answer and the high watermark of the
    first fetch response: Tansu answers ListOffsets with the base offset of the
    partition's last record batch + 1, which is short when that batch holds
    several records (the worker sends a poll's dead letters in one batch).
    """
    loop = asyncio.get_running_loop()
    progress_at = loop.time()
    stop: int | None = None
    while stop is None or await consumer.position(tp) < stop:
        batch = await consumer.getmany(tp, timeout_ms=500)
        records = batch.get(tp, [])
        if stop is None and consumer.highwater(tp) is not None:
            stop = max(end, consumer.highwater(tp))
            stop = stop if limit is None else min(stop, limit)
            scan.end_offsets[tp.partition] = stop
        if records:
            progress_at = loop.time()
        elif loop.time() - progress_at > STALL_SECONDS:
            raise DependencyUnavailable(
                f"reading {tp.topic}/{tp.partition} made no progress for {STALL_SECONDS:.0f} s "
                f"(KAFKA_BOOTSTRAP_SERVERS)"
            )
        for record in records:
            if stop is not None and record.offset >= stop:
                return
            yield Letter.of(record)


# ---------------------------------------------------------------- redriving


@dataclass
class Outcome:
    letter: Letter
    status: str  # sent | would_send | already_redriven | unknown_source_topic
    attempt: int | None = None
    target_topic: str | None = None
    target_partition: int | None = None
    target_offset: int | None = None
    earlier: list[Redrive] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "partition": self.letter.partition,
            "offset": self.letter.offset,
            "reason": self.letter.reason,
            "batch_id": self.letter.batch_id,
            "status": self.status,
            "attempt": self.attempt,
            "target_topic": self.target_topic,
            "target_partition": self.target_partition,
            "target_offset": self.target_offset,
            "earlier_redrives": [r.as_json() for r in self.earlier],
        }


async def redrive(
    settings: Settings,
    letters: Sequence[Letter],
    log: RedriveLog,
    *,
    dry_run: bool,
    force: bool,
    progress: Any = None,
) -> list[Outcome]:
    """Send each letter back to its source topic (or, with ``dry_run``, only say so)."""
    inbound = set(settings.topics.inbound)
    earlier = log.history(letters)
    outcomes: list[Outcome] = []
    chosen: list[Outcome] = []
    for letter in letters:
        before = earlier.get((letter.partition, letter.offset), [])
        target = letter.source_topic
        outcome = Outcome(letter, "would_send", target_topic=target, earlier=before)
        if target not in inbound:
            outcome.status = "unknown_source_topic"
        elif before and not force:
            outcome.status = "already_redriven"
        else:
            chosen.append(outcome)
        outcomes.append(outcome)
    if dry_run or not chosen:
        return outcomes
    log.create()
    producer = make_producer(settings, max_request_size=DLQ_MAX_REQUEST_BYTES)
    await producer.start()
    try:
        for done, outcome in enumerate(chosen, start=1):
            letter, target = outcome.letter, outcome.target_topic
            assert target is not None
            attempt = log.claim(letter, target, force)
            if attempt is None:  # someone else redrove it since we looked
                outcome.status = "already_redriven"
                outcome.earlier = log.history([letter]).get((letter.partition, letter.offset), [])
                continue
            try:
                metadata = await (
                    await producer.send(
                        target,
                        value=letter.value,
                        key=letter.key,
                        headers=letter.redrive_headers(),
                    )
                )
            except BaseException:
                log.withdraw(letter, attempt)
                raise
            log.complete(letter, attempt, metadata.partition, metadata.offset)
            outcome.status = "sent"
            outcome.attempt = attempt
            outcome.target_partition = metadata.partition
            outcome.target_offset = metadata.offset
            if progress is not None:
                progress(done, len(chosen))
    finally:
        await producer.stop()
    return outcomes
