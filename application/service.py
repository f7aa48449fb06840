"""BatchService: load the aggregate, let it decide, append at the expected version.

A writer that loses the race gets a version conflict from the event store and
retries on fresh state (bounded, with full jitter). A command that changes
nothing writes nothing. Several commands for one batch are decided against one
loaded aggregate and stored in one append.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import RecordConflictError
from eventsourcing.utils import EnvType

from application.commands import (
    AnyCommand,
    ExpirePending,
    ProvisionContent,
    RecordValidationFailure,
    RegisterBatch,
    TimeOutBatch,
)
from domain import Batch, BatchRejection

Outcome = Literal["recorded", "noop", "rejected"]


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
    snapshotting_intervals = {Batch: 100}

    def __init__(
        self,
        env: EnvType | None = None,
        *,
        clock: Callable[[], datetime] = utc_now,
        timeout_seconds: int = 86400,
        pending_ttl_seconds: int = 86400,
        max_attempts: int = 25,
        backoff_seconds: float = 0.002,
        backoff_cap_seconds: float = 0.1,
        on_conflict: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(env)
        self.clock = clock
        self.timeout_seconds = timeout_seconds
        self.pending_ttl_seconds = pending_ttl_seconds
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.backoff_cap_seconds = backoff_cap_seconds
        self.on_conflict = on_conflict
        self._rng = random.Random()

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

    def execute(self, commands: Sequence[AnyCommand]) -> list[Result]:
        """Decide every command; one load and at most one append per batch."""
        groups: dict[str, list[int]] = {}
        for index, command in enumerate(commands):
            groups.setdefault(command.batch_id, []).append(index)
        results: list[Result | None] = [None] * len(commands)
        for batch_id, indexes in groups.items():
            group = [commands[i] for i in indexes]
            for index, result in zip(indexes, self._execute_group(batch_id, group), strict=True):
                results[index] = result
        return [r for r in results if r is not None]

    # --------------------------------------------------------------- queries

    def get_batch(self, batch_id: str) -> Batch | None:
        try:
            batch: Batch = self.repository.get(Batch.create_id(batch_id))
        except AggregateNotFoundError:
            return None
        return batch

    # -------------------------------------------------------------- internals

    def _execute_group(self, batch_id: str, commands: list[AnyCommand]) -> list[Result]:
        for attempt in range(self.max_attempts):
            now = self.clock()
            batch = self.get_batch(batch_id) or Batch.start(batch_id, now)
            decided = [self._decide(batch, command, now) for command in commands]
            if not any(r.events for r in decided):
                return decided
            try:
                recordings = self.save(batch)
            except RecordConflictError:
                if self.on_conflict is not None:
                    self.on_conflict()
                delay = min(self.backoff_cap_seconds, self.backoff_seconds * 2**attempt)
                time.sleep(self._rng.uniform(0, delay))
                continue
            position = max((r.notification.id for r in recordings), default=None)
            return [_with_position(r, position) for r in decided]
        raise ConcurrencyExhausted(
            f"batch {batch_id!r}: {self.max_attempts} version conflicts in a row"
        )

    def _decide(self, batch: Batch, command: AnyCommand, now: datetime) -> Result:
        before = batch.version
        try:
            self._apply(batch, command, now)
        except BatchRejection as rejection:
            return Result(command, "rejected", reason=rejection.reason, detail=rejection.detail)
        events = batch.version - before
        return Result(command, "recorded" if events else "noop", events=events)

    def _apply(self, batch: Batch, command: AnyCommand, now: datetime) -> None:
        cid = command.correlation_id
        match command:
            case RegisterBatch():
                batch.register(list(command.essay_ids), now, self.timeout_seconds, cid)
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
                batch.expire_pending(now, self.pending_ttl_seconds, cid)


def _with_position(result: Result, position: int | None) -> Result:
    if not result.events:
        return result
    return Result(
        result.command, result.outcome, result.events, result.reason, result.detail, position
    )


def describe(result: Result) -> dict[str, Any]:
    """A loggable summary of a result (no payloads)."""
    return {
        "command": type(result.command).__name__,
        "batch_id": result.command.batch_id,
        "outcome": result.outcome,
        "events": result.events,
        "reason": result.reason,
    }
