"""The dead-letter topic: the original message, unchanged, with headers saying why.

Headers added (all UTF-8): ``dlq.reason`` (a stable code such as INVALID_DATA
or REGISTRATION_CONFLICT), ``dlq.detail`` (one line for a person),
``dlq.source.topic``, ``dlq.source.partition``, ``dlq.source.offset``. The
original key, value and headers are kept.

A dead letter the broker does not acknowledge (broker down or restarting,
topic missing, leader moving, a refusal) is sent again with capped backoff,
for as long as it takes: the caller commits past its message only after
``send_dead_letters`` returns, so an undelivered dead letter is never
committed past, and the worker stays up meanwhile (metric
``batchslot_transient_failures_total{where="dlq"}``, a log line per attempt).
The one refusal that waiting cannot cure is size: a letter larger than the
producer's or the broker's limit is sent without its value and original
headers, with ``dlq.value.omitted=MESSAGE_TOO_LARGE`` and ``dlq.value.size``;
the headers still name the source topic, partition and offset, where the
original stays for the topic's retention.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

from infrastructure import metrics
from infrastructure.logcontext import record_context
from infrastructure.tracing import with_traceparent
from infrastructure.transient import DependencyDown

log = logging.getLogger("batchslot.dlq")
# Big enough for anything an inbound topic accepted, including oversize messages.
DLQ_MAX_REQUEST_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class DeadLetter:
    message: Any  # aiokafka ConsumerRecord
    reason: str
    detail: str
    # The W3C trace context to carry instead of the original's (the worker's consume
    # span, with tracing on); None: the original headers, traceparent included, as they are.
    traceparent: str | None = None


def dlq_headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    m = letter.message
    return [
        *with_traceparent(list(m.headers or ()), letter.traceparent),
        ("dlq.reason", letter.reason.encode()),
        ("dlq.detail", letter.detail.replace("\n", " ")[:500].encode()),
        ("dlq.source.topic", str(m.topic).encode()),
        ("dlq.source.partition", str(m.partition).encode()),
        ("dlq.source.offset", str(m.offset).encode()),
    ]


_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)
_RETRIED = (KafkaError, OSError, TimeoutError)
MAX_BACKOFF_SECONDS = 30.0


def without_value(letter: DeadLetter) -> DeadLetter:
    """The letter of a message too large to forward: its value and headers left out."""
    m = letter.message
    size = len(m.value) if m.value is not None else 0
    key = m.key if m.key is None or len(m.key) <= 1024 else None
    headers = (("dlq.value.omitted", b"MESSAGE_TOO_LARGE"), ("dlq.value.size", str(size).encode()))
    return DeadLetter(
        dataclasses.replace(m, key=key, value=None, headers=headers),
        letter.reason,
        letter.detail,
        letter.traceparent,
    )


async def send_dead_letters(
    producer: AIOKafkaProducer,
    topic: str,
    dead: list[DeadLetter],
    stop: asyncio.Event | None = None,
) -> None:
    """Send every dead letter; return once the broker has acknowledged all of them.

    Failed sends are retried with capped backoff until they are acknowledged
    (see the module docstring); if ``stop`` is set meanwhile, DependencyDown is
    raised, so that the caller commits nothing.
    """
    remaining, delay = list(dead), 0.2
    while remaining:
        sent: list[tuple[DeadLetter, asyncio.Future[Any]]] = []
        failed: list[tuple[DeadLetter, BaseException]] = []
        for letter in remaining:
            m = letter.message
            try:
                future = await producer.send(
                    topic, value=m.value, key=m.key, headers=dlq_headers(letter)
                )
            except _RETRIED as e:
                failed.append((letter, e))
                continue
            sent.append((letter, future))
        results = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
        for (letter, _), result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, _RETRIED):
                    raise result
                failed.append((letter, result))
            else:
                _delivered(letter)
        remaining, waiting = [], []
        for letter, error in failed:
            if isinstance(error, _TOO_LARGE) and letter.message.value is not None:
                with record_context(letter.message):
                    log.warning(
                        "dead letter too large; sending it without its value",
                        extra={"source": _source(letter), "size": len(letter.message.value)},
                    )
                remaining.append(without_value(letter))  # at once: a smaller request
            else:
                remaining.append(letter)
                waiting.append(error)
        if waiting:
            metrics.TRANSIENT.labels("dlq").inc()
            log.error(
                "dead letters not acknowledged; retrying (nothing is committed past them)",
                extra={
                    "letters": len(waiting),
                    "error": repr(waiting[0])[:200],
                    "retry_in_seconds": delay,
                },
            )
            if stop is not None and stop.is_set():
                raise DependencyDown(f"stopping with {len(waiting)} dead letters undelivered")
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)


def _source(letter: DeadLetter) -> str:
    m = letter.message
    return f"{m.topic}/{m.partition}/{m.offset}"


def _delivered(letter: DeadLetter) -> None:
    metrics.DLQ.labels(letter.reason).inc()
    with record_context(letter.message):  # correlation_id and batch_id, where readable
        log.warning(
            "dead-lettered",
            extra={
                "reason": letter.reason,
                "detail": letter.detail[:200],
                "source": _source(letter),
            },
        )
