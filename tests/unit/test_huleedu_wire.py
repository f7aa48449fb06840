"""HuleEdu's wire (CONTRACT §7), in memory: their real messages in, their models' events out.

The inbound messages are the committed fixtures made by HuleEdu's own models
(``tests/huleedu_wire.py``); what we would publish is validated against the
JSON Schemas of HuleEdu's outbound models. The same run through the real
broker and ``batchctl run`` is ``tests/e2e/test_huleedu_wire.py``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any
from uuid import UUID, uuid5

import jsonschema
import pytest

from application.commands import (
    ProvisionContent,
    RecordValidationFailure,
    RegisterBatch,
    TimeOutBatch,
)
from application.messages import InvalidMessage, parse_inbound
from application.service import BatchService
from domain import Batch
from projections.envelope import OutboundMessage, envelope_dict
from projections.huleedu import (
    COMPLETED,
    EXCESS,
    SLOT_ASSIGNED,
    Completion,
    HuleEduTopics,
    MissingOwner,
    huleedu_messages,
    needs_completion,
)
from tests.conftest import ManualClock
from tests.huleedu_wire import (
    KIND_OF_TOPIC,
    MODEL_OF_TOPIC,
    expected,
    scenario,
    validate,
    validate_outbound,
)

TOPICS = HuleEduTopics()


def _value(record_value: bytes, **changes: Any) -> bytes:
    """A fixture message with some ``data`` fields changed (None: removed)."""
    envelope = json.loads(record_value)
    for name, value in changes.items():
        if value is None:
            envelope["data"].pop(name, None)
        else:
            envelope["data"][name] = value
    return json.dumps(envelope).encode()


def first(kind: str) -> bytes:
    return next(r.value for r in scenario() if r.kind == kind)


def test_the_fixtures_are_valid_for_huleedus_own_models() -> None:
    # The fixture itself, against the schemas made from the same models: a check that
    # the committed files agree with each other (a regenerated half would fail here).
    for record in scenario():
        validate("EventEnvelope", record.envelope)
        assert record.envelope["event_type"] == record.topic


@pytest.mark.parametrize("profile", ["native", "huleedu"])
def test_every_huleedu_message_parses_on_every_profile(profile: str) -> None:
    for record in scenario():
        parsed = parse_inbound(record.kind, record.value, profile)  # type: ignore[arg-type]
        data = record.envelope["data"]
        assert parsed.command.batch_id == data["entity_id"]
        assert parsed.command.correlation_id == record.envelope["correlation_id"]
        # HuleEdu's fields are known: nothing counted as an unknown field.
        assert parsed.ignored_envelope == () and parsed.ignored_data == ()
        metadata = record.envelope.get("metadata") or {}
        assert parsed.traceparent == metadata.get("traceparent")
        if isinstance(parsed.command, RegisterBatch):
            assert parsed.command.course_code == data["course_code"]
            assert parsed.command.user_id == data["user_id"]
            assert parsed.command.essay_ids == data["essay_ids"]
        elif isinstance(parsed.command, RecordValidationFailure):
            assert parsed.command.error_code == data["validation_error_code"]
        else:
            assert isinstance(parsed.command, ProvisionContent)
            assert parsed.command.text_storage_id == data["text_storage_id"]


@pytest.mark.parametrize(
    ("kind", "changes", "says"),
    [
        ("registered", {"batch_id": "another-batch"}, "different batches"),
        ("failed", {"error_code": "EMPTY_CONTENT"}, "differ"),
        ("failed", {"validation_error_code": None}, "error_code"),
        ("provisioned", {"entity_id": None}, "batch_id"),
        ("registered", {"expected_essay_count": 99}, "expected_essay_count"),
    ],
)
def test_contradicting_or_missing_fields_are_invalid_data(
    kind: str, changes: dict[str, Any], says: str
) -> None:
    with pytest.raises(InvalidMessage) as raised:
        parse_inbound(kind, _value(first(kind), **changes))  # type: ignore[arg-type]
    assert raised.value.reason == "INVALID_DATA"
    assert says in raised.value.detail


@pytest.mark.parametrize(
    "changes", [{"course_code": None}, {"course_code": "MATH1"}, {"user_id": None}]
)
def test_the_huleedu_profile_refuses_a_registration_it_could_not_announce(
    changes: dict[str, Any],
) -> None:
    value = _value(first("registered"), **changes)
    assert isinstance(parse_inbound("registered", value).command, RegisterBatch)  # native
    with pytest.raises(InvalidMessage) as raised:
        parse_inbound("registered", value, "huleedu")
    assert raised.value.reason == "INVALID_DATA"


def test_a_native_event_type_is_still_read_and_a_foreign_one_refused() -> None:
    envelope = json.loads(first("provisioned"))
    envelope["event_type"] = "EssayContentProvisioned"
    assert parse_inbound("provisioned", json.dumps(envelope).encode()).command.batch_id
    envelope["event_type"] = "huleedu.batch.essays.registered.v1"  # another topic's name
    with pytest.raises(InvalidMessage) as raised:
        parse_inbound("provisioned", json.dumps(envelope).encode())
    assert raised.value.reason == "UNEXPECTED_EVENT_TYPE"


# ------------------------------------------------------- the scenario, decided


@pytest.fixture(scope="module")
def decided() -> Any:
    """The whole scenario decided by the service (in memory), then the deadline passed."""
    clock = ManualClock()
    svc = BatchService(
        env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=clock, timeout_seconds=60
    )
    results = [
        svc.execute([parse_inbound(r.kind, r.value, "huleedu").command])[0]  # type: ignore[arg-type]
        for r in scenario()
    ]
    clock.advance(61)
    for batch in expected().values():
        svc.time_out(TimeOutBatch(batch_id=batch["batch_id"], correlation_id="sweep"))
    yield svc, results
    svc.close()


def test_nothing_valid_is_rejected_and_every_batch_ends_as_expected(decided: Any) -> None:
    svc, results = decided
    assert [r.outcome for r in results if r.outcome == "rejected"] == []
    for label, want in expected().items():
        batch = svc.get_batch(want["batch_id"])
        assert batch.status == {"complete": "completed", "timed_out": "timed_out"}[want["outcome"]]
        assert batch.assignments == want["slot_assignments"], label
        assert len(batch.failures) == want["failed"], label
        assert batch.excess == {e["text_storage_id"]: e["reason"] for e in want["excess"]}


def _messages(svc: BatchService, source: str) -> Iterator[tuple[Any, str, OutboundMessage]]:
    """Every stored event of the scenario's batches, with each message the outbox would
    publish for it on HuleEdu's topics (and that message's topic)."""
    for want in expected().values():
        events = list(svc.events.get(Batch.create_id(want["batch_id"])))
        registration = next(e for e in events if type(e).__name__ == "BatchRegistered")
        parts = [e for e in events if type(e).__name__ == "BatchCompleted"]
        for event in events:
            completion = Completion(registration, parts) if needs_completion(event) else None
            for m in huleedu_messages(event, TOPICS, source, None, completion):
                assert m.topic is not None
                yield event, m.topic, m


def _published(svc: BatchService) -> list[tuple[str, dict[str, Any]]]:
    """What the outbox would publish on HuleEdu's topics for every stored event."""
    return [
        (topic, validate_outbound(MODEL_OF_TOPIC[topic], m.value))
        for _, topic, m in _messages(svc, "essay-lifecycle-service")
    ]


def test_every_outbound_event_validates_against_huleedus_models(decided: Any) -> None:
    svc, _ = decided
    published = _published(svc)
    counts = Counter(topic for topic, _ in published)
    want = expected().values()
    assert counts[TOPICS.completed] == len(want)  # exactly one per batch, timed out too
    assert counts[TOPICS.slot_assigned] == sum(b["assigned"] for b in want)
    assert counts[TOPICS.excess] == sum(len(b["excess"]) for b in want)
    assert set(counts) == set(MODEL_OF_TOPIC)


def test_the_completion_is_what_bos_reads(decided: Any) -> None:
    svc, _ = decided
    completions = {e["data"]["batch_id"]: e for t, e in _published(svc) if t == TOPICS.completed}
    for want in expected().values():
        envelope = completions[want["batch_id"]]
        data = envelope["data"]
        ready = [{"essay_id": k, "text_storage_id": v} for k, v in want["slot_assignments"].items()]
        assert data["essays_for_processing"] == ready
        assert data["provisioned_count"] == len(ready) == want["assigned"]
        assert data["expected_count"] == len(want["essay_ids"])
        assert (data["course_code"], data["user_id"]) == (want["course_code"], want["user_id"])
        assert envelope["correlation_id"] == data["correlation_id"]
        assert data["correlation_id"] == want["registration_correlation_id"]
        assert envelope["event_type"] == TOPICS.completed
        assert envelope["source_service"] == "essay-lifecycle-service"


def test_a_republish_is_byte_identical(decided: Any) -> None:
    svc, _ = decided
    assert _published(svc) == _published(svc)
    ids = [e["event_id"] for _, e in _published(svc)]
    assert len(ids) == len(set(ids))


def test_each_event_id_is_the_uuid5_of_the_stored_event_and_the_huleedu_event(
    decided: Any,
) -> None:
    """The ids are a stored contract: a republish by any release carries the same."""
    svc, _ = decided
    names = {
        TOPICS.completed: COMPLETED,
        TOPICS.slot_assigned: SLOT_ASSIGNED,
        TOPICS.excess: EXCESS,
    }
    checked = 0
    for event, topic, m in _messages(svc, "s"):
        name = f"{event.originator_version}:{names[topic]}"
        assert m.event_id == str(uuid5(event.originator_id, name))
        checked += 1
    assert checked > len(expected())


def test_the_registration_keeps_the_owner_and_the_native_envelope_is_unchanged(
    decided: Any,
) -> None:
    svc, _ = decided
    want = expected()["A"]
    events = list(svc.events.get(Batch.create_id(want["batch_id"])))
    registered = next(e for e in events if type(e).__name__ == "BatchRegistered")
    assert (registered.course_code, registered.user_id) == (want["course_code"], want["user_id"])
    data = envelope_dict(registered, "svc")["data"]
    assert set(data) == {"batch_id", "essay_ids", "expected_count", "deadline"}


def test_a_completion_in_parts_is_announced_once_with_every_part() -> None:
    clock = ManualClock()
    svc = BatchService(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=clock)
    # 128-character ids: 4,000 ready essays take more than one part (HuleEdu's event has
    # no parts: it carries them all, over 1 MiB here; real ids are UUIDs, 5,000 fit).
    essay_ids = [f"e{i:04d}".ljust(128, "x") for i in range(4000)]
    svc.register(
        RegisterBatch(
            batch_id="big",
            correlation_id=str(UUID(int=7)),
            essay_ids=essay_ids,
            course_code="SV1",
            user_id="u",
        )
    )
    svc.execute(
        [
            ProvisionContent(
                batch_id="big",
                correlation_id=str(UUID(int=8)),
                text_storage_id=f"t{i:04d}".ljust(128, "y"),
                file_upload_id=f"f{i}",
                original_file_name="a.txt",
            )
            for i in range(4000)
        ]
    )
    events = list(svc.events.get(Batch.create_id("big")))
    parts = [e for e in events if type(e).__name__ == "BatchCompleted"]
    assert len(parts) > 1
    registration = events[0]
    announced = [
        m
        for e in parts
        for m in huleedu_messages(
            e, TOPICS, "els", None, Completion(registration, parts) if needs_completion(e) else None
        )
    ]
    assert len(announced) == 1
    data = validate_outbound("BatchContentProvisioningCompletedV1", announced[0].value)["data"]
    assert data["provisioned_count"] == 4000 == len(data["essays_for_processing"])
    assert data["correlation_id"] == str(UUID(int=7))
    svc.close()


def test_a_batch_registered_without_an_owner_is_not_announced() -> None:
    svc = BatchService(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=ManualClock())
    svc.register(RegisterBatch(batch_id="b", correlation_id="c", essay_ids=["e"]))
    svc.provision_content(
        ProvisionContent(
            batch_id="b",
            correlation_id="c",
            text_storage_id="t",
            file_upload_id="f",
            original_file_name="n",
        )
    )
    events = list(svc.events.get(Batch.create_id("b")))
    done = events[-1]
    with pytest.raises(MissingOwner):
        huleedu_messages(done, TOPICS, "els", None, Completion(events[0], [done]))
    # A slot assignment still goes out, its non-UUID correlation id made a stable UUID.
    (slot,) = huleedu_messages(events[1], TOPICS, "els")
    data = validate_outbound("EssaySlotAssignedV1", slot.value)["data"]
    assert UUID(data["correlation_id"])
    svc.close()


def test_the_schemas_refuse_what_huleedu_would_refuse() -> None:
    # The validator is not a rubber stamp: an invented course code is refused.
    data = {
        "batch_id": "b",
        "provisioned_count": 0,
        "expected_count": 1,
        "course_code": "MATH1",
        "user_id": "u",
        "essays_for_processing": [],
    }
    with pytest.raises(jsonschema.ValidationError):
        validate("BatchContentProvisioningCompletedV1", data)
    validate("BatchContentProvisioningCompletedV1", {**data, "course_code": "ENG5"})


# ------------------------------------------- our published documents of the profile


def test_our_huleedu_documents_are_committed_and_describe_what_we_publish(decided: Any) -> None:
    from application.schemas import HULEEDU_DIR, HULEEDU_OUTBOUND_MODELS
    from tests.unit.test_schemas import DOCS, refs, schemas_script

    script = schemas_script()
    assert script.drifted(DOCS, script.published_huleedu_documents, HULEEDU_DIR) == []
    svc, _ = decided
    name_of = {topic: name for topic, name in MODEL_OF_TOPIC.items()}
    published = _published(svc)
    assert {name_of[t] for t, _ in published} == set(HULEEDU_OUTBOUND_MODELS)
    for topic, envelope in published:
        model = HULEEDU_OUTBOUND_MODELS[name_of[topic]]
        model.model_validate_json(json.dumps(envelope))
        assert set(envelope) == set(model.model_fields)
        assert set(envelope["data"]) == set(model.model_fields["data"].annotation.model_fields)  # type: ignore[union-attr]
    document = json.loads((DOCS / HULEEDU_DIR / "asyncapi.json").read_text())
    addresses = {c["address"] for c in document["channels"].values()}
    assert set(MODEL_OF_TOPIC) | set(KIND_OF_TOPIC) <= addresses
    for ref in refs(document):
        if not ref.startswith("#"):
            assert (DOCS / HULEEDU_DIR / ref).resolve().is_file(), ref


def test_the_audit_line_of_a_registration_names_its_owner() -> None:
    from infrastructure.cli.events import key_facts

    data = {"essay_ids": ["e1"], "deadline": "2026-01-02T00:00:00Z"}
    assert "course" not in key_facts("BatchRegistered", {**data, "course_code": None})
    line = key_facts("BatchRegistered", {**data, "course_code": "SV2", "user_id": "u-9"})
    assert line.endswith("; course SV2, user u-9")
