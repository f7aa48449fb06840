"""A plain-Python reference model of the Batch rules, written from the words of
``docs/contract.md`` §2 (and docs/rules.md where the contract leaves a choice to
the project), not from ``domain/batch.py``.

Every rule below quotes the sentence it implements. The model knows nothing of
the ``eventsourcing`` library: each batch keeps the list of events it would
have stored (type, data, correlation id, timestamp), and ``apply`` decides one
command and says what became of it, as ``BatchService`` must.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

Outcome = Literal["recorded", "noop", "rejected"]
Status = Literal["awaiting_registration", "open", "completed", "timed_out", "expired"]
CLOSED: frozenset[str] = frozenset({"completed", "timed_out", "expired"})


@dataclass(frozen=True)
class RefEvent:
    type: str
    data: dict[str, Any]
    correlation_id: str
    timestamp: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            **self.data,
            "correlation_id": self.correlation_id,
            "timestamp": self.timestamp,
        }


@dataclass(frozen=True)
class RefResult:
    outcome: Outcome
    events: int = 0
    reason: str | None = None


@dataclass
class Content:
    text_storage_id: str
    file_upload_id: str
    name: str
    where: Literal["pending", "assigned", "excess", "expired"]


@dataclass
class RefBatch:
    batch_id: str
    status: Status = "awaiting_registration"
    slots: list[str] = field(default_factory=list)
    deadline: datetime | None = None
    first_pending_at: datetime | None = None
    contents: list[Content] = field(default_factory=list)  # in arrival order
    slot_of: dict[str, str] = field(default_factory=dict)  # text_storage_id -> essay_id
    excess_reason: dict[str, str] = field(default_factory=dict)  # text_storage_id -> reason
    failures: dict[str, dict[str, str]] = field(default_factory=dict)  # file -> facts
    events: list[RefEvent] = field(default_factory=list)

    # ----------------------------------------------------------------- reads

    @property
    def version(self) -> int:
        return len(self.events)

    @property
    def essay_ids(self) -> list[str]:
        return list(self.slots)

    @property
    def assigned(self) -> dict[str, str]:
        """essay_id -> text_storage_id, in slot order."""
        by_slot = {essay: tsid for tsid, essay in self.slot_of.items()}
        return {e: by_slot[e] for e in self.slots if e in by_slot}

    @property
    def free_slots(self) -> list[str]:
        return [e for e in self.slots if e not in self.assigned]

    @property
    def pending(self) -> list[str]:
        return [c.text_storage_id for c in self.contents if c.where == "pending"]

    @property
    def excess(self) -> dict[str, str]:
        return dict(self.excess_reason)

    def content(self, tsid: str) -> Content | None:
        return next((c for c in self.contents if c.text_storage_id == tsid), None)

    def held_content_of_file(self, fuid: str) -> Content | None:
        # "a file whose content the batch holds (pending, assigned or excess)"
        return next(
            (
                c
                for c in self.contents
                if c.file_upload_id == fuid and c.where in ("pending", "assigned", "excess")
            ),
            None,
        )

    # ------------------------------------------------------------- commands

    def register(
        self,
        essay_ids: list[str],
        now: datetime,
        timeout: int,
        cid: str,
        course_code: str | None = None,
        user_id: str | None = None,
    ) -> RefResult:
        # §3: "a batch has 1 to 5,000 slots, all distinct" (the edge refuses the rest).
        if not essay_ids or len(set(essay_ids)) != len(essay_ids):
            return RefResult("rejected", reason="INVALID_REGISTRATION")
        # §2: pending content "is closed with PendingContentExpired"; docs/rules.md: "a later
        # registration is dead-lettered as BATCH_EXPIRED".
        if self.status == "expired":
            return RefResult("rejected", reason="BATCH_EXPIRED")
        if self.slots:
            # "The same registration again is a no-op; a registration with different
            # slots is rejected (dead-lettered, nothing recorded)."
            if essay_ids == self.slots:
                return RefResult("noop")
            return RefResult("rejected", reason="REGISTRATION_CONFLICT")
        before = self.version
        # "opens the batch with its ordered essay_ids (the slots)"; "Timeout: an open
        # batch past its deadline (registration time + BATCH_TIMEOUT_SECONDS)".
        self.slots = list(essay_ids)
        self.deadline = now + timedelta(seconds=timeout)
        self.status = "open"
        self._emit(
            "BatchRegistered",
            cid,
            now,
            essay_ids=list(essay_ids),
            expected_count=len(essay_ids),
            deadline=self.deadline,
            # §7: "course_code and user_id of a registration are recorded with it".
            course_code=course_code,
            user_id=user_id,
        )
        # "Pending content is then assigned in arrival order, first free slot in
        # registration order."
        for c in [c for c in self.contents if c.where == "pending"]:
            self._place(c, now, cid)
        # "counts toward completion, also when it arrives before registration"
        self._complete_if_earned(now, cid)
        return RefResult("recorded", self.version - before)

    def provision(self, tsid: str, fuid: str, name: str, now: datetime, cid: str) -> RefResult:
        # "a duplicate of content the batch already knows (assigned, pending or
        # excess) is a no-op" (released content stays known: it is not new content).
        if self.content(tsid) is not None:
            return RefResult("noop")
        # "content under another text_storage_id for a file that already failed or
        # already holds content — changes nothing and is dead-lettered with reason
        # CONFLICTING_FILE_OUTCOME"
        if fuid in self.failures or self.held_content_of_file(fuid) is not None:
            return RefResult("rejected", reason="CONFLICTING_FILE_OUTCOME")
        before = self.version
        content = Content(tsid, fuid, name, "pending")
        self.contents.append(content)
        if self.status == "awaiting_registration":
            # "Before registration: ContentPended."
            if self.first_pending_at is None:
                self.first_pending_at = now
            self._emit(
                "ContentPended",
                cid,
                now,
                text_storage_id=tsid,
                file_upload_id=fuid,
                original_file_name=name,
            )
        else:
            self._place(content, now, cid)
            self._complete_if_earned(now, cid)
        return RefResult("recorded", self.version - before)

    def fail(self, fuid: str, name: str, code: str, now: datetime, cid: str) -> RefResult:
        # "record validation failure (keyed by file_upload_id): idempotent"
        if fuid in self.failures:
            return RefResult("noop")
        # "a validation failure for a file whose content the batch holds (pending,
        # assigned or excess) ... is dead-lettered with reason CONFLICTING_FILE_OUTCOME"
        if self.held_content_of_file(fuid) is not None:
            return RefResult("rejected", reason="CONFLICTING_FILE_OUTCOME")
        # "After the batch is closed a new failure changes nothing and does not count."
        if self.status in CLOSED:
            return RefResult("noop")
        before = self.version
        self.failures[fuid] = {"original_file_name": name, "error_code": code}
        self._emit(
            "ValidationFailureRecorded",
            cid,
            now,
            file_upload_id=fuid,
            original_file_name=name,
            error_code=code,
        )
        self._complete_if_earned(now, cid)
        return RefResult("recorded", self.version - before)

    def time_out(self, now: datetime, cid: str) -> RefResult:
        # "an open batch past its deadline ... is closed with BatchCompleted, outcome
        # timed_out, listing the missing essay ids" (docs/rules.md: at or past the deadline).
        if self.status != "open" or self.deadline is None or now < self.deadline:
            return RefResult("noop")
        self._close("timed_out", now, cid)
        return RefResult("recorded", 1)

    def expire_pending(self, now: datetime, ttl: int, cid: str) -> RefResult:
        # "Pending content of a batch never registered within PENDING_TTL_SECONDS ...
        # is closed with PendingContentExpired" (docs/rules.md: counted from its first
        # pending content, at or past that moment).
        if self.status != "awaiting_registration" or self.first_pending_at is None:
            return RefResult("noop")
        if now < self.first_pending_at + timedelta(seconds=ttl):
            return RefResult("noop")
        released = self.pending
        for c in self.contents:
            if c.where == "pending":
                c.where = "expired"
        self.status = "expired"
        self._emit("PendingContentExpired", cid, now, text_storage_ids=released, part=1, parts=1)
        return RefResult("recorded", 1)

    # ------------------------------------------------------------- internals

    def _place(self, content: Content, now: datetime, cid: str) -> None:
        facts = {
            "text_storage_id": content.text_storage_id,
            "file_upload_id": content.file_upload_id,
            "original_file_name": content.name,
        }
        # "Open batch with a free slot: SlotAssigned. Open batch without a free slot,
        # or a closed batch: ExcessContentProvisioned with reason NO_AVAILABLE_SLOT
        # or BATCH_CLOSED."
        if self.status in CLOSED:
            reason = "BATCH_CLOSED"
        elif not self.free_slots:
            reason = "NO_AVAILABLE_SLOT"
        else:
            slot = self.free_slots[0]
            content.where = "assigned"
            self.slot_of[content.text_storage_id] = slot
            self._emit("SlotAssigned", cid, now, essay_id=slot, **facts)
            return
        content.where = "excess"
        self.excess_reason[content.text_storage_id] = reason
        self._emit("ExcessContentProvisioned", cid, now, **facts, reason=reason)

    def _complete_if_earned(self, now: datetime, cid: str) -> None:
        # "Completion: when assigned + failed >= expected the batch records
        # BatchCompleted (outcome complete) in the same write as the event that
        # completed it. Exactly once per batch."
        if self.status == "open" and len(self.assigned) + len(self.failures) >= len(self.slots):
            self._close("completed", now, cid)

    def _close(self, status: Literal["completed", "timed_out"], now: datetime, cid: str) -> None:
        self.status = status
        # §3: "BatchCompleted: batch_id, outcome, ready[] (essay_id, text_storage_id),
        # validation_failures[], missing_essay_ids[]"; small lists fit one part.
        self._emit(
            "BatchCompleted",
            cid,
            now,
            outcome="complete" if status == "completed" else "timed_out",
            ready=[{"essay_id": e, "text_storage_id": t} for e, t in self.assigned.items()],
            validation_failures=[
                {"file_upload_id": fuid, **facts} for fuid, facts in self.failures.items()
            ],
            missing_essay_ids=self.free_slots,
            part=1,
            parts=1,
        )

    def _emit(self, type_: str, cid: str, now: datetime, **data: Any) -> None:
        # "Every event carries the correlation_id of the message that caused it."
        self.events.append(RefEvent(type_, {"batch_id": self.batch_id, **data}, cid, now))


class Reference:
    """Every batch of a run, as the contract says it must be."""

    def __init__(self, timeout_seconds: int, pending_ttl_seconds: int) -> None:
        self.timeout_seconds = timeout_seconds
        self.pending_ttl_seconds = pending_ttl_seconds
        self.batches: dict[str, RefBatch] = {}

    def batch(self, batch_id: str) -> RefBatch:
        return self.batches.setdefault(batch_id, RefBatch(batch_id))

    def apply(self, command: Any, now: datetime) -> RefResult:
        """Decide one command (any of application.commands, by class name)."""
        b = self.batch(command.batch_id)
        cid: str = command.correlation_id
        kind = type(command).__name__
        if kind == "RegisterBatch":
            return b.register(
                list(command.essay_ids),
                now,
                self.timeout_seconds,
                cid,
                command.course_code,
                command.user_id,
            )
        if kind == "ProvisionContent":
            return b.provision(
                command.text_storage_id,
                command.file_upload_id,
                command.original_file_name,
                now,
                cid,
            )
        if kind == "RecordValidationFailure":
            return b.fail(
                command.file_upload_id, command.original_file_name, command.error_code, now, cid
            )
        if kind == "TimeOutBatch":
            return b.time_out(now, cid)
        if kind == "ExpirePending":
            return b.expire_pending(now, self.pending_ttl_seconds, cid)
        raise TypeError(f"unknown command {kind}")
