"""CONTRACT §2, rule by rule, against the Batch aggregate in memory.

Every test drives the aggregate through its public decision methods and
inspects the events it collected (what would be stored) and its state.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import pytest

from application.commands import ProvisionContent, RecordValidationFailure, RegisterBatch
from application.service import BatchService
from domain import (
    BATCH_CLOSED,
    NO_AVAILABLE_SLOT,
    Batch,
    BatchExpired,
    InvalidRegistration,
    RegistrationConflict,
)
from domain.batch import BATCH_NAMESPACE
from tests.conftest import ManualClock

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TIMEOUT = 3600
TTL = 1800


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def names(events: list[Any]) -> list[str]:
    return [type(e).__name__ for e in events]


def collected(batch: Batch) -> list[Any]:
    """The events the aggregate decided since the last call (what would be stored)."""
    return list(batch.collect_events())


def status_of(batch: Batch) -> str:
    """The status, read afresh (not narrowed by earlier asserts)."""
    return str(batch.status)


def fresh(batch_id: str = "b-1") -> Batch:
    return Batch.start(batch_id, T0)


def provision(batch: Batch, tsid: str, now: datetime = T0, cid: str = "c-p") -> None:
    batch.provision_content(tsid, f"f-{tsid}", f"{tsid}.txt", now, cid)


def fail(batch: Batch, fuid: str, now: datetime = T0, cid: str = "c-f") -> None:
    batch.record_validation_failure(fuid, f"{fuid}.txt", "EMPTY_CONTENT", now, cid)


def register(batch: Batch, essay_ids: list[str], now: datetime = T0, cid: str = "c-r") -> None:
    batch.register(essay_ids, now, TIMEOUT, cid)


def registered(essay_ids: list[str], batch_id: str = "b-1") -> Batch:
    batch = fresh(batch_id)
    register(batch, essay_ids)
    collected(batch)
    return batch


# ------------------------------------------------------------------- identity


def test_identity_is_uuid5_of_the_batch_id_and_stable() -> None:
    a = Batch.create_id("batch-42")
    assert isinstance(a, UUID)
    assert a.version == 5
    assert a == Batch.create_id("batch-42")
    assert a != Batch.create_id("batch-43")
    # The namespace is pinned: changing it would move every batch to a new stream.
    assert uuid5(NAMESPACE_URL, "urn:batch-slot-service:batch") == BATCH_NAMESPACE
    assert a == uuid5(BATCH_NAMESPACE, "batch-42")


def test_every_event_of_a_stream_has_the_derived_originator_id() -> None:
    batch = fresh("b-id")
    provision(batch, "t1")
    register(batch, ["e1"])
    events = collected(batch)
    assert events
    assert {e.originator_id for e in events} == {Batch.create_id("b-id")}
    assert batch.id == Batch.create_id("b-id")


# --------------------------------------------------------------- registration


def test_registration_opens_the_batch_with_ordered_slots_and_deadline() -> None:
    batch = fresh()
    register(batch, ["e3", "e1", "e2"], now=at(10))
    events = collected(batch)
    assert names(events) == ["BatchRegistered"]
    ev = events[0]
    assert ev.essay_ids == ["e3", "e1", "e2"]
    assert ev.expected_count == 3
    assert ev.deadline == at(10 + TIMEOUT)
    assert batch.status == "open"
    assert batch.available_slots == ("e3", "e1", "e2")
    assert batch.deadline == at(10 + TIMEOUT)


def test_same_registration_again_is_a_noop() -> None:
    batch = registered(["e1", "e2"])
    version = batch.version
    register(batch, ["e1", "e2"], now=at(100))
    assert collected(batch) == []
    assert batch.version == version
    assert batch.deadline == at(TIMEOUT)  # the first registration's deadline stands


@pytest.mark.parametrize("other", [["e1"], ["e2", "e1"], ["e1", "e2", "e3"], ["x1", "x2"]])
def test_registration_with_different_slots_is_rejected_and_records_nothing(
    other: list[str],
) -> None:
    batch = registered(["e1", "e2"])
    version = batch.version
    with pytest.raises(RegistrationConflict) as info:
        register(batch, other)
    assert info.value.reason == "REGISTRATION_CONFLICT"
    assert collected(batch) == []
    assert batch.version == version
    assert batch.essay_ids == ("e1", "e2")


@pytest.mark.parametrize("bad", [[], ["e1", "e1"], ["e1", "e2", "e1"]])
def test_invalid_registration_is_rejected_and_records_nothing(bad: list[str]) -> None:
    batch = fresh()
    provision(batch, "t1")
    collected(batch)
    with pytest.raises(InvalidRegistration) as info:
        register(batch, bad)
    assert info.value.reason == "INVALID_REGISTRATION"
    assert collected(batch) == []
    assert batch.status == "awaiting_registration"
    assert batch.pending == ("t1",)


def test_rejection_through_the_service_records_nothing() -> None:
    svc = BatchService(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=ManualClock(T0))
    first = svc.register(RegisterBatch(batch_id="b", correlation_id="c1", essay_ids=["e1"]))
    again = svc.register(RegisterBatch(batch_id="b", correlation_id="c2", essay_ids=["e1"]))
    other = svc.register(RegisterBatch(batch_id="b", correlation_id="c3", essay_ids=["e2"]))
    assert (first.outcome, first.events) == ("recorded", 1)
    assert (again.outcome, again.events) == ("noop", 0)
    assert (other.outcome, other.reason) == ("rejected", "REGISTRATION_CONFLICT")
    stored = list(svc.events.get(Batch.create_id("b")))
    assert names(stored) == ["BatchRegistered"]


# ------------------------------------------------------------ pending content


def test_content_before_registration_is_pended_not_excess() -> None:
    batch = fresh()
    provision(batch, "t1", now=at(5))
    events = collected(batch)
    assert names(events) == ["ContentPended"]
    assert events[0].text_storage_id == "t1"
    assert events[0].file_upload_id == "f-t1"
    assert events[0].original_file_name == "t1.txt"
    assert batch.pending == ("t1",)
    assert batch.excess == {}
    assert batch.first_pending_at == at(5)


def test_pending_is_reconciled_in_arrival_order_into_slots_in_registration_order() -> None:
    batch = fresh()
    for tsid in ["t9", "t2", "t5"]:
        provision(batch, tsid)
    collected(batch)
    register(batch, ["e-c", "e-a", "e-b", "e-d"], now=at(60), cid="c-reg")
    events = collected(batch)
    assert names(events) == ["BatchRegistered", "SlotAssigned", "SlotAssigned", "SlotAssigned"]
    assert [(e.essay_id, e.text_storage_id) for e in events[1:]] == [
        ("e-c", "t9"),
        ("e-a", "t2"),
        ("e-b", "t5"),
    ]
    assert batch.pending == ()
    assert batch.available_slots == ("e-d",)
    assert batch.status == "open"


def test_pending_beyond_the_slots_becomes_excess_only_at_registration() -> None:
    batch = fresh()
    for tsid in ["t1", "t2", "t3"]:
        provision(batch, tsid)
    assert "ExcessContentProvisioned" not in names(collected(batch))
    register(batch, ["e1", "e2"])
    events = collected(batch)
    assert names(events) == [
        "BatchRegistered",
        "SlotAssigned",
        "SlotAssigned",
        "ExcessContentProvisioned",
        "BatchCompleted",
    ]
    assert events[3].text_storage_id == "t3"
    assert events[3].reason == NO_AVAILABLE_SLOT
    assert batch.assignments == {"e1": "t1", "e2": "t2"}


def test_first_free_slot_in_registration_order_after_registration() -> None:
    batch = registered(["e2", "e1", "e3"])
    provision(batch, "tA")
    provision(batch, "tB")
    events = collected(batch)
    assert [(e.essay_id, e.text_storage_id) for e in events] == [("e2", "tA"), ("e1", "tB")]
    assert batch.available_slots == ("e3",)


# ---------------------------------------------------------------- duplicates


def test_duplicate_of_assigned_content_is_a_noop() -> None:
    batch = registered(["e1", "e2"])
    provision(batch, "t1")
    collected(batch)
    provision(batch, "t1", cid="other")
    batch.provision_content("t1", "different-upload", "x.txt", T0, "again")
    assert collected(batch) == []
    assert batch.assignments == {"e1": "t1"}


def test_duplicate_of_pending_content_is_a_noop_and_assigned_once() -> None:
    batch = fresh()
    provision(batch, "t1")
    provision(batch, "t1")
    assert names(collected(batch)) == ["ContentPended"]
    register(batch, ["e1", "e2"])
    provision(batch, "t1")
    events = collected(batch)
    assert names(events) == ["BatchRegistered", "SlotAssigned"]
    assert batch.assignments == {"e1": "t1"}


def test_duplicate_of_excess_content_is_a_noop() -> None:
    batch = registered(["e1"])
    fail(batch, "f-x")  # completes the batch: later content is excess
    provision(batch, "t1")
    events = collected(batch)
    assert names(events)[-1] == "ExcessContentProvisioned"
    provision(batch, "t1")
    assert collected(batch) == []
    assert batch.excess == {"t1": BATCH_CLOSED}


def test_duplicate_of_expired_pending_content_is_a_noop() -> None:
    batch = fresh()
    provision(batch, "t1")
    batch.expire_pending(at(TTL), TTL, "c-x")
    collected(batch)
    provision(batch, "t1", now=at(TTL + 1))
    assert collected(batch) == []


# --------------------------------------------------------------------- excess


def test_excess_reason_no_available_slot_when_open_and_full() -> None:
    # Slots are full but the batch is still open only while pending content
    # beyond capacity is being placed at registration.
    batch = fresh()
    provision(batch, "t1")
    provision(batch, "t2")
    collected(batch)
    register(batch, ["e1"])
    events = collected(batch)
    excess = [e for e in events if type(e).__name__ == "ExcessContentProvisioned"]
    assert [(e.text_storage_id, e.reason) for e in excess] == [("t2", NO_AVAILABLE_SLOT)]


def test_excess_reason_batch_closed_after_completion() -> None:
    batch = registered(["e1"])
    provision(batch, "t1")
    assert batch.status == "completed"
    collected(batch)
    provision(batch, "t2", cid="late")
    events = collected(batch)
    assert names(events) == ["ExcessContentProvisioned"]
    assert events[0].reason == BATCH_CLOSED
    assert events[0].correlation_id == "late"
    assert batch.excess == {"t2": BATCH_CLOSED}


def test_excess_reason_batch_closed_after_timeout_and_after_expiry() -> None:
    batch = registered(["e1", "e2"])
    batch.time_out(at(TIMEOUT), "sweep")
    collected(batch)
    provision(batch, "t1", now=at(TIMEOUT + 1))
    assert [e.reason for e in collected(batch)] == [BATCH_CLOSED]

    expired = fresh()
    provision(expired, "t0")
    expired.expire_pending(at(TTL), TTL, "sweep")
    collected(expired)
    provision(expired, "t1", now=at(TTL + 1))
    events = collected(expired)
    assert names(events) == ["ExcessContentProvisioned"]
    assert events[0].reason == BATCH_CLOSED


# --------------------------------------------------------- validation failure


def test_validation_failure_is_idempotent() -> None:
    batch = registered(["e1", "e2", "e3"])
    fail(batch, "f1")
    fail(batch, "f1", cid="again")
    events = collected(batch)
    assert names(events) == ["ValidationFailureRecorded"]
    assert events[0].file_upload_id == "f1"
    assert events[0].error_code == "EMPTY_CONTENT"
    assert batch.failures == ("f1",)


def test_validation_failures_count_toward_completion() -> None:
    batch = registered(["e1", "e2", "e3"])
    provision(batch, "t1")
    fail(batch, "f1")
    assert batch.status == "open"
    fail(batch, "f2", cid="last")
    events = collected(batch)
    assert names(events)[-2:] == ["ValidationFailureRecorded", "BatchCompleted"]
    done = events[-1]
    assert done.outcome == "complete"
    assert done.correlation_id == "last"
    assert [f["file_upload_id"] for f in done.validation_failures] == ["f1", "f2"]
    assert done.ready == [{"essay_id": "e1", "text_storage_id": "t1"}]
    assert done.missing_essay_ids == ["e2", "e3"]


def test_validation_failures_before_registration_count_toward_completion() -> None:
    batch = fresh()
    fail(batch, "f1")
    provision(batch, "t1")
    assert names(collected(batch)) == ["ValidationFailureRecorded", "ContentPended"]
    register(batch, ["e1", "e2"], cid="reg")
    events = collected(batch)
    assert names(events) == ["BatchRegistered", "SlotAssigned", "BatchCompleted"]
    assert events[-1].outcome == "complete"
    assert events[-1].correlation_id == "reg"
    assert batch.status == "completed"


def test_failures_before_registration_alone_can_complete_it() -> None:
    batch = fresh()
    fail(batch, "f1")
    fail(batch, "f2")
    collected(batch)
    register(batch, ["e1", "e2"])
    assert names(collected(batch)) == ["BatchRegistered", "BatchCompleted"]


# ----------------------------------------------------------------- completion


def test_completion_is_in_the_same_pending_events_as_the_completing_event() -> None:
    batch = registered(["e1", "e2"])
    provision(batch, "t1")
    assert names(collected(batch)) == ["SlotAssigned"]
    provision(batch, "t2", now=at(7), cid="c-last")
    events = collected(batch)
    assert names(events) == ["SlotAssigned", "BatchCompleted"]
    assert events[1].originator_version == events[0].originator_version + 1
    assert events[1].ready == [
        {"essay_id": "e1", "text_storage_id": "t1"},
        {"essay_id": "e2", "text_storage_id": "t2"},
    ]
    assert events[1].missing_essay_ids == []
    assert events[1].timestamp == at(7)


def test_completion_is_recorded_exactly_once() -> None:
    batch = registered(["e1"])
    provision(batch, "t1")
    fail(batch, "f1")
    provision(batch, "t2")
    batch.time_out(at(TIMEOUT * 2), "sweep")
    register(batch, ["e1"])
    events = collected(batch)
    assert names(events).count("BatchCompleted") == 1
    assert batch.status == "completed"


def test_completion_written_in_one_append_through_the_service() -> None:
    clock = ManualClock(T0)
    svc = BatchService(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=clock)
    svc.register(RegisterBatch(batch_id="b", correlation_id="c", essay_ids=["e1"]))
    result = svc.provision_content(
        ProvisionContent(
            batch_id="b",
            correlation_id="c2",
            text_storage_id="t1",
            file_upload_id="f1",
            original_file_name="a.txt",
        )
    )
    assert (result.outcome, result.events) == ("recorded", 2)
    stored = list(svc.events.get(Batch.create_id("b")))
    assert names(stored) == ["BatchRegistered", "SlotAssigned", "BatchCompleted"]
    assert [e.originator_version for e in stored] == [1, 2, 3]


# -------------------------------------------------------------------- timeout


def test_timeout_only_past_the_deadline_and_lists_missing_ids() -> None:
    batch = registered(["e1", "e2", "e3"])
    provision(batch, "t1")
    collected(batch)
    batch.time_out(at(TIMEOUT - 1), "early")
    assert collected(batch) == []
    assert batch.status == "open"
    batch.time_out(at(TIMEOUT + 1), "sweep")
    events = collected(batch)
    assert names(events) == ["BatchCompleted"]
    done = events[0]
    assert done.outcome == "timed_out"
    assert done.missing_essay_ids == ["e2", "e3"]
    assert done.ready == [{"essay_id": "e1", "text_storage_id": "t1"}]
    assert done.correlation_id == "sweep"
    assert status_of(batch) == "timed_out"


def test_timeout_boundary_is_inclusive_at_the_deadline() -> None:
    batch = registered(["e1"])
    batch.time_out(at(TIMEOUT) - timedelta(microseconds=1), "sweep")
    assert collected(batch) == []
    batch.time_out(at(TIMEOUT), "sweep")
    assert names(collected(batch)) == ["BatchCompleted"]


def test_timeout_is_a_noop_unless_open() -> None:
    unregistered = fresh()
    provision(unregistered, "t1")
    collected(unregistered)
    unregistered.time_out(at(10 * TIMEOUT), "sweep")
    assert collected(unregistered) == []

    done = registered(["e1"])
    provision(done, "t1")
    collected(done)
    done.time_out(at(10 * TIMEOUT), "sweep")
    assert collected(done) == []
    assert done.status == "completed"


# ------------------------------------------------------------- pending expiry


def test_pending_expires_only_past_the_ttl_since_first_pending() -> None:
    batch = fresh()
    provision(batch, "t1", now=at(100))
    provision(batch, "t2", now=at(500))
    collected(batch)
    batch.expire_pending(at(100 + TTL - 1), TTL, "sweep")
    assert collected(batch) == []
    assert batch.status == "awaiting_registration"
    batch.expire_pending(at(100 + TTL), TTL, "sweep")
    events = collected(batch)
    assert names(events) == ["PendingContentExpired"]
    assert events[0].text_storage_ids == ["t1", "t2"]
    assert events[0].correlation_id == "sweep"
    assert status_of(batch) == "expired"
    assert batch.pending == ()


def test_pending_never_expires_for_a_registered_batch() -> None:
    batch = fresh()
    provision(batch, "t1")
    register(batch, ["e1", "e2"], now=at(1))
    collected(batch)
    batch.expire_pending(at(100 * TTL), TTL, "sweep")
    assert collected(batch) == []
    assert batch.status == "open"
    assert batch.assignments == {"e1": "t1"}


def test_nothing_to_expire_without_pending_content() -> None:
    batch = fresh()
    fail(batch, "f1")
    collected(batch)
    batch.expire_pending(at(100 * TTL), TTL, "sweep")
    assert collected(batch) == []
    assert batch.status == "awaiting_registration"


def test_expired_batch_rejects_registration() -> None:
    batch = fresh()
    provision(batch, "t1")
    batch.expire_pending(at(TTL), TTL, "sweep")
    collected(batch)
    with pytest.raises(BatchExpired) as info:
        register(batch, ["e1"], now=at(TTL + 1))
    assert info.value.reason == "BATCH_EXPIRED"
    assert collected(batch) == []
    assert batch.status == "expired"
    assert not batch.is_registered


# ------------------------------------------------ correlation and timestamps


def test_every_event_carries_its_commands_correlation_id_and_injected_time() -> None:
    batch = fresh()
    provision(batch, "t1", now=at(1), cid="c-content-1")
    fail(batch, "f9", now=at(2), cid="c-fail")
    register(batch, ["e1", "e2", "e3"], now=at(3), cid="c-register")
    provision(batch, "t2", now=at(4), cid="c-content-2")
    batch.time_out(at(3 + TIMEOUT), "c-sweep")
    events = collected(batch)
    got = [(type(e).__name__, e.correlation_id, e.timestamp) for e in events]
    assert got == [
        ("ContentPended", "c-content-1", at(1)),
        ("ValidationFailureRecorded", "c-fail", at(2)),
        ("BatchRegistered", "c-register", at(3)),
        ("SlotAssigned", "c-register", at(3)),
        ("SlotAssigned", "c-content-2", at(4)),
        ("BatchCompleted", "c-content-2", at(4)),
    ]
    assert [e.originator_version for e in events] == list(range(1, 7))


def test_expiry_event_carries_correlation_and_time() -> None:
    batch = fresh()
    provision(batch, "t1", now=at(0), cid="c1")
    batch.expire_pending(at(TTL + 5), TTL, "c-exp")
    events = collected(batch)
    assert [(e.correlation_id, e.timestamp) for e in events] == [
        ("c1", at(0)),
        ("c-exp", at(TTL + 5)),
    ]


def test_service_stamps_events_with_the_injected_clock() -> None:
    clock = ManualClock(T0)
    svc = BatchService(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=clock)
    clock.advance(42)
    svc.record_validation_failure(
        RecordValidationFailure(
            batch_id="b",
            correlation_id="c-1",
            file_upload_id="f1",
            original_file_name="x",
            error_code="E",
        )
    )
    stored: list[Any] = list(svc.events.get(Batch.create_id("b")))
    (event,) = stored
    assert event.timestamp == at(42)
    assert event.correlation_id == "c-1"


# ----------------------------------------------------------------- replay


def test_replaying_the_events_rebuilds_the_same_state() -> None:
    batch = fresh()
    provision(batch, "t1")
    fail(batch, "f1")
    register(batch, ["e1", "e2", "e3"], now=at(1))
    provision(batch, "t2", now=at(2))
    provision(batch, "t1", now=at(3))
    events = collected(batch)
    rebuilt: Batch | None = None
    for ev in events:
        rebuilt = ev.mutate(rebuilt)
    assert rebuilt is not None
    assert {k: v for k, v in rebuilt.__dict__.items() if k != "_pending_events"} == {
        k: v for k, v in batch.__dict__.items() if k != "_pending_events"
    }
