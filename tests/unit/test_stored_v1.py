"""Streams recorded before "One file, one outcome" and completion parts still load.

``tests/fixtures/v1_streams.jsonl`` was recorded by the release before the
change (commit da742a8): the stored events and one snapshot, exactly as that
release wrote them. The change is in deciding, not in applying: nothing is
renamed, a version 1 ``BatchCompleted`` / ``PendingContentExpired`` is upcast
to one part of one, and a version 1 snapshot (which cannot say which file
placed content came from) is passed over for a full replay of the stream.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from application.commands import ProvisionContent, RecordValidationFailure
from application.service import BatchService
from domain import Batch, ConflictingFileOutcome
from projections.envelope import envelope_dict
from tests.conftest import ManualClock

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "v1_streams.jsonl"


@pytest.fixture
def service() -> Any:
    from eventsourcing.persistence import StoredEvent

    svc = BatchService(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=ManualClock())
    events, snapshots = [], []
    for line in FIXTURE.read_text().splitlines():
        row = json.loads(line)
        stored = StoredEvent(
            originator_id=UUID(row["originator_id"]),
            originator_version=row["originator_version"],
            topic=row["topic"],
            state=row["state"].encode(),
        )
        (snapshots if row["kind"] == "snapshot" else events).append(stored)
    svc.recorder.insert_events(events)
    assert svc.snapshots is not None and snapshots
    svc.snapshots.recorder.insert_events(snapshots)
    yield svc
    svc.close()


def test_a_v1_stream_with_a_file_counted_twice_loads_as_it_was_decided(service: Any) -> None:
    batch = service.get_batch("old-double")
    assert batch.status == "completed"  # as recorded then: history is not rewritten
    assert batch.assignments == {"e1": "t1"}
    assert batch.failures == ("u1",)
    assert batch.outcome_of_file("u1") == "t1"  # the first recorded outcome
    assert batch.excess == {"t2": "BATCH_CLOSED"}


def test_a_v1_completion_is_one_part_of_one_on_the_wire(service: Any) -> None:
    events = list(service.events.get(Batch.create_id("old-double")))
    (done,) = [e for e in events if type(e).__name__ == "BatchCompleted"]
    data = envelope_dict(done, "svc")["data"]
    assert (data["part"], data["parts"]) == (1, 1)
    assert data["ready"] == [{"essay_id": "e1", "text_storage_id": "t1"}]
    expired = [
        e
        for e in service.events.get(Batch.create_id("old-expired"))
        if type(e).__name__ == "PendingContentExpired"
    ]
    assert [(e.part, e.parts, e.text_storage_ids) for e in expired] == [(1, 1, ["p1"])]


def test_a_v1_expired_batch_released_its_files(service: Any) -> None:
    batch = service.get_batch("old-expired")
    assert batch.status == "expired"
    assert batch.outcome_of_file("v1") is None


def test_a_v1_snapshot_is_passed_over_for_a_full_replay(service: Any) -> None:
    snapshots = list(service.snapshots.get(Batch.create_id("old-big")))
    assert [s.originator_version for s in snapshots] == [100]
    batch = service.get_batch("old-big")
    assert batch.version == 121 and len(batch.assignments) == 120
    # The file map came from the events (a v1 snapshot has none): u5 holds t5.
    assert batch.outcome_of_file("u5") == "t5"
    result = service.execute(
        [
            ProvisionContent(
                batch_id="old-big",
                correlation_id="c",
                text_storage_id="t5-again",
                file_upload_id="u5",
                original_file_name="x",
            ),
            RecordValidationFailure(
                batch_id="old-big",
                correlation_id="c",
                file_upload_id="u6",
                original_file_name="x",
                error_code="E",
            ),
        ]
    )
    assert [(r.outcome, r.reason) for r in result] == [
        ("rejected", ConflictingFileOutcome.reason),
        ("rejected", ConflictingFileOutcome.reason),
    ]
