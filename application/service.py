"""BatchService: load the aggregate, let it decide, append at the expected version.

A writer that loses the race gets a version conflict from the event store and
retries on fresh state (bounded, with full jitter). A command that changes
nothing writes nothing. Several commands for one batch are decided against one
loaded aggregate and stored in one append.

Speed (docs/benchmarks.md): ``execute`` decides every batch of a poll, then
stores all their new events in ONE transaction (one commit, one fsync, for
the poll); each batch is still appended at its expected version, so a version
conflict on any of them rolls the whole transaction back, and the poll falls
back to one append per batch on fresh state, with the usual retries.

Aggregates are kept between commands in a bounded in-process cache of the
exact objects last saved (no copy, no fast-forward query): staleness is caught
by the optimistic version check, and an entry is dropped whenever a decision
on it is not stored (conflict, any failed save, any error). A no-op or a
rejection decided on a stale entry is kept only where what caused it can never
become untrue (see ``_settled``); the others, and the sweep's commands
(timeout, expiry), whose no-ops depend on status, are decided on fresh state.
Closed batches move to a small cache of their own, so memory follows the open
batches, not the history.

Trace context (docs/architecture.md, "Trace context"): ``execute`` takes, beside
each command, the OpenTelemetry context of its cause (or None). Every event a
command records is stored with that context's W3C ``traceparent`` (metadata
beside the event in the same append, never a field of the domain event), and,
when a tracer is given, the command gets a ``decide`` span and a ``store`` span
under that context.
"""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    project_aggregate,
)
from eventsourcing.persistence import RecordConflictError, Recording
from eventsourcing.utils import Environment, EnvType
from opentelemetry.context import Context
from opentelemetry.trace import Status, StatusCode, Tracer

from application.commands import (
    AnyCommand,
    ExpirePending,
    ProvisionContent,
    RecordValidationFailure,
    RegisterBatch,
    TimeOutBatch,
)
from application.tracing import traceparent_of
from domain import Batch, BatchRejection, ConflictingFileOutcome, StaleSnapshot

Outcome = Literal["recorded", "noop", "rejected"]
CONFLICTING_FILE_OUTCOME = ConflictingFileOutcome.reason


@dataclass(frozen=True)
class _Attempt:
    """One shared append of a poll: the groups it settled (their results, in command
    order), those to decide again on fresh state, and whether it lost a race."""

    settled: dict[str, list[Result]]
    unsettled: set[str]
    conflicted: bool


@dataclass(frozen=True)
class Result:
    """What became of one command."""

    command: AnyCommand
    outcome: Outcome
    events: int = 0
    reason: str | None = None
    detail: str | None = None
    position: int | None = None  # highest notification id written by its group


class ConcurrencyExhausted(RuntimeError):
    """Too many version conflicts in a row; the caller should retry later."""


def utc_now() -> datetime:
    return datetime.now(UTC)


class BatchService(Application[UUID]):
    name = "BatchService"
    # The snapshot store, filled by ``save`` below (not the library's automatic
    # snapshotting, which re-reads the aggregate from the store to snapshot it).
    is_snapshotting_enabled = True
    snapshot_interval = 100  # a batch is snapshotted at every 100th version

    def __init__(
        self,
        env: EnvType | None = None,
        *,
        clock: Callable[[], datetime] = utc_now,
        timeout_seconds: int = 86400,
        pending_ttl_seconds: int = 86400,
        max_attempts: int = 25,
        shared_attempts: int = 3,
        backoff_seconds: float = 0.002,
        backoff_cap_seconds: float = 0.1,
        on_conflict: Callable[[], None] | None = None,
        cache_size: int = 10000,
        closed_cache_size: int | None = None,
        prune_snapshots: Callable[[Any, Sequence[tuple[UUID, int]]], None] | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        super().__init__(env)
        self.tracer = tracer  # None: no spans (trace contexts are still stored)
        self.prune_snapshots = prune_snapshots
        self.clock = clock
        self.timeout_seconds = timeout_seconds
        self.pending_ttl_seconds = pending_ttl_seconds
        self.max_attempts = max_attempts
        # Shared appends per poll before the batches still unsettled go one by one: a
        # conflict on one batch no longer costs every batch of the poll an append of
        # its own (with content keyed by file, most polls meet one).
        self.shared_attempts = max(1, shared_attempts)
        self.backoff_seconds = backoff_seconds
        self.backoff_cap_seconds = backoff_cap_seconds
        self.on_conflict = on_conflict
        self._rng = random.Random()
        self._open = _LRU(cache_size)
        self._closed = _LRU(
            max(1, cache_size // 10) if closed_cache_size is None else closed_cache_size
        )

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        """The library's settings from ``env`` alone, never from ``os.environ``.

        The library would merge the process environment under the settings
        passed in, and prefer ``BATCHSERVICE_*`` names to them: an ambient
        ``POSTGRES_ENABLE_DB_FUNCTIONS`` (an insert path without the table lock,
        so the outbox could skip events), ``PERSISTENCE_MODULE``,
        ``POSTGRES_HOST`` or ``BATCHSERVICE_POSTGRES_SCHEMA`` would change where
        and how events are stored. The service is configured only by its
        documented variables (``infrastructure/settings.py``), which
        ``infrastructure/postgres.event_store_env`` turns into ``env``.
        """
        _env = dict(type(self).env)
        if type(self).is_snapshotting_enabled or type(self).snapshotting_intervals:
            _env["IS_SNAPSHOTTING_ENABLED"] = "y"
        if env is not None:
            _env.update(env)
        return Environment(name, _env)

    # ------------------------------------------------------------- commands

    def register(self, command: RegisterBatch) -> Result:
        return self.execute([command])[0]

    def provision_content(self, command: ProvisionContent) -> Result:
        return self.execute([command])[0]

    def record_validation_failure(self, command: RecordValidationFailure) -> Result:
        return self.execute([command])[0]

    def time_out(self, command: TimeOutBatch) -> Result:
        return self.execute([command])[0]

    def expire_pending(self, command: ExpirePending) -> Result:
        return self.execute([command])[0]

    def execute(
        self,
        commands: Sequence[AnyCommand],
        contexts: Sequence[Context | None] | None = None,
    ) -> list[Result]:
        """Decide every command; one load per batch, one transaction for the poll.

        ``contexts[i]``: the trace context of ``commands[i]``'s cause (None: none).

        Steps: group the commands per batch; decide every group and store all new
        events in one append (``_attempt``); groups that append lost to another
        writer (a version conflict), or whose decision on a cached batch may be
        stale, are decided again on fresh state, together, in another shared
        append (up to ``shared_attempts`` in all); whatever is still unsettled is
        decided one batch at a time (``_execute_group``).
        """
        ctxs: Sequence[Context | None] = contexts or [None] * len(commands)
        if len(ctxs) != len(commands):
            raise ValueError("one context (or None) per command")
        groups: dict[str, list[int]] = {}
        for index, command in enumerate(commands):
            groups.setdefault(command.batch_id, []).append(index)
        results: list[Result | None] = [None] * len(commands)
        waiting = groups
        for attempt in range(self.shared_attempts):
            outcome = self._attempt(commands, ctxs, waiting, fresh=attempt > 0)
            for batch_id, rs in outcome.settled.items():
                for index, result in zip(groups[batch_id], rs, strict=True):
                    results[index] = result
            waiting = {b: groups[b] for b in outcome.unsettled}
            if not waiting:
                break
            if outcome.conflicted:
                self._back_off(attempt)
        for batch_id, indexes in waiting.items():
            rs = self._execute_group(
                batch_id, [commands[i] for i in indexes], [ctxs[i] for i in indexes]
            )
            for index, result in zip(indexes, rs, strict=True):
                results[index] = result
        return [r for r in results if r is not None]

    def _attempt(
        self,
        commands: Sequence[AnyCommand],
        ctxs: Sequence[Context | None],
        groups: Mapping[str, list[int]],
        *,
        fresh: bool,
    ) -> _Attempt:
        """Decide each group (on its cached batch, or on fresh state) and append every
        new event in one transaction. A group is unsettled when the append lost to
        another writer, or when a decision on a cached batch may be stale."""
        decided: dict[str, tuple[Batch, list[Result]]] = {}
        unsettled: set[str] = set()
        for batch_id, indexes in groups.items():
            batch, cached = self._checkout(batch_id, [commands[i] for i in indexes], fresh=fresh)
            now = self.clock()
            rs = [self._decide(batch, commands[i], now, ctxs[i]) for i in indexes]
            decided[batch_id] = (batch, rs)
            if cached and not all(_settled(batch, r) for r in rs):
                unsettled.add(batch_id)
        # (A decision that raised stored nothing; its batches were checked out of the
        # cache and are loaded afresh next time.)
        changed = [
            b
            for batch_id, (b, rs) in decided.items()
            if batch_id not in unsettled and any(r.events for r in rs)
        ]
        positions: dict[UUID, int] = {}
        conflicted = False
        if changed:
            traces = _Traces()
            for batch_id, (b, rs) in decided.items():
                if batch_id not in unsettled:
                    traces.add(b, rs, [ctxs[i] for i in groups[batch_id]])
            try:
                positions = _positions(self._store(changed, traces))
            except RecordConflictError:
                if self.on_conflict is not None:
                    self.on_conflict()
                conflicted = True
                unsettled |= {b.batch_id for b in changed}
            except BaseException:
                for batch_id, (batch, rs) in decided.items():
                    if batch_id not in unsettled and not any(r.events for r in rs):
                        self._checkin(batch)
                raise
        settled: dict[str, list[Result]] = {}
        for batch_id, (batch, rs) in decided.items():
            if batch_id in unsettled:
                continue
            self._checkin(batch)
            position = positions.get(batch.id)
            settled[batch_id] = [_with_position(r, position) for r in rs]
        return _Attempt(settled, unsettled, conflicted)

    def _back_off(self, attempt: int) -> None:
        """Jittered, capped exponential wait before deciding again after a conflict."""
        delay = min(self.backoff_cap_seconds, self.backoff_seconds * 2**attempt)
        time.sleep(self._rng.uniform(0, delay))

    # --------------------------------------------------------------- queries

    def get_batch(self, batch_id: str) -> Batch | None:
        aggregate_id = Batch.create_id(batch_id)
        try:
            batch: Batch = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        except StaleSnapshot:
            # Taken by an older release: the stream itself is the truth.
            replayed: Batch | None = project_aggregate(None, self.events.get(aggregate_id))
            return replayed
        return batch

    # -------------------------------------------------------------- internals

    def _execute_group(
        self, batch_id: str, commands: list[AnyCommand], ctxs: list[Context | None]
    ) -> list[Result]:
        """One batch on its own (after a conflict in a shared append): load, decide, append."""
        for attempt in range(self.max_attempts):
            batch, _ = self._checkout(batch_id, commands, fresh=True)
            now = self.clock()
            decided = [
                self._decide(batch, command, now, ctx)
                for command, ctx in zip(commands, ctxs, strict=True)
            ]
            if not any(r.events for r in decided):
                self._checkin(batch)
                return decided
            traces = _Traces()
            traces.add(batch, decided, ctxs)
            try:
                recordings = self._store([batch], traces)
            except RecordConflictError:
                if self.on_conflict is not None:
                    self.on_conflict()
                self._back_off(attempt)
                continue
            self._checkin(batch)
            position = max((r.notification.id for r in recordings), default=None)
            return [_with_position(r, position) for r in decided]
        raise ConcurrencyExhausted(
            f"batch {batch_id!r}: {self.max_attempts} version conflicts in a row"
        )

    def _store(self, batches: Sequence[Batch], traces: _Traces) -> list[Recording[UUID]]:
        """Append the batches' new events in one transaction, each with its command's
        ``traceparent``; a ``store`` span per traced command when a tracer is given."""
        kwargs: dict[str, Any] = (
            {"traceparents": traces.traceparents} if traces.traceparents else {}
        )
        # The events as decided go to the store with their rows: its recorder hands them to
        # this process's followers, which then need not decode what was just encoded.
        kwargs["decided_events"] = [e for b in batches for e in b.pending_events]
        if self.tracer is None or not traces.contexts:
            return self.save(*batches, **kwargs)
        started = time.time_ns()
        try:
            recordings = self.save(*batches, **kwargs)
        except BaseException as error:
            self._store_spans(traces, started, len(batches), error)
            raise
        self._store_spans(traces, started, len(batches), None)
        return recordings

    def _store_spans(
        self, traces: _Traces, started: int, batches: int, error: BaseException | None
    ) -> None:
        """One ``store`` span per traced command, each covering the shared append."""
        assert self.tracer is not None
        ended = time.time_ns()
        for ctx in traces.contexts:
            span = self.tracer.start_span(
                "store",
                context=ctx,
                start_time=started,
                attributes={
                    "db.system.name": "postgresql",
                    "batch_slot.append.events": traces.events,
                    "batch_slot.append.batches": batches,
                },
            )
            if error is not None:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            span.end(end_time=ended)

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        """Append, then snapshot each batch whose append reached a multiple of
        ``snapshot_interval``.

        The library's own snapshotting (``snapshotting_intervals``) re-reads the
        aggregate from the store to snapshot it, a cost that grows with the
        slots; the batch just saved is exactly what is stored, so it is
        snapshotted as it is, at its new version.
        """
        recordings = super().save(*objs, **kwargs)
        if self.snapshots is None:
            return recordings
        crossed = {
            r.domain_event.originator_id
            for r in recordings
            if r.domain_event.originator_version % self.snapshot_interval == 0
        }
        snapshots = [
            Batch.Snapshot.take(b) for b in objs if isinstance(b, Batch) and b.id in crossed
        ]
        if snapshots:
            self.snapshots.put(snapshots)
            if self.prune_snapshots is not None:  # keep only the latest (infrastructure)
                self.prune_snapshots(
                    self.snapshots.recorder,
                    [(s.originator_id, s.originator_version) for s in snapshots],
                )
        return recordings

    def _checkout(
        self, batch_id: str, commands: Sequence[AnyCommand], fresh: bool = False
    ) -> tuple[Batch, bool]:
        """The batch to decide on, taken OUT of the cache (another thread cannot share
        it), and whether it came from the cache (and so may be stale)."""
        cached = self._open.pop(batch_id) or self._closed.pop(batch_id)
        if cached is not None and not fresh and not any(isinstance(c, _FRESH) for c in commands):
            return cached, True
        return self.get_batch(batch_id) or Batch.start(batch_id, self.clock()), False

    def _checkin(self, batch: Batch) -> None:
        """Keep a batch whose state is exactly what is stored (saved, or unchanged)."""
        if batch.version == 0:
            return
        (self._closed if batch.is_closed else self._open).put(batch.batch_id, batch)

    def _decide(
        self, batch: Batch, command: AnyCommand, now: datetime, ctx: Context | None = None
    ) -> Result:
        if self.tracer is None or ctx is None:
            return self._decided(batch, command, now)
        with self.tracer.start_as_current_span(
            "decide",
            context=ctx,
            attributes={
                "batch_slot.batch_id": command.batch_id,
                "batch_slot.command": type(command).__name__,
            },
        ) as span:
            result = self._decided(batch, command, now)
            span.set_attribute("batch_slot.outcome", result.outcome)
            span.set_attribute("batch_slot.events", result.events)
            if result.reason is not None:
                span.set_attribute("batch_slot.reason", result.reason)
            return result

    def _decided(self, batch: Batch, command: AnyCommand, now: datetime) -> Result:
        before = batch.version
        try:
            self._apply(batch, command, now)
        except BatchRejection as rejection:
            return Result(command, "rejected", reason=rejection.reason, detail=rejection.detail)
        events = batch.version - before
        return Result(command, "recorded" if events else "noop", events=events)

    def _apply(self, batch: Batch, command: AnyCommand, now: datetime) -> None:
        apply_command(
            batch,
            command,
            now,
            timeout_seconds=self.timeout_seconds,
            pending_ttl_seconds=self.pending_ttl_seconds,
        )


def apply_command(
    batch: Batch,
    command: AnyCommand,
    now: datetime,
    *,
    timeout_seconds: int,
    pending_ttl_seconds: int,
) -> None:
    """Let ``batch`` decide ``command`` at ``now`` (new events stay pending on it).

    The one mapping from a command to the aggregate's method; raises the
    aggregate's ``BatchRejection``. Used by ``BatchService`` and by the
    benchmark's naive baseline (scripts/bench.py).
    """
    cid = command.correlation_id
    match command:
        case RegisterBatch():
            batch.register(
                list(command.essay_ids),
                now,
                timeout_seconds,
                cid,
                course_code=command.course_code,
                user_id=command.user_id,
            )
        case ProvisionContent():
            batch.provision_content(
                command.text_storage_id,
                command.file_upload_id,
                command.original_file_name,
                now,
                cid,
            )
        case RecordValidationFailure():
            batch.record_validation_failure(
                command.file_upload_id, command.original_file_name, command.error_code, now, cid
            )
        case TimeOutBatch():
            batch.time_out(now, cid)
        case ExpirePending():
            batch.expire_pending(now, pending_ttl_seconds, cid)


_FRESH = (TimeOutBatch, ExpirePending)


def _settled(batch: Batch, result: Result) -> bool:
    """Whether a decision made on a possibly stale cached batch stands as it is.

    A decision that records events is checked by the append's version. One that
    records nothing stands when what made it so can never become untrue (known
    content, a recorded failure, a registration). Two can: a failure ignored
    because the batch was closed (meanwhile content of that file may have
    arrived: a conflict), and a file conflict (meanwhile the content may have
    become known, a duplicate, or pending content may have expired and released
    its file). Those, rare, are decided again on fresh state.
    """
    if result.outcome == "recorded":
        return True
    if result.outcome == "noop":
        return not (isinstance(result.command, RecordValidationFailure) and batch.is_closed)
    return result.reason != CONFLICTING_FILE_OUTCOME


class _LRU:
    """A bounded least-recently-used map; thread-safe for single operations."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[str, Batch] = OrderedDict()
        self._lock = threading.Lock()

    def pop(self, key: str) -> Batch | None:
        with self._lock:
            return self._items.pop(key, None)

    def put(self, key: str, value: Batch) -> None:
        if self.maxsize <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class _Traces:
    """The trace contexts of one append: each new event's ``traceparent`` (by stream and
    version), and the contexts of the commands that recorded events."""

    def __init__(self) -> None:
        self.traceparents: dict[tuple[UUID, int], str] = {}
        self.contexts: list[Context] = []
        self.events = 0

    def add(self, batch: Batch, results: Sequence[Result], ctxs: Sequence[Context | None]) -> None:
        """``results``: the decisions of ``batch``'s pending events, in order, with
        their commands' contexts: command i recorded the next ``results[i].events``."""
        version = batch.version - sum(r.events for r in results)
        for result, ctx in zip(results, ctxs, strict=True):
            self.events += result.events
            if result.events and ctx is not None:
                traceparent = traceparent_of(ctx)
                if traceparent is not None:
                    self.contexts.append(ctx)
                    for v in range(version + 1, version + 1 + result.events):
                        self.traceparents[(batch.id, v)] = traceparent
            version += result.events


def _positions(recordings: Sequence[Recording[UUID]]) -> dict[UUID, int]:
    """The highest notification id written for each aggregate."""
    out: dict[UUID, int] = {}
    for r in recordings:
        key = r.domain_event.originator_id
        out[key] = max(out.get(key, 0), r.notification.id)
    return out


def _with_position(result: Result, position: int | None) -> Result:
    if not result.events:
        return result
    return Result(
        result.command, result.outcome, result.events, result.reason, result.detail, position
    )
