"""The outbox projector: every stored event to ``batch.events.v1``, in order, never lost.

One page at a time: read the notifications after the tracked position, map
each to its envelope, send them all, and record a notification id only once
it and every one before it are acknowledged (``outbox_tracking``, a
PostgresTrackingRecorder table in the event store's schema). A crash between
the acks and the tracking write republishes those events with the same
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

Recording the position: as soon as a prefix (in notification order) is
acknowledged its position is recorded, in the background
(``processes/recording.py``), every ``record_every`` events or
``record_interval`` seconds, whichever first, so the fsync'd write is on the
path of no event and a light load does not pay one per page. Under its lease
the outbox keeps its position (and the parked batches) in memory between
pages, since it alone moves them; without a lease it records after every page
and reads the position back before the next, as instances then share only
the store's.

Republication after a crash: a page holds ``page_size`` (250) events, and a
page is not sent while it would take the events acknowledged but not
recorded past ``page_size``, so a kill -9 republishes at most one page's
worth. That matters when a page spans several record batches per partition
(large envelopes, or ``batch_records`` set to cap the records per batch).
Measured: a smaller page costs ~10 % of throughput, a 100-record cap ~45 %,
so the page size is the lever.

Refused events (a record the producer or the broker will never take, e.g.
MESSAGE_SIZE_TOO_LARGE; see ``REFUSALS``) do not hold back other batches: a
page refused ``refusal_attempts`` times is sent one record at a time; each
refused record and every later event of its batch are parked
(``infrastructure/postgres/parking.py``), the position moves past the page,
and parked events are retried per batch, in order, every
``parked_retry_seconds``. Retriable trouble (broker down, timeouts) never
parks anything: the page is retried, as nothing could be published anyway.

Trace context: each record carries the ``traceparent`` stored with its event
(the command's cause), or, with tracing on, that of a ``publish`` span made
under it (ended when the page is done); an event stored without one gets no
header (tracing off) or a ``publish`` span of a new trace (on).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from uuid import UUID

from aiokafka import errors as kafka_errors
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from eventsourcing.application import Application
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import IntegrityError, Notification, Tracking
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresTrackingRecorder
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind
from psycopg.sql import SQL, Identifier

from application.tracing import context_of, traceparent_of
from infrastructure import metrics
from infrastructure.kafka.clients import KafkaClients, producer_kwargs
from infrastructure.postgres import timeouts as pg_timeouts
from infrastructure.postgres.completions import CompletionFacts
from infrastructure.postgres.listen import Listener, SharedListener, Subscription
from infrastructure.postgres.parking import PARKED_TABLE, ParkingLot
from infrastructure.postgres.recorder import traceparent_of_notification
from infrastructure.postgres.shared_log import shared_log
from infrastructure.processes.follower import FENCE, acheck_fence, check_fence, follow
from infrastructure.processes.recording import PositionWriter
from infrastructure.settings import Settings
from infrastructure.tracing import Tracing, ending
from infrastructure.transient import described
from projections.envelope import OutboundMessage, envelope_of
from projections.huleedu import Completion, MissingOwner, huleedu_messages, needs_completion

log = logging.getLogger(__name__)
TRACKING_TABLE = "outbox_tracking"

# Errors about a record itself, raised by the producer or returned by the broker:
# sending the same record again cannot succeed until someone changes a limit.
REFUSALS: tuple[type[BaseException], ...] = tuple(
    getattr(kafka_errors, name)
    for name in (
        "MessageSizeTooLargeError",
        "RecordListTooLargeError",
        "RecordTooLargeError",
        "CorruptRecordException",
        "InvalidTimestampError",
        "InvalidRecordError",
    )
    if hasattr(kafka_errors, name)
)


class _Progress:
    """Which events of a page are done (each of their records acknowledged or parked);
    the done prefix. ``ids`` has one entry per record: an event with records on two
    topics (WIRE_PROFILE=huleedu) is done when both are."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = list(dict.fromkeys(ids))  # each event once, in notification order
        self._left = Counter(ids)  # records not yet done, per event
        self.done: set[int] = set()
        self.count = 0  # length of the done prefix

    def mark(self, ids: Iterable[int]) -> None:
        for nid in ids:
            self._left[nid] -= 1
            if self._left[nid] <= 0:
                self.done.add(nid)
        while self.count < len(self.ids) and self.ids[self.count] in self.done:
            self.count += 1

    @property
    def position(self) -> int | None:
        return self.ids[self.count - 1] if self.count else None


class PositionMoved(RuntimeError):
    """The outbox's recorded position is not where this outbox left it."""


class Outbox:
    """Publishes the notification log of ``app`` to ``settings.topics.events``.

    Built by ``Bootstrap.outbox()`` on a store that has its tables (``OUTBOX_TABLES``,
    made by ``create_outbox_tables`` in the store's set-up): it creates none.
    """

    def __init__(
        self,
        settings: Settings,
        app: Application[UUID],
        *,
        page_size: int = 250,
        idle_timeout: float = 5.0,
        backoff: tuple[float, float] = (0.1, 5.0),
        producer_overrides: Mapping[str, Any] | None = None,
        batch_records: int | None = None,
        record_every: int = 100,
        record_interval: float = 0.1,
        refusal_attempts: int = 3,
        parked_retry_seconds: float = 30.0,
        kafka: KafkaClients | None = None,
        tracing: Tracing | None = None,
        listener: Callable[[], Subscription] | None = None,
    ) -> None:
        if not isinstance(app.recorder, PostgresApplicationRecorder):
            raise TypeError("the outbox needs the PostgreSQL event store")
        self.settings = settings
        self.tracer = (tracing or Tracing.off()).tracer
        self.kafka = kafka or KafkaClients(settings)
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
        self._producer_overrides = dict(producer_overrides or {})
        self._producer: Any = None
        self._partitioner = DefaultPartitioner()
        self.failures = 0  # pages that failed and will be retried (for metrics and tests)
        self.batch_records = batch_records
        self.record_every = record_every
        self.record_interval = record_interval
        self.refusal_attempts = refusal_attempts
        self.parked_retry_seconds = parked_retry_seconds
        self.max_request_size = int(
            {**producer_kwargs(settings), **self._producer_overrides}["max_request_size"]
        )
        self.parking = ParkingLot(app.recorder, app.name)
        # WIRE_PROFILE=huleedu: HuleEdu's events too (projections/huleedu.py).
        self.huleedu = settings.huleedu_topics
        self._completion_facts = CompletionFacts(app.recorder)
        self._unannounced: set[str] = set()  # batches whose completion HuleEdu cannot get
        self._refusals = 0  # pages refused in a row (a record the broker will never take)
        self._recorded_at = 0.0  # when a position write was last asked for
        self._noted = 0
        self._flush: asyncio.TimerHandle | None = None
        self._move_statement = SQL(
            "INSERT INTO {t} (application_name, notification_id) VALUES (%(app)s, %(to)s) "
            "ON CONFLICT (application_name) DO UPDATE SET notification_id = %(to)s "
            "WHERE {t}.notification_id = %(from)s RETURNING notification_id"
        ).format(t=Identifier(app.recorder.datastore.schema, TRACKING_TABLE))
        self.head_check_seconds = 5.0
        self._next_head_check = 0.0
        self._nudge: asyncio.Event | None = None  # set: a position write failed, check it
        self._writer = PositionWriter(
            self._record, on_recorded=self._on_recorded, on_failed=self._write_failed
        )
        self._next_parked_retry = 0.0
        self.published: int | None = None  # last position recorded (for the stall watchdog)
        # Its wake-ups: the process's shared LISTEN (the container's), or one of its own.
        self._new_listener = listener or SharedListener(
            lambda: Listener(self.settings, self._events.channel_name)
        ).subscribe
        self._listener: Subscription | None = None
        # Under its lease this loop alone moves the position and parks (nobody else
        # writes them): it keeps both in memory between pages (None: read them).
        self._known: int | None = None  # the position after the last page published
        self._parked: set[str] | None = None  # batches with parked events
        self._recording_failed = False  # the last failure was a position write's
        self._refused = 0.0  # how much later the next position write is asked (refused)

    # ------------------------------------------------------------- position

    def position(self) -> int:
        """The last notification id whose event (and all before it) is acknowledged."""
        return self._tracking.max_tracking_id(self.application_name) or 0

    def lag(self) -> int:
        """Stored events not yet published."""
        return max(0, (self._events.max_notification_id() or 0) - self.position())

    # ----------------------------------------------------------- publishing

    async def publish_once(self) -> int:
        """Publish the next page and record its position; return how many events it
        held (0: caught up)."""
        position = self.published = await asyncio.to_thread(self.position)
        self._writer.reset(position)
        page = await asyncio.to_thread(shared_log(self._app).read, position, self.page_size)
        if page:
            await self._publish(page, position)
            self._writer.ask_acked()
            await self._writer.settle()
        return len(page)

    async def _publish(self, page: Sequence[Notification], position: int) -> None:
        """Publish a page read after ``position``; record how far it got."""
        started = time.perf_counter()
        self._noted = 0  # events of this page handed to the position writer
        parked = self._parked
        if parked is None:
            parked = self._parked = await asyncio.to_thread(self.parking.batches)
        if FENCE.get() is None:  # no lease: another instance may park meanwhile
            self._parked = None
        spans: list[Span] = []
        with ending(spans):
            await self._publish_page(page, parked, spans)
        self._known = page[-1].id
        metrics.OUTBOX_PUBLISH_SECONDS.observe(time.perf_counter() - started)

    def _messages(
        self,
        notification: Notification,
        event: DomainEventProtocol[UUID],
        spans: list[Span],
        completions: Mapping[UUID, Completion],
    ) -> list[OutboundMessage]:
        """The records of a stored event, with its trace context (a ``publish`` span's,
        added to ``spans``, when tracing is on): its ``batch.events.v1`` record, then
        HuleEdu's (WIRE_PROFILE=huleedu)."""
        traceparent = traceparent_of_notification(notification)
        span: Span | None = None
        if self.tracer is not None:
            parent = context_of({"traceparent": traceparent}) if traceparent else None
            span = self.tracer.start_span(
                "publish",
                context=parent or Context(),
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": self.topic,
                    "batch_slot.event_type": type(event).__name__,
                    "batch_slot.notification_id": notification.id,
                },
            )
            spans.append(span)
            traceparent = traceparent_of(trace.set_span_in_context(span, Context()))
        message = envelope_of(event, self.settings.source_service, traceparent)
        if span is not None:
            span.set_attribute("messaging.message.id", message.event_id)
            span.set_attribute("batch_slot.batch_id", message.key.decode())
        if self.huleedu is None:
            return [message]
        return [message, *self._huleedu_messages(event, traceparent, completions)]

    def _huleedu_messages(
        self,
        event: DomainEventProtocol[UUID],
        traceparent: str | None,
        completions: Mapping[UUID, Completion],
    ) -> list[OutboundMessage]:
        assert self.huleedu is not None
        try:
            return huleedu_messages(
                event,
                self.huleedu,
                self.settings.source_service,
                traceparent,
                completions.get(event.originator_id),
            )
        except MissingOwner as e:  # registered without course code or user (never in
            batch_id = str(getattr(event, "batch_id", "?"))  # this profile's reader)
            if batch_id not in self._unannounced:
                self._unannounced.add(batch_id)
                log.warning("outbox: no HuleEdu completion for %s (%s)", batch_id, e)
            return []

    async def _completions(
        self, events: Sequence[DomainEventProtocol[UUID]]
    ) -> dict[UUID, Completion]:
        """The registration and parts of every batch a page completes (HuleEdu's
        completion needs them; one query, only for pages that complete batches)."""
        if self.huleedu is None:
            return {}
        ids = {e.originator_id for e in events if needs_completion(e)}
        if not ids:
            return {}
        stored = await asyncio.to_thread(self._completion_facts.stored, ids)
        completions: dict[UUID, Completion] = {}
        for originator_id, rows in stored.items():
            facts = [self._app.mapper.to_domain_event(row) for row in rows]
            registrations = [f for f in facts if type(f).__name__ == "BatchRegistered"]
            parts = [f for f in facts if type(f).__name__ == "BatchCompleted"]
            if registrations:
                completions[originator_id] = Completion(registrations[0], parts)
        return completions

    async def _page_messages(
        self, page: Sequence[Notification], spans: list[Span]
    ) -> list[tuple[int, OutboundMessage]]:
        """Every record of a page, in notification order, with its notification id."""
        events = shared_log(self._app).events(page)
        completions = await self._completions(events)
        return [
            (n.id, m)
            for n, e in zip(page, events, strict=True)
            for m in self._messages(n, e, spans, completions)
        ]

    async def _publish_page(
        self, page: Sequence[Notification], parked: set[str], spans: list[Span]
    ) -> None:
        items = await self._page_messages(page, spans)
        progress = _Progress([nid for nid, _ in items])
        held = [(nid, m) for nid, m in items if m.key.decode() in parked]
        if held:  # later events of a batch with parked events wait behind them
            await self._park(held, "held behind an earlier parked event of its batch", 0)
            progress.mark(nid for nid, _ in held)
        to_send = [(nid, m) for nid, m in items if m.key.decode() not in parked]
        isolate = self._refusals >= self.refusal_attempts
        if self._writer.failed or self._writer.unrecorded() + len(page) > self.page_size:
            self._writer.ask_acked()  # at most one page acknowledged and not recorded
            await self._writer.settle()
        try:
            await self._send(to_send, progress, isolate=isolate)
        except REFUSALS:
            self._refusals += 1
            raise
        self._refusals = 0
        await self._checkpoint(progress, final=True)

    def _record(self, notification_id: int) -> None:
        check_fence()  # under a lease: a holder that lost it records (and sends) no more
        if FENCE.get() is not None and self._tracking.datastore.single_row_tracking:
            self._move_position(notification_id)
            return
        with contextlib.suppress(IntegrityError):  # another instance recorded beyond it
            self._tracking.insert_tracking(Tracking(self.application_name, notification_id))

    def _move_position(self, notification_id: int) -> None:
        """Under the lease: move the recorded position from where this outbox left it
        (compare-and-set). Anything else there means the store was restored from an older
        backup (or another instance wrote): ``PositionMoved``, and the loop goes on from
        the store's position instead of its own."""
        left_at = self._writer.recorded  # (read back from the store, or written last)
        with self._tracking.datastore.transaction(commit=True) as curs:
            curs.execute(
                self._move_statement,
                {"app": self.application_name, "to": notification_id, "from": left_at},
                prepare=True,
            )
            if curs.fetchone() is None:
                raise PositionMoved(
                    f"the outbox's recorded position is no longer {left_at}: the store "
                    "was restored from an older backup, or another instance moved it"
                )

    def _on_recorded(self, position: int) -> None:
        self.published = position
        self._refused = 0.0

    def _write_failed(self) -> None:
        self._recording_failed = True
        if self._nudge is not None:
            self._nudge.set()
            if self._listener is not None:
                self._listener.ring(None)  # (ends a wait at once)

    async def _checkpoint(self, progress: _Progress, *, final: bool = False) -> None:
        """Record the acknowledged prefix, in the background (``PositionWriter``): every
        ``record_every`` events or ``record_interval`` seconds, whichever first; without
        a lease also at the end of every page (the store's position is then what
        instances share)."""
        await acheck_fence()  # after every acknowledged batch: a lost lease sends no more
        self._writer.acked(progress.ids[self._noted : progress.count])
        self._noted = progress.count
        unasked = self._writer.unasked()
        if not unasked:
            return
        if not (
            (final and FENCE.get() is None)
            or unasked >= self.record_every
            or time.monotonic() - self._recorded_at >= self.record_interval
        ):
            return
        self._writer.ask_acked()
        self._recorded_at = time.monotonic()

    def _flush_soon(self) -> None:
        """Caught up with events not recorded: ask for them within ``record_interval``."""
        if self._flush is not None or not self._writer.unasked():
            return
        delay = max(0.0, self._recorded_at + self.record_interval - time.monotonic())

        def flush() -> None:
            self._flush = None
            self._writer.ask_acked()
            self._recorded_at = time.monotonic()

        self._flush = asyncio.get_running_loop().call_later(delay, flush)

    async def _park(
        self, items: list[tuple[int, OutboundMessage]], reason: str, tries: int
    ) -> None:
        rows = [(nid, m.key.decode(), m.event_id, m.event_type, reason, tries) for nid, m in items]
        await asyncio.to_thread(self.parking.park, rows)
        if self._parked is not None:
            self._parked.update(batch_id for _, batch_id, *_ in rows)
        metrics.OUTBOX_PARKED.set(await asyncio.to_thread(self.parking.count))

    async def _send(
        self, items: list[tuple[int, OutboundMessage]], progress: _Progress, *, isolate: bool
    ) -> None:
        producer = await self._started_producer()
        if isolate:  # one record at a time, in notification order, across every topic
            await self._send_isolated(producer, items, progress)
            return
        by_partition: dict[tuple[str, int], list[tuple[int, OutboundMessage]]] = {}
        partitions: dict[str, list[int]] = {}  # each topic's, asked once per page
        for item in items:
            topic = item[1].topic or self.topic
            if topic not in partitions:
                partitions[topic] = await self._partitions(producer, topic)
            chosen = self._partitioner(item[1].key, partitions[topic], partitions[topic])
            by_partition.setdefault((topic, chosen), []).append(item)
        results = await asyncio.gather(
            *(
                self._send_partition(producer, topic, p, part, progress)
                for (topic, p), part in by_partition.items()
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _destination(self, producer: Any, m: OutboundMessage) -> tuple[str, int]:
        """The record's topic and partition (by key, as Kafka's default partitioner)."""
        topic = m.topic or self.topic
        partitions = await self._partitions(producer, topic)
        return topic, self._partitioner(m.key, partitions, partitions)

    @staticmethod
    async def _partitions(producer: Any, topic: str) -> list[int]:
        return sorted(await producer.partitions_for(topic))

    def _check_size(self, m: OutboundMessage) -> None:
        """The producer's own limit (aiokafka checks it in send(), not in send_batch())."""
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(m.key, m.value, m.headers)
        if size > self.max_request_size:
            raise kafka_errors.MessageSizeTooLargeError(
                f"event {m.event_id} ({m.event_type}) is {size} bytes, over the producer's "
                f"max_request_size {self.max_request_size}"
            )

    async def _send_partition(
        self,
        producer: Any,
        topic: str,
        partition: int,
        items: list[tuple[int, OutboundMessage]],
        progress: _Progress,
    ) -> None:
        """Send in order, one record batch at a time, each acknowledged before the next."""
        batch, ids = producer.create_batch(), list[int]()
        for nid, m in items:
            self._check_size(m)
            full = self.batch_records is not None and len(ids) >= self.batch_records
            if (
                full
                or batch.append(key=m.key, value=m.value, timestamp=None, headers=m.headers) is None
            ):
                await (await producer.send_batch(batch, topic, partition=partition))
                progress.mark(ids)
                await self._checkpoint(progress)
                batch, ids = producer.create_batch(), []  # the first record always fits
                batch.append(key=m.key, value=m.value, timestamp=None, headers=m.headers)
            ids.append(nid)
        await (await producer.send_batch(batch, topic, partition=partition))
        progress.mark(ids)
        await self._checkpoint(progress)

    async def _send_isolated(
        self,
        producer: Any,
        items: list[tuple[int, OutboundMessage]],
        progress: _Progress,
    ) -> None:
        """One record per request: park each refused record's event and the rest of its
        batch (its other records are sent again with it when it is retried)."""
        parked: dict[str, str] = {}  # batch_id -> why
        for nid, m in items:
            batch_id = m.key.decode()
            if batch_id in parked:
                await self._park([(nid, m)], parked[batch_id], 0)
                progress.mark([nid])
                continue
            try:
                await self._send_one(producer, m)
            except REFUSALS as refusal:
                reason = f"{type(refusal).__name__}: {refusal}"[:1000]
                metrics.OUTBOX_REFUSED.labels(type(refusal).__name__).inc()
                log.warning(
                    "outbox: event %s (%s, notification %d) of batch %r refused (%s); parked "
                    "with the later events of its batch, retried every %.0fs",
                    m.event_id,
                    m.event_type,
                    nid,
                    batch_id,
                    reason,
                    self.parked_retry_seconds,
                )
                await self._park([(nid, m)], reason, self.refusal_attempts)
                parked[batch_id] = f"held behind refused event {m.event_id} of its batch"
            progress.mark([nid])
            await self._checkpoint(progress)

    async def _send_one(self, producer: Any, m: OutboundMessage) -> None:
        self._check_size(m)
        topic, partition = await self._destination(producer, m)
        batch = producer.create_batch()
        batch.append(key=m.key, value=m.value, timestamp=None, headers=m.headers)
        await (await producer.send_batch(batch, topic, partition=partition))

    # -------------------------------------------------------------- parked

    async def retry_parked(self) -> int:
        """Try the parked events again, per batch in order; return how many went out."""
        parked = await asyncio.to_thread(self.parking.parked)
        if not parked:
            metrics.OUTBOX_PARKED.set(0)
            return 0
        stored = await asyncio.to_thread(
            self.parking.notifications, [p.notification_id for p in parked]
        )
        producer = await self._started_producer()
        events = {nid: self._app.mapper.to_domain_event(n) for nid, n in stored.items()}
        completions = await self._completions(list(events.values()))
        blocked: set[str] = set()
        published = 0
        for p in parked:
            if p.batch_id in blocked:
                continue
            notification: Notification | None = stored.get(p.notification_id)
            if notification is not None:  # (a store restored from an older backup lacks it)
                spans: list[Span] = []
                try:
                    with ending(spans):
                        for m in self._messages(
                            notification, events[p.notification_id], spans, completions
                        ):
                            await self._send_one(producer, m)
                except REFUSALS as refusal:
                    blocked.add(p.batch_id)
                    reason = f"{type(refusal).__name__}: {refusal}"[:1000]
                    metrics.OUTBOX_REFUSED.labels(type(refusal).__name__).inc()
                    log.warning(
                        "outbox: parked event %s (%s) of batch %r still refused after %d "
                        "attempts (%s)",
                        p.event_id,
                        p.event_type,
                        p.batch_id,
                        p.attempts + 1,
                        reason,
                    )
                    await asyncio.to_thread(self.parking.failed, p.notification_id, reason)
                    continue
                published += 1
            await asyncio.to_thread(self.parking.unpark, p.notification_id)
        self._parked = None  # unparked: read again
        if published:
            log.info("outbox: published %d parked events", published)
        metrics.OUTBOX_PARKED.set(await asyncio.to_thread(self.parking.count))
        return published

    async def _started_producer(self) -> Any:
        if self._producer is None:
            await self.kafka.ensure_topics()  # idempotent; a restarted broker may lack them
            producer = self.kafka.producer(**self._producer_overrides)
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

    async def recycle(self) -> None:
        """The stall watchdog's lever: free calls blocked on a silent PostgreSQL
        connection and reopen the LISTEN connection (Kafka requests are bounded
        by KAFKA_REQUEST_TIMEOUT_MS, after which the producer is reopened)."""
        pg_timeouts.recycle()
        if self._listener is not None:
            await self._listener.recycle()

    # --------------------------------------------------------------- loop

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set: the shared follower loop (wake on NOTIFY,
        retry failures with backoff)."""
        listener = self._listener = self._new_listener()
        self._known = self._parked = None  # (a new lease: another instance may have led)
        self._recording_failed = False
        self._nudge = asyncio.Event()
        self.published = await asyncio.to_thread(self.position)
        log.info("outbox starting at position %d, topic %s", self.published, self.topic)
        try:
            await follow(
                self,
                shared_log(self._app),
                listener,
                stop,
                page_size=self.page_size,
                idle_timeout=self.idle_timeout,
                backoff=self.backoff,
                nudge=self._nudge,
            )
        finally:
            if self._flush is not None:
                self._flush.cancel()
                self._flush = None
            with contextlib.suppress(Exception):  # a graceful stop records its last page
                self._writer.ask_acked()
                await self._writer.settle()
            await self.close()

    # ------------------------------------------------------------ Follower

    async def read_after(self) -> int:
        """Retry the parked events when due; then where to go on: under the lease, from
        the last page published (this loop alone moves the position); without one, or
        after a failure, from the position recorded in the store (another instance may
        have moved it)."""
        if time.monotonic() >= self._next_parked_retry:
            self._next_parked_retry = time.monotonic() + self.parked_retry_seconds
            await self.retry_parked()
        if self._known is not None and FENCE.get() is not None:
            return self._known
        with contextlib.suppress(Exception):  # a failed write is retried from the store's
            await self._writer.settle()
        # The parked batches are read alongside (one round trip less): only this loop
        # parks or unparks between here and the page's _publish, which takes them
        # (without a lease another instance may park concurrently either way).
        position, self._parked = await asyncio.gather(
            asyncio.to_thread(self.position), asyncio.to_thread(self.parking.batches)
        )
        self._writer.reset(position)
        self._known = self.published = position
        return position

    async def handle(self, page: Sequence[Notification], after: int | None) -> None:
        await self._publish(page, after or 0)

    async def caught_up(self) -> None:
        if self._writer.failed:
            await self._writer.settle()  # raises its error (e.g. PositionMoved)
        self._flush_soon()
        if time.monotonic() >= self._next_head_check:
            self._next_head_check = time.monotonic() + self.head_check_seconds
            await asyncio.to_thread(self._check_head)

    def _check_head(self) -> None:
        """Idle: is the store behind this outbox (restored from an older backup, its ids
        drawn again)? Then ``PositionMoved``: go on from the position recorded there."""
        # What this outbox has seen is taken before the store is asked (the position and
        # the head only move on meanwhile): behind it, the store really went back.
        recorded, known = self._writer.recorded, self._known or 0
        store, window_ahead = shared_log(self._app).check_head(
            lambda: self._events.max_notification_id() or 0
        )
        behind = self.position() < recorded  # its own position went back
        if window_ahead or behind or known > store:
            raise PositionMoved(
                f"the event store's last event {store} or the outbox's recorded position is "
                "behind what this outbox published: restored from an older backup?"
            )

    async def failed(self, error: Exception) -> bool:
        """Broker or database trouble: retry the page after the backoff (from the
        position and parked batches recorded in the store). The store behind this
        outbox (``PositionMoved``): go on at once from the position recorded there.
        Under the lease, a position the store refused to record (read-only for a while:
        a failover, a full disk) changes nothing that was published: it stays published
        and is recorded once the store takes writes again, instead of being sent again
        after every backoff (a read-only window of seconds used to republish the
        unrecorded page dozens of times)."""
        recording, self._recording_failed = self._recording_failed, False
        if isinstance(error, PositionMoved):
            self._known = self._parked = None
            shared_log(self._app).forget()  # (restored: the ids it holds are drawn again)
            log.warning("outbox: %s; going on from the recorded position", error)
            return False
        self.failures += 1
        log.warning("outbox page failed (%s: %s); retrying", described(error, self.settings), error)
        if recording and self._known is not None and FENCE.get() is not None:
            # Asked again later, and later each time it is refused (up to the backoff's cap).
            self._refused = min(self.backoff[1], max(self.backoff[0], 2 * self._refused))
            self._recorded_at = time.monotonic() + self._refused
            return True
        self._known = self._parked = None
        await self.close()
        return True


# The outbox's tables in the event store's schema: its position and its parked events.
OUTBOX_TABLES = (TRACKING_TABLE, PARKED_TABLE)


def create_outbox_tables(app: Application[UUID]) -> None:
    """Create the outbox's position and parking tables if missing (the store's set-up in
    ``infrastructure/bootstrap.py``: ``batchctl init``, and a long-running process with
    DATABASE_AUTO_CREATE; the caller holds the DDL lock)."""
    recorder: Any = app.recorder
    PostgresTrackingRecorder(recorder.datastore, tracking_table_name=TRACKING_TABLE).create_table()
    ParkingLot(recorder, app.name).create_table()
