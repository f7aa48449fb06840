"""A plain-Python reference model of CONTRACT §2, written from the contract
text and independent of the ``eventsourcing`` library and of ``domain/``.

Each batch keeps the list of events it would have stored (type, data,
correlation id, timestamp); ``apply`` decides one command and returns what
became of it, exactly like ``BatchService`` should.
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
class RefBatch:
    batch_id: str
    status: Status = "awaiting_registration"
    essay_ids: list[str] = field(default_factory=list)
    deadline: datetime | None = None
    first_pending_at: datetime | None = None
    assigned: dict[str, str] = field(default_factory=dict)  # essay_id -> text_storage_id
    pending: dict[str, tuple[str, str]] = field(default_factory=dict)  # tsid -> (fuid, name)
    excess: dict[str, str] = field(default_factory=dict)  # tsid -> reason
    expired: list[str] = field(default_factory=list)
    failures: dict[str, dict[str, str]] = field(default_factory=dict)  # fuid -> facts
    events: list[RefEvent] = field(default_factory=list)

    # ----------------------------------------------------------------- reads

    @property
    def version(self) -> int:
        return len(self.events)

    @property
    def free_slots(self) -> list[str]:
        return [e for e in self.essay_ids if e not in self.assigned]

    def known(self, tsid: str) -> bool:
        return (
            tsid in self.assigned.values()
            or tsid in self.pending
            or tsid in self.excess
            or tsid in self.expired
        )

    # ------------------------------------------------------------- commands

    def register(self, essay_ids: list[str], now: datetime, timeout: int, cid: str) -> RefResult:
        if not essay_ids or len(set(essay_ids)) != len(essay_ids):
            return RefResult("rejected", reason="INVALID_REGISTRATION")
        if self.status == "expired":
            return RefResult("rejected", reason="BATCH_EXPIRED")
        if self.essay_ids:
            if essay_ids == self.essay_ids:
                return RefResult("noop")
            return RefResult("rejected", reason="REGISTRATION_CONFLICT")
        before = self.version
        self.essay_ids = list(essay_ids)
        self.deadline = now + timedelta(seconds=timeout)
        self.status = "open"
        self._emit(
            "BatchRegistered",
            cid,
            now,
            essay_ids=list(essay_ids),
            expected_count=len(essay_ids),
            deadline=self.deadline,
        )
        early = list(self.pending.items())
        self.pending = {}
        for tsid, (fuid, name) in early:  # arrival order
            self._place(tsid, fuid, name, now, cid)
        self._maybe_complete(now, cid)
        return RefResult("recorded", self.version - before)

    def provision(self, tsid: str, fuid: str, name: str, now: datetime, cid: str) -> RefResult:
        if self.known(tsid):
            return RefResult("noop")
        before = self.version
        if self.status == "awaiting_registration":
            self.pending[tsid] = (fuid, name)
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
            self._place(tsid, fuid, name, now, cid)
            self._maybe_complete(now, cid)
        return RefResult("recorded", self.version - before)

    def fail(self, fuid: str, name: str, code: str, now: datetime, cid: str) -> RefResult:
        if fuid in self.failures:
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
        self._maybe_complete(now, cid)
        return RefResult("recorded", self.version - before)

    def time_out(self, now: datetime, cid: str) -> RefResult:
        if self.status != "open" or self.deadline is None or now < self.deadline:
            return RefResult("noop")
        self._close("timed_out", now, cid)
        return RefResult("recorded", 1)

    def expire_pending(self, now: datetime, ttl: int, cid: str) -> RefResult:
        if self.status != "awaiting_registration" or self.first_pending_at is None:
            return RefResult("noop")
        if now < self.first_pending_at + timedelta(seconds=ttl):
            return RefResult("noop")
        released = list(self.pending)
        self.expired.extend(released)
        self.pending = {}
        self.status = "expired"
        self._emit("PendingContentExpired", cid, now, text_storage_ids=released)
        return RefResult("recorded", 1)

    # ------------------------------------------------------------- internals

    def _place(self, tsid: str, fuid: str, name: str, now: datetime, cid: str) -> None:
        facts = {"text_storage_id": tsid, "file_upload_id": fuid, "original_file_name": name}
        if self.status in CLOSED:
            self.excess[tsid] = "BATCH_CLOSED"
            self._emit("ExcessContentProvisioned", cid, now, **facts, reason="BATCH_CLOSED")
        elif not self.free_slots:
            self.excess[tsid] = "NO_AVAILABLE_SLOT"
            self._emit("ExcessContentProvisioned", cid, now, **facts, reason="NO_AVAILABLE_SLOT")
        else:
            slot = self.free_slots[0]
            self.assigned[slot] = tsid
            self._emit("SlotAssigned", cid, now, essay_id=slot, **facts)

    def _maybe_complete(self, now: datetime, cid: str) -> None:
        if self.status == "open" and len(self.assigned) + len(self.failures) >= len(self.essay_ids):
            self._close("completed", now, cid)

    def _close(self, status: Literal["completed", "timed_out"], now: datetime, cid: str) -> None:
        self.status = status
        self._emit(
            "BatchCompleted",
            cid,
            now,
            outcome="complete" if status == "completed" else "timed_out",
            ready=[
                {"essay_id": e, "text_storage_id": self.assigned[e]}
                for e in self.essay_ids
                if e in self.assigned
            ],
            validation_failures=[
                {"file_upload_id": fuid, **facts} for fuid, facts in self.failures.items()
            ],
            missing_essay_ids=self.free_slots,
        )

    def _emit(self, type_: str, cid: str, now: datetime, **data: Any) -> None:
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
            return b.register(list(command.essay_ids), now, self.timeout_seconds, cid)
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
