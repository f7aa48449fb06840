"""The broker side of the fault run: feed the inbound topics, read the events topic and DLQ."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka.errors import KafkaError

from infrastructure.kafka.clients import make_consumer, make_producer, stop_consumer
from infrastructure.settings import Settings
from tests.support.chaos.common import console
from tests.support.scenario import Message


class EventsTap:
    """Reads the events topic from the beginning in the background, remembering everything."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.records: list[tuple[str, str, int]] = []  # (event_id, batch key, arrival index)
        self.ids: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 30)

    async def reopen(self) -> None:
        """Read again from the beginning with a new consumer (after a broker restart).

        Needed: a consumer without a group keeps its in-memory offsets across the
        restart, and Tansu answers a fetch beyond the (new, empty) log with no
        records rather than OFFSET_OUT_OF_RANGE, so it would silently skip every
        new record below its old offset.
        """
        await self.stop()
        await self.start()

    async def _run(self) -> None:
        while not self._stop.is_set():
            consumer = make_consumer(
                self.settings,
                self.settings.topics.events,
                group_id=None,
                metadata_max_age_ms=2000,
                request_timeout_ms=10_000,
            )
            try:
                await consumer.start()
                while not self._stop.is_set():
                    batch = await consumer.getmany(timeout_ms=300)
                    for record in (r for rs in batch.values() for r in rs):
                        headers = dict(record.headers)
                        event_id = headers["event_id"].decode()
                        self.records.append((event_id, record.key.decode(), len(self.records)))
                        self.ids.add(event_id)
            except Exception as e:  # broker restart: reconnect
                console.print(f"[dim]events tap reconnecting ({type(e).__name__})[/]")
                await asyncio.sleep(1)
            finally:
                await stop_consumer(consumer)


async def produce(settings: Settings, messages: list[Message], seconds: float) -> int:
    """Send ``messages`` spread over ``seconds``; return how many were acknowledged."""
    topic = settings.topics.by_kind
    producer = make_producer(settings)
    await producer.start()

    async def send(chunk: list[Message]) -> None:
        """Send a chunk; resend what failed (a partition can time out the run's own
        requests too: the broker advertises the proxy to every client)."""
        for attempt in range(10):
            try:
                futures = [
                    await producer.send(topic[m.kind], value=m.value, key=m.key.encode())
                    for m in chunk
                ]
                results = await asyncio.gather(*futures, return_exceptions=True)
            except KafkaError:
                results = [KafkaError()] * len(chunk)
            chunk = [m for m, r in zip(chunk, results, strict=True) if isinstance(r, Exception)]
            if not chunk:
                return
            await asyncio.sleep(min(5.0, 0.5 * (attempt + 1)))
        raise RuntimeError(f"{len(chunk)} messages could not be sent")

    try:
        pause = seconds / max(1, len(messages))
        for i in range(0, len(messages), 20):
            await send(messages[i : i + 20])
            if i + 20 < len(messages):
                await asyncio.sleep(pause * 20)
    finally:
        await producer.stop()
    return len(messages)


async def read_dlq(settings: Settings, seconds: float = 4.0) -> list[Any]:
    consumer = make_consumer(settings, settings.topics.dlq, group_id=None)
    await consumer.start()
    out: list[Any] = []
    try:
        idle_until = time.monotonic() + seconds
        while time.monotonic() < idle_until:
            batch = await consumer.getmany(timeout_ms=300)
            for rs in batch.values():
                out.extend(rs)
                idle_until = time.monotonic() + 1.5
    finally:
        await consumer.stop()
    return out
