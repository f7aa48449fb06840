"""The command limits of CONTRACT §3, enforced at the edge by pydantic."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from application.commands import (
    MAX_SLOTS,
    ExpirePending,
    ProvisionContent,
    RecordValidationFailure,
    RegisterBatch,
    TimeOutBatch,
)

ID_CHARS = "ABCxyz019._:-"


def content(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "batch_id": "b-1",
        "correlation_id": "c-1",
        "text_storage_id": "t-1",
        "file_upload_id": "f-1",
        "original_file_name": "essay.docx",
    }
    return {**base, **over}


def failure(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "batch_id": "b-1",
        "correlation_id": "c-1",
        "file_upload_id": "f-1",
        "original_file_name": "essay.docx",
        "error_code": "EMPTY_CONTENT",
    }
    return {**base, **over}


def registration(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"batch_id": "b-1", "correlation_id": "c-1", "essay_ids": ["e1"]}
    return {**base, **over}


# ---------------------------------------------------------------- identifiers


@pytest.mark.parametrize("value", ["a", ID_CHARS, "x" * 128, "2026-01-01T00:00:00.000Z"])
@pytest.mark.parametrize("field", ["batch_id", "text_storage_id", "file_upload_id"])
def test_identifiers_accept_the_charset_up_to_128(field: str, value: str) -> None:
    cmd = ProvisionContent(**content(**{field: value}))
    assert getattr(cmd, field) == value


@pytest.mark.parametrize(
    "value", ["", "x" * 129, "a b", "a/b", "ä", "a\n", "a;b", "a*", "{b}", 7, None]
)
@pytest.mark.parametrize("field", ["batch_id", "text_storage_id", "file_upload_id"])
def test_identifiers_reject_bad_charset_length_and_type(field: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        ProvisionContent(**content(**{field: value}))


@pytest.mark.parametrize("value", ["", "x" * 129, "e 1", "e/1"])
def test_essay_ids_are_identifiers(value: str) -> None:
    with pytest.raises(ValidationError):
        RegisterBatch(**registration(essay_ids=["ok", value]))
    assert RegisterBatch(**registration(essay_ids=["ok", "x" * 128])).essay_ids[1] == "x" * 128


def test_failure_file_upload_id_is_an_identifier() -> None:
    assert RecordValidationFailure(**failure(file_upload_id="x" * 128)).file_upload_id
    with pytest.raises(ValidationError):
        RecordValidationFailure(**failure(file_upload_id="x" * 129))


# ---------------------------------------------------------------------- slots


def test_a_batch_has_one_to_5000_slots() -> None:
    assert MAX_SLOTS == 5000
    ids = [f"e{i}" for i in range(5000)]
    assert len(RegisterBatch(**registration(essay_ids=ids)).essay_ids) == 5000
    with pytest.raises(ValidationError):
        RegisterBatch(**registration(essay_ids=[*ids, "e5000"]))
    with pytest.raises(ValidationError):
        RegisterBatch(**registration(essay_ids=[]))


def test_slots_must_be_distinct() -> None:
    with pytest.raises(ValidationError, match="distinct"):
        RegisterBatch(**registration(essay_ids=["e1", "e2", "e1"]))


def test_slot_order_is_kept() -> None:
    cmd = RegisterBatch(**registration(essay_ids=["e3", "e1", "e2"]))
    assert list(cmd.essay_ids) == ["e3", "e1", "e2"]


# ------------------------------------------------------------------ file name


@pytest.mark.parametrize("name", ["", "a.txt", "ö'; DROP TABLE x;--.pdf", "n" * 255, "a b/c\\d"])
def test_file_name_is_any_text_up_to_255(name: str) -> None:
    assert ProvisionContent(**content(original_file_name=name)).original_file_name == name
    assert RecordValidationFailure(**failure(original_file_name=name)).original_file_name == name


def test_file_name_longer_than_255_is_rejected() -> None:
    with pytest.raises(ValidationError):
        ProvisionContent(**content(original_file_name="n" * 256))
    with pytest.raises(ValidationError):
        RecordValidationFailure(**failure(original_file_name="n" * 256))


# ---------------------------------------------------------------- extra/strict


@pytest.mark.parametrize(
    ("model", "data"),
    [
        (ProvisionContent, content(surprise=1)),
        (RecordValidationFailure, failure(surprise=1)),
        (RegisterBatch, registration(surprise=1)),
        (TimeOutBatch, {"batch_id": "b", "correlation_id": "c", "surprise": 1}),
        (ExpirePending, {"batch_id": "b", "correlation_id": "c", "surprise": 1}),
    ],
)
def test_extra_fields_are_forbidden(model: type[Any], data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="surprise"):
        model(**data)


@pytest.mark.parametrize(
    ("model", "data", "missing"),
    [
        (ProvisionContent, content(), "text_storage_id"),
        (RecordValidationFailure, failure(), "error_code"),
        (RegisterBatch, registration(), "essay_ids"),
        (TimeOutBatch, {"batch_id": "b", "correlation_id": "c"}, "correlation_id"),
    ],
)
def test_required_fields(model: type[Any], data: dict[str, Any], missing: str) -> None:
    model(**data)
    data = {k: v for k, v in data.items() if k != missing}
    with pytest.raises(ValidationError):
        model(**data)


def test_commands_are_frozen() -> None:
    cmd = ProvisionContent(**content())
    with pytest.raises(ValidationError):
        cmd.text_storage_id = "other"  # type: ignore[misc]


def test_error_code_is_non_empty_and_bounded() -> None:
    with pytest.raises(ValidationError):
        RecordValidationFailure(**failure(error_code=""))
    with pytest.raises(ValidationError):
        RecordValidationFailure(**failure(error_code="E" * 129))
