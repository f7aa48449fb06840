"""The published message contract (CONTRACT §3) as pydantic models, JSON Schema and AsyncAPI.

Inbound: one model per inbound topic, built from the very models the worker
parses with (``application.messages``: the envelope's fields and the topic's
``data`` model), so the published schema cannot say something the reader
does not do. Unknown fields are allowed (``additionalProperties: true``): the
reader ignores them.

Outbound: the envelope of ``batch.events.v1`` and each event type's ``data``,
as ``projections/envelope.py`` writes them (a test validates real events
against these models and checks the field lists agree). Readers of our
events should be tolerant too: a later schema version of ours may add fields.

``published_documents()`` renders every schema and the AsyncAPI document as
text; ``scripts/schemas.py`` writes them to ``docs/`` and a test fails when the
committed files drift from the models. Pure: no I/O.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, create_model

from application.commands import MAX_SLOTS, ErrorCode, FileName, Identifier
from application.messages import (
    EVENT_TYPE_OF,
    HULEEDU_EVENT_TYPE_OF,
    BatchEssaysRegisteredData,
    Envelope,
    EssayContentProvisionedData,
    EssayValidationFailedData,
    TopicKind,
)

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_DIR = "schemas"  # under docs/
DEFAULT_TOPICS: dict[str, str] = {
    "registered": "batch.essays.registered.v1",
    "provisioned": "essay.content.provisioned.v1",
    "failed": "essay.validation.failed.v1",
    "events": "batch.events.v1",
    "dlq": "batch.dlq.v1",
}

# ------------------------------------------------------------------ inbound

_DATA_OF: dict[TopicKind, type[BaseModel]] = {
    "registered": BatchEssaysRegisteredData,
    "provisioned": EssayContentProvisionedData,
    "failed": EssayValidationFailedData,
}


def _inbound_model(kind: TopicKind) -> type[BaseModel]:
    """The whole inbound message of one topic: the reader's envelope with this topic's
    ``event_type`` (the native name or HuleEdu's topic name), schema version 1 and
    ``data`` model (both shapes, CONTRACT §7)."""
    fields: dict[str, Any] = {
        name: (info.annotation, info) for name, info in Envelope.model_fields.items()
    }
    fields["event_type"] = (Literal[EVENT_TYPE_OF[kind], HULEEDU_EVENT_TYPE_OF[kind]], ...)
    fields["schema_version"] = (Literal[1], ...)
    fields["data"] = (_DATA_OF[kind], ...)
    model: type[BaseModel] = create_model(
        EVENT_TYPE_OF[kind],
        __config__=Envelope.model_config,
        __doc__=f"An inbound `{EVENT_TYPE_OF[kind]}` message (schema version 1).",
        **fields,
    )
    return model


INBOUND_MODELS: dict[TopicKind, type[BaseModel]] = {
    kind: _inbound_model(kind) for kind in ("registered", "provisioned", "failed")
}

# ----------------------------------------------------------------- outbound

_OUT = ConfigDict(frozen=True, strict=True)
PartNumber = Annotated[int, Field(ge=1)]


class _Out(BaseModel):
    model_config = _OUT
    batch_id: Identifier


class BatchRegisteredData(_Out):
    essay_ids: Annotated[list[Identifier], Field(min_length=1, max_length=MAX_SLOTS)]
    expected_count: int = Field(ge=1, le=MAX_SLOTS)
    deadline: AwareDatetime


class ContentPendedData(_Out):
    text_storage_id: Identifier
    file_upload_id: Identifier
    original_file_name: FileName


class SlotAssignedData(_Out):
    essay_id: Identifier
    text_storage_id: Identifier
    file_upload_id: Identifier
    original_file_name: FileName


class ExcessContentProvisionedData(_Out):
    text_storage_id: Identifier
    file_upload_id: Identifier
    original_file_name: FileName
    reason: Literal["NO_AVAILABLE_SLOT", "BATCH_CLOSED"]


class ValidationFailureRecordedData(_Out):
    file_upload_id: Identifier
    original_file_name: FileName
    error_code: ErrorCode


class ReadyEssay(BaseModel):
    model_config = _OUT
    essay_id: Identifier
    text_storage_id: Identifier


class ValidationFailure(BaseModel):
    model_config = _OUT
    file_upload_id: Identifier
    original_file_name: FileName
    error_code: ErrorCode


class BatchCompletedData(_Out):
    """One part of a completion; the lists, concatenated over parts 1..parts, are complete."""

    outcome: Literal["complete", "timed_out"]
    ready: list[ReadyEssay]
    validation_failures: list[ValidationFailure]
    missing_essay_ids: list[Identifier]
    part: PartNumber
    parts: PartNumber


class PendingContentExpiredData(_Out):
    """One part of a release of pending content (the batch is closed)."""

    text_storage_ids: list[Identifier]
    part: PartNumber
    parts: PartNumber


OUTBOUND_DATA: dict[str, type[BaseModel]] = {
    "BatchRegistered": BatchRegisteredData,
    "ContentPended": ContentPendedData,
    "SlotAssigned": SlotAssignedData,
    "ExcessContentProvisioned": ExcessContentProvisionedData,
    "ValidationFailureRecorded": ValidationFailureRecordedData,
    "BatchCompleted": BatchCompletedData,
    "PendingContentExpired": PendingContentExpiredData,
}


class OutboundEnvelope(BaseModel):
    """The envelope of every ``batch.events.v1`` value (``data`` as its event type says)."""

    model_config = _OUT
    event_id: UUID = Field(description="Stable per stored event: deduplicate on it.")
    event_type: str
    event_timestamp: AwareDatetime
    source_service: str = Field(min_length=1, max_length=128)
    correlation_id: UUID
    schema_version: Literal[1]
    data: dict[str, Any]


def _outbound_model(event_type: str) -> type[BaseModel]:
    fields: dict[str, Any] = {
        name: (info.annotation, info) for name, info in OutboundEnvelope.model_fields.items()
    }
    fields["event_type"] = (Literal[event_type], ...)
    fields["data"] = (OUTBOUND_DATA[event_type], ...)
    model: type[BaseModel] = create_model(
        event_type,
        __config__=_OUT,
        __doc__=f"An outbound `{event_type}` event on batch.events.v1 (schema version 1).",
        **fields,
    )
    return model


OUTBOUND_MODELS: dict[str, type[BaseModel]] = {t: _outbound_model(t) for t in OUTBOUND_DATA}

# ---------------------------------------------------------------- rendering


def inbound_schema_path(kind: TopicKind) -> str:
    return f"{SCHEMA_DIR}/inbound/{EVENT_TYPE_OF[kind]}.v1.schema.json"


def outbound_schema_path(event_type: str) -> str:
    return f"{SCHEMA_DIR}/outbound/{event_type}.v1.schema.json"


def json_schema(model: type[BaseModel], path: str, topic: str) -> dict[str, Any]:
    schema = model.model_json_schema(mode="validation")
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": path.rsplit("/", 1)[-1],
        "x-topic": topic,
        **schema,
    }


def _text(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False, sort_keys=False) + "\n"


_KEY = {"type": "string", "description": "batch_id (records of one batch share a partition)"}
_KAFKA_KEY = {"kafka": {"key": _KEY, "bindingVersion": "0.5.0"}}
# W3C Trace Context (an addition of this service's, not in the external contract).
_TRACEPARENT = {
    "type": "string",
    "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
    "description": "W3C trace context of the inbound message whose command caused the "
    "event (with tracing on, of the outbox's publish span in that trace). Absent when "
    "the cause carried none and tracing is off (README: Tracing).",
}
_IN_HEADERS = {
    "type": "object",
    "description": "Optional. Other headers are ignored.",
    "properties": {
        "traceparent": {
            **_TRACEPARENT,
            "description": "W3C trace context: kept with the events the message causes and "
            "put on their batch.events.v1 records (an invalid one is ignored).",
        },
    },
}
_OUT_HEADERS = {
    "type": "object",
    "properties": {
        "event_id": {"type": "string", "format": "uuid"},
        "event_type": {"type": "string"},
        "correlation_id": {"type": "string"},
        "traceparent": _TRACEPARENT,
    },
    "required": ["event_id", "event_type", "correlation_id"],
}
_DLQ_HEADERS = {
    "type": "object",
    "description": "The original record's headers are kept (with tracing on, its "
    "traceparent is replaced by the worker's consume span's); these are added.",
    "properties": {
        "dlq.reason": {
            "type": "string",
            "description": "A stable code, e.g. INVALID_DATA, REGISTRATION_CONFLICT, "
            "PROCESSING_ERROR (README: Dead letters).",
        },
        "dlq.detail": {"type": "string", "maxLength": 500},
        "dlq.source.topic": {"type": "string"},
        "dlq.source.partition": {"type": "string", "pattern": "^[0-9]+$"},
        "dlq.source.offset": {"type": "string", "pattern": "^[0-9]+$"},
        "dlq.redriven.from": {
            "type": "string",
            "description": "Set by `batchctl dlq redrive` on the record it sends back to "
            "the source topic: the dead letter's <dlq topic>/<partition>/<offset>.",
        },
    },
    "required": [
        "dlq.reason",
        "dlq.detail",
        "dlq.source.topic",
        "dlq.source.partition",
        "dlq.source.offset",
    ],
}


def asyncapi_document() -> dict[str, Any]:
    """AsyncAPI 3.0 for the five topics (default names; every one is configurable)."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for kind in ("registered", "provisioned", "failed"):
        name = EVENT_TYPE_OF[kind]
        messages[name] = {
            "name": name,
            "title": name,
            "contentType": "application/json",
            "headers": _IN_HEADERS,
            "payload": {"$ref": inbound_schema_path(kind)},
            "bindings": _KAFKA_KEY,
        }
        channel = f"inbound_{kind}"
        channels[channel] = {
            "address": DEFAULT_TOPICS[kind],
            "description": f"Inbound {name} messages, keyed by batch_id. Readers are tolerant: "
            "unknown fields are ignored.",
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        operations[f"receive{name}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"The worker turns each {name} into a command.",
        }
    for event_type in OUTBOUND_DATA:
        messages[event_type] = {
            "name": event_type,
            "title": event_type,
            "contentType": "application/json",
            "headers": _OUT_HEADERS,
            "payload": {"$ref": outbound_schema_path(event_type)},
            "bindings": _KAFKA_KEY,
        }
    channels["events"] = {
        "address": DEFAULT_TOPICS["events"],
        "description": "Every stored Batch event, in stream order per batch, at least once: "
        "deduplicate on event_id.",
        "messages": {t: {"$ref": f"#/components/messages/{t}"} for t in OUTBOUND_DATA},
    }
    operations["publishBatchEvents"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/events"},
        "summary": "The outbox publishes every stored event.",
    }
    messages["DeadLetter"] = {
        "name": "DeadLetter",
        "title": "A dead letter",
        "summary": "The original inbound record, unchanged (key, value, headers), with "
        "dlq.* headers saying why.",
        "contentType": "application/octet-stream",
        "headers": _DLQ_HEADERS,
        "payload": {"description": "The original value's bytes (possibly not JSON)."},
    }
    channels["dlq"] = {
        "address": DEFAULT_TOPICS["dlq"],
        "description": "Inbound records that could not be decoded, failed validation or "
        "were rejected. `batchctl dlq list/show/redrive` reads and redrives them.",
        "messages": {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}},
    }
    operations["sendDeadLetters"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/dlq"},
        "summary": "The worker dead-letters a message and commits past it.",
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Batch slot service",
            "version": "1",
            "description": "Kafka topics of the batch slot service (CONTRACT §3). Every value "
            "is a UTF-8 JSON envelope of at most 1 MiB; topic names are configurable "
            "(TOPIC_* variables); these are the defaults. Payload schemas are the JSON "
            "Schemas in docs/schemas/, generated from the service's pydantic models.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def published_documents() -> dict[str, str]:
    """Every published document, by its path under ``docs/``, as the text to commit."""
    documents: dict[str, str] = {}
    for kind, model in INBOUND_MODELS.items():
        path = inbound_schema_path(kind)
        documents[path] = _text(json_schema(model, path, DEFAULT_TOPICS[kind]))
    for event_type, model in OUTBOUND_MODELS.items():
        path = outbound_schema_path(event_type)
        documents[path] = _text(json_schema(model, path, DEFAULT_TOPICS["events"]))
    documents["asyncapi.json"] = _text(asyncapi_document())
    return documents
