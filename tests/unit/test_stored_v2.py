"""Streams recorded before registrations kept their owner still load.

``tests/fixtures/v2_streams.jsonl`` was recorded by the release before
``BatchRegistered`` gained ``course_code`` and ``user_id`` (commit cabb212), exactly
as it wrote them: a completed batch (content before registration, a validation
failure) and an open one. A stored version 1 ``BatchRegistered`` is upcast with
neither (None); nothing is renamed, and the batches decide as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import StoredEvent

from application.commands import ProvisionContent, RegisterBatch
from application.service import BatchService
from domain import Batch
from projections.envelope import envelope_dict
from projections.huleedu import Completion, HuleEduTopics, MissingOwner, huleedu_messages
from tests.conftest import ManualClock

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "v2_streams.jsonl"


@pytest.fixture
def service() -> Any:
    svc = BatchService(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=ManualClock())
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    assert {r["kind"] for r in rows} == {"event"}
    assert all("course_code" not in r["state"] for r in rows)  # recorded without them
    svc.recorder.insert_events(
        [
            StoredEvent(
                originator_id=UUID(r["originator_id"]),
                originator_version=r["originator_version"],
                topic=r["topic"],
                state=r["state"].encode(),
            )
            for r in rows
        ]
    )
    yield svc
    svc.close()


def test_an_old_registration_loads_with_no_owner(service: Any) -> None:
    events = list(service.events.get(Batch.create_id("prev-done")))
    registered = next(e for e in events if type(e).__name__ == "BatchRegistered")
    assert (registered.course_code, registered.user_id) == (None, None)
    assert envelope_dict(registered, "svc")["data"]["essay_ids"] == ["e1", "e2", "e3"]
    batch = service.get_batch("prev-done")
    assert batch.status == "completed"
    assert batch.assignments == {"e1": "t1", "e2": "t2"}


def test_an_old_open_batch_goes_on_deciding(service: Any) -> None:
    cid = "7d0f4a52-3c5e-4b0e-9a51-2f1f0c6d8e01"
    again = service.register(
        RegisterBatch(batch_id="prev-open", correlation_id=cid, essay_ids=["x1", "x2"])
    )
    assert again.outcome == "noop"
    done = service.provision_content(
        ProvisionContent(
            batch_id="prev-open",
            correlation_id=cid,
            text_storage_id="s2",
            file_upload_id="w2",
            original_file_name="y.docx",
        )
    )
    assert done.outcome == "recorded"
    assert service.get_batch("prev-open").status == "completed"


def test_an_old_batch_is_not_announced_to_huleedu_without_an_owner(service: Any) -> None:
    events = list(service.events.get(Batch.create_id("prev-done")))
    parts = [e for e in events if type(e).__name__ == "BatchCompleted"]
    with pytest.raises(MissingOwner):
        huleedu_messages(parts[-1], HuleEduTopics(), "els", None, Completion(events[1], parts))
