"""The slot-count view's pure mapping: folding each event's change over a
stream equals the read model derived from the aggregate, at every step."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given

from application.commands import (
    AnyCommand,
    ExpirePending,
    ProvisionContent,
    RecordValidationFailure,
    RegisterBatch,
    TimeOutBatch,
)
from domain import Batch, BatchRejection
from infrastructure.redis.keys import assignments_key, available_slots_key, summary_key
from projections.slot_view import (
    Change,
    ReadModel,
    UnknownEvent,
    VersionGap,
    change_of,
    fold,
    index_entries_of,
    read_model_of,
)
from tests.strategies import PENDING_TTL_SECONDS, TIMEOUT_SECONDS, Tick, workloads

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def decide(batch: Batch, command: AnyCommand, now: datetime) -> None:
    cid = command.correlation_id
    match command:
        case RegisterBatch():
            batch.register(list(command.essay_ids), now, TIMEOUT_SECONDS, cid)
        case ProvisionContent():
            batch.provision_content(command.text_storage_id, command.file_upload_id, "f", now, cid)
        case RecordValidationFailure():
            batch.record_validation_failure(command.file_upload_id, "f", "E", now, cid)
        case TimeOutBatch():
            batch.time_out(now, cid)
        case ExpirePending():
            batch.expire_pending(now, PENDING_TTL_SECONDS, cid)


@given(workloads())
def test_folding_the_changes_equals_the_aggregates_read_model(steps: list[Any]) -> None:
    now, batches, models = T0, dict[str, Batch](), dict[str, ReadModel]()
    for step in steps:
        if isinstance(step, Tick):
            now += timedelta(seconds=step.seconds)
            continue
        batch = batches.setdefault(step.batch_id, Batch.start(step.batch_id, now))
        with contextlib.suppress(BatchRejection):
            decide(batch, step, now)
        for event in batch.collect_events():
            models[step.batch_id] = fold(
                models.get(step.batch_id, ReadModel()), change_of(event), event.originator_version
            )
        if batch.version:
            assert models[step.batch_id] == read_model_of(batch)
            summary = models[step.batch_id].summary
            if summary["status"] != "awaiting_registration":
                assert int(summary["assigned"]) + int(summary["available"]) == batch.expected


def registered(essay_ids: list[str], pending: int = 0) -> Batch:
    batch = Batch.start("b", T0)
    for i in range(pending):
        batch.provision_content(f"t{i}", f"f{i}", "x", T0, "c")
    batch.register(essay_ids, T0, 60, "c")
    return batch


def test_each_event_type_maps_to_its_change() -> None:
    batch = registered(["e1", "e2"], pending=3)
    kinds = [type(e).__name__ for e in batch.collect_events()]
    assert kinds[:4] == ["ContentPended"] * 3 + ["BatchRegistered"]
    assert kinds[4:] == [
        "SlotAssigned",
        "SlotAssigned",
        "ExcessContentProvisioned",
        "BatchCompleted",
    ]
    events = registered(["e1", "e2"], pending=3).collect_events()
    assert change_of(events[0]).incr_fields == {"pending": 1}
    assert change_of(events[0]).index_nx == {"pending": repr(T0.timestamp())}
    reg = change_of(events[3])
    assert reg.set_fields == {"status": "open", "expected": "2", "available": "2"}
    assert reg.add_slots == ("e1", "e2") and reg.unindex == ("pending",)
    assert reg.index == {"deadlines": repr((T0 + timedelta(seconds=60)).timestamp())}
    assign = change_of(events[4])
    assert assign.assign == {"e1": "t0"} and assign.remove_slots == ("e1",)
    assert assign.incr_fields == {"assigned": 1, "available": -1} and assign.drain_pending
    assert change_of(events[6]) == Change(incr_fields={"excess": 1}, drain_pending=True)


def test_completion_timeout_and_expiry_leave_the_indexes() -> None:
    done = registered(["e1"], pending=1).collect_events()[-1]
    assert change_of(done).set_fields == {"status": "completed"}
    assert change_of(done).unindex == ("deadlines",)
    late = registered(["e1"])
    late.time_out(T0 + timedelta(seconds=61), "c")
    assert change_of(late.collect_events()[-1]).set_fields == {"status": "timed_out"}
    old = Batch.start("b", T0)
    old.provision_content("t", "f", "x", T0, "c")
    old.expire_pending(T0 + timedelta(seconds=10), 10, "c")
    expired = change_of(old.collect_events()[-1])
    assert expired.set_fields == {"status": "expired", "pending": "0"}
    assert expired.unindex == ("pending",)
    assert index_entries_of(old) == {}


def test_index_entries_of_open_and_unregistered_batches() -> None:
    assert index_entries_of(registered(["e1", "e2"])) == {
        "deadlines": repr((T0 + timedelta(seconds=60)).timestamp())
    }
    waiting = Batch.start("b", T0)
    waiting.provision_content("t", "f", "x", T0 + timedelta(seconds=5), "c")
    assert index_entries_of(waiting) == {"pending": repr((T0 + timedelta(seconds=5)).timestamp())}


def test_fold_ignores_a_replayed_event_and_refuses_a_gap() -> None:
    events = registered(["e1", "e2"]).collect_events()
    model = fold(ReadModel(), change_of(events[0]), 1)
    assert fold(model, change_of(events[0]), 1) is model
    with pytest.raises(VersionGap):
        fold(ReadModel(), change_of(events[0]), 2)


def test_unknown_event_types_are_refused() -> None:
    class Renamed:
        batch_id = "b"

    with pytest.raises(UnknownEvent):
        change_of(Renamed())


def test_change_json_has_only_the_non_empty_parts() -> None:
    change = Change(incr_fields={"failed": 1})
    assert json.loads(change.to_json()) == {"incr_fields": {"failed": 1}}


def test_keys_follow_the_contracts_hash_tag_layout() -> None:
    assert summary_key("", "b-1") == "batch:{b-1}:summary"
    assert available_slots_key("", "b-1") == "batch:{b-1}:available_slots"
    assert assignments_key("p:", "b.1") == "p:batch:{b.1}:assignments"
