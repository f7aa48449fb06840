"""Inbound messages (CONTRACT §3): bytes in, a command out, or a named reason why not.

Checks run cheapest first: size, UTF-8, JSON, the envelope, the event type
for the topic, then the ``data`` model (strict: identifiers and sizes as the
contract says).

The reader is tolerant (CONTRACT §3): a field the schema version does not know,
in the envelope or in ``data``, is ignored, and ``parse_inbound`` names it so
that the caller can count it; a known field with a wrong type or value is
refused, and so is an unknown ``schema_version``. The published JSON Schemas
(``docs/schemas/``) are generated from these models (``application/schemas.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from application.commands import (
    MAX_SLOTS,
    AnyCommand,
    ErrorCode,
    FileName,
    Identifier,
    ProvisionContent,
    RecordValidationFailure,
    RegisterBatch,
)

MAX_MESSAGE_BYTES = 1024 * 1024
TopicKind = Literal["registered", "provisioned", "failed"]
EVENT_TYPE_OF: dict[TopicKind, str] = {
    "registered": "BatchEssaysRegistered",
    "provisioned": "EssayContentProvisioned",
    "failed": "EssayValidationFailed",
}
ShortText = Annotated[str, StringConstraints(max_length=255)]


class InvalidMessage(ValueError):
    """The message cannot become a command. ``reason`` is a stable code for the DLQ."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail[:500]


# Unknown fields are kept aside (``model_extra``) only to be named and counted; no
# decision reads them.
_TOLERANT = ConfigDict(extra="allow", frozen=True, strict=True)


class Envelope(BaseModel):
    # strict: schema_version must be a JSON integer (not true, "1" or 1.0) and
    # event_timestamp an RFC 3339 string (not a Unix number).
    model_config = _TOLERANT
    event_id: UUID
    event_type: str = Field(max_length=128)
    event_timestamp: AwareDatetime
    source_service: str = Field(min_length=1, max_length=128)
    correlation_id: UUID
    schema_version: int
    data: dict[str, Any]


class _Data(BaseModel):
    model_config = _TOLERANT
    batch_id: Identifier


class BatchEssaysRegisteredData(_Data):
    """essay_ids are distinct; expected_essay_count, when present, equals len(essay_ids)."""

    essay_ids: Annotated[list[Identifier], Field(min_length=1, max_length=MAX_SLOTS)]
    expected_essay_count: int | None = Field(default=None, ge=1, le=MAX_SLOTS)
    course_code: ShortText | None = None
    user_id: ShortText | None = None

    @model_validator(mode="after")
    def _consistent(self) -> BatchEssaysRegisteredData:
        if len(set(self.essay_ids)) != len(self.essay_ids):
            raise ValueError("essay_ids must be distinct")
        if self.expected_essay_count is not None and self.expected_essay_count != len(
            self.essay_ids
        ):
            raise ValueError("expected_essay_count must equal len(essay_ids)")
        return self


class EssayContentProvisionedData(_Data):
    """One piece of provisioned content; text_storage_id is its identity in the batch."""

    text_storage_id: Identifier
    file_upload_id: Identifier
    original_file_name: FileName
    raw_file_storage_id: Identifier | None = None
    file_size_bytes: int | None = Field(default=None, ge=0, le=2**53)
    content_md5_hash: Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{32}$")] | None = None


class EssayValidationFailedData(_Data):
    """A file that failed validation upstream; it counts toward completion."""

    file_upload_id: Identifier
    original_file_name: FileName
    error_code: ErrorCode
    error_message: Annotated[str, StringConstraints(max_length=4000)] | None = None


def _first_error(e: ValidationError) -> str:
    err = e.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "message"
    return f"{where}: {err['msg']}"


def parse_envelope(value: bytes | None) -> Envelope:
    if not value:  # a tombstone (None) or an empty value (b"")
        raise InvalidMessage("EMPTY_MESSAGE", "message has no value")
    if len(value) > MAX_MESSAGE_BYTES:
        raise InvalidMessage("MESSAGE_TOO_LARGE", f"{len(value)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidMessage("INVALID_UTF8", str(e)) from None
    try:
        envelope = Envelope.model_validate_json(text)
    except ValidationError as e:
        kind = e.errors()[0]["type"]
        reason = "INVALID_JSON" if kind.startswith("json") else "INVALID_ENVELOPE"
        raise InvalidMessage(reason, _first_error(e)) from None
    if envelope.schema_version != 1:
        raise InvalidMessage(
            "UNSUPPORTED_SCHEMA_VERSION", f"schema_version {envelope.schema_version} (expected 1)"
        )
    return envelope


@dataclass(frozen=True)
class Parsed:
    """A command, and the names of the unknown fields that were ignored to make it."""

    command: AnyCommand
    event_type: str
    ignored_envelope: tuple[str, ...] = ()
    ignored_data: tuple[str, ...] = ()

    @property
    def ignored(self) -> bool:
        return bool(self.ignored_envelope or self.ignored_data)


def _extra(model: BaseModel) -> tuple[str, ...]:
    return tuple(sorted(model.model_extra or ()))


def parse_message(kind: TopicKind, value: bytes | None) -> AnyCommand:
    """Turn one inbound message into its command, or raise InvalidMessage."""
    return parse_inbound(kind, value).command


def parse_inbound(kind: TopicKind, value: bytes | None) -> Parsed:
    """Like ``parse_message``, also naming the unknown fields it ignored."""
    envelope = parse_envelope(value)
    expected = EVENT_TYPE_OF[kind]
    if envelope.event_type != expected:
        raise InvalidMessage(
            "UNEXPECTED_EVENT_TYPE", f"event_type {envelope.event_type[:64]!r}, expected {expected}"
        )
    cid = str(envelope.correlation_id)
    command: AnyCommand
    try:
        if kind == "registered":
            r = BatchEssaysRegisteredData.model_validate(envelope.data)
            data: BaseModel = r
            command = RegisterBatch(batch_id=r.batch_id, correlation_id=cid, essay_ids=r.essay_ids)
        elif kind == "provisioned":
            p = EssayContentProvisionedData.model_validate(envelope.data)
            data = p
            command = ProvisionContent(
                batch_id=p.batch_id,
                correlation_id=cid,
                text_storage_id=p.text_storage_id,
                file_upload_id=p.file_upload_id,
                original_file_name=p.original_file_name,
            )
        else:
            f = EssayValidationFailedData.model_validate(envelope.data)
            data = f
            command = RecordValidationFailure(
                batch_id=f.batch_id,
                correlation_id=cid,
                file_upload_id=f.file_upload_id,
                original_file_name=f.original_file_name,
                error_code=f.error_code,
            )
    except ValidationError as e:
        raise InvalidMessage("INVALID_DATA", _first_error(e)) from None
    return Parsed(command, expected, _extra(envelope), _extra(data))
