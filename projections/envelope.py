"""The outbound envelope of a stored Batch event (CONTRACT §3, ``batch.events.v1``).

Pure: no I/O, no clock. The same stored event always maps to the same key and
value, so a republish after a crash is indistinguishable from the first
publish (with tracing on, only its ``traceparent`` header names the new
``publish`` span).

``event_id`` is ``uuid5(originator_id, str(originator_version))``: the
aggregate id (itself a uuid5 of ``batch_id``) is the namespace and the
version in the stream is the name. It is stable for a stored event, unique
across every stream, and any reader holding the stream can recompute it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha1
from typing import Any
from uuid import UUID, uuid5

SCHEMA_VERSION = 1

# event_type -> the `data` fields of CONTRACT §3, in the contract's order.
DATA_FIELDS: Mapping[str, tuple[str, ...]] = {
    # The stored event also keeps course_code and user_id (HuleEdu's completion needs
    # them); the native envelope is unchanged.
    "BatchRegistered": ("batch_id", "essay_ids", "expected_count", "deadline"),
    "ContentPended": ("batch_id", "text_storage_id", "file_upload_id", "original_file_name"),
    "SlotAssigned": (
        "batch_id",
        "essay_id",
        "text_storage_id",
        "file_upload_id",
        "original_file_name",
    ),
    "ExcessContentProvisioned": (
        "batch_id",
        "text_storage_id",
        "file_upload_id",
        "original_file_name",
        "reason",
    ),
    "ValidationFailureRecorded": (
        "batch_id",
        "file_upload_id",
        "original_file_name",
        "error_code",
    ),
    # A completion too large for one message is several parts (CONTRACT §3).
    "BatchCompleted": (
        "batch_id",
        "outcome",
        "ready",
        "validation_failures",
        "missing_essay_ids",
        "part",
        "parts",
    ),
    "PendingContentExpired": ("batch_id", "text_storage_ids", "part", "parts"),
}


class UnknownEventType(ValueError):
    """The event has no outbound contract (not a Batch event)."""


@dataclass(frozen=True)
class OutboundMessage:
    """One Kafka record: key = batch_id, value = the JSON envelope, contract headers.

    ``topic`` None: the events topic (``batch.events.v1``); otherwise the topic it
    goes to (HuleEdu's, ``projections/huleedu.py``).
    """

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    event_id: str
    event_type: str
    topic: str | None = None


# One encoder for every outbound value (json.dumps with options builds one per call).
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def compact_json(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON (an outbound record's value)."""
    return _COMPACT.encode(value).encode("utf-8")


def event_id_of(originator_id: UUID, version: int) -> UUID:
    """The stable id of the stored event at ``version`` of stream ``originator_id``."""
    return uuid5(originator_id, str(version))


def uuid5_text(namespace: UUID, name: str) -> str:
    """``str(uuid5(namespace, name))``, made without a ``UUID`` object (the outbox makes
    one or two per published event; this takes about a third of the time)."""
    # SHA-1 is what RFC 4122 defines for version 5 (a name hash, not a security use).
    digest = bytearray(sha1(namespace.bytes + name.encode("utf-8")).digest()[:16])  # noqa: S324
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def rfc3339(value: datetime) -> str:
    """UTC, ``Z`` suffix (naive datetimes are taken to be UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def json_value(value: Any) -> Any:
    """A stored event's value as JSON: datetimes RFC 3339, UUIDs as text."""
    if type(value) is str:  # (most values: no further checks)
        return value
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return value


def event_type_of(event: object) -> str:
    name = type(event).__name__
    if name not in DATA_FIELDS:
        raise UnknownEventType(f"no outbound contract for event type {name!r}")
    return name


def envelope_dict(event: Any, source_service: str) -> dict[str, Any]:
    """The envelope as a JSON-ready dict (``envelope_of`` encodes it)."""
    event_type = event_type_of(event)
    facts = vars(event)
    return {
        "event_id": uuid5_text(event.originator_id, str(event.originator_version)),
        "event_type": event_type,
        "event_timestamp": rfc3339(event.timestamp),
        "source_service": source_service,
        "correlation_id": facts["correlation_id"],
        "schema_version": SCHEMA_VERSION,
        "data": {name: json_value(facts[name]) for name in DATA_FIELDS[event_type]},
    }


def envelope_of(event: Any, source_service: str, traceparent: str | None = None) -> OutboundMessage:
    """The Kafka record for a stored Batch event; ``traceparent``: its W3C trace context
    header (the one stored with the event, or the outbox's ``publish`` span's), if any."""
    envelope = envelope_dict(event, source_service)
    value = compact_json(envelope)
    headers = [
        ("event_id", envelope["event_id"].encode("utf-8")),
        ("event_type", envelope["event_type"].encode("utf-8")),
        ("correlation_id", envelope["correlation_id"].encode("utf-8")),
    ]
    if traceparent is not None:
        headers.append(("traceparent", traceparent.encode("ascii")))
    return OutboundMessage(
        key=envelope["data"]["batch_id"].encode("utf-8"),
        value=value,
        headers=headers,
        event_id=envelope["event_id"],
        event_type=envelope["event_type"],
    )
