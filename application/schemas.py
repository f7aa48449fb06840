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

# ------------------------------------------------- outbound, HuleEdu profile
# What WIRE_PROFILE=huleedu publishes besides batch.events.v1 (CONTRACT §7,
# projections/huleedu.py): HuleEdu's envelope and its three events' data, as
# HuleEdu's own models (libs/common_core of paunchygent/huleedu) read them. The
# tests also validate these records against the JSON Schemas of those models.

HULEEDU_DEFAULT_TOPICS: dict[str, str] = {
    "EssaySlotAssignedV1": "huleedu.els.essay.slot.assigned.v1",
    "ExcessContentProvisionedV1": "huleedu.els.excess.content.provisioned.v1",
    "BatchContentProvisioningCompletedV1": "huleedu.batch.content.provisioning.completed.v1",
}
CourseCode = Literal["ENG5", "ENG6", "ENG7", "SV1", "SV2", "SV3"]


class HuleEduEnvelope(BaseModel):
    """HuleEdu's EventEnvelope as the outbox writes it (``event_type`` = the topic)."""

    model_config = _OUT
    event_id: UUID = Field(description="Stable per stored event and HuleEdu event.")
    event_type: str = Field(description="The topic's name, as HuleEdu's envelopes say.")
    event_timestamp: AwareDatetime = Field(description="The stored event's time.")
    source_service: str = Field(min_length=1, max_length=128)
    schema_version: Literal[1]
    correlation_id: UUID
    data_schema_uri: None
    data: dict[str, Any]
    metadata: dict[str, str] | None = Field(
        description="{'traceparent': W3C trace context} when the command had one, else null."
    )


class _HuleEduData(BaseModel):
    model_config = _OUT
    batch_id: Identifier
    correlation_id: UUID
    timestamp: AwareDatetime = Field(
        description="The stored event's time: a republish is byte-identical in data."
    )


class EssaySlotAssignedV1Data(_HuleEduData):
    """One ``SlotAssigned``: content filled an essay slot."""

    event: Literal["essay.slot.assigned"]
    essay_id: Identifier
    file_upload_id: Identifier
    text_storage_id: Identifier
    original_file_name: FileName


class ExcessContentProvisionedV1Data(_HuleEduData):
    """One ``ExcessContentProvisioned``: content no slot took."""

    event: Literal["excess.content.provisioned"]
    original_file_name: FileName
    text_storage_id: Identifier
    reason: Literal["NO_AVAILABLE_SLOT", "BATCH_CLOSED"]


class EssayRef(BaseModel):
    model_config = _OUT
    essay_id: Identifier
    text_storage_id: Identifier


class BatchContentProvisioningCompletedV1Data(_HuleEduData):
    """The batch closed (complete or timed out), once: every ready essay, the
    registration's slots, owner and correlation id."""

    event: Literal["batch.content.provisioning.completed"]
    provisioned_count: int = Field(ge=0, le=MAX_SLOTS, description="len(essays_for_processing)")
    expected_count: int = Field(ge=1, le=MAX_SLOTS, description="The slots registered.")
    course_code: CourseCode
    user_id: str = Field(min_length=1, max_length=255)
    essays_for_processing: list[EssayRef]


HULEEDU_OUTBOUND_DATA: dict[str, type[BaseModel]] = {
    "EssaySlotAssignedV1": EssaySlotAssignedV1Data,
    "ExcessContentProvisionedV1": ExcessContentProvisionedV1Data,
    "BatchContentProvisioningCompletedV1": BatchContentProvisioningCompletedV1Data,
}


def _huleedu_model(name: str) -> type[BaseModel]:
    fields: dict[str, Any] = {
        field: (info.annotation, info) for field, info in HuleEduEnvelope.model_fields.items()
    }
    fields["data"] = (HULEEDU_OUTBOUND_DATA[name], ...)
    model: type[BaseModel] = create_model(
        name,
        __config__=_OUT,
        __doc__=f"HuleEdu's {name} as WIRE_PROFILE=huleedu publishes it.",
        **fields,
    )
    return model


HULEEDU_OUTBOUND_MODELS: dict[str, type[BaseModel]] = {
    name: _huleedu_model(name) for name in HULEEDU_OUTBOUND_DATA
}

# ---------------------------------------------------------------- rendering


def inbound_schema_path(kind: TopicKind) -> str:
    return f"{SCHEMA_DIR}/inbound/{EVENT_TYPE_OF[kind]}.v1.schema.json"


def outbound_schema_path(event_type: str) -> str:
    return f"{SCHEMA_DIR}/outbound/{event_type}.v1.schema.json"


HULEEDU_DIR = "huleedu"  # under docs/: the HuleEdu profile's documents


def huleedu_schema_path(name: str) -> str:
    return f"{HULEEDU_DIR}/schemas/{name}.schema.json"


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
    "the cause carried none and tracing is off (docs/operations.md: Tracing).",
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
            "PROCESSING_ERROR (docs/kafka.md: Dead letters).",
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


def _relocated(message: dict[str, Any]) -> dict[str, Any]:
    """A message of the native document, its payload file referred to from docs/huleedu/."""
    ref = message.get("payload", {}).get("$ref")
    return {**message, "payload": {"$ref": f"../{ref}"}} if ref else message


def asyncapi_huleedu_document() -> dict[str, Any]:
    """AsyncAPI 3.0 of the HuleEdu profile (WIRE_PROFILE=huleedu): HuleEdu's inbound
    topic names, its three outbound events, and the service's own two topics."""
    native = asyncapi_document()
    channels: dict[str, Any] = {}
    for kind in ("registered", "provisioned", "failed"):
        channel = dict(native["channels"][f"inbound_{kind}"])
        channel["address"] = HULEEDU_EVENT_TYPE_OF[kind]
        channel["description"] = (
            f"Inbound {EVENT_TYPE_OF[kind]} messages in HuleEdu's shape (event_type = this "
            "topic, entity_id, validation_error_code; no headers needed; the File "
            "Service keys by file_upload_id). The native shape is read here too."
        )
        channels[f"inbound_{kind}"] = channel
    messages = {
        name: _relocated(message) for name, message in native["components"]["messages"].items()
    }
    operations = {k: v for k, v in native["operations"].items() if k != "publishBatchEvents"}
    for name, topic in HULEEDU_DEFAULT_TOPICS.items():
        messages[name] = {
            "name": name,
            "title": name,
            "contentType": "application/json",
            "payload": {"$ref": huleedu_schema_path(name).removeprefix(f"{HULEEDU_DIR}/")},
            "bindings": _KAFKA_KEY,
        }
        channels[name] = {
            "address": topic,
            "description": f"HuleEdu's {name}, in HuleEdu's envelope, at least once, in "
            "stream order per batch: deduplicate on event_id (stable per stored event).",
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        operations[f"publish{name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{name}"},
            "summary": "The outbox publishes it from the stored events.",
        }
    channels["events"] = native["channels"]["events"]
    channels["dlq"] = native["channels"]["dlq"]
    operations["publishBatchEvents"] = native["operations"]["publishBatchEvents"]
    return {
        **native,
        "info": {
            **native["info"],
            "title": "Batch slot service, HuleEdu profile",
            "description": "WIRE_PROFILE=huleedu (CONTRACT §7): the topics a HuleEdu "
            "deployment points at. Every topic name is configurable (TOPIC_* and "
            "TOPIC_HULEEDU_* variables); these are the defaults.",
        },
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


def published_huleedu_documents() -> dict[str, str]:
    """The HuleEdu profile's documents (``docs/huleedu/``): its outbound events' schemas
    and its AsyncAPI document (the inbound schemas are the shared ones)."""
    documents: dict[str, str] = {}
    for name, model in HULEEDU_OUTBOUND_MODELS.items():
        path = huleedu_schema_path(name)
        documents[path] = _text(json_schema(model, path, HULEEDU_DEFAULT_TOPICS[name]))
    documents[f"{HULEEDU_DIR}/asyncapi.json"] = _text(asyncapi_huleedu_document())
    return documents
