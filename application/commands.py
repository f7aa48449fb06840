"""Commands: what the service can be asked to do, validated at the edge.

Limits are CONTRACT §3: identifiers are 1 to 128 characters of
``[A-Za-z0-9._:-]``, a file name any text up to 255 characters, a batch has
1 to 5,000 distinct slots.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

MAX_SLOTS = 5000
Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$", strict=True)]
FileName = Annotated[str, StringConstraints(max_length=255, strict=True)]
ErrorCode = Annotated[str, StringConstraints(min_length=1, max_length=128, strict=True)]
ShortText = Annotated[str, StringConstraints(max_length=255, strict=True)]
CorrelationId = Annotated[str, StringConstraints(min_length=1, max_length=128, strict=True)]


def _distinct(ids: list[str]) -> list[str]:
    if len(set(ids)) != len(ids):
        raise ValueError("essay_ids must be distinct")
    return ids


class Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    batch_id: Identifier
    correlation_id: CorrelationId


class RegisterBatch(Command):
    essay_ids: Annotated[
        list[Identifier], Field(min_length=1, max_length=MAX_SLOTS), AfterValidator(_distinct)
    ]
    # Who the batch is for (recorded with the registration; HuleEdu's completion needs both).
    course_code: ShortText | None = None
    user_id: ShortText | None = None


class ProvisionContent(Command):
    text_storage_id: Identifier
    file_upload_id: Identifier
    original_file_name: FileName


class RecordValidationFailure(Command):
    file_upload_id: Identifier
    original_file_name: FileName
    error_code: ErrorCode


class TimeOutBatch(Command):
    """Close the batch if it is open and past its deadline (sweep command)."""


class ExpirePending(Command):
    """Release pending content of a batch never registered within the TTL (sweep)."""


AnyCommand = (
    RegisterBatch | ProvisionContent | RecordValidationFailure | TimeOutBatch | ExpirePending
)
