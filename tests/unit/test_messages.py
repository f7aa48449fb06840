"""The tolerant reader (CONTRACT §3): unknown fields are ignored and named; known
fields with a wrong type or value, and an unknown schema_version, are refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client import REGISTRY

from application.commands import ProvisionContent, RecordValidationFailure, RegisterBatch
from application.messages import InvalidMessage, TopicKind, parse_inbound, parse_message
from infrastructure.kafka.inbound import parse_counted
from tests.support.scenario import envelope

DATA: dict[TopicKind, dict[str, Any]] = {
    "registered": {"batch_id": "b1", "essay_ids": ["e1", "e2"], "expected_essay_count": 2},
    "provisioned": {
        "batch_id": "b1",
        "text_storage_id": "t1",
        "file_upload_id": "f1",
        "original_file_name": "essay.docx",
    },
    "failed": {
        "batch_id": "b1",
        "file_upload_id": "f1",
        "original_file_name": "broken.pdf",
        "error_code": "EMPTY_CONTENT",
    },
}
EXPECTED = {
    "registered": RegisterBatch(batch_id="b1", correlation_id="c", essay_ids=["e1", "e2"]),
    "provisioned": ProvisionContent(
        batch_id="b1",
        correlation_id="c",
        text_storage_id="t1",
        file_upload_id="f1",
        original_file_name="essay.docx",
    ),
    "failed": RecordValidationFailure(
        batch_id="b1",
        correlation_id="c",
        file_upload_id="f1",
        original_file_name="broken.pdf",
        error_code="EMPTY_CONTENT",
    ),
}
KINDS: list[TopicKind] = ["registered", "provisioned", "failed"]


def message(kind: TopicKind, data: dict[str, Any] | None = None, **envelope_fields: Any) -> bytes:
    document = json.loads(envelope(kind, DATA[kind] if data is None else data))
    document.update(envelope_fields)
    return json.dumps(document).encode()


def same_command(kind: TopicKind, command: Any, value: bytes) -> None:
    cid = json.loads(value)["correlation_id"]
    assert command == EXPECTED[kind].model_copy(update={"correlation_id": cid})


@pytest.mark.parametrize("kind", KINDS)
def test_a_plain_message_ignores_nothing(kind: TopicKind) -> None:
    value = message(kind)
    parsed = parse_inbound(kind, value)
    same_command(kind, parsed.command, value)
    assert not parsed.ignored and parsed.ignored_envelope == () and parsed.ignored_data == ()


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_envelope_and_data_fields_are_ignored_and_named(kind: TopicKind) -> None:
    data = {**DATA[kind], "priority": "high", "essay_id": "force-this-slot", "nested": {"a": [1]}}
    value = message(kind, data, trace={"id": 7}, partition_hint=3)
    parsed = parse_inbound(kind, value)
    same_command(kind, parsed.command, value)  # the unknown fields change nothing
    assert parsed.ignored
    assert parsed.ignored_envelope == ("partition_hint", "trace")
    assert parsed.ignored_data == ("essay_id", "nested", "priority")
    same_command(kind, parse_message(kind, value), value)


@pytest.mark.parametrize("name", ["model_config", "__class__", "copy", "", "data "])
def test_any_unknown_name_is_just_a_name(name: str) -> None:
    value = message("provisioned", {**DATA["provisioned"], name: 1}, **{name: [1]})
    parsed = parse_inbound("provisioned", value)
    same_command("provisioned", parsed.command, value)
    assert parsed.ignored_envelope == (name,) and parsed.ignored_data == (name,)


@pytest.mark.parametrize(
    ("kind", "data", "envelope_fields", "reason"),
    [
        ("provisioned", {**DATA["provisioned"], "batch_id": 12}, {}, "INVALID_DATA"),
        ("provisioned", {**DATA["provisioned"], "file_size_bytes": "12"}, {}, "INVALID_DATA"),
        ("provisioned", {**DATA["provisioned"], "content_md5_hash": "zz"}, {}, "INVALID_DATA"),
        ("registered", {**DATA["registered"], "expected_essay_count": 3}, {}, "INVALID_DATA"),
        ("registered", {**DATA["registered"], "course_code": 7}, {}, "INVALID_DATA"),
        ("failed", {**DATA["failed"], "error_code": ""}, {}, "INVALID_DATA"),
        ("failed", {**DATA["failed"], "error_message": None, "extra": 1}, {}, None),
        ("provisioned", None, {"schema_version": "1"}, "INVALID_ENVELOPE"),
        ("provisioned", None, {"correlation_id": "not-a-uuid"}, "INVALID_ENVELOPE"),
        ("provisioned", None, {"event_timestamp": 1767225600}, "INVALID_ENVELOPE"),
        ("provisioned", None, {"source_service": ""}, "INVALID_ENVELOPE"),
        ("provisioned", None, {"schema_version": 2}, "UNSUPPORTED_SCHEMA_VERSION"),
        ("provisioned", None, {"schema_version": 0}, "UNSUPPORTED_SCHEMA_VERSION"),
        ("provisioned", None, {"event_type": "EssayContentProvisionedV2"}, "UNEXPECTED_EVENT_TYPE"),
    ],
)
def test_known_fields_are_still_checked(
    kind: TopicKind, data: Any, envelope_fields: dict[str, Any], reason: str | None
) -> None:
    value = message(kind, data, **envelope_fields, unknown_too=True)
    if reason is None:  # a known optional field set to null, next to an unknown one
        assert parse_inbound(kind, value).ignored_data == ("extra",)
        return
    with pytest.raises(InvalidMessage) as caught:
        parse_inbound(kind, value)
    assert caught.value.reason == reason


def sample(topic: str, where: str) -> float:
    value = REGISTRY.get_sample_value(
        "batchslot_unknown_fields_total", {"topic": topic, "where": where}
    )
    return value or 0.0


def test_the_worker_side_counts_ignored_fields_per_topic_and_place(
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = "unit-unknown-fields"
    before = sample(topic, "envelope"), sample(topic, "data")
    value = message("failed", {**DATA["failed"], "retry_count": 2, "stage": "x"}, hops=1)
    with caplog.at_level("DEBUG", logger="batchslot.inbound"):
        command = parse_counted("failed", topic, value).command
        parse_counted("failed", topic, message("failed"))  # nothing unknown: nothing counted
    same_command("failed", command, value)
    assert (sample(topic, "envelope"), sample(topic, "data")) == (before[0] + 1, before[1] + 2)
    [record] = [r for r in caplog.records if r.name == "batchslot.inbound"]
    assert record.levelname == "DEBUG"
    assert record.__dict__["data_fields"] == ["retry_count", "stage"]
    assert record.__dict__["envelope_fields"] == ["hops"]
