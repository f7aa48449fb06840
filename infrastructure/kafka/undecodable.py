"""Record batches the worker cannot decode: find them, dead-letter them, move past them.

Producers may compress record batches with any codec Kafka defines (CONTRACT
§3); the codecs are installed (aiokafka's extras). A batch can still be
undecodable: a codec id Kafka does not define, a corrupt compressed payload,
a CRC mismatch. aiokafka decodes lazily, inside ``getmany()``, and raises
(``UnsupportedCodecError``, ``CorruptRecordException``, or the codec's own
error such as ``gzip.BadGzipFile``). Worse, it raises after it has already
moved its position past the records of the same fetch that it did decode,
and those records are then never returned (read from aiokafka 0.14,
``consumer/fetcher.py``: ``FetchResult.getall`` loses its list when the
iterator raises, and the next call advances to ``next_fetch_offset``).

So the worker, on such an error, re-reads each assigned partition itself from
its committed offset (the worker commits every poll it handled before it polls
again), one raw fetch of at most one consumer fetch's size, and decodes batch
by batch:

- the records before the first undecodable batch are handled as a normal poll;
- the undecodable batch itself goes to the DLQ as ONE dead letter, reason
  ``UNDECODABLE_BATCH``, whose value is the raw record batch as it was
  stored (so it can be inspected or decoded after a fix), with headers naming
  its topic, partition, first offset (``dlq.source.offset``) and the offset
  after it (``dlq.source.end_offset``);
- the offset after it is committed and the consumer seeks there.

Partitions without an undecodable batch are only sought back to their
committed offset (undoing aiokafka's silent skip). If no partition holds one
(a fetch corrupted in transit; the partition moved to another member in
between), the worker fetches again after a second, and raises the error only
after ``MAX_UNEXPLAINED`` such errors in a row. One bad batch costs one
raw fetch per assigned partition: a bounded, logged and counted event
(``batchslot_undecodable_batches_total``) that never stops the worker or its
group.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import (
    ConsumerStoppedError,
    CorruptRecordException,
    KafkaError,
    UnsupportedCodecError,
)
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import ConsumerRecord

from infrastructure.kafka.dlq import DeadLetter

log = logging.getLogger("batchslot.worker")

REASON = "UNDECODABLE_BATCH"
# Decode errors in a row that no re-read explains (e.g. the partition moved to
# another member in between) before the error is treated as a bug and raised.
MAX_UNEXPLAINED = 5
# aiokafka's default max_partition_fetch_bytes: a raw read covers what one fetch held.
RAW_FETCH_BYTES = 1024 * 1024
# Tansu answers a fetch with max_wait 0 with no data at all; a short wait is enough.
RAW_FETCH_WAIT_MS = 100
_HEADER = 12  # base offset (int64) + batch length (int32): v0, v1 and v2 alike


def is_decode_error(error: BaseException) -> bool:
    """An error ``getmany()`` raises while decoding a fetched record batch."""
    if isinstance(error, UnsupportedCodecError | CorruptRecordException):
        return True
    # A codec's own error (gzip.BadGzipFile, zlib.error, cramjam.DecompressionError,
    # a struct or value error on a truncated payload): not an aiokafka error at all.
    return not isinstance(error, KafkaError | ConsumerStoppedError) and isinstance(error, Exception)


@dataclass(frozen=True)
class RawScan:
    """What one raw fetch of a partition held, decoded batch by batch."""

    good: list[ConsumerRecord[bytes, bytes]]  # the records before the first bad batch
    bad: DeadLetter | None  # the first bad batch, as a dead letter
    end_offset: int | None  # the offset after the bad batch


async def scan_partition(consumer: AIOKafkaConsumer, tp: TopicPartition, start: int) -> RawScan:
    """Fetch ``tp`` from ``start`` (one raw fetch) and find its first undecodable batch."""
    # The consumer's own client and leader metadata (no second connection).
    client = consumer._client
    node = client.cluster.leader_for_partition(tp)
    if node is None or node < 0:
        return RawScan([], None, None)  # no leader known now: the next attempt will tell
    request = FetchRequest(
        RAW_FETCH_WAIT_MS,
        1,
        RAW_FETCH_BYTES,
        0,
        [(tp.topic, [(tp.partition, start, RAW_FETCH_BYTES)])],
    )
    try:
        response = await client.send(node, request)
    except KafkaError as e:
        log.warning("raw re-read failed", extra={"partition": str(tp), "error": repr(e)[:200]})
        return RawScan([], None, None)
    raw = b""
    for topic, partitions in response.topics:
        for partition, error_code, _highwater, *data in partitions:
            if topic == tp.topic and partition == tp.partition and error_code == 0:
                raw = bytes(data[-1] or b"")
    good: list[ConsumerRecord[bytes, bytes]] = []
    position = 0
    while position + _HEADER <= len(raw):
        size = _HEADER + int.from_bytes(raw[position + 8 : position + 12], "big", signed=True)
        if size <= _HEADER or position + size > len(raw):
            break  # a partial batch at the end of the response: the next fetch has it
        piece = raw[position : position + size]
        position += size
        end = _end_offset(piece)
        if end <= start:
            continue  # a batch we are already past (a fetch starts at a batch boundary)
        try:
            batch = MemoryRecords(piece).next_batch()
            if not batch.validate_crc():
                raise CorruptRecordException(f"Invalid CRC - {tp}")
            if getattr(batch, "is_control_batch", False):
                continue
            records = [_record(tp, r) for r in batch if r.offset >= start]
        except Exception as error:
            base = int.from_bytes(piece[:8], "big", signed=True)
            return RawScan(good, _letter(tp, base, end, piece, error), end)
        good += records
    return RawScan(good, None, None)


def _end_offset(piece: bytes) -> int:
    """The offset after a stored batch, read from its header (no decoding)."""
    base = int.from_bytes(piece[:8], "big", signed=True)
    if len(piece) >= 27 and piece[16] == 2:  # v2: magic at 16, last offset delta at 23
        return base + int.from_bytes(piece[23:27], "big", signed=True) + 1
    return base + 1  # v0/v1: a compressed wrapper carries the offset of its last record


def _record(tp: TopicPartition, r: Any) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        tp.topic,
        tp.partition,
        r.offset,
        r.timestamp,
        r.timestamp_type,
        r.key,
        r.value,
        r.checksum,
        len(r.key) if r.key is not None else -1,
        len(r.value) if r.value is not None else -1,
        tuple(r.headers),
    )


def _letter(
    tp: TopicPartition, base: int, end: int, raw: bytes, error: BaseException
) -> DeadLetter:
    message = ConsumerRecord(
        tp.topic,
        tp.partition,
        base,
        -1,
        0,
        None,
        raw,
        None,
        -1,
        len(raw),
        (("dlq.source.end_offset", str(end).encode()),),
    )
    detail = f"record batch at offsets {base}..{end - 1} cannot be decoded: {error!r}"
    return DeadLetter(message, REASON, detail[:500])
