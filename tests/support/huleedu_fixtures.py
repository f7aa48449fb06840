"""Generate the HuleEdu wire fixtures under ``tests/fixtures/huleedu/``.

What it writes (all deterministic: one seeded ``random.Random`` for every id,
a fixed clock for every timestamp, so a re-run is byte-identical):

- ``scenario.jsonl``: Kafka records in send order, one JSON object a line:
  ``{"topic", "key", "value", "batch", "note"}``; ``value`` is the exact UTF-8
  text of the record value. No record has Kafka headers.
- ``expected.json``: per batch label (A..F) the outcome a slot service must
  reach from those records (slot assignments in slot order, excess, counts).
- ``schemas/<Model>.json``: ``Model.model_json_schema()`` (validation mode,
  ``$defs`` inside, ``sort_keys``) of the HuleEdu models our service reads or
  mirrors, for validating what we publish with ``jsonschema``.
- ``source.json``: the HuleEdu repository, commit and files used.

Every value is built by HuleEdu's own pydantic models (``common_core``), imported
at run time inside ``main()`` only: the test suite can import this module without
``common_core`` installed. Models used (paunchygent/huleedu, libs/common_core/src/):
``common_core/events/envelope.py`` (EventEnvelope), ``events/batch_coordination_events.py``
(BatchEssaysRegistered, BatchContentProvisioningCompletedV1, ExcessContentProvisionedV1),
``events/file_events.py`` (EssayContentProvisionedV1, EssayValidationFailedV1),
``events/essay_lifecycle_events.py`` (EssaySlotAssignedV1), ``metadata_models.py``
(SystemProcessingMetadata, StorageReferenceMetadata, EssayProcessingInputRefV1),
``models/error_models.py`` (ErrorDetail), ``domain_enums.py`` (CourseCode, ContentType),
``error_enums.py`` (FileValidationErrorCode), ``event_enums.py`` (topic_name).

How the producers serialize (read, not copied, from libs/huleedu_service_libs/src/):

- ``huleedu_service_libs/outbox/manager.py`` stores ``envelope.model_dump(mode="json")``
  (plus ``"topic"``) with ``event_key`` = the aggregate id: BOS
  (``services/batch_orchestrator_service/implementations/event_publisher_impl.py``) keys a
  registration by the batch id, File Service
  (``services/file_service/implementations/event_publisher_impl.py``) keys content and
  validation failures by ``file_upload_id``. Its "standard headers" are only logged.
- ``huleedu_service_libs/outbox/relay.py`` rebuilds, on every publish attempt,
  ``EventEnvelope[Any](event_type=..., source_service=..., correlation_id=..., data=...,
  metadata=stored.get("metadata", {}))``: a re-publish has a NEW ``event_id`` and
  ``event_timestamp`` (``schema_version`` 1, ``data_schema_uri`` null); here both are passed
  explicitly from the seeded rng / clock.
- ``huleedu_service_libs/kafka_client.py`` sends ``json.dumps(envelope.model_dump(
  mode="json")).encode("utf-8")`` (default separators, ``ensure_ascii``), key UTF-8.
- Trace context: ``huleedu_service_libs/observability/tracing.py`` sets the W3C
  ``TraceContextTextMapPropagator`` globally and ``inject_trace_context(envelope.metadata)``
  writes into the envelope's ``metadata`` dict, so a traced message carries
  ``"metadata": {"traceparent": "00-<32 hex trace id>-<16 hex span id>-01"}`` (no
  ``tracestate`` unless one is set). Untraced: BOS leaves ``metadata`` None (-> ``null``),
  File Service creates ``metadata={}`` (-> ``{}``). A File Service ``ErrorDetail`` made
  inside a recording span carries the same ``trace_id`` / ``span_id`` (error_detail_factory).

Re-run from the repository root with ``common_core`` importable, e.g.::

    git --git-dir=/work/.mirror/paunchygent+huleedu/repo archive HEAD libs/common_core \\
        | tar -x -C /tmp/huleedu
    PYTHONPATH=/tmp/huleedu/libs/common_core/src /tmp/hvenv/bin/python \\
        -m tests.support.huleedu_fixtures --out tests/fixtures/huleedu \\
        --commit "$(git --git-dir=/work/.mirror/paunchygent+huleedu/repo rev-parse HEAD)"

(``/tmp/hvenv``: ``pip install 'pydantic[email]==2.12.5' typing-extensions``, the pydantic
HuleEdu's pdm.lock pins; another pydantic may change the schema text.) ``--check``
compares instead of writing and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

SEED = 20260302
START = datetime(2026, 3, 2, 8, 30, tzinfo=UTC)
REPOSITORY = "paunchygent/huleedu"
GENERATOR = "tests/support/huleedu_fixtures.py"
BOS = "batch-service"  # SERVICE_NAME in services/batch_orchestrator_service/config.py
FILE_SERVICE = "file-service"  # SERVICE_NAME in services/file_service/config.py

MODEL_FILES = [
    "libs/common_core/src/common_core/events/envelope.py",
    "libs/common_core/src/common_core/events/batch_coordination_events.py",
    "libs/common_core/src/common_core/events/file_events.py",
    "libs/common_core/src/common_core/events/essay_lifecycle_events.py",
    "libs/common_core/src/common_core/metadata_models.py",
    "libs/common_core/src/common_core/models/error_models.py",
    "libs/common_core/src/common_core/domain_enums.py",
    "libs/common_core/src/common_core/error_enums.py",
    "libs/common_core/src/common_core/event_enums.py",
]
PRODUCER_FILES = [
    "libs/huleedu_service_libs/src/huleedu_service_libs/kafka_client.py",
    "libs/huleedu_service_libs/src/huleedu_service_libs/outbox/manager.py",
    "libs/huleedu_service_libs/src/huleedu_service_libs/outbox/relay.py",
    "libs/huleedu_service_libs/src/huleedu_service_libs/observability/tracing.py",
    "libs/huleedu_service_libs/src/huleedu_service_libs/error_handling/error_detail_factory.py",
    "libs/huleedu_service_libs/src/huleedu_service_libs/error_handling/file_validation_factories.py",
    "services/batch_orchestrator_service/implementations/batch_processing_service_impl.py",
    "services/batch_orchestrator_service/implementations/event_publisher_impl.py",
    "services/file_service/implementations/event_publisher_impl.py",
    "services/file_service/core_logic.py",
]
# schemas/<name>.json <- (module under common_core, class name)
SCHEMA_MODELS: dict[str, tuple[str, str]] = {
    "EventEnvelope": ("events.envelope", "EventEnvelope"),
    "BatchEssaysRegistered": ("events.batch_coordination_events", "BatchEssaysRegistered"),
    "EssayContentProvisionedV1": ("events.file_events", "EssayContentProvisionedV1"),
    "EssayValidationFailedV1": ("events.file_events", "EssayValidationFailedV1"),
    "BatchContentProvisioningCompletedV1": (
        "events.batch_coordination_events",
        "BatchContentProvisioningCompletedV1",
    ),
    "EssaySlotAssignedV1": ("events.essay_lifecycle_events", "EssaySlotAssignedV1"),
    "ExcessContentProvisionedV1": (
        "events.batch_coordination_events",
        "ExcessContentProvisionedV1",
    ),
}


def _cc(module: str, name: str) -> Any:
    """An attribute of ``common_core.<module>`` (imported on first use)."""
    return getattr(importlib.import_module(f"common_core.{module}"), name)


class _Source:
    """Seeded ids and a monotonic clock: the only sources of variation."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._now = START

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=self._rng.getrandbits(128), version=4)

    def hex32(self) -> str:
        return self.uuid4().hex

    def hex128(self) -> str:
        """128 random bits as 32 hex digits (an MD5 digest's or a trace id's shape)."""
        return f"{self._rng.getrandbits(128):032x}"

    def span_id(self) -> str:
        return f"{self._rng.getrandbits(64) or 1:016x}"

    def traceparent(self, trace_id: str, span_id: str) -> str:
        return f"00-{trace_id}-{span_id}-01"

    def size(self) -> int:
        return self._rng.randrange(11_000, 95_000)

    def tick(self, seconds: float) -> datetime:
        """Advance the clock by ``seconds`` plus a seeded sub-second jitter."""
        jitter = timedelta(microseconds=self._rng.randrange(1, 1_000_000))
        self._now = self._now + timedelta(seconds=seconds) + jitter
        return self._now


@dataclass(frozen=True)
class _OutboxRow:
    """What ``OutboxManager.publish_to_outbox`` stores for the relay."""

    topic: str
    event_type: str
    event_key: str
    event_data: dict[str, Any]
    source_service: str


@dataclass
class _Batch:
    label: str
    batch_id: str
    correlation_id: str
    course_code: str
    user_id: str
    essay_ids: list[str]
    trace_id: str


@dataclass
class _Record:
    topic: str
    key: str
    value: str
    batch: str
    note: str


@dataclass
class _Upload:
    """One File Service upload request: its correlation id and trace."""

    correlation_id: uuid.UUID
    trace_id: str | None


@dataclass
class _Sim:
    """Reference slot rules to derive expected.json from the records themselves."""

    registered: bool = False
    closed: bool = False
    essay_ids: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    assigned: dict[str, str] = field(default_factory=dict)  # essay_id -> text_storage_id
    failed: set[str] = field(default_factory=set)
    excess: list[dict[str, str]] = field(default_factory=list)

    def known(self, tsid: str) -> bool:
        return (
            tsid in self.pending
            or tsid in self.assigned.values()
            or any(e["text_storage_id"] == tsid for e in self.excess)
        )

    def place(self, tsid: str) -> None:
        if self.closed or len(self.assigned) >= len(self.essay_ids):
            reason = "BATCH_CLOSED" if self.closed else "NO_AVAILABLE_SLOT"
            self.excess.append({"text_storage_id": tsid, "reason": reason})
        else:
            self.assigned[self.essay_ids[len(self.assigned)]] = tsid

    def maybe_close(self) -> None:
        if self.registered and not self.closed:
            self.closed = len(self.assigned) + len(self.failed) >= len(self.essay_ids)


class _Scenario:
    def __init__(self, source: _Source) -> None:
        self.s = source
        self.records: list[_Record] = []
        self.batches: dict[str, _Batch] = {}
        self._files = 0
        self.envelope = _cc("events.envelope", "EventEnvelope")
        topic_name = _cc("event_enums", "topic_name")
        event = _cc("event_enums", "ProcessingEvent")
        self.t_registered = topic_name(event.BATCH_ESSAYS_REGISTERED)
        self.t_content = topic_name(event.ESSAY_CONTENT_PROVISIONED)
        self.t_failed = topic_name(event.ESSAY_VALIDATION_FAILED)
        self.registered_event = event.BATCH_ESSAYS_REGISTERED.value

    # ------------------------------------------------------------ producers

    def _store(
        self, topic: str, key: str, source_service: str, data: Any, cid: uuid.UUID, meta: Any
    ) -> _OutboxRow:
        """The service side: build the envelope, store its JSON dump in the outbox."""
        envelope = self.envelope[type(data)](
            event_id=uuid.UUID(int=0, version=4),  # not published: the relay makes a new one
            event_timestamp=START,
            event_type=topic,
            source_service=source_service,
            correlation_id=cid,
            data=data,
            metadata=meta,
        )
        stored: dict[str, Any] = envelope.model_dump(mode="json")
        stored["topic"] = topic
        return _OutboxRow(topic, topic, key, stored, source_service)

    def _relay(self, row: _OutboxRow, batch: str, note: str, delay: float = 0.2) -> _Record:
        """One relay publish attempt: a fresh ``EventEnvelope[Any]`` from the stored row."""
        stored = dict(row.event_data)
        stored.pop("headers", None)
        envelope = self.envelope[Any](
            event_id=self.s.uuid4(),
            event_timestamp=self.s.tick(delay),
            event_type=row.event_type,
            source_service=stored.get("source_service", row.source_service),
            correlation_id=stored.get("correlation_id"),
            data=stored.get("data", stored),
            metadata=stored.get("metadata", {}),
        )
        value = json.dumps(envelope.model_dump(mode="json"))
        record = _Record(row.topic, row.event_key, value, batch, note)
        self.records.append(record)
        return record

    def register(
        self, label: str, slots: int, course: str, *, class_id: bool = False, prompt: bool = False
    ) -> _OutboxRow:
        s = self.s
        b = _Batch(
            label=label,
            batch_id=str(s.uuid4()),
            correlation_id=str(s.uuid4()),
            course_code=course,
            user_id=str(s.uuid4()),
            essay_ids=[str(s.uuid4()) for _ in range(slots)],
            trace_id=s.hex128(),
        )
        self.batches[label] = b
        now = s.tick(3.0)
        prompt_ref = None
        if prompt:
            prompt_ref = _cc("metadata_models", "StorageReferenceMetadata")()
            prompt_ref.add_reference(
                _cc("domain_enums", "ContentType").STUDENT_PROMPT_TEXT, s.hex32()
            )
        data = _cc("events.batch_coordination_events", "BatchEssaysRegistered")(
            entity_id=b.batch_id,
            expected_essay_count=slots,
            essay_ids=b.essay_ids,
            metadata=_cc("metadata_models", "SystemProcessingMetadata")(
                entity_id=b.batch_id,
                entity_type="batch",
                event=self.registered_event,
                timestamp=now,
            ),
            course_code=_cc("domain_enums", "CourseCode")(course),
            student_prompt_ref=prompt_ref,
            user_id=b.user_id,
            class_id=str(s.uuid4()) if class_id else None,
        )
        meta = {"traceparent": s.traceparent(b.trace_id, s.span_id())}
        return self._store(
            self.t_registered, b.batch_id, BOS, data, uuid.UUID(b.correlation_id), meta
        )

    def upload(self, traced: bool) -> _Upload:
        return _Upload(self.s.uuid4(), self.s.hex128() if traced else None)

    def _file(self, upload: _Upload) -> tuple[str, str, str, dict[str, str], str | None]:
        s = self.s
        self._files += 1
        ext = ("docx", "docx", "pdf", "docx", "txt")[self._files % 5]
        span: str | None = None
        meta: dict[str, str] = {}  # File Service: metadata={}, filled only inside a span
        if upload.trace_id is not None:
            span = s.span_id()
            meta["traceparent"] = s.traceparent(upload.trace_id, span)
        return str(s.uuid4()), f"essay_{self._files:02d}.{ext}", s.hex32(), meta, span

    def content(self, label: str, upload: _Upload) -> tuple[_OutboxRow, str]:
        s = self.s
        file_upload_id, name, raw_id, meta, _ = self._file(upload)
        text_storage_id = s.hex32()
        data = _cc("events.file_events", "EssayContentProvisionedV1")(
            entity_id=self.batches[label].batch_id,
            file_upload_id=file_upload_id,
            original_file_name=name,
            raw_file_storage_id=raw_id,
            text_storage_id=text_storage_id,
            file_size_bytes=s.size(),
            content_md5_hash=s.hex128(),
            correlation_id=upload.correlation_id,
            timestamp=s.tick(1.5),
        )
        row = self._store(
            self.t_content, file_upload_id, FILE_SERVICE, data, upload.correlation_id, meta
        )
        return row, text_storage_id

    def failure(self, label: str, upload: _Upload, code: str) -> tuple[_OutboxRow, str]:
        s = self.s
        file_upload_id, name, raw_id, meta, span = self._file(upload)
        error_code = _cc("error_enums", "FileValidationErrorCode")(code)
        details: dict[str, Any] = {"file_name": name}
        if code == "TEXT_EXTRACTION_FAILED":
            operation = "extract_text"
            message = "Failed to extract text: File is not a zip file"
        else:
            operation = "validate_content"
            message = f"File '{name}' content is too short (minimum: 50, actual: 12)"
            details |= {"min_length": 50, "actual_length": 12}
        now = s.tick(1.5)
        detail = _cc("models.error_models", "ErrorDetail")(
            error_code=error_code,
            message=message,
            correlation_id=upload.correlation_id,
            timestamp=now,
            service="file_service",  # what file_service passes to the error factories
            operation=operation,
            details=details,
            stack_trace='Traceback (most recent call last):\n  File "core_logic.py", line 168\n',
            trace_id=upload.trace_id,
            span_id=span,
        )
        data = _cc("events.file_events", "EssayValidationFailedV1")(
            entity_id=self.batches[label].batch_id,
            file_upload_id=file_upload_id,
            original_file_name=name,
            raw_file_storage_id=raw_id,
            validation_error_code=error_code,
            validation_error_detail=detail,
            file_size_bytes=s.size(),
            correlation_id=upload.correlation_id,
            timestamp=now + timedelta(milliseconds=3),
        )
        row = self._store(
            self.t_failed, file_upload_id, FILE_SERVICE, data, upload.correlation_id, meta
        )
        return row, file_upload_id

    # ------------------------------------------------------------ scenario

    def build(self) -> None:
        """The records in send order. A registration that arrives after content is
        still made first (BOS answers the client with the batch id before any upload);
        only its relay publish is late."""
        r = self._relay
        # A: 4 slots, 2 contents before the registration, 2 after; the relay re-publishes one.
        reg_a = self.register("A", 4, "ENG5", prompt=True)
        up = self.upload(traced=True)
        for _ in range(2):
            row, _tsid = self.content("A", up)
            r(row, "A", "content before registration: held, assigned on registration")
        r(reg_a, "A", "registration: 4 slots; assigns the 2 held contents in arrival order")
        up = self.upload(traced=False)
        row3, _tsid = self.content("A", up)
        r(row3, "A", "content -> 3rd slot")
        r(row3, "A", "relay re-publish of the same outbox row: new event_id/timestamp", 4.0)
        row4, _tsid = self.content("A", up)
        r(row4, "A", "content -> 4th slot; batch complete")

        # B: 3 slots, 2 contents + 1 TEXT_EXTRACTION_FAILED.
        reg_b = self.register("B", 3, "SV1", class_id=True)
        r(reg_b, "B", "registration: 3 slots (REGULAR batch: class_id set)")
        up = self.upload(traced=True)
        row, _ = self.content("B", up)
        r(row, "B", "content -> 1st slot")
        row, _ = self.failure("B", up, "TEXT_EXTRACTION_FAILED")
        r(row, "B", "validation failure TEXT_EXTRACTION_FAILED: counts toward completion")
        row, _ = self.content("B", up)
        r(row, "B", "content -> 2nd slot; batch complete (2 provisioned, 1 failed)")

        # C: 2 slots, 3 contents before the registration, 1 after completion.
        reg_c = self.register("C", 2, "ENG6")
        up = self.upload(traced=True)
        for i in range(3):
            row, _ = self.content("C", up)
            r(row, "C", f"content {i + 1} of 3 before registration: held")
        r(reg_c, "C", "registration: 2 slots; 2 held assigned, 3rd excess NO_AVAILABLE_SLOT")
        row, _ = self.content("C", self.upload(traced=False))
        r(row, "C", "content after completion: excess BATCH_CLOSED")

        # D: 3 slots, 1 content -> times out.
        reg_d = self.register("D", 3, "SV2")
        r(reg_d, "D", "registration: 3 slots")
        row, _ = self.content("D", self.upload(traced=True))
        r(row, "D", "the only content -> 1st slot; batch will time out")

        # E: 2 slots; registration re-published by the relay; a content re-delivered by Kafka.
        reg_e = self.register("E", 2, "ENG7")
        r(reg_e, "E", "registration: 2 slots")
        r(reg_e, "E", "relay re-publish of the registration: new event_id/timestamp", 2.0)
        up = self.upload(traced=False)
        row, _ = self.content("E", up)
        first = r(row, "E", "content -> 1st slot")
        self.records.append(
            _Record(first.topic, first.key, first.value, "E", "Kafka re-delivery: byte-identical")
        )
        row, _ = self.content("E", up)
        r(row, "E", "content -> 2nd slot; batch complete")

        # F: 2 slots; a validation failure before the registration, then 1 content.
        reg_f = self.register("F", 2, "SV3")
        up = self.upload(traced=True)
        row, _ = self.failure("F", up, "CONTENT_TOO_SHORT")
        r(row, "F", "validation failure CONTENT_TOO_SHORT before registration: held")
        r(reg_f, "F", "registration: 2 slots; the held failure counts")
        row, _ = self.content("F", up)
        r(row, "F", "content -> 1st slot; batch complete (1 provisioned, 1 failed)")

    # ------------------------------------------------------------ expected

    def expected(self) -> dict[str, Any]:
        sims = {label: _Sim() for label in self.batches}
        by_id = {b.batch_id: label for label, b in self.batches.items()}
        for rec in self.records:
            data = json.loads(rec.value)["data"]
            if rec.topic == self.t_registered:
                sim = sims[by_id[data["entity_id"]]]
                if sim.registered:
                    continue
                sim.registered, sim.essay_ids = True, list(data["essay_ids"])
                for tsid in sim.pending:
                    sim.place(tsid)
                sim.pending = []
            elif rec.topic == self.t_content:
                sim = sims[by_id[data["entity_id"]]]
                tsid = data["text_storage_id"]
                if sim.known(tsid):
                    continue
                if sim.registered:
                    sim.place(tsid)
                else:
                    sim.pending.append(tsid)
            else:
                sim = sims[by_id[data["entity_id"]]]
                if not sim.closed:
                    sim.failed.add(data["file_upload_id"])
            sim.maybe_close()
        out: dict[str, Any] = {}
        for label, b in self.batches.items():
            sim = sims[label]
            outcome: Literal["complete", "timed_out"] = "complete" if sim.closed else "timed_out"
            out[label] = {
                "batch_id": b.batch_id,
                "registration_correlation_id": b.correlation_id,
                "course_code": b.course_code,
                "user_id": b.user_id,
                "essay_ids": b.essay_ids,
                "outcome": outcome,
                "assigned": len(sim.assigned),
                "failed": len(sim.failed),
                "excess": sim.excess,
                "slot_assignments": sim.assigned,
            }
        return out


# The outcomes the brief asks for; a scenario change that breaks one fails the run.
WANTED = {
    "A": ("complete", 4, 0, []),
    "B": ("complete", 2, 1, []),
    "C": ("complete", 2, 0, ["NO_AVAILABLE_SLOT", "BATCH_CLOSED"]),
    "D": ("timed_out", 1, 0, []),
    "E": ("complete", 2, 0, []),
    "F": ("complete", 1, 1, []),
}


def _check(scenario: _Scenario, expected: dict[str, Any]) -> None:
    """Round trip every value through HuleEdu's models; check the outcomes."""
    models = {
        scenario.t_registered: _cc("events.batch_coordination_events", "BatchEssaysRegistered"),
        scenario.t_content: _cc("events.file_events", "EssayContentProvisionedV1"),
        scenario.t_failed: _cc("events.file_events", "EssayValidationFailedV1"),
    }
    for rec in scenario.records:
        envelope = scenario.envelope[Any].model_validate_json(rec.value)
        if envelope.event_type != rec.topic:
            raise AssertionError(f"event_type {envelope.event_type} != topic {rec.topic}")
        data = models[rec.topic].model_validate(envelope.data)
        if data.model_dump(mode="json") != envelope.data:
            raise AssertionError(f"data does not round-trip: {rec.note}")
        if json.dumps(envelope.model_dump(mode="json")) != rec.value:
            raise AssertionError(f"envelope does not round-trip: {rec.note}")
    for label, (outcome, assigned, failed, excess) in WANTED.items():
        got = expected[label]
        reasons = [e["reason"] for e in got["excess"]]
        if (got["outcome"], got["assigned"], got["failed"], reasons) != (
            outcome,
            assigned,
            failed,
            excess,
        ):
            raise AssertionError(f"batch {label}: {got}")


def _schema_text(module: str, name: str) -> str:
    schema = _cc(module, name).model_json_schema()
    refs = [
        ref
        for ref in _refs(schema)
        if not ref.startswith("#/$defs/") or ref[8:] not in schema.get("$defs", {})
    ]
    if refs:
        raise AssertionError(f"{name}: schema not self-contained: {refs}")
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def render(commit: str, seed: int = SEED) -> dict[str, str]:
    """Every fixture file's text, by path relative to the output directory."""
    import pydantic  # present wherever common_core is

    scenario = _Scenario(_Source(seed))
    scenario.build()
    expected = scenario.expected()
    _check(scenario, expected)
    files = {
        "scenario.jsonl": "".join(
            json.dumps(
                {"topic": r.topic, "key": r.key, "value": r.value, "batch": r.batch, "note": r.note}
            )
            + "\n"
            for r in scenario.records
        ),
        "expected.json": json.dumps(expected, indent=2) + "\n",
        "source.json": json.dumps(
            {
                "repository": REPOSITORY,
                "commit": commit,
                "files": MODEL_FILES,
                "producer_files_read": PRODUCER_FILES,
                "pydantic_version": pydantic.VERSION,
                "seed": seed,
                "generator": GENERATOR,
            },
            indent=2,
        )
        + "\n",
    }
    for name, (module, cls) in SCHEMA_MODELS.items():
        files[f"schemas/{name}.json"] = _schema_text(module, cls)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/huleedu"))
    parser.add_argument("--commit", required=True, help="the HuleEdu commit common_core is from")
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    if len(args.commit) != 40 or any(c not in "0123456789abcdef" for c in args.commit):
        parser.error("--commit must be 40 lowercase hex digits")
    try:
        importlib.import_module("common_core")
    except ImportError:
        parser.error("common_core is not importable (see this module's docstring)")
    files = render(args.commit)
    out: Path = args.out
    differ = []
    for rel, text in files.items():
        path = out / rel
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                differ.append(rel)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    if differ:
        print("out of date: " + ", ".join(differ), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
