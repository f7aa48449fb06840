"""The outbox projector: every stored event to ``batch.events.v1``, in order, never lost.

One page at a time: read the notifications after the tracked position, map
each to its envelope, send them all, await every acknowledgement, and only
THEN record the page's last notification id (``outbox_tracking``, a
PostgresTrackingRecorder table in the event store's schema). A crash between
the acks and the tracking write republishes that page with the same
``event_id``s: at least once, nothing skipped, consumers deduplicate.

Order: notification ids commit in id order (the library's recorder takes an
EXCLUSIVE table lock per insert), so reading by id never skips a gap that
fills later. Per partition at most one record batch of ours is outstanding at
a time (a Kafka record batch is appended atomically), and a failed page is
retried only after all its sends have settled; so a partition never receives
an event before an earlier event of it — duplicates only ever repeat a prefix.

Wake-ups come from PostgreSQL LISTEN on the events table's NOTIFY channel,
with a bounded timeout as a fallback. Broker or database trouble is retried
with capped exponential backoff; commands never wait on any of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from aiokafka.partitioner import DefaultPartitioner
from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError, Tracking
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresTrackingRecorder

from infrastructure.bootstrap import Bootstrap
from infrastructure.kafka import ensure_topics, make_producer
from infrastructure.pg_listen import Listener, first_of
from infrastructure.postgres import ddl_lock
from infrastructure.settings import Settings
from projections.envelope import OutboundMessage, envelope_of

log = logging.getLogger(__name__)
TRACKING_TABLE = "outbox_tracking"


class Outbox:
    """Publishes the notification log of ``app`` to ``settings.topics.events``."""

    def __init__(
        self,
        settings: Settings,
        app: Application[UUID],
        *,
        page_size: int = 500,
        idle_timeout: float = 5.0,
        backoff: tuple[float, float] = (0.1, 5.0),
        producer_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(app.recorder, PostgresApplicationRecorder):
            raise TypeError("the outbox needs the PostgreSQL event store")
        self.settings = settings
        self.topic = settings.topics.events
        self.page_size = page_size
        self.idle_timeout = idle_timeout
        self.backoff = backoff
        self.application_name = app.name
        self._app = app
        self._events = app.recorder
        self._tracking = PostgresTrackingRecorder(
            app.recorder.datastore, tracking_table_name=TRACKING_TABLE
        )
        with ddl_lock(settings):  # processes starting at once: one creates the table
            self._tracking.create_table()
        self._producer_overrides = dict(producer_overrides or {})
        self._producer: Any = None
        self._partitioner = DefaultPartitioner()
        self.failures = 0  # pages that failed and will be retried (for metrics and tests)

    # ------------------------------------------------------------- position

    def position(self) -> int:
        """The last notification id whose event (and all before it) is acknowledged."""
        return self._tracking.max_tracking_id(self.application_name) or 0

    def lag(self) -> int:
        """Stored events not yet published."""
        return max(0, (self._events.max_notification_id() or 0) - self.position())

    # ----------------------------------------------------------- publishing

    async def publish_once(self) -> int:
        """Publish the next page; return how many events it held (0: caught up)."""
        position = await asyncio.to_thread(self.position)
        page = await asyncio.to_thread(
            self._events.select_notifications,
            position,
            self.page_size,
            inclusive_of_start=False,
        )
        if not page:
            return 0
        source = self.settings.source_service
        mapper = self._app.mapper
        messages = [envelope_of(mapper.to_domain_event(n), source) for n in page]
        await self._send(messages)
        await asyncio.to_thread(self._record, page[-1].id)
        return len(page)

    def _record(self, notification_id: int) -> None:
        with contextlib.suppress(IntegrityError):  # another instance recorded beyond it
            self._tracking.insert_tracking(Tracking(self.application_name, notification_id))

    async def _send(self, messages: list[OutboundMessage]) -> None:
        producer = await self._started_producer()
        partitions = sorted(await producer.partitions_for(self.topic))
        by_partition: dict[int, list[OutboundMessage]] = {}
        for m in messages:
            by_partition.setdefault(self._partitioner(m.key, partitions, partitions), []).append(m)
        results = await asyncio.gather(
            *(self._send_partition(producer, p, ms) for p, ms in by_partition.items()),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _send_partition(
        self, producer: Any, partition: int, ms: list[OutboundMessage]
    ) -> None:
        """Send in order, one record batch at a time, each acknowledged before the next."""
        batch = producer.create_batch()
        for m in ms:
            if batch.append(key=m.key, value=m.value, timestamp=None, headers=m.headers) is None:
                await (await producer.send_batch(batch, self.topic, partition=partition))
                batch = producer.create_batch()  # the first record always fits
                batch.append(key=m.key, value=m.value, timestamp=None, headers=m.headers)
        await (await producer.send_batch(batch, self.topic, partition=partition))

    async def _started_producer(self) -> Any:
        if self._producer is None:
            await ensure_topics(self.settings)  # idempotent; a restarted broker may lack them
            producer = make_producer(self.settings, **self._producer_overrides)
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    # --------------------------------------------------------------- loop

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set; wake on NOTIFY, retry failures with backoff."""
        listener = Listener(self.settings, self._events.channel_name)
        delay = self.backoff[0]
        log.info("outbox starting at position %d, topic %s", self.position(), self.topic)
        try:
            while not stop.is_set():
                try:
                    published = await self.publish_once()
                except Exception as e:  # broker or database trouble: retry the page
                    self.failures += 1
                    log.warning(
                        "outbox page failed (%s: %s); retry in %.1fs", type(e).__name__, e, delay
                    )
                    await self.close()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    delay = min(delay * 2, self.backoff[1])
                    continue
                delay = self.backoff[0]
                if published < self.page_size:
                    await first_of(stop.wait(), listener.wait(self.idle_timeout))
        finally:
            await listener.close()
            await self.close()


def run_outbox(settings: Settings, stop: threading.Event, **options: Any) -> None:
    """Blocking: run the outbox until ``stop`` is set (``batchctl outbox``)."""
    service = Bootstrap(settings).batch_service()

    async def main() -> None:
        outbox = Outbox(settings, service, **options)
        done = asyncio.Event()
        task = asyncio.create_task(outbox.run(done))
        while not stop.is_set() and not task.done():
            await asyncio.sleep(0.1)  # a local flag, not a poll of the store
        done.set()
        await task

    try:
        asyncio.run(main())
    finally:
        service.close()
