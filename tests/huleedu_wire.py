"""HuleEdu's real wire messages (tests/fixtures/huleedu/) and a validator for what we send.

The fixtures were generated once from HuleEdu's own pydantic models by
``tests/support/huleedu_fixtures.py`` (the HuleEdu commit is in ``source.json``);
the schemas are those models' JSON Schemas. No HuleEdu code is in this repository.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "huleedu"
# HuleEdu's outbound models, by the topic their events go to (CONTRACT §7).
MODEL_OF_TOPIC = {
    "huleedu.batch.content.provisioning.completed.v1": "BatchContentProvisioningCompletedV1",
    "huleedu.els.essay.slot.assigned.v1": "EssaySlotAssignedV1",
    "huleedu.els.excess.content.provisioned.v1": "ExcessContentProvisionedV1",
}
INBOUND_MODEL_OF_TOPIC = {
    "huleedu.batch.essays.registered.v1": "BatchEssaysRegistered",
    "huleedu.file.essay.content.provisioned.v1": "EssayContentProvisionedV1",
    "huleedu.file.essay.validation.failed.v1": "EssayValidationFailedV1",
}
KIND_OF_TOPIC = {
    "huleedu.batch.essays.registered.v1": "registered",
    "huleedu.file.essay.content.provisioned.v1": "provisioned",
    "huleedu.file.essay.validation.failed.v1": "failed",
}


@dataclass(frozen=True)
class WireRecord:
    """One record as HuleEdu's producers send it: no headers."""

    topic: str
    key: bytes
    value: bytes
    batch: str  # the scenario's label of its batch (A..F)
    note: str

    @property
    def kind(self) -> str:
        return KIND_OF_TOPIC[self.topic]

    @property
    def envelope(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.value)
        return loaded


@cache
def scenario() -> tuple[WireRecord, ...]:
    rows = [json.loads(line) for line in (FIXTURES / "scenario.jsonl").read_text().splitlines()]
    return tuple(
        WireRecord(r["topic"], r["key"].encode(), r["value"].encode(), r["batch"], r["note"])
        for r in rows
    )


@cache
def expected() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / "expected.json").read_text())
    return loaded


@cache
def schema(model: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / "schemas" / f"{model}.json").read_text())
    return loaded


def validate(model: str, instance: Any) -> None:
    """Raise jsonschema.ValidationError unless ``instance`` is valid for HuleEdu's model
    (formats checked: uuid, date-time)."""
    jsonschema.Draft202012Validator(
        schema(model), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(instance)


def validate_outbound(model: str, value: bytes) -> dict[str, Any]:
    """Validate one record we published as HuleEdu's consumers read it: the envelope
    (EventEnvelope), then its data (``model``, e.g. EssaySlotAssignedV1). Returns it."""
    envelope: dict[str, Any] = json.loads(value)
    validate("EventEnvelope", envelope)
    validate(model, envelope["data"])
    return envelope
