"""The Batch aggregate: every rule of CONTRACT §2 lives in this file.

Public methods decide; the narrow ``@event`` methods below them only record
facts (they run again, unchanged, whenever the stream is replayed). Time is
always an argument: nothing here reads a clock, logs or does I/O.

A batch's stream may begin with any of its events (content and failures often
arrive before the registration), so there is no separate "created" event: the
first stored event builds an empty batch and applies itself to it.

Stored contract: the event class names and this module's path form the stored
topics (``domain.batch:Batch.SlotAssigned``). Never rename either without a
topic mapping or an upcaster.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import (
    BatchExpired,
    ConflictingFileOutcome,
    InvalidRegistration,
    RegistrationConflict,
    StaleSnapshot,
)

Status = Literal["awaiting_registration", "open", "completed", "timed_out", "expired"]
NO_AVAILABLE_SLOT = "NO_AVAILABLE_SLOT"
BATCH_CLOSED = "BATCH_CLOSED"
CLOSED_STATUSES = frozenset({"completed", "timed_out", "expired"})
# A completion's outcome (BatchCompleted.outcome, CONTRACT §3) and the status it
# leaves the batch in (CONTRACT §4): the one mapping between the two words.
STATUS_OF_OUTCOME: dict[str, Status] = {"complete": "completed", "timed_out": "timed_out"}
OUTCOME_OF_STATUS = {status: outcome for outcome, status in STATUS_OF_OUTCOME.items()}

# Fixed forever: changing it would move every batch to a new stream.
BATCH_NAMESPACE = uuid5(NAMESPACE_URL, "urn:batch-slot-service:batch")

# CONTRACT §3: every outbound value is at most 1 MiB. The lists of one
# BatchCompleted (or PendingContentExpired) part take at most this many bytes as
# UTF-8 JSON; the rest of an envelope (ids, timestamps, names: at most a few KiB)
# fits in what is left of the MiB.
PART_LIST_BYTES = 1_000_000


def _json_bytes(value: object) -> int:
    """The size of ``value`` as compact UTF-8 JSON, plus one for its list separator."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()) + 1


def _as_one_part(state: dict[str, Any]) -> None:
    """Upcast a stored version 1 event: it carried the whole list, as part 1 of 1."""
    state["part"] = state["parts"] = 1


def split_lists(
    lists: Mapping[str, Iterable[Any]], budget: int = PART_LIST_BYTES
) -> list[dict[str, list[Any]]]:
    """Cut named lists into parts whose items take at most ``budget`` bytes each.

    Items keep their order: concatenating each list over the parts gives it back.
    Every part has every name (possibly empty); there is always at least one part.
    """
    parts: list[dict[str, list[Any]]] = [{name: [] for name in lists}]
    used = 0
    for name, items in lists.items():
        for item in items:
            size = _json_bytes(item)
            if used + size > budget and used > 0:
                parts.append({n: [] for n in lists})
                used = 0
            parts[-1][name].append(item)
            used += size
    return parts


class Batch(Aggregate):
    """N ordered essay slots; each distinct content fills exactly one of them."""

    # Version 2 keeps each file's first outcome (``_files``). A snapshot taken
    # before that cannot say which file assigned or excess content came from.
    class_version = 2

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        raise StaleSnapshot(str(state.get("_batch_id", "?")), "snapshot predates file outcomes")

    class Event(Aggregate.Event):
        """Base of every Batch event: the first event of a stream builds the batch."""

        def mutate(self, aggregate: Any) -> Any:
            if aggregate is None:
                batch_id: str = self.__dict__["batch_id"]  # every Batch event names its batch
                aggregate = Batch._empty(self.originator_id, batch_id, self.timestamp)
            return super().mutate(aggregate)

    @staticmethod
    def create_id(batch_id: str) -> UUID:
        """Every instance derives the same stream id from the upstream batch id."""
        return uuid5(BATCH_NAMESPACE, batch_id)

    @classmethod
    def start(cls, batch_id: str, now: datetime) -> Batch:
        """A batch with no history yet (version 0); its first event starts the stream."""
        return cls._empty(cls.create_id(batch_id), batch_id, now)

    @classmethod
    def _empty(cls, originator_id: UUID, batch_id: str, timestamp: datetime) -> Batch:
        batch = object.__new__(cls)
        batch.__base_init__(originator_id=originator_id, originator_version=0, timestamp=timestamp)
        batch._batch_id = batch_id
        batch._status = "awaiting_registration"
        batch._essay_ids = []
        batch._deadline = None
        batch._first_pending_at = None
        batch._assigned = {}  # text_storage_id -> essay_id, in slot order
        batch._pending = {}  # text_storage_id -> file facts, in arrival order
        batch._excess = {}  # text_storage_id -> reason
        batch._expired = {}  # text_storage_id -> True
        batch._failures = {}  # file_upload_id -> failure facts
        batch._files = {}  # file_upload_id -> its first outcome: text_storage_id, or "" (failed)
        return batch

    # Declared for type checkers; set in _empty and by the event methods.
    _batch_id: str
    _status: Status
    _essay_ids: list[str]
    _deadline: datetime | None
    _first_pending_at: datetime | None
    _assigned: dict[str, str]
    _pending: dict[str, dict[str, str]]
    _excess: dict[str, str]
    _expired: dict[str, bool]
    _failures: dict[str, dict[str, str]]
    _files: dict[str, str]

    # ------------------------------------------------------------------ reads

    @property
    def batch_id(self) -> str:
        return self._batch_id

    @property
    def status(self) -> Status:
        return self._status

    @property
    def is_registered(self) -> bool:
        return bool(self._essay_ids)

    @property
    def is_closed(self) -> bool:
        return self._status in CLOSED_STATUSES

    @property
    def essay_ids(self) -> tuple[str, ...]:
        return tuple(self._essay_ids)

    @property
    def expected(self) -> int:
        return len(self._essay_ids)

    @property
    def deadline(self) -> datetime | None:
        return self._deadline

    @property
    def first_pending_at(self) -> datetime | None:
        return self._first_pending_at

    @property
    def assignments(self) -> dict[str, str]:
        """essay_id -> text_storage_id, in slot order."""
        return {essay_id: tsid for tsid, essay_id in self._assigned.items()}

    @property
    def available_slots(self) -> tuple[str, ...]:
        # Slots fill strictly in registration order, so the free ones are a suffix.
        return tuple(self._essay_ids[len(self._assigned) :])

    @property
    def pending(self) -> tuple[str, ...]:
        return tuple(self._pending)

    @property
    def excess(self) -> dict[str, str]:
        return dict(self._excess)

    @property
    def failures(self) -> tuple[str, ...]:
        return tuple(self._failures)

    def outcome_of_file(self, file_upload_id: str) -> str | None:
        """The file's first outcome: its ``text_storage_id``, "" if it failed, None if unknown."""
        return self._files.get(file_upload_id)

    def knows_content(self, text_storage_id: str) -> bool:
        return any(
            text_storage_id in known
            for known in (self._assigned, self._pending, self._excess, self._expired)
        )

    # -------------------------------------------------------------- decisions

    def register(
        self,
        essay_ids: list[str],
        now: datetime,
        timeout_seconds: int,
        correlation_id: str,
        course_code: str | None = None,
        user_id: str | None = None,
    ) -> None:
        """Open the batch with its ordered slots (and, when given, whose batch it is:
        ``course_code`` and ``user_id``), then place pending content.

        The same slots again change nothing (the first registration's course code and
        user stand); different slots are refused.
        """
        if not essay_ids or len(set(essay_ids)) != len(essay_ids):
            raise InvalidRegistration(self._batch_id, "essay_ids must be non-empty and distinct")
        if self._status == "expired":
            raise BatchExpired(self._batch_id, "pending content expired before registration")
        if self.is_registered:
            if list(essay_ids) == self._essay_ids:
                return
            raise RegistrationConflict(self._batch_id, "already registered with different slots")
        deadline = now + timedelta(seconds=timeout_seconds)
        self._registered(
            batch_id=self._batch_id,
            essay_ids=list(essay_ids),
            expected_count=len(essay_ids),
            deadline=deadline,
            course_code=course_code,
            user_id=user_id,
            correlation_id=correlation_id,
            timestamp=now,
        )
        for tsid, facts in list(self._pending.items()):
            self._place(
                tsid, facts["file_upload_id"], facts["original_file_name"], now, correlation_id
            )
        self._complete_if_done(now, correlation_id)

    def provision_content(
        self,
        text_storage_id: str,
        file_upload_id: str,
        original_file_name: str,
        now: datetime,
        correlation_id: str,
    ) -> None:
        """Assign new content to the first free slot, hold it until registration,
        or record it as true excess. Content the batch already knows is a no-op;
        content for a file that already has another outcome is refused."""
        if self.knows_content(text_storage_id):
            return
        if file_upload_id in self._files:
            held = self._files[file_upload_id]
            raise ConflictingFileOutcome(
                self._batch_id,
                f"file {file_upload_id!r} already "
                + (f"holds content {held!r}" if held else "failed validation"),
            )
        if not self.is_registered and not self.is_closed:
            self._pended(
                batch_id=self._batch_id,
                text_storage_id=text_storage_id,
                file_upload_id=file_upload_id,
                original_file_name=original_file_name,
                correlation_id=correlation_id,
                timestamp=now,
            )
            return
        self._place(text_storage_id, file_upload_id, original_file_name, now, correlation_id)
        self._complete_if_done(now, correlation_id)

    def record_validation_failure(
        self,
        file_upload_id: str,
        original_file_name: str,
        error_code: str,
        now: datetime,
        correlation_id: str,
    ) -> None:
        """Record a file that failed validation (once); it counts toward completion.

        A failure for a file whose content the batch holds is refused; after the
        batch is closed a new failure changes nothing.
        """
        if file_upload_id in self._failures:
            return
        if file_upload_id in self._files:
            raise ConflictingFileOutcome(
                self._batch_id,
                f"file {file_upload_id!r} already holds content {self._files[file_upload_id]!r}",
            )
        if self.is_closed:
            return
        self._failure_recorded(
            batch_id=self._batch_id,
            file_upload_id=file_upload_id,
            original_file_name=original_file_name,
            error_code=error_code,
            correlation_id=correlation_id,
            timestamp=now,
        )
        self._complete_if_done(now, correlation_id)

    def time_out(self, now: datetime, correlation_id: str) -> None:
        """Close an open batch whose deadline has passed; otherwise change nothing."""
        if self._status != "open" or self._deadline is None or now < self._deadline:
            return
        self._close("timed_out", now, correlation_id)

    def expire_pending(self, now: datetime, ttl_seconds: int, correlation_id: str) -> None:
        """Release the pending content of a batch never registered within the TTL."""
        if self._status != "awaiting_registration" or self._first_pending_at is None:
            return
        if now < self._first_pending_at + timedelta(seconds=ttl_seconds):
            return
        parts = split_lists({"text_storage_ids": list(self._pending)})
        for number, lists in enumerate(parts, start=1):
            self._pending_expired(
                batch_id=self._batch_id,
                text_storage_ids=lists["text_storage_ids"],
                part=number,
                parts=len(parts),
                correlation_id=correlation_id,
                timestamp=now,
            )

    def _place(
        self,
        text_storage_id: str,
        file_upload_id: str,
        original_file_name: str,
        now: datetime,
        correlation_id: str,
    ) -> None:
        # Slots fill in registration order: the first free one is at index len(assigned).
        # O(1) per command (the available_slots tuple would be O(slots)).
        filled = len(self._assigned)
        if self.is_closed or filled >= len(self._essay_ids):
            self._excess_provisioned(
                batch_id=self._batch_id,
                text_storage_id=text_storage_id,
                file_upload_id=file_upload_id,
                original_file_name=original_file_name,
                reason=BATCH_CLOSED if self.is_closed else NO_AVAILABLE_SLOT,
                correlation_id=correlation_id,
                timestamp=now,
            )
            return
        self._slot_assigned(
            batch_id=self._batch_id,
            essay_id=self._essay_ids[filled],
            text_storage_id=text_storage_id,
            file_upload_id=file_upload_id,
            original_file_name=original_file_name,
            correlation_id=correlation_id,
            timestamp=now,
        )

    def _complete_if_done(self, now: datetime, correlation_id: str) -> None:
        if self._status == "open" and len(self._assigned) + len(self._failures) >= self.expected:
            self._close("completed", now, correlation_id)

    def _close(
        self, outcome: Literal["completed", "timed_out"], now: datetime, correlation_id: str
    ) -> None:
        """Record the completion: one ``BatchCompleted``, or several parts when its
        lists would not fit one outbound message (all in this one append)."""
        parts = split_lists(
            {
                "ready": [
                    {"essay_id": essay_id, "text_storage_id": tsid}
                    for tsid, essay_id in self._assigned.items()
                ],
                "validation_failures": [
                    {"file_upload_id": fid, **facts} for fid, facts in self._failures.items()
                ],
                "missing_essay_ids": list(self.available_slots),
            }
        )
        for number, lists in enumerate(parts, start=1):
            self._completed(
                batch_id=self._batch_id,
                outcome=OUTCOME_OF_STATUS[outcome],
                ready=lists["ready"],
                validation_failures=lists["validation_failures"],
                missing_essay_ids=lists["missing_essay_ids"],
                part=number,
                parts=len(parts),
                correlation_id=correlation_id,
                timestamp=now,
            )

    # ------------------------------------------------- facts (events applied)

    class BatchRegistered(Event):
        """The batch opened with its ordered slots.

        Version 2 added ``course_code`` and ``user_id`` (whose batch it is); a stored
        version 1 event names neither.
        """

        class_version = 2
        batch_id: str
        essay_ids: list[str]
        expected_count: int
        deadline: datetime
        course_code: str | None
        user_id: str | None
        correlation_id: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["course_code"] = state["user_id"] = None

    @event(BatchRegistered)
    def _registered(
        self,
        batch_id: str,
        essay_ids: list[str],
        expected_count: int,
        deadline: datetime,
        course_code: str | None,
        user_id: str | None,
        correlation_id: str,
        timestamp: datetime,
    ) -> None:
        self._essay_ids = list(essay_ids)
        self._deadline = deadline
        self._status = "open"

    @event("ContentPended")
    def _pended(
        self,
        batch_id: str,
        text_storage_id: str,
        file_upload_id: str,
        original_file_name: str,
        correlation_id: str,
        timestamp: datetime,
    ) -> None:
        self._pending[text_storage_id] = {
            "file_upload_id": file_upload_id,
            "original_file_name": original_file_name,
        }
        self._files.setdefault(file_upload_id, text_storage_id)
        if self._first_pending_at is None:
            self._first_pending_at = timestamp

    @event("SlotAssigned")
    def _slot_assigned(
        self,
        batch_id: str,
        essay_id: str,
        text_storage_id: str,
        file_upload_id: str,
        original_file_name: str,
        correlation_id: str,
        timestamp: datetime,
    ) -> None:
        self._pending.pop(text_storage_id, None)
        self._assigned[text_storage_id] = essay_id
        self._files.setdefault(file_upload_id, text_storage_id)

    @event("ExcessContentProvisioned")
    def _excess_provisioned(
        self,
        batch_id: str,
        text_storage_id: str,
        file_upload_id: str,
        original_file_name: str,
        reason: str,
        correlation_id: str,
        timestamp: datetime,
    ) -> None:
        self._pending.pop(text_storage_id, None)
        self._excess[text_storage_id] = reason
        self._files.setdefault(file_upload_id, text_storage_id)

    @event("ValidationFailureRecorded")
    def _failure_recorded(
        self,
        batch_id: str,
        file_upload_id: str,
        original_file_name: str,
        error_code: str,
        correlation_id: str,
        timestamp: datetime,
    ) -> None:
        self._failures[file_upload_id] = {
            "original_file_name": original_file_name,
            "error_code": error_code,
        }
        self._files.setdefault(file_upload_id, "")

    class BatchCompleted(Event):
        """The batch closed (one part of ``parts``: together they carry the lists).

        Version 2 added ``part`` and ``parts``; a stored version 1 event was the
        whole completion in one part.
        """

        class_version = 2
        batch_id: str
        outcome: str
        ready: list[dict[str, str]]
        validation_failures: list[dict[str, str]]
        missing_essay_ids: list[str]
        part: int
        parts: int
        correlation_id: str

        upcast_v1_v2 = staticmethod(_as_one_part)

    @event(BatchCompleted)
    def _completed(
        self,
        batch_id: str,
        outcome: str,
        ready: list[dict[str, str]],
        validation_failures: list[dict[str, str]],
        missing_essay_ids: list[str],
        part: int,
        parts: int,
        correlation_id: str,
        timestamp: datetime,
    ) -> None:
        self._status = STATUS_OF_OUTCOME[outcome]

    class PendingContentExpired(Event):
        """Pending content released (one part of ``parts``); the batch is closed.

        Version 2 added ``part`` and ``parts`` (a version 1 event was one part).
        """

        class_version = 2
        batch_id: str
        text_storage_ids: list[str]
        part: int
        parts: int
        correlation_id: str

        upcast_v1_v2 = staticmethod(_as_one_part)

    @event(PendingContentExpired)
    def _pending_expired(
        self,
        batch_id: str,
        text_storage_ids: list[str],
        part: int,
        parts: int,
        correlation_id: str,
        timestamp: datetime,
    ) -> None:
        for tsid in text_storage_ids:
            facts = self._pending.pop(tsid, None)
            self._expired[tsid] = True
            # Released content is no longer held: its file has no outcome any more.
            if facts is not None and self._files.get(facts["file_upload_id"]) == tsid:
                del self._files[facts["file_upload_id"]]
        self._status = "expired"
