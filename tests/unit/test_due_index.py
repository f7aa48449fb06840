"""The due-batch index's mapping (projections/due_index.py): pure, no servers."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given

from domain import Batch, BatchRejection
from projections.due_index import (
    NO_CHANGE,
    DueChange,
    DueEntry,
    due_change_of,
    due_entry_of,
    fold_due,
)
from tests.strategies import Tick, workloads
from tests.unit.test_slot_view import decide, registered

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@given(workloads())
def test_folding_the_changes_equals_the_aggregates_entry(steps: list[Any]) -> None:
    now, batches, entries = T0, dict[str, Batch](), dict[str, DueEntry]()
    for step in steps:
        if isinstance(step, Tick):
            now += timedelta(seconds=step.seconds)
            continue
        batch = batches.setdefault(step.batch_id, Batch.start(step.batch_id, now))
        with contextlib.suppress(BatchRejection):
            decide(batch, step, now)
        for event in batch.collect_events():
            entries[step.batch_id] = fold_due(
                entries.get(step.batch_id, DueEntry()), due_change_of(event)
            )
        if batch.version:
            assert entries[step.batch_id] == due_entry_of(batch)


def test_registration_sets_the_deadline_and_leaves_the_pending_list() -> None:
    events = registered(["e1", "e2"], pending=1).collect_events()
    assert due_change_of(events[0]) == DueChange(pending_since=T0)
    assert due_change_of(events[1]) == DueChange(
        set_deadline=T0 + timedelta(seconds=60), clear_pending=True
    )
    assert due_change_of(events[2]) is NO_CHANGE  # SlotAssigned


def test_completion_and_expiry_leave_the_index() -> None:
    done = registered(["e1"], pending=1).collect_events()[-1]
    assert due_change_of(done) == DueChange(clear_deadline=True)
    old = Batch.start("b", T0)
    old.provision_content("t", "f", "x", T0, "c")
    old.expire_pending(T0 + timedelta(seconds=10), 10, "c")
    assert due_change_of(old.collect_events()[-1]) == DueChange(clear_pending=True)
    assert due_entry_of(old) == DueEntry()


def test_the_oldest_pending_content_counts() -> None:
    first = fold_due(DueEntry(), DueChange(pending_since=T0))
    assert fold_due(first, DueChange(pending_since=T0 + timedelta(seconds=5))) == first
    waiting = Batch.start("b", T0)
    waiting.provision_content("t", "f", "x", T0 + timedelta(seconds=5), "c")
    waiting.provision_content("u", "g", "x", T0 + timedelta(seconds=9), "c")
    assert due_entry_of(waiting) == DueEntry(pending_since=T0 + timedelta(seconds=5))
