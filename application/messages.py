"""Inbound messages (CONTRACT §3, §7): bytes in, a command out, or a named reason why not.

Checks run cheapest first: size, UTF-8, JSON, the envelope, the event type
for the topic, then the ``data`` model (strict: identifiers and sizes as the
contract says).

Two wire shapes are read on every profile (CONTRACT §7): the native one and
HuleEdu's (``event_type`` = the HuleEdu topic name, ``entity_id`` for
``batch_id``, ``validation_error_code`` and ``validation_error_detail.message``
for ``error_code`` and ``error_message``, an envelope ``metadata`` object that
may carry the W3C ``traceparent``). Nothing here reads the message key or
relies on a stable inbound ``event_id``.

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
    ShortText,
)

MAX_MESSAGE_BYTES = 1024 * 1024
TopicKind = Literal["registered", "provisioned", "failed"]
WireProfile = Literal["native", "huleedu"]
EVENT_TYPE_OF: dict[TopicKind, str] = {
    "registered": "BatchEssaysRegistered",
    "provisioned": "EssayContentProvisioned",
    "failed": "EssayValidationFailed",
}
# HuleEdu's envelopes name the topic as their event_type (CONTRACT §7); these are
# HuleEdu's own topic names, whatever the topics this deployment consumes are called.
HULEEDU_EVENT_TYPE_OF: dict[TopicKind, str] = {
    "registered": "huleedu.batch.essays.registered.v1",
    "provisioned": "huleedu.file.essay.content.provisioned.v1",
    "failed": "huleedu.file.essay.validation.failed.v1",
}
# HuleEdu's CourseCode values: its completion event refuses any other.
HULEEDU_COURSE_CODES = ("ENG5", "ENG6", "ENG7", "SV1", "SV2", "SV3")
Uuid = Annotated[
    str,
    StringConstraints(
        pattern=r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
    ),
]
Stamp = Annotated[str, StringConstraints(max_length=64)]


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
    # HuleEdu's envelope (CONTRACT §7): both optional, neither decides anything.
    data_schema_uri: Annotated[str, StringConstraints(max_length=2048)] | None = None
    metadata: dict[str, Any] | None = None

    @property
    def traceparent(self) -> str | None:
        """The W3C ``traceparent`` HuleEdu carries in ``metadata`` (None: none)."""
        value = (self.metadata or {}).get("traceparent")
        return value if isinstance(value, str) and len(value) <= 128 else None


class _Data(BaseModel):
    """The batch is ``batch_id`` (native) or ``entity_id`` (HuleEdu); both: the same."""

    model_config = _TOLERANT
    batch_id: Identifier | None = None
    entity_id: Identifier | None = None
    # HuleEdu's models repeat these in data; known, so not counted as unknown fields.
    event: ShortText | None = None
    correlation_id: Uuid | None = None
    timestamp: Stamp | None = None

    @model_validator(mode="after")
    def _one_batch(self) -> _Data:
        if self.batch_id is None and self.entity_id is None:
            raise ValueError("batch_id (or HuleEdu's entity_id) is required")
        if None not in (self.batch_id, self.entity_id) and self.batch_id != self.entity_id:
            raise ValueError("batch_id and entity_id name different batches")
        return self

    @property
    def batch(self) -> str:
        batch = self.batch_id if self.batch_id is not None else self.entity_id
        assert batch is not None  # _one_batch
        return batch


class BatchEssaysRegisteredData(_Data):
    """essay_ids are distinct; expected_essay_count, when present, equals len(essay_ids)."""

    essay_ids: Annotated[list[Identifier], Field(min_length=1, max_length=MAX_SLOTS)]
    expected_essay_count: int | None = Field(default=None, ge=1, le=MAX_SLOTS)
    course_code: ShortText | None = None
    user_id: ShortText | None = None
    # HuleEdu's registration context: known, not used by any rule.
    metadata: dict[str, Any] | None = None
    student_prompt_ref: dict[str, Any] | None = None
    org_id: ShortText | None = None
    class_id: ShortText | None = None

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


class ErrorDetailData(BaseModel):
    """HuleEdu's ``validation_error_detail`` (its ErrorDetail): only these are read."""

    model_config = _TOLERANT
    error_code: ErrorCode | None = None
    message: str | None = None


class EssayValidationFailedData(_Data):
    """A file that failed validation upstream; it counts toward completion.

    The code is ``error_code`` (native) or ``validation_error_code`` (HuleEdu); both:
    the same. The message is ``error_message`` or ``validation_error_detail.message``.
    """

    file_upload_id: Identifier
    original_file_name: FileName
    error_code: ErrorCode | None = None
    error_message: Annotated[str, StringConstraints(max_length=4000)] | None = None
    validation_error_code: ErrorCode | None = None
    validation_error_detail: ErrorDetailData | None = None
    raw_file_storage_id: Identifier | None = None
    file_size_bytes: int | None = Field(default=None, ge=0, le=2**53)

    @model_validator(mode="after")
    def _one_code(self) -> EssayValidationFailedData:
        codes = {c for c in (self.error_code, self.validation_error_code) if c is not None}
        if not codes:
            raise ValueError("error_code (or HuleEdu's validation_error_code) is required")
        if len(codes) > 1:
            raise ValueError("error_code and validation_error_code differ")
        return self

    @property
    def code(self) -> str:
        code = self.error_code if self.error_code is not None else self.validation_error_code
        assert code is not None  # _one_code
        return code

    @property
    def message(self) -> str | None:
        if self.error_message is not None:
            return self.error_message
        return self.validation_error_detail.message if self.validation_error_detail else None


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
    traceparent: str | None = None  # from the envelope's metadata (HuleEdu), if any

    @property
    def ignored(self) -> bool:
        return bool(self.ignored_envelope or self.ignored_data)


def _extra(model: BaseModel) -> tuple[str, ...]:
    return tuple(sorted(model.model_extra or ()))


def parse_message(
    kind: TopicKind, value: bytes | None, profile: WireProfile = "native"
) -> AnyCommand:
    """Turn one inbound message into its command, or raise InvalidMessage."""
    return parse_inbound(kind, value, profile).command


def parse_inbound(kind: TopicKind, value: bytes | None, profile: WireProfile = "native") -> Parsed:
    """Like ``parse_message``, also naming the unknown fields it ignored.

    Both wire shapes are read on every profile; ``profile="huleedu"`` also requires
    what HuleEdu's completion event needs of a registration (CONTRACT §7).
    """
    envelope = parse_envelope(value)
    accepted = (EVENT_TYPE_OF[kind], HULEEDU_EVENT_TYPE_OF[kind])
    if envelope.event_type not in accepted:
        raise InvalidMessage(
            "UNEXPECTED_EVENT_TYPE",
            f"event_type {envelope.event_type[:64]!r}, expected {' or '.join(accepted)}",
        )
    cid = str(envelope.correlation_id)
    command: AnyCommand
    try:
        if kind == "registered":
            r = BatchEssaysRegisteredData.model_validate(envelope.data)
            data: BaseModel = r
            if profile == "huleedu":
                _check_huleedu_owner(r)
            command = RegisterBatch(
                batch_id=r.batch,
                correlation_id=cid,
                essay_ids=r.essay_ids,
                course_code=r.course_code,
                user_id=r.user_id,
            )
        elif kind == "provisioned":
            p = EssayContentProvisionedData.model_validate(envelope.data)
            data = p
            command = ProvisionContent(
                batch_id=p.batch,
                correlation_id=cid,
                text_storage_id=p.text_storage_id,
                file_upload_id=p.file_upload_id,
                original_file_name=p.original_file_name,
            )
        else:
            f = EssayValidationFailedData.model_validate(envelope.data)
            data = f
            command = RecordValidationFailure(
                batch_id=f.batch,
                correlation_id=cid,
                file_upload_id=f.file_upload_id,
                original_file_name=f.original_file_name,
                error_code=f.code,
            )
    except ValidationError as e:
        raise InvalidMessage("INVALID_DATA", _first_error(e)) from None
    return Parsed(
        command, envelope.event_type, _extra(envelope), _extra(data), envelope.traceparent
    )


def _check_huleedu_owner(r: BatchEssaysRegisteredData) -> None:
    """HuleEdu's completion requires the course code (one of its CourseCode values) and
    the user: a registration without them could never be announced to BOS."""
    if r.course_code not in HULEEDU_COURSE_CODES:
        raise InvalidMessage(
            "INVALID_DATA",
            f"data.course_code: {r.course_code!r}; the HuleEdu profile requires one of "
            + ", ".join(HULEEDU_COURSE_CODES),
        )
    if not r.user_id:
        raise InvalidMessage("INVALID_DATA", "data.user_id: required in the HuleEdu profile")
