"""CONTRACT §3: every outbound value is at most 1 MiB, also in the worst case.

"A completion whose lists do not fit is published as several BatchCompleted
parts under the same key, in order, each saying which part of how many it is,
each with its own stable event_id; together they carry the complete lists,
and they are recorded in the same append (completion stays exactly once per
batch)." The same holds here for a large release of pending content.

Worst cases: 5,000 slots of 128-character ids, thousands of failures whose
255-character names are characters that JSON escapes to six bytes each.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from application.commands import ProvisionContent, RegisterBatch
from application.service import BatchService
from domain import Batch
from domain.batch import split_lists
from projections.envelope import envelope_of
from tests.conftest import ManualClock

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MIB = 1024 * 1024
SLOTS = 5000
WORST_NAME = "\u0001" * 255  # "\u0001" in JSON: six bytes a character
SOURCE = "batch-slot-service"


def ident(prefix: str, n: int) -> str:
    """A 128-character identifier (the contract's longest)."""
    return f"{prefix}{n}-".ljust(128, "x")


def envelopes(events: list[Any]) -> list[dict[str, Any]]:
    out = []
    for event in events:
        message = envelope_of(event, SOURCE)
        assert len(message.value) <= MIB, (type(event).__name__, len(message.value))
        out.append(json.loads(message.value))
    return out


def check_parts(parts: list[dict[str, Any]], event_type: str) -> None:
    assert [p["event_type"] for p in parts] == [event_type] * len(parts)
    assert [(p["data"]["part"], p["data"]["parts"]) for p in parts] == [
        (n, len(parts)) for n in range(1, len(parts) + 1)
    ]
    assert len({p["event_id"] for p in parts}) == len(parts)
    assert len({p["data"]["batch_id"] for p in parts}) == 1


def joined(parts: list[dict[str, Any]], name: str) -> list[Any]:
    return [item for p in parts for item in p["data"][name]]


def test_a_full_batch_of_the_longest_ids_completes_in_parts_that_each_fit() -> None:
    slots = [ident("e", i) for i in range(SLOTS)]
    batch = Batch.start(ident("b", 0), T0)
    batch.register(slots, T0, 3600, "c-reg")
    for i in range(SLOTS):
        batch.provision_content(ident("t", i), ident("f", i), "n.txt", T0, "c")
    events = list(batch.collect_events())
    # The completion is recorded with the content that completed it: one append.
    kinds = [type(e).__name__ for e in events]
    first = kinds.index("BatchCompleted")
    assert kinds[first - 1] == "SlotAssigned" and set(kinds[first:]) == {"BatchCompleted"}
    parts = envelopes(events)[first:]
    assert len(parts) >= 2  # ~1.4 MiB of lists: did not fit one message
    check_parts(parts, "BatchCompleted")
    assert joined(parts, "ready") == [
        {"essay_id": ident("e", i), "text_storage_id": ident("t", i)} for i in range(SLOTS)
    ]
    assert joined(parts, "missing_essay_ids") == []
    assert {p["data"]["outcome"] for p in parts} == {"complete"}
    assert batch.status == "completed"


def test_thousands_of_failures_with_the_worst_names_time_out_in_parts_that_fit() -> None:
    batch = Batch.start(ident("b", 1), T0)
    failures = 3000
    for i in range(failures):  # before registration: they all count, and all are listed
        batch.record_validation_failure(ident("f", i), WORST_NAME, ident("E", i), T0, "c")
    batch.register([ident("e", i) for i in range(SLOTS)], T0, 3600, "c-reg")
    batch.time_out(T0 + timedelta(seconds=3600), "c-sweep")
    events = list(batch.collect_events())
    done = [e for e in events if type(e).__name__ == "BatchCompleted"]
    parts = envelopes(done)
    assert len(parts) >= 3  # ~4 MiB of failures alone
    check_parts(parts, "BatchCompleted")
    got = joined(parts, "validation_failures")
    assert [f["file_upload_id"] for f in got] == [ident("f", i) for i in range(failures)]
    assert {f["original_file_name"] for f in got} == {WORST_NAME}
    assert joined(parts, "missing_essay_ids") == [ident("e", i) for i in range(SLOTS)]
    assert {p["data"]["outcome"] for p in parts} == {"timed_out"}


def test_a_large_release_of_pending_content_comes_in_parts_that_fit() -> None:
    batch = Batch.start(ident("b", 2), T0)
    pending = 12_000
    for i in range(pending):
        batch.provision_content(ident("t", i), ident("f", i), WORST_NAME, T0, "c")
    batch.expire_pending(T0 + timedelta(seconds=60), 60, "c-sweep")
    events = [e for e in batch.collect_events() if type(e).__name__ == "PendingContentExpired"]
    parts = envelopes(events)
    assert len(parts) >= 2
    check_parts(parts, "PendingContentExpired")
    assert joined(parts, "text_storage_ids") == [ident("t", i) for i in range(pending)]
    assert batch.status == "expired"


def test_every_other_event_of_the_worst_case_fits_one_message() -> None:
    batch = Batch.start(ident("b", 3), T0)
    batch.provision_content(ident("t", 0), ident("f", 0), WORST_NAME, T0, ident("c", 0))
    batch.record_validation_failure(ident("f", 1), WORST_NAME, ident("E", 1), T0, ident("c", 1))
    batch.register([ident("e", i) for i in range(SLOTS)], T0, 3600, ident("c", 2))
    batch.provision_content(ident("t", 2), ident("f", 2), WORST_NAME, T0, ident("c", 3))
    events = list(batch.collect_events())
    assert [type(e).__name__ for e in events] == [
        "ContentPended",
        "ValidationFailureRecorded",
        "BatchRegistered",
        "SlotAssigned",
        "SlotAssigned",
    ]
    sizes = [len(envelope_of(e, SOURCE).value) for e in events]
    assert max(sizes) <= MIB, sizes
    assert sizes[2] > 600_000  # the registration of 5,000 longest ids: large, and it fits


def test_a_small_completion_is_one_part_of_one() -> None:
    batch = Batch.start("b-small", T0)
    batch.register(["e1"], T0, 3600, "c")
    batch.provision_content("t1", "f1", "a.txt", T0, "c")
    (done,) = [e for e in batch.collect_events() if type(e).__name__ == "BatchCompleted"]
    assert (done.part, done.parts) == (1, 1)


def test_parts_are_stored_in_the_same_append_and_reload_as_one_closed_batch() -> None:
    clock = ManualClock(T0)
    svc = BatchService(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=clock)
    slots = [ident("e", i) for i in range(SLOTS)]
    svc.execute([RegisterBatch(batch_id="big", correlation_id="c", essay_ids=slots)])
    contents = [
        ProvisionContent(
            batch_id="big",
            correlation_id="c",
            text_storage_id=ident("t", i),
            file_upload_id=ident("f", i),
            original_file_name="n.txt",
        )
        for i in range(SLOTS)
    ]
    results = svc.execute(contents[:-1])
    assert {r.outcome for r in results} == {"recorded"}
    (last,) = svc.execute(contents[-1:])
    assert last.outcome == "recorded" and last.events >= 3  # SlotAssigned + >= 2 parts
    stored = list(svc.events.get(Batch.create_id("big")))
    assert [type(e).__name__ for e in stored[-(last.events - 1) :]] == ["BatchCompleted"] * (
        last.events - 1
    )
    reloaded = svc.get_batch("big")  # from the store, not the service's cache
    assert reloaded is not None and reloaded.status == "completed"
    assert len(reloaded.assignments) == SLOTS
    svc.close()


# ------------------------------------------------------------- split_lists


def test_split_lists_keeps_order_and_budget() -> None:
    items = [f"item-{i}" for i in range(100)]
    parts = split_lists({"a": items[:60], "b": items[60:]}, budget=100)
    assert [x for p in parts for x in p["a"]] == items[:60]
    assert [x for p in parts for x in p["b"]] == items[60:]
    for p in parts:
        size = sum(len(json.dumps(x)) + 1 for name in p for x in p[name])
        assert size <= 100
    assert all(set(p) == {"a", "b"} for p in parts)


@pytest.mark.parametrize("lists", [{"a": []}, {"a": [], "b": []}])
def test_split_lists_of_nothing_is_one_empty_part(lists: dict[str, list[Any]]) -> None:
    assert split_lists(lists) == [{name: [] for name in lists}]


def test_an_item_larger_than_the_budget_gets_a_part_of_its_own() -> None:
    parts = split_lists({"a": ["x", "y" * 50, "z"]}, budget=10)
    assert parts == [{"a": ["x"]}, {"a": ["y" * 50]}, {"a": ["z"]}]
