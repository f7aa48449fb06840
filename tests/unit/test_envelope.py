"""The outbound envelope (CONTRACT §3): fields per event type, stable ids, headers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid5

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.batch import Batch
from projections.envelope import DATA_FIELDS, envelope_of, event_id_of, rfc3339, uuid5_text

T0 = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
SOURCE = "batch-slot-service"

CONTRACT_DATA = {  # CONTRACT §3, verbatim
    "BatchRegistered": {"batch_id", "essay_ids", "expected_count", "deadline"},
    "ContentPended": {"batch_id", "text_storage_id", "file_upload_id", "original_file_name"},
    "SlotAssigned": {
        "batch_id",
        "essay_id",
        "text_storage_id",
        "file_upload_id",
        "original_file_name",
    },
    "ExcessContentProvisioned": {
        "batch_id",
        "text_storage_id",
        "file_upload_id",
        "original_file_name",
        "reason",
    },
    "ValidationFailureRecorded": {"batch_id", "file_upload_id", "original_file_name", "error_code"},
    # CONTRACT §3: a completion too large for one message comes in parts, "each
    # saying which part of how many it is" (so does a large pending release).
    "BatchCompleted": {
        "batch_id",
        "outcome",
        "ready",
        "validation_failures",
        "missing_essay_ids",
        "part",
        "parts",
    },
    "PendingContentExpired": {"batch_id", "text_storage_ids", "part", "parts"},
}


def every_event_type() -> list[Any]:
    """One batch's history that produces every contract event type."""
    done = Batch.start("b-1", T0)
    done.provision_content("t0", "f0", "ö.txt", T0, "c-pend")
    done.register(["e1", "e2"], T0, 3600, "c-reg")
    done.record_validation_failure("f9", "bad.txt", "EMPTY_CONTENT", T0, "c-fail")
    done.provision_content("t1", "f1", "b.txt", T0, "c-late")  # closed -> excess
    timed = Batch.start("b-2", T0)
    timed.register(["e1", "e2"], T0, 3600, "c-reg2")
    timed.time_out(T0 + timedelta(hours=2), "c-sweep")
    expired = Batch.start("b-3", T0)
    expired.provision_content("t5", "f5", "c.txt", T0, "c-p3")
    expired.expire_pending(T0 + timedelta(days=2), 60, "c-exp")
    return [*done.collect_events(), *timed.collect_events(), *expired.collect_events()]


def decode(event: Any) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(envelope_of(event, SOURCE).value.decode("utf-8"))
    return value


def test_every_contract_event_type_is_covered() -> None:
    assert {type(e).__name__ for e in every_event_type()} == set(CONTRACT_DATA)
    assert {k: set(v) for k, v in DATA_FIELDS.items()} == CONTRACT_DATA


@pytest.mark.parametrize("event", every_event_type(), ids=lambda e: type(e).__name__)
def test_envelope_fields(event: Any) -> None:
    env = decode(event)
    assert set(env) == {
        "event_id",
        "event_type",
        "event_timestamp",
        "source_service",
        "correlation_id",
        "schema_version",
        "data",
    }
    assert env["event_type"] == type(event).__name__
    assert env["schema_version"] == 1
    assert env["source_service"] == SOURCE
    assert env["correlation_id"] == event.correlation_id
    assert env["event_id"] == str(uuid5(event.originator_id, str(event.originator_version)))
    assert set(env["data"]) == CONTRACT_DATA[env["event_type"]]
    assert datetime.fromisoformat(env["event_timestamp"]) == event.timestamp
    assert env["event_timestamp"].endswith("Z")


def test_data_values() -> None:
    by_type: dict[str, Any] = {}
    for e in every_event_type():
        by_type.setdefault(type(e).__name__, decode(e)["data"])  # the first of each type
    assert by_type["BatchRegistered"] == {
        "batch_id": "b-1",
        "essay_ids": ["e1", "e2"],
        "expected_count": 2,
        "deadline": rfc3339(T0 + timedelta(seconds=3600)),
    }
    assert by_type["SlotAssigned"] == {
        "batch_id": "b-1",
        "essay_id": "e1",
        "text_storage_id": "t0",
        "file_upload_id": "f0",
        "original_file_name": "ö.txt",
    }
    assert by_type["ExcessContentProvisioned"]["reason"] == "BATCH_CLOSED"
    assert by_type["ValidationFailureRecorded"]["error_code"] == "EMPTY_CONTENT"
    assert by_type["PendingContentExpired"] == {
        "batch_id": "b-3",
        "text_storage_ids": ["t5"],
        "part": 1,
        "parts": 1,
    }
    events = every_event_type()
    completed = [decode(e)["data"] for e in events if type(e).__name__ == "BatchCompleted"]
    assert completed[0] == {
        "batch_id": "b-1",
        "outcome": "complete",
        "ready": [{"essay_id": "e1", "text_storage_id": "t0"}],
        "validation_failures": [
            {"file_upload_id": "f9", "original_file_name": "bad.txt", "error_code": "EMPTY_CONTENT"}
        ],
        "missing_essay_ids": ["e2"],
        "part": 1,
        "parts": 1,
    }
    assert completed[1] == {
        "batch_id": "b-2",
        "outcome": "timed_out",
        "ready": [],
        "validation_failures": [],
        "missing_essay_ids": ["e1", "e2"],
        "part": 1,
        "parts": 1,
    }


def test_key_and_headers() -> None:
    event = every_event_type()[0]
    message = envelope_of(event, SOURCE)
    env = json.loads(message.value)
    assert message.key == b"b-1"
    assert message.headers == [
        ("event_id", env["event_id"].encode()),
        ("event_type", b"ContentPended"),
        ("correlation_id", b"c-pend"),
    ]
    assert message.event_id == env["event_id"]


def test_event_id_is_stable_and_unique() -> None:
    first, second = every_event_type(), every_event_type()
    ids = [envelope_of(e, SOURCE).event_id for e in first]
    assert ids == [envelope_of(e, SOURCE).event_id for e in second]  # same stream, same ids
    assert len(set(ids)) == len(ids)
    aggregate = Batch.create_id("b-1")
    assert event_id_of(aggregate, 1) == uuid5(aggregate, "1")
    assert isinstance(event_id_of(aggregate, 1), UUID)
    assert envelope_of(first[0], SOURCE).value == envelope_of(second[0], SOURCE).value
    assert ids == [str(event_id_of(e.originator_id, e.originator_version)) for e in first]


@given(namespace=st.uuids(), name=st.text(max_size=80))
def test_uuid5_text_is_the_standard_uuid5(namespace: UUID, name: str) -> None:
    assert uuid5_text(namespace, name) == str(uuid5(namespace, name))


def test_naive_timestamps_are_utc() -> None:
    assert rfc3339(datetime(2026, 1, 1)) == "2026-01-01T00:00:00Z"
