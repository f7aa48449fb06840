"""The scenario as HuleEdu's services would send it (CONTRACT §7), for the main job.

``as_huleedu(scenario)`` re-encodes every valid message of a native scenario
(``tests/support/scenario.py``) in HuleEdu's wire shape, as its Batch
Orchestrator Service and File Service publish it through their outbox relay:

- the envelope's ``event_type`` is HuleEdu's topic name, ``data_schema_uri`` is
  null, ``metadata`` carries a W3C ``traceparent`` (BOS and the File Service
  inject one into ``metadata``), every send gets a new ``event_id`` and
  timestamp (a duplicate is a relay re-publish, not a byte-identical re-send);
- ``data`` uses ``entity_id`` for the batch, ``validation_error_code`` and a
  ``validation_error_detail`` object, and carries the fields HuleEdu's models
  require (``course_code``, ``user_id``, ``metadata``, ``raw_file_storage_id``,
  ``file_size_bytes``, ``correlation_id``, ``timestamp``, ``event``);
- the File Service's records are keyed by ``file_upload_id``, BOS's by batch id.

Invalid messages stay as they are (they are dead-lettered either way). The
shape is checked against the JSON Schemas of HuleEdu's own models
(``tests/unit/test_huleedu_scenario.py``); the committed fixtures made by
those models are in ``tests/fixtures/huleedu/``.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from application.messages import HULEEDU_EVENT_TYPE_OF
from tests.support.scenario import Kind, Message, Scenario

TOPIC_OF: dict[Kind, str] = dict(HULEEDU_EVENT_TYPE_OF)  # HuleEdu's event_type is its topic
SOURCE_OF: dict[Kind, str] = {
    "registered": "batch-service",
    "provisioned": "file-service",
    "failed": "file-service",
}
COURSE_CODES = ("ENG5", "ENG6", "ENG7", "SV1", "SV2", "SV3")


def owner_of(batch_id: str) -> tuple[str, str]:
    """The course code and user a batch is registered with (stable per batch id)."""
    digest = hashlib.sha256(batch_id.encode()).digest()
    return COURSE_CODES[digest[0] % len(COURSE_CODES)], str(UUID(bytes=digest[:16], version=4))


def _stamp(now: datetime) -> str:
    return now.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _traceparent(rng: random.Random) -> str:
    return f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01"


def _data(kind: Kind, native: dict[str, Any], now: str, cid: str) -> dict[str, Any]:
    batch_id = native["batch_id"]
    if kind == "registered":
        course_code, user_id = owner_of(batch_id)
        return {
            "event": "batch.essays.registered",
            "entity_id": batch_id,
            "expected_essay_count": len(native["essay_ids"]),
            "essay_ids": native["essay_ids"],
            "metadata": {"entity_id": batch_id, "entity_type": "batch", "timestamp": now},
            "course_code": course_code,
            "student_prompt_ref": None,
            "user_id": user_id,
            "org_id": None,
            "class_id": None,
        }
    file_facts = {
        "entity_id": batch_id,
        "file_upload_id": native["file_upload_id"],
        "original_file_name": native["original_file_name"],
        "raw_file_storage_id": hashlib.md5(native["file_upload_id"].encode()).hexdigest(),
        "file_size_bytes": 20_000,
        "correlation_id": cid,
        "timestamp": now,
    }
    if kind == "provisioned":
        return {
            "event": "essay.content.provisioned",
            **file_facts,
            "text_storage_id": native["text_storage_id"],
            "content_md5_hash": hashlib.md5(native["text_storage_id"].encode()).hexdigest(),
        }
    return {
        "event": "essay.validation.failed",
        **file_facts,
        "validation_error_code": native["error_code"],
        "validation_error_detail": {
            "error_code": native["error_code"],
            "message": "the file has no text",
            "correlation_id": cid,
            "timestamp": now,
            "service": "file_service",
            "operation": "validate_content",
            "details": {},
        },
    }


def as_huleedu(scenario: Scenario, seed: int = 7) -> Scenario:
    """The same scenario (same outcomes) in HuleEdu's wire shape and keys."""
    rng = random.Random(seed)
    messages: list[Message] = []
    for m in scenario.messages:
        native = json.loads(m.value)
        if not _valid_shape(native):
            messages.append(m)
            continue
        now = _stamp(datetime.now(UTC))
        cid = native["correlation_id"]
        data = _data(m.kind, native["data"], now, cid)
        envelope = {
            "event_id": str(UUID(int=rng.getrandbits(128), version=4)),
            "event_type": TOPIC_OF[m.kind],
            "event_timestamp": now,
            "source_service": SOURCE_OF[m.kind],
            "schema_version": 1,
            "correlation_id": cid,
            "data_schema_uri": None,
            "data": data,
            "metadata": {"traceparent": _traceparent(rng)},
        }
        key = data["entity_id"] if m.kind == "registered" else data["file_upload_id"]
        messages.append(replace(m, key=key, value=json.dumps(envelope).encode()))
    return replace(scenario, messages=messages)


def _valid_shape(envelope: dict[str, Any]) -> bool:
    """A message the native scenario meant to be valid (the invalid ones break ids)."""
    data = envelope.get("data", {})
    ids = [data.get("batch_id", ""), *data.get("essay_ids", [])]
    return all(isinstance(i, str) and " " not in i for i in ids)
