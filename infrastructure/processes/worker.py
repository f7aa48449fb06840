"""The worker: inbound topics -> commands -> BatchService, offsets committed after.

One poll at a time: every message is parsed (invalid ones are dead-lettered),
the poll's commands are decided together (one load and one append per batch),
rejected commands are dead-lettered, and only then are the offsets committed
(at most every ``COMMIT_INTERVAL_SECONDS``, and whenever the worker goes idle, before
a rebalance and at stop).
Transient failures (any failure of PostgreSQL, Redis or Kafka: a restart, a
read-only store, a full disk; too many version conflicts; see
``infrastructure/transient.py``) are retried with backoff and never reach the
DLQ; nothing is committed until the poll's commands are durably recorded or
known to be no-ops. Any other exception is blamed on a message
(``PROCESSING_ERROR``) only if the store answers a write-capable probe.

Trace context: each message's W3C ``traceparent`` header (if valid; else the
``metadata.traceparent`` of a HuleEdu envelope) is the context of its command,
stored with the events it causes. With tracing on, each message gets a
``consume`` span under it (ended once the poll is committed), and that span
is the context stored and put on its dead letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from application.messages import InvalidMessage, TopicKind
from application.service import BatchService, Result
from application.tracing import TRACEPARENT, context_of, traceparent_of
from infrastructure import metrics
from infrastructure.health.metering import observe_recorded
from infrastructure.kafka.clients import MAX_POLL_RECORDS, KafkaClients, stop_consumer
from infrastructure.kafka.dlq import DLQ_MAX_REQUEST_BYTES, DeadLetter, send_dead_letters
from infrastructure.kafka.inbound import parse_counted
from infrastructure.kafka.undecodable import MAX_UNEXPLAINED, is_decode_error, scan_partition
from infrastructure.logcontext import command_context
from infrastructure.settings import Settings
from infrastructure.tracing import Tracing, context_from_headers, ending
from infrastructure.transient import (
    TRANSIENT,
    DependencyDown,
    described,
    is_transient,
    store_writable,
)

log = logging.getLogger("batchslot.worker")


# Bounds on the worker's stop (commit, then consumer and producer), under 10 s in all.
STOP_COMMIT_SECONDS = 3.0
STOP_CLIENT_SECONDS = 2.5
LAG_REPORT_SECONDS = 1.0  # batchslot_consumer_lag is refreshed at most this often


async def _unless_stopped(starting: Awaitable[None], stop: asyncio.Event) -> bool:
    """Await ``starting`` unless ``stop`` is set first (then cancel it): whether it finished."""
    task = asyncio.ensure_future(starting)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(task, 1.0)
    return False


@dataclass
class PollOutcome:
    commands: int = 0
    dead_lettered: int = 0


# Offsets are committed at most this often (and whenever the worker goes idle, before a
# rebalance gives partitions up, and at stop): small polls under light load no longer
# pay one OffsetCommit round trip each (docs/benchmarks.md). Only offsets of polls whose
# commands are recorded are ever committed; a crash re-delivers at most this much, and
# every command is idempotent.
COMMIT_INTERVAL_SECONDS = 0.1


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """A rebalance waits until the poll in hand is recorded and committed."""

    def __init__(self, lock: asyncio.Lock, flush: Any) -> None:
        self.lock = lock
        self.flush = flush

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self.lock:
            await self.flush()  # before the generation ends: no stale offsets later
            log.info("partitions revoked", extra={"partitions": [str(tp) for tp in revoked]})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned", extra={"partitions": [str(tp) for tp in assigned]})


class Worker:
    def __init__(
        self,
        settings: Settings,
        service: BatchService,
        max_records: int = MAX_POLL_RECORDS,
        *,
        kafka: KafkaClients | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.tracer = (tracing or Tracing.off()).tracer
        self.kafka = kafka or KafkaClients(settings)
        self.max_records = max_records
        self.kind_of: dict[str, TopicKind] = {
            topic: kind  # type: ignore[misc]
            for kind, topic in settings.topics.by_kind.items()
        }
        self._lock = asyncio.Lock()
        # For the stall watchdog (infrastructure/processes/watchdog.py): progress and lag.
        self.handled = 0  # messages handled (recorded, no-op or dead-lettered)
        self.in_hand = 0  # messages of the poll being handled now
        self.retrying = False  # the last attempt failed transiently (a dependency is down)
        self._next: dict[TopicPartition, int] = {}
        self._lag_reported_at = 0.0
        self._lag_labels: set[tuple[str, str, str]] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._uncommitted: dict[TopicPartition, int] = {}  # handled, not yet committed
        self._committed_at = float("-inf")
        self._unexplained = 0  # decode errors in a row that a re-read did not explain

    async def run(self, stop: asyncio.Event) -> None:
        consumer = self.kafka.consumer(
            group_id=self.settings.kafka_consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.max_records,
        )
        consumer.subscribe(
            list(self.kind_of),
            listener=_CommitOnRevoke(self._lock, lambda: self._flush_commits(consumer)),
        )
        producer = self.kafka.producer(max_request_size=DLQ_MAX_REQUEST_BYTES)
        try:
            # A stop while the clients connect (a silent broker, a group still forming) ends
            # the start instead of waiting for it.
            if not (await _unless_stopped(consumer.start(), stop)) or not (
                await _unless_stopped(producer.start(), stop)
            ):
                return
            self._consumer = consumer
            log.info("worker started", extra={"topics": list(self.kind_of)})
            while not stop.is_set():
                try:
                    records = await consumer.getmany(timeout_ms=500, max_records=self.max_records)
                except Exception as error:
                    if not is_decode_error(error):
                        raise
                    async with self._lock:
                        await self._skip_undecodable(consumer, producer, error, stop)
                    continue
                if records:
                    self._unexplained = 0
                    async with self._lock:
                        await self.handle(consumer, producer, records, stop)
                elif self._uncommitted:  # idle: commit what is handled
                    async with self._lock:
                        await self._flush_commits(consumer)
                await self._report_lag(consumer)
        finally:
            # Each step bounded: a broker that stopped answering must not hold a stopping
            # process (compose and Kubernetes kill after 10 s). An offset not committed is
            # re-delivered, which is harmless (every command is idempotent).
            with contextlib.suppress(Exception):  # best effort: re-delivery is harmless
                async with asyncio.timeout(STOP_COMMIT_SECONDS), self._lock:
                    await self._flush_commits(consumer)
            for step in (stop_consumer(consumer), producer.stop()):
                try:
                    await asyncio.wait_for(step, STOP_CLIENT_SECONDS)
                except TimeoutError:
                    log.warning("worker: Kafka did not answer while stopping; not waiting")
            log.info("worker stopped")

    async def _report_lag(self, consumer: AIOKafkaConsumer) -> None:
        """batchslot_consumer_lag{group,topic,partition}: the partition's highwater minus the
        worker's position (records waiting), at most once a second; partitions this
        worker no longer holds are removed."""
        now = time.monotonic()
        if now < self._lag_reported_at + LAG_REPORT_SECONDS:
            return
        self._lag_reported_at = now
        group = self.settings.kafka_consumer_group
        held: set[tuple[str, str, str]] = set()
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = await asyncio.wait_for(consumer.position(tp), 1.0)
            except Exception as e:  # not known yet (a reset pending): report it next time
                log.debug("consumer position unknown", extra={"error": type(e).__name__})
                continue
            labels = (group, tp.topic, str(tp.partition))
            metrics.CONSUMER_LAG.labels(*labels).set(max(0, high - position))
            held.add(labels)
        for labels in self._lag_labels - held:
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(*labels)
        self._lag_labels = held

    def assigned(self) -> list[TopicPartition] | None:
        """The consumer's partitions (for /readyz); None until its consumer has started."""
        return None if self._consumer is None else sorted(self._consumer.assignment())

    def lag(self) -> int:
        """Records known to wait on this worker's partitions (from the last fetches)."""
        consumer = self._consumer
        if consumer is None:
            return 0
        total = 0
        for tp in consumer.assignment():
            high, done = consumer.highwater(tp), self._next.get(tp)
            if high is not None and done is not None:
                total += max(0, high - done)
        return total

    async def handle(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        records: dict[TopicPartition, list[Any]],
        stop: asyncio.Event,
    ) -> PollOutcome:
        self.in_hand = sum(len(ms) for ms in records.values())
        commands, sources, contexts, dead = [], [], [], []
        spans: list[Span] = []
        with ending(spans):
            for tp, messages in records.items():
                for message in messages:
                    kind, profile = self.kind_of[tp.topic], self.settings.wire_profile
                    try:
                        parsed = parse_counted(kind, tp.topic, message.value, profile)
                    except InvalidMessage as e:
                        ctx, span = self._consume_context(message)
                        if span is not None:
                            spans.append(span)
                        metrics.MESSAGES.labels(tp.topic, "invalid").inc()
                        _dead_lettered(span, e.reason)
                        dead.append(DeadLetter(message, e.reason, e.detail, _tp(span, ctx)))
                        continue
                    ctx, span = self._consume_context(message, parsed.traceparent)
                    if span is not None:
                        spans.append(span)
                    command = parsed.command
                    if span is not None:
                        span.set_attribute("batch_slot.batch_id", command.batch_id)
                        span.set_attribute("batch_slot.correlation_id", command.correlation_id)
                    commands.append(command)
                    sources.append((message, span))
                    contexts.append(ctx)
            results = await self._execute(commands, contexts, stop)
            counts: Counter[tuple[str, str, str]] = Counter()
            for (message, span), result, ctx in zip(sources, results, contexts, strict=True):
                counts[(message.topic, type(result.command).__name__, result.outcome)] += 1
                observe_recorded(message, result)
                if span is not None:
                    span.set_attribute("batch_slot.outcome", result.outcome)
                if result.outcome == "rejected":
                    reason = result.reason or "REJECTED"
                    _dead_lettered(span, reason)
                    dead.append(DeadLetter(message, reason, result.detail or "", _tp(span, ctx)))
            _count(counts, results)
            await send_dead_letters(producer, self.settings.topics.dlq, dead, stop)
            await self._commit(consumer, records)
        self.handled, self.in_hand = self.handled + self.in_hand, 0
        self._next.update({tp: ms[-1].offset + 1 for tp, ms in records.items() if ms})
        return PollOutcome(len(commands), len(dead))

    def _consume_context(
        self, message: Any, traceparent: str | None = None
    ) -> tuple[Context | None, Span | None]:
        """The context of a message's command: its inbound trace context (tracing off),
        or a new ``consume`` span under it (tracing on). The inbound context is the
        ``traceparent`` header's, else the one the envelope carries (HuleEdu's
        ``metadata.traceparent``)."""
        inbound = context_from_headers(message.headers)
        if inbound is None and traceparent is not None:
            inbound = context_of({TRACEPARENT: traceparent})
        if self.tracer is None:
            return inbound, None
        span = self.tracer.start_span(
            "consume",
            context=inbound or Context(),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": message.topic,
                "messaging.destination.partition.id": str(message.partition),
                "messaging.kafka.offset": message.offset,
            },
        )
        return trace.set_span_in_context(span, Context()), span

    async def _skip_undecodable(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        error: BaseException,
        stop: asyncio.Event,
    ) -> None:
        """A record batch cannot be decoded: dead-letter it and move past it.

        See ``infrastructure/kafka/undecodable.py``: every assigned partition is
        re-read from its committed offset; records before the bad batch are
        handled, the batch is dead-lettered (UNDECODABLE_BATCH) and committed past.
        """
        log.error("a fetched record batch cannot be decoded", extra={"error": repr(error)[:300]})
        found = 0
        for tp in sorted(consumer.assignment()):
            start = await consumer.committed(tp)
            if start is None:
                start = (await consumer.beginning_offsets([tp]))[tp]
            scan = await scan_partition(consumer, tp, start)
            if scan.bad is None or scan.end_offset is None:
                consumer.seek(tp, start)  # undo aiokafka's skip of what it did decode
                continue
            found += 1
            metrics.UNDECODABLE.labels(tp.topic).inc()
            if scan.good:
                await self.handle(consumer, producer, {tp: scan.good}, stop)
            await self._flush_commits(consumer)  # never commit an older offset after it
            await send_dead_letters(producer, self.settings.topics.dlq, [scan.bad], stop)
            await consumer.commit({tp: scan.end_offset})
            consumer.seek(tp, scan.end_offset)
        if found:
            self._unexplained = 0
            return
        # The data reads fine now (a fetch corrupted in transit, or the partition moved
        # to another member): fetch again, a bounded number of times in a row.
        self._unexplained += 1
        if self._unexplained >= MAX_UNEXPLAINED:
            raise error
        await asyncio.sleep(1.0)

    async def _execute(
        self, commands: list[Any], contexts: list[Context | None], stop: asyncio.Event
    ) -> list[Result]:
        try:
            return await self._execute_retrying(commands, contexts, stop)
        except TRANSIENT:
            raise
        except Exception:
            # Not transient: a poison message (or a bug) must not stall the
            # partition forever. Decide one by one to find it; it alone is
            # dead-lettered (kept for a replay after a fix), the rest proceed.
            log.exception("poll failed; isolating the failing command")
            return [
                await self._execute_isolated(c, ctx, stop)
                for c, ctx in zip(commands, contexts, strict=True)
            ]

    async def _execute_isolated(
        self, command: Any, ctx: Context | None, stop: asyncio.Event
    ) -> Result:
        with command_context(command):  # its retries and failure are logged with its ids
            try:
                return (await self._execute_retrying([command], [ctx], stop))[0]
            except TRANSIENT:
                raise
            except Exception as e:
                log.exception("command failed", extra={"correlation_id": command.correlation_id})
                return Result(command, "rejected", reason="PROCESSING_ERROR", detail=repr(e)[:300])

    async def _execute_retrying(
        self, commands: list[Any], contexts: Sequence[Context | None], stop: asyncio.Event
    ) -> list[Result]:
        delay = 0.1
        while True:
            try:
                started = time.perf_counter()
                results = await asyncio.to_thread(self.service.execute, commands, contexts)
                metrics.COMMAND_SECONDS.observe(time.perf_counter() - started)
                self.retrying = False
                return results
            except Exception as e:
                if not is_transient(e) and await asyncio.to_thread(store_writable, self.service):
                    raise  # the store is healthy: the commands' own fault
                self.retrying = True
                metrics.TRANSIENT.labels("execute").inc()
                log.warning(
                    "transient failure, retrying",
                    extra={"error": type(e).__name__, "from": described(e, self.settings)},
                )
                if stop.is_set():
                    raise DependencyDown(f"stopping while the store fails: {e!r}"[:300]) from e
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _commit(
        self, consumer: AIOKafkaConsumer, records: dict[TopicPartition, list[Any]]
    ) -> None:
        self._uncommitted.update(
            {tp: messages[-1].offset + 1 for tp, messages in records.items() if messages}
        )
        if time.monotonic() - self._committed_at >= COMMIT_INTERVAL_SECONDS:
            await self._flush_commits(consumer)

    async def _flush_commits(self, consumer: AIOKafkaConsumer) -> None:
        """Commit every handled offset not committed yet (the caller holds the lock)."""
        offsets, self._uncommitted = self._uncommitted, {}
        if not offsets:
            return
        self._committed_at = time.monotonic()
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as e:
            # The partitions moved on a rebalance; their new owner re-reads from the
            # last committed offset, and every command is idempotent.
            log.warning("commit failed after rebalance", extra={"error": str(e)})
        except BaseException:
            # Not committed (broker trouble): keep them for the next commit unless a
            # later poll of the same partition has already replaced them.
            self._uncommitted = {**offsets, **self._uncommitted}
            raise



def _count(counts: Counter[tuple[str, str, str]], results: Sequence[Result]) -> None:
    """A poll's outcomes on the counters (one increment per topic, command and outcome,
    not one per message), and each command in the debug log when that is on."""
    for (topic, command, outcome), n in counts.items():
        metrics.MESSAGES.labels(topic, outcome).inc(n)
        metrics.COMMANDS.labels(command, outcome).inc(n)
    if not log.isEnabledFor(logging.DEBUG):
        return
    for result in results:
        with command_context(result.command):
            log.debug(
                "command",
                extra={
                    "correlation_id": result.command.correlation_id,
                    "batch_id": result.command.batch_id,
                    "command": type(result.command).__name__,
                    "outcome": result.outcome,
                    "reason": result.reason,
                },
            )


def _dead_lettered(span: Span | None, reason: str) -> None:
    if span is not None:
        span.set_attribute("batch_slot.dlq.reason", reason)
        span.set_status(Status(StatusCode.ERROR, reason))


def _tp(span: Span | None, ctx: Context | None) -> str | None:
    """The traceparent a dead letter carries: its ``consume`` span's (tracing on);
    None off (the letter keeps the original headers, and so the inbound one)."""
    return traceparent_of(ctx) if span is not None else None
