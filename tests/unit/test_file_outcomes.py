"""CONTRACT §2 "One file, one outcome", case by case, against the aggregate.

"A file (file_upload_id) has at most one outcome in a batch, the first recorded
of its content or its validation failure. A later message that contradicts it
... changes nothing and is dead-lettered with reason CONFLICTING_FILE_OUTCOME.
So one file never fills two slots and never counts twice toward completion."
And: "After the batch is closed a new failure changes nothing and does not
count."

Each case runs in both orders where order matters, before and after the
registration, and after the batch is closed. Every one of these failed on the
aggregate before the rule (it completed early or filled two slots).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from application.commands import ProvisionContent, RecordValidationFailure, RegisterBatch
from application.service import BatchService
from domain import Batch, ConflictingFileOutcome
from tests.conftest import ManualClock

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def names(batch: Batch) -> list[str]:
    return [type(e).__name__ for e in batch.collect_events()]


def content(batch: Batch, tsid: str, fuid: str, now: datetime = T0) -> None:
    batch.provision_content(tsid, fuid, f"{fuid}.txt", now, f"c-{tsid}")


def failure(batch: Batch, fuid: str, now: datetime = T0) -> None:
    batch.record_validation_failure(fuid, f"{fuid}.txt", "EMPTY_CONTENT", now, f"c-{fuid}")


def registered(slots: list[str]) -> Batch:
    batch = Batch.start("b-1", T0)
    batch.register(slots, T0, 3600, "c-reg")
    batch.collect_events()
    return batch


# ------------------------------------------------- content, then a failure


def test_failure_for_a_file_whose_content_is_assigned_is_refused_and_does_not_complete() -> None:
    """The issue's first case: e2 must stay free for the real second file."""
    batch = registered(["e1", "e2"])
    content(batch, "t1", "u1")
    assert names(batch) == ["SlotAssigned"]
    with pytest.raises(ConflictingFileOutcome) as refused:
        failure(batch, "u1")
    assert refused.value.reason == "CONFLICTING_FILE_OUTCOME"
    assert names(batch) == []  # nothing recorded
    assert batch.status == "open" and batch.failures == ()
    content(batch, "t2", "u2")  # the real second file gets the second slot
    assert names(batch) == ["SlotAssigned", "BatchCompleted"]
    assert batch.assignments == {"e1": "t1", "e2": "t2"}


def test_failure_for_a_file_whose_content_is_pending_is_refused() -> None:
    batch = Batch.start("b-1", T0)
    content(batch, "t1", "u1")
    with pytest.raises(ConflictingFileOutcome):
        failure(batch, "u1")
    assert names(batch) == ["ContentPended"]
    batch.register(["e1", "e2"], T0, 3600, "c-reg")
    assert names(batch) == ["BatchRegistered", "SlotAssigned"]
    assert batch.status == "open"


def test_failure_for_a_file_whose_content_was_excess_is_refused() -> None:
    batch = registered(["e1"])
    content(batch, "t1", "u1")
    content(batch, "t2", "u2")  # the batch closed with t1: excess BATCH_CLOSED
    assert names(batch) == ["SlotAssigned", "BatchCompleted", "ExcessContentProvisioned"]
    with pytest.raises(ConflictingFileOutcome):
        failure(batch, "u2")
    assert names(batch) == []


# ------------------------------------------------- a failure, then content


def test_content_for_a_file_that_failed_is_refused_and_fills_no_slot() -> None:
    batch = registered(["e1", "e2"])
    failure(batch, "u1")
    assert names(batch) == ["ValidationFailureRecorded"]
    with pytest.raises(ConflictingFileOutcome) as refused:
        content(batch, "t1", "u1")
    assert "failed validation" in str(refused.value)
    assert names(batch) == []
    assert batch.available_slots == ("e1", "e2")


def test_content_for_a_file_that_failed_before_registration_is_refused() -> None:
    batch = Batch.start("b-1", T0)
    failure(batch, "u1")
    with pytest.raises(ConflictingFileOutcome):
        content(batch, "t1", "u1")
    assert names(batch) == ["ValidationFailureRecorded"]
    assert batch.pending == ()
    batch.register(["e1", "e2"], T0, 3600, "c-reg")
    assert names(batch) == ["BatchRegistered"]  # 0 assigned + 1 failed < 2


# -------------------------------------------- one file, two storage ids


def test_the_same_file_under_a_second_storage_id_fills_no_second_slot() -> None:
    """The issue's second case: one file, two slots."""
    batch = registered(["e1", "e2"])
    content(batch, "t1", "u1")
    with pytest.raises(ConflictingFileOutcome) as refused:
        content(batch, "t1-again", "u1")
    assert "holds content 't1'" in str(refused.value)
    assert names(batch) == ["SlotAssigned"]
    assert batch.available_slots == ("e2",)


def test_the_same_file_under_a_second_storage_id_before_registration() -> None:
    batch = Batch.start("b-1", T0)
    content(batch, "t1", "u1")
    with pytest.raises(ConflictingFileOutcome):
        content(batch, "t1-again", "u1")
    batch.register(["e1", "e2"], T0, 3600, "c-reg")
    assert names(batch) == ["ContentPended", "BatchRegistered", "SlotAssigned"]
    assert batch.available_slots == ("e2",)


def test_a_duplicate_of_known_content_stays_a_no_op_not_a_conflict() -> None:
    batch = registered(["e1", "e2"])
    content(batch, "t1", "u1")
    content(batch, "t1", "u1")
    content(batch, "t1", "u-other")  # same storage id: the content is known, a duplicate
    failure(batch, "u9")
    failure(batch, "u9")
    assert names(batch) == ["SlotAssigned", "ValidationFailureRecorded", "BatchCompleted"]


# ------------------------------------------------------------ after close


def test_a_new_failure_after_close_changes_nothing_and_does_not_count() -> None:
    """The issue's third case: failures were recorded without bound after close."""
    batch = registered(["e1"])
    content(batch, "t1", "u1")
    assert names(batch) == ["SlotAssigned", "BatchCompleted"]
    version = batch.version
    for n in range(5):
        failure(batch, f"late-{n}")
    assert names(batch) == []
    assert batch.version == version and batch.failures == ()


def test_a_new_failure_after_a_timeout_changes_nothing() -> None:
    batch = registered(["e1", "e2"])
    batch.time_out(at(3600), "c-sweep")
    assert names(batch) == ["BatchCompleted"]
    failure(batch, "u1", at(3601))
    assert names(batch) == []


def test_a_contradicting_failure_after_close_is_still_a_conflict() -> None:
    batch = registered(["e1"])
    content(batch, "t1", "u1")
    batch.collect_events()
    with pytest.raises(ConflictingFileOutcome):
        failure(batch, "u1")


def test_content_released_by_expiry_no_longer_holds_its_file() -> None:
    """Expired content is not "held (pending, assigned or excess)": a later message
    for that file is handled as for any closed batch."""
    batch = Batch.start("b-1", T0)
    content(batch, "t1", "u1")
    batch.expire_pending(at(1800), 1800, "c-sweep")
    assert names(batch) == ["ContentPended", "PendingContentExpired"]
    failure(batch, "u1", at(1801))
    assert names(batch) == []  # closed: changes nothing, not a conflict
    content(batch, "t1-again", "u1", at(1802))
    assert names(batch) == ["ExcessContentProvisioned"]
    assert batch.excess == {"t1-again": "BATCH_CLOSED"}


# ---------------------------------------------------- through the service


def run(messages: list[Any]) -> tuple[list[str], list[tuple[str, str | None]]]:
    clock = ManualClock(T0)
    svc = BatchService(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=clock)
    outcomes = []
    for m in messages:
        clock.advance(1)
        result = svc.execute([m])[0]
        outcomes.append((result.outcome, result.reason))
    events = [type(e).__name__ for e in svc.events.get(Batch.create_id("b-1"))]
    svc.close()
    return events, outcomes


REG = RegisterBatch(batch_id="b-1", correlation_id="c-r", essay_ids=["e1", "e2"])
T1 = ProvisionContent(
    batch_id="b-1",
    correlation_id="c-t1",
    text_storage_id="t1",
    file_upload_id="u1",
    original_file_name="a.txt",
)
F1 = RecordValidationFailure(
    batch_id="b-1",
    correlation_id="c-f1",
    file_upload_id="u1",
    original_file_name="a.txt",
    error_code="EMPTY_CONTENT",
)
T2 = ProvisionContent(
    batch_id="b-1",
    correlation_id="c-t2",
    text_storage_id="t2",
    file_upload_id="u2",
    original_file_name="b.txt",
)


@pytest.mark.parametrize(
    "order",
    [
        [REG, T1, F1, T2],
        [REG, F1, T1, T2],
        [T1, F1, REG, T2],
        [F1, T1, REG, T2],
        [T1, REG, F1, T2],
    ],
    ids=["content-first", "failure-first", "both-early", "failure-early", "mixed"],
)
def test_every_order_gives_the_file_one_outcome_and_the_second_file_its_slot(
    order: list[Any],
) -> None:
    events, outcomes = run(order)
    f1_or_t1 = [outcomes[order.index(T1)], outcomes[order.index(F1)]]
    assert ("rejected", "CONFLICTING_FILE_OUTCOME") in f1_or_t1
    assert outcomes[order.index(T2)][0] == "recorded"
    assert events.count("BatchCompleted") == 1
    assert events[-1] == "BatchCompleted"
    # u2's content is never excess: the batch waited for it.
    assert "ExcessContentProvisioned" not in events
