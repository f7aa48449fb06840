"""The dead-letter topic: the original message, unchanged, with headers saying why.

Headers added (all UTF-8): ``dlq.reason`` (a stable code such as INVALID_DATA
or REGISTRATION_CONFLICT), ``dlq.detail`` (one line for a person),
``dlq.source.topic``, ``dlq.source.partition``, ``dlq.source.offset``. The
original key, value and headers are kept.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

from infrastructure import metrics

log = logging.getLogger("batchslot.dlq")
# Big enough for anything an inbound topic accepted, including oversize messages.
DLQ_MAX_REQUEST_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class DeadLetter:
    message: Any  # aiokafka ConsumerRecord
    reason: str
    detail: str


def dlq_headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    m = letter.message
    return [
        *list(m.headers or ()),
        ("dlq.reason", letter.reason.encode()),
        ("dlq.detail", letter.detail.replace("\n", " ")[:500].encode()),
        ("dlq.source.topic", str(m.topic).encode()),
        ("dlq.source.partition", str(m.partition).encode()),
        ("dlq.source.offset", str(m.offset).encode()),
    ]


async def send_dead_letters(producer: AIOKafkaProducer, topic: str, dead: list[DeadLetter]) -> None:
    """Send every dead letter and wait until the broker has acknowledged all of them."""
    if not dead:
        return
    pending = []
    for letter in dead:
        m = letter.message
        pending.append(
            await producer.send(topic, value=m.value, key=m.key, headers=dlq_headers(letter))
        )
        metrics.DLQ.labels(letter.reason).inc()
        log.warning(
            "dead-lettered",
            extra={
                "reason": letter.reason,
                "detail": letter.detail[:200],
                "source": f"{m.topic}/{m.partition}/{m.offset}",
            },
        )
    await asyncio.gather(*pending)
